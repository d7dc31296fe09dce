"""Through the kernel VFS: the cgroup v2 core files with real host processes (docs/kernel-model.md
§14)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from dmemfs.testing import Mounted

#: PID_MAX_LIMIT on 64-bit: pids are always below it, so this one never exists.
NO_SUCH_PID = 4 * 1024 * 1024

#: A process with two extra threads; prints "ready" once they run.
_THREADED = (
    "import threading, time\n"
    "for _ in range(2):\n"
    "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


def _errno(fn: Callable[..., object], *args: object, **kwargs: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


def _bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def _spawn(*argv: str, **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    """A child process that is always killed and reaped on the way out."""
    proc = subprocess.Popen(argv, text=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _sleeper() -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return _spawn("sleep", "30")


def _pids(mnt: Mounted, rel: str) -> list[int]:
    return [int(line) for line in mnt.read(rel).splitlines()]


def _wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _mkdirs(mnt: Mounted, *rels: str) -> None:
    for rel in rels:
        os.mkdir(os.path.join(mnt.cgroup, rel))


# -- cgroup.subtree_control (docs/kernel-model.md §14) --------------------------------------------


def test_subtree_control_tokens(mnt: Mounted) -> None:
    _mkdirs(mnt, "a")
    assert mnt.read("cgroup.subtree_control") == ""
    assert mnt.write("cgroup.subtree_control", "+dmem") == 5
    assert mnt.read("cgroup.subtree_control") == "dmem\n"
    assert mnt.read("a/cgroup.controllers") == "dmem\n"
    mnt.write("cgroup.subtree_control", "+dmem")  # already enabled: ignored
    assert mnt.read("cgroup.subtree_control") == "dmem\n"
    mnt.write("cgroup.subtree_control", "+dmem -dmem")  # the later token wins
    assert mnt.read("cgroup.subtree_control") == ""
    assert mnt.read("a/cgroup.controllers") == ""
    mnt.write("cgroup.subtree_control", "-dmem")  # not enabled: ignored
    mnt.write("cgroup.subtree_control", "-dmem  +dmem\n")  # empty tokens are skipped
    assert mnt.read("cgroup.subtree_control") == "dmem\n"
    mnt.write("cgroup.subtree_control", "\t-dmem\n")  # surrounding white space is stripped
    assert mnt.read("cgroup.subtree_control") == ""
    for bad in ("+dmem\t+dmem", "+dmem\t-dmem", "+memory", "dmem", "+dmem +memory", "+"):
        assert _errno(mnt.write, "cgroup.subtree_control", bad) == errno.EINVAL, bad
        assert mnt.read("cgroup.subtree_control") == "", bad  # all or nothing
    assert mnt.write("cgroup.subtree_control", b"") == 0
    res = _bash(f"echo +memory > {mnt.cgroup}/cgroup.subtree_control")
    assert res.returncode == 1
    assert "Invalid argument" in res.stderr


def test_subtree_control_enoent_when_parent_lacks_dmem(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "a/b")
    assert mnt.read("a/cgroup.controllers") == ""
    assert _errno(mnt.write, "a/cgroup.subtree_control", "+dmem") == errno.ENOENT
    mnt.write("a/cgroup.subtree_control", "-dmem")  # disabling what is not enabled is a no-op
    res = _bash(f"echo +dmem > {mnt.cgroup}/a/cgroup.subtree_control")
    assert res.returncode == 1
    assert "No such file or directory" in res.stderr
    mnt.write("cgroup.subtree_control", "+dmem")
    mnt.write("a/cgroup.subtree_control", "+dmem")
    assert mnt.read("a/cgroup.subtree_control") == "dmem\n"
    assert mnt.read("a/b/cgroup.controllers") == "dmem\n"


def test_subtree_control_ebusy_disabling_while_a_child_enables(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    _mkdirs(mnt, "a", "a/b")
    mnt.write("a/cgroup.subtree_control", "+dmem")
    assert _errno(mnt.write, "cgroup.subtree_control", "-dmem") == errno.EBUSY
    assert mnt.read("cgroup.subtree_control") == "dmem\n"
    assert os.path.exists(os.path.join(mnt.cgroup, "a", "dmem.max"))
    mnt.write("a/cgroup.subtree_control", "-dmem")
    mnt.write("cgroup.subtree_control", "-dmem")
    assert mnt.read("cgroup.subtree_control") == ""


def test_subtree_control_ebusy_with_an_internal_process(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    _mkdirs(mnt, "a", "a/b")
    with _sleeper() as p:
        mnt.write("a/cgroup.procs", str(p.pid))
        assert _errno(mnt.write, "a/cgroup.subtree_control", "+dmem") == errno.EBUSY
        res = _bash(f"echo +dmem > {mnt.cgroup}/a/cgroup.subtree_control")
        assert res.returncode == 1
        assert "Device or resource busy" in res.stderr
        assert mnt.read("a/cgroup.subtree_control") == ""
        p.kill()
        p.wait()
    mnt.write("a/cgroup.subtree_control", "+dmem")  # no process left: allowed
    assert mnt.read("a/cgroup.subtree_control") == "dmem\n"
    with _sleeper() as p:
        # The same rule from the other side: no process may join a cgroup with controllers.
        assert _errno(mnt.write, "a/cgroup.procs", str(p.pid)) == errno.EBUSY
        mnt.write("a/b/cgroup.procs", str(p.pid))
        assert _pids(mnt, "a/b/cgroup.procs") == [p.pid]
        assert _pids(mnt, "a/cgroup.procs") == []
        mnt.write("cgroup.procs", str(p.pid))  # the root is exempt from the rule
        assert _pids(mnt, "a/b/cgroup.procs") == []


# -- cgroup.max.depth / cgroup.max.descendants (docs/kernel-model.md §14) -------------------------


@pytest.mark.parametrize("name", ["cgroup.max.depth", "cgroup.max.descendants"])
def test_hierarchy_limit_files(mnt: Mounted, name: str) -> None:
    _mkdirs(mnt, "a")
    assert mnt.read(name) == "max\n"
    assert mnt.read(f"a/{name}") == "max\n"
    mnt.write(f"a/{name}", "3")
    assert mnt.read(f"a/{name}") == "3\n"
    assert mnt.read(name) == "max\n"
    mnt.write(f"a/{name}", " 0x10 \n")
    assert mnt.read(f"a/{name}") == "16\n"
    mnt.write(f"a/{name}", "0")
    assert mnt.read(f"a/{name}") == "0\n"
    mnt.write(f"a/{name}", "max\n")
    assert mnt.read(f"a/{name}") == "max\n"
    for bad, code in (("-1", errno.ERANGE), ("-5\n", errno.ERANGE), ("abc", errno.EINVAL),
                      ("1.5", errno.EINVAL), ("Max", errno.EINVAL), ("1 2", errno.EINVAL)):
        assert _errno(mnt.write, f"a/{name}", bad) == code, bad
        assert mnt.read(f"a/{name}") == "max\n", bad
    res = _bash(f"echo -1 > {mnt.cgroup}/a/{name}")
    assert res.returncode == 1
    assert "Numerical result out of range" in res.stderr


def test_max_depth_zero_forbids_children(mnt: Mounted) -> None:
    _mkdirs(mnt, "a")
    mnt.write("a/cgroup.max.depth", "0")
    assert _errno(os.mkdir, os.path.join(mnt.cgroup, "a", "b")) == errno.EAGAIN
    res = _bash(f"mkdir {mnt.cgroup}/a/b")
    assert res.returncode == 1
    assert "Resource temporarily unavailable" in res.stderr
    mnt.write("a/cgroup.max.depth", "1")
    _mkdirs(mnt, "a/b")
    assert _errno(os.mkdir, os.path.join(mnt.cgroup, "a", "b", "c")) == errno.EAGAIN
    _mkdirs(mnt, "a2")  # a's limit does not reach its siblings


def test_hierarchy_limits_of_a_grandparent(mnt: Mounted) -> None:
    _mkdirs(mnt, "a")
    mnt.write("a/cgroup.max.depth", "2")
    _mkdirs(mnt, "a/b", "a/b/c")
    assert mnt.read("a/b/cgroup.max.depth") == "max\n"
    assert _errno(os.mkdir, os.path.join(mnt.cgroup, "a/b/c/d")) == errno.EAGAIN
    mnt.write("a/cgroup.max.descendants", "3")
    _mkdirs(mnt, "a/b/x")  # a now has 3 descendants
    assert _errno(os.mkdir, os.path.join(mnt.cgroup, "a/b/y")) == errno.EAGAIN
    assert _errno(os.mkdir, os.path.join(mnt.cgroup, "a/y")) == errno.EAGAIN
    os.rmdir(os.path.join(mnt.cgroup, "a/b/x"))
    _mkdirs(mnt, "a/b/y")
    # A limit on the root counts every cgroup of the hierarchy.
    mnt.write("cgroup.max.descendants", "5")
    _mkdirs(mnt, "e")
    assert _errno(os.mkdir, os.path.join(mnt.cgroup, "f")) == errno.EAGAIN


# -- cgroup.stat --------------------------------------------------------------------------


_STAT_KEYS = ("nr_descendants", "nr_subsys_dmem", "nr_dying_descendants", "nr_dying_subsys_dmem")


def _stat(mnt: Mounted, rel: str) -> tuple[int, ...]:
    """``cgroup.stat`` of ``rel`` as a tuple in :data:`_STAT_KEYS` order (checked)."""
    text = mnt.read(os.path.join(rel, "cgroup.stat"))
    assert text.endswith("\n")
    pairs = [line.split(" ") for line in text.splitlines()]
    assert tuple(k for k, _ in pairs) == _STAT_KEYS
    return tuple(int(v) for _, v in pairs)


def test_cgroup_stat_counts(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "gone")
    assert _stat(mnt, "") == (2, 1, 0, 0)
    assert _stat(mnt, "a") == (0, 0, 0, 0)
    os.rmdir(os.path.join(mnt.cgroup, "gone"))
    assert _stat(mnt, "") == (1, 1, 0, 0)
    mnt.write("cgroup.subtree_control", "+dmem")
    _mkdirs(mnt, "a/b", "a/c")
    assert _stat(mnt, "") == (3, 2, 0, 0)
    assert _stat(mnt, "a") == (2, 1, 0, 0)
    assert _stat(mnt, "a/b") == (0, 0, 0, 0)
    mnt.write("a/cgroup.subtree_control", "+dmem")
    assert _stat(mnt, "") == (3, 4, 0, 0)
    assert _stat(mnt, "a") == (2, 3, 0, 0)
    assert _stat(mnt, "a/b") == (0, 1, 0, 0)
    mnt.write("a/cgroup.subtree_control", "-dmem")  # nothing charged: released at once
    assert _stat(mnt, "") == (3, 2, 0, 0)
    assert _stat(mnt, "a") == (2, 1, 0, 0)
    assert _stat(mnt, "a/b") == (0, 0, 0, 0)
    os.rmdir(os.path.join(mnt.cgroup, "a/c"))
    assert _stat(mnt, "a") == (1, 1, 0, 0)
    assert _stat(mnt, "") == (2, 2, 0, 0)


def test_cgroup_stat_after_rmdir_of_a_dmem_cgroup(mnt: Mounted) -> None:
    # Regression: the released cgroup used to be counted out twice (nr_dying_descendants -1).
    mnt.write("cgroup.subtree_control", "+dmem")
    _mkdirs(mnt, "a", "a/c")
    mnt.write("a/cgroup.subtree_control", "+dmem")
    assert _stat(mnt, "") == (2, 3, 0, 0)
    os.rmdir(os.path.join(mnt.cgroup, "a/c"))  # nothing charged: released at once
    assert _stat(mnt, "a") == (0, 1, 0, 0)
    assert _stat(mnt, "") == (1, 2, 0, 0)


# -- cgroup.events, cgroup.freeze, cgroup.kill ---------------------------------------------


def test_events_populated_follows_a_real_process(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "a/b", "c")
    assert mnt.read("a/cgroup.events") == "populated 0\nfrozen 0\n"
    assert _errno(os.open, os.path.join(mnt.cgroup, "cgroup.events"), os.O_RDONLY) == errno.ENOENT
    with _sleeper() as p:
        mnt.write("a/b/cgroup.procs", str(p.pid))
        assert mnt.read("a/b/cgroup.events") == "populated 1\nfrozen 0\n"
        assert mnt.read("a/cgroup.events") == "populated 1\nfrozen 0\n"
        assert mnt.read("c/cgroup.events") == "populated 0\nfrozen 0\n"
        p.kill()
        assert p.wait() == -signal.SIGKILL
        assert mnt.read("a/b/cgroup.events") == "populated 0\nfrozen 0\n"
        assert mnt.read("a/cgroup.events") == "populated 0\nfrozen 0\n"


def test_freeze(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "a/b", "c")
    assert mnt.read("a/cgroup.freeze") == "0\n"
    assert _errno(os.open, os.path.join(mnt.cgroup, "cgroup.freeze"), os.O_RDONLY) == errno.ENOENT
    mnt.write("a/cgroup.freeze", "1")
    assert mnt.read("a/cgroup.freeze") == "1\n"
    assert mnt.read("a/cgroup.events") == "populated 0\nfrozen 1\n"
    assert mnt.read("a/b/cgroup.freeze") == "0\n"  # the child's own setting is unchanged
    assert mnt.read("a/b/cgroup.events") == "populated 0\nfrozen 1\n"
    assert mnt.read("c/cgroup.events") == "populated 0\nfrozen 0\n"
    for bad, code in (("2", errno.ERANGE), ("-1", errno.ERANGE), ("abc", errno.EINVAL),
                      ("1x", errno.EINVAL)):
        assert _errno(mnt.write, "a/cgroup.freeze", bad) == code, bad
        assert mnt.read("a/cgroup.freeze") == "1\n", bad
    mnt.write("a/cgroup.freeze", "0\n")
    assert mnt.read("a/cgroup.freeze") == "0\n"
    assert mnt.read("a/b/cgroup.events") == "populated 0\nfrozen 0\n"


def test_kill_reaches_a_grandchild(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "a/b")
    assert _errno(os.open, os.path.join(mnt.cgroup, "cgroup.kill"), os.O_WRONLY) == errno.ENOENT
    with _sleeper() as inner, _sleeper() as outer, _sleeper() as bystander:
        mnt.write("a/b/cgroup.procs", str(inner.pid))
        mnt.write("a/cgroup.procs", str(outer.pid))
        for bad, code in (("0", errno.ERANGE), ("2", errno.ERANGE), ("abc", errno.EINVAL)):
            assert _errno(mnt.write, "a/cgroup.kill", bad) == code, bad
        assert inner.poll() is None and outer.poll() is None
        assert mnt.write("a/cgroup.kill", "1\n") == 2
        assert inner.wait(timeout=10) == -signal.SIGKILL
        assert outer.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None  # not a member: untouched
        assert mnt.read("a/cgroup.events") == "populated 0\nfrozen 0\n"
        assert _pids(mnt, "a/b/cgroup.procs") == []
    # A member that writes to cgroup.kill is killed too.
    cg = os.path.join(mnt.cgroup, "a", "b")
    res = _bash(f"echo 0 > {cg}/cgroup.procs && echo 1 > {cg}/cgroup.kill; echo survived")
    assert res.returncode == -signal.SIGKILL
    assert "survived" not in res.stdout
    assert mnt.read("a/b/cgroup.events") == "populated 0\nfrozen 0\n"


# -- cgroup.type, cgroup.threads ----------------------------------------------------------


def test_type(mnt: Mounted) -> None:
    _mkdirs(mnt, "a")
    assert mnt.read("a/cgroup.type") == "domain\n"
    assert _errno(os.open, os.path.join(mnt.cgroup, "cgroup.type"), os.O_RDONLY) == errno.ENOENT
    assert _errno(mnt.write, "a/cgroup.type", "threaded\n") == errno.EOPNOTSUPP
    for bad in ("domain", "domain threaded", "thread", "1"):
        assert _errno(mnt.write, "a/cgroup.type", bad) == errno.EINVAL, bad
    assert mnt.read("a/cgroup.type") == "domain\n"


def test_threads_list_tids_and_stay_in_their_domain(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "b")
    with _spawn(sys.executable, "-c", _THREADED, stdout=subprocess.PIPE) as p:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        tids = sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task"))
        assert len(tids) == 3
        other = next(t for t in tids if t != p.pid)
        mnt.write("a/cgroup.procs", str(p.pid))
        listed = _pids(mnt, "a/cgroup.threads")
        assert sorted(listed) == tids
        assert _pids(mnt, "a/cgroup.procs") == [p.pid]
        assert not set(tids) & set(_pids(mnt, "cgroup.threads"))
        # One thread cannot leave its process's domain cgroup.
        assert _errno(mnt.write, "b/cgroup.threads", str(other)) == errno.EOPNOTSUPP
        mnt.write("a/cgroup.threads", str(other))  # already there: accepted
        assert sorted(_pids(mnt, "a/cgroup.threads")) == tids
        assert _pids(mnt, "b/cgroup.threads") == []
        # A thread id written to cgroup.procs moves its whole thread group.
        mnt.write("b/cgroup.procs", str(other))
        assert _pids(mnt, "b/cgroup.procs") == [p.pid]
        assert sorted(_pids(mnt, "b/cgroup.threads")) == tids
        assert _pids(mnt, "a/cgroup.threads") == []


# -- cgroup.procs (docs/kernel-model.md §14, README "Processes") ----------------------------------


def test_procs_write_errors(mnt: Mounted) -> None:
    _mkdirs(mnt, "a")
    assert not os.path.exists(f"/proc/{NO_SUCH_PID}")
    assert _errno(mnt.write, "a/cgroup.procs", str(NO_SUCH_PID)) == errno.ESRCH
    res = _bash(f"echo {NO_SUCH_PID} > {mnt.cgroup}/a/cgroup.procs")
    assert res.returncode == 1
    assert "No such process" in res.stderr
    for bad in ("-1", "abc", "1 2", " \n", "1.0", f"{2**31}"):
        assert _errno(mnt.write, "a/cgroup.procs", bad) == errno.EINVAL, repr(bad)
    assert _errno(mnt.write, "a/cgroup.procs", " " * 4097) == errno.E2BIG
    assert mnt.write("a/cgroup.procs", b"") == 0
    assert _pids(mnt, "a/cgroup.procs") == []


def test_procs_moves_a_process_between_cgroups(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "b")
    with _sleeper() as p:
        root = _pids(mnt, "cgroup.procs")
        assert p.pid in root and os.getpid() in root
        assert len(root) == len(set(root))
        mnt.write("a/cgroup.procs", f"{p.pid}\n")
        assert _pids(mnt, "a/cgroup.procs") == [p.pid]
        assert p.pid not in _pids(mnt, "cgroup.procs")
        mnt.write("b/cgroup.procs", f" +{p.pid:#x}\n")  # kstrtoint: base 0, sign, white space
        assert _pids(mnt, "a/cgroup.procs") == []
        assert _pids(mnt, "b/cgroup.procs") == [p.pid]
        assert mnt.read("b/cgroup.events") == "populated 1\nfrozen 0\n"
        mnt.write("cgroup.procs", str(p.pid))
        assert _pids(mnt, "b/cgroup.procs") == []
        assert mnt.read("b/cgroup.events") == "populated 0\nfrozen 0\n"
        assert p.pid in _pids(mnt, "cgroup.procs")


def test_procs_zero_moves_the_writer_and_forks_follow(mnt: Mounted) -> None:
    _mkdirs(mnt, "a")
    procs = os.path.join(mnt.cgroup, "a", "cgroup.procs")
    # The shell joins "a" itself, then forks a sleep that must be found in "a" too.
    script = f"echo 0 > {procs} || exit 1; sleep 30 & echo $$ $!; exec sleep 30"
    with _spawn("sh", "-c", script, stdout=subprocess.PIPE) as sh:
        assert sh.stdout is not None
        line = sh.stdout.readline()
        assert line, "the shell could not write 0 to cgroup.procs"
        sh_pid, child = (int(x) for x in line.split())
        assert sh_pid == sh.pid
        try:
            assert sorted(_pids(mnt, "a/cgroup.procs")) == sorted([sh_pid, child])
            root = _pids(mnt, "cgroup.procs")
            assert sh_pid not in root and child not in root
            os.kill(child, signal.SIGKILL)  # left a zombie: its parent never reaps it
            _wait_until(lambda: _pids(mnt, "a/cgroup.procs") == [sh_pid])
            assert mnt.read("a/cgroup.events").startswith("populated 1\n")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        sh.kill()
        sh.wait()
        assert _pids(mnt, "a/cgroup.procs") == []
        assert mnt.read("a/cgroup.events").startswith("populated 0\n")


def test_rmdir_busy_while_populated(mnt: Mounted) -> None:
    _mkdirs(mnt, "a", "a/b")
    with _sleeper() as p:
        mnt.write("a/b/cgroup.procs", str(p.pid))
        assert _errno(os.rmdir, os.path.join(mnt.cgroup, "a/b")) == errno.EBUSY
        res = _bash(f"rmdir {mnt.cgroup}/a/b")
        assert res.returncode == 1
        assert "Device or resource busy" in res.stderr
        assert os.path.isdir(os.path.join(mnt.cgroup, "a/b"))
        p.kill()
        p.wait()
        os.rmdir(os.path.join(mnt.cgroup, "a/b"))
        os.rmdir(os.path.join(mnt.cgroup, "a"))
    assert "a" not in os.listdir(mnt.cgroup)


def test_dying_cgroup_paths_are_enoent(mnt: Mounted) -> None:
    _mkdirs(mnt, "a")
    a = os.path.join(mnt.cgroup, "a")
    fd = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(a)
        assert _errno(os.mkdir, os.path.join(a, "b")) == errno.ENOENT
        assert _errno(os.rmdir, os.path.join(a, "b")) == errno.ENOENT
        assert _errno(os.rmdir, a) == errno.ENOENT
        assert _errno(os.mkdir, "b", dir_fd=fd) == errno.ENOENT
        assert _errno(os.rmdir, "b", dir_fd=fd) == errno.ENOENT
        assert _errno(os.open, "cgroup.procs", os.O_RDONLY, dir_fd=fd) == errno.ENOENT
    finally:
        os.close(fd)
    _mkdirs(mnt, "a")  # the name is free again: a new cgroup
    assert mnt.read("a/cgroup.max.depth") == "max\n"


def test_dmem_files_vanish_when_the_parent_disables_dmem(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    _mkdirs(mnt, "a")
    dmem_max = os.path.join(mnt.cgroup, "a", "dmem.max")
    fd = os.open(dmem_max, os.O_RDONLY)
    try:
        mnt.write("cgroup.subtree_control", "-dmem")
        for name in ("dmem.max", "dmem.min", "dmem.low", "dmem.current", "dmem.peak",
                     "dmem.pinned"):
            path = os.path.join(mnt.cgroup, "a", name)
            assert _errno(os.open, path, os.O_RDONLY) == errno.ENOENT, name
        assert not [n for n in os.listdir(os.path.join(mnt.cgroup, "a")) if n.startswith("dmem.")]
        assert _errno(os.pread, fd, 100, 0) == errno.ENODEV  # the open file is gone too
    finally:
        os.close(fd)
    # The root keeps its own dmem files.
    assert os.path.exists(os.path.join(mnt.cgroup, "dmem.current"))
