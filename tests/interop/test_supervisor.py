"""`dmemfs as-cgroup2`'s seccomp supervisor: statfs/fstatfs answers for every kind of
program (coreutils, static busybox, Go), device programs, permissions, lifetime."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmemfs.testing import Mounted
from tests.interop.test_containerd_cgroups import GOPATH
from tests.interop.tools import require_tool, unavailable

MAGIC = "63677270"
HERE = Path(__file__).parent
BPF = str(HERE / "bpf_device.py")


def run(mnt: Mounted, *args: str, env: dict[str, str] | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmemfs", "as-cgroup2", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def go_mode(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/interop/cgroups_mode: raw statfs from Go and containerd/cgroups' Mode()."""
    require_tool("go", "golang-go")
    if not os.path.isdir(f"{GOPATH}/src/github.com/containerd/cgroups"):
        unavailable("golang-github-containerd-cgroups-dev not installed (scripts/bootstrap "
                    "installs it)")
    out = tmp_path_factory.mktemp("go")
    env = dict(os.environ, GOPATH=GOPATH, GO111MODULE="off", GOCACHE=str(out / "cache"),
               GOFLAGS="")
    subprocess.run(["go", "build", "-o", str(out / "mode"),
                    str(HERE / "cgroups_mode" / "main.go")], env=env, check=True, cwd=out,
                   timeout=600)
    return str(out / "mode")


def test_stat_f_of_sys_fs_cgroup_from_coreutils_busybox_and_go(mnt: Mounted, go_mode: str
                                                                ) -> None:
    busybox = require_tool("busybox", "busybox-static")
    at = ("--at", "/sys/fs/cgroup", mnt.path, "--")
    res = run(mnt, *at, "stat", "-f", "-c", "%T %t", "/sys/fs/cgroup")
    assert res.stdout == f"cgroup2fs {MAGIC}\n", res.stderr
    # Static busybox makes the system call itself; its name table has no cgroup2, so it
    # prints UNKNOWN for the real cgroup2 too.
    res = run(mnt, *at, busybox, "stat", "-f", "-c", "%T %t", "/sys/fs/cgroup")
    assert res.stdout == f"UNKNOWN {MAGIC}\n", res.stderr
    res = run(mnt, *at, go_mode, "/sys/fs/cgroup", "/sys/fs/cgroup/cgroup.procs", "/tmp")
    assert res.stdout.splitlines() == [
        f"statfs /sys/fs/cgroup: {MAGIC}",
        f"statfs /sys/fs/cgroup/cgroup.procs: {MAGIC}",
        f"statfs /tmp: {_magic('/tmp')}",
        "mode: unified",  # containerd/cgroups
    ], res.stderr
    # Without as-cgroup2 the same program sees the host.
    res = subprocess.run([go_mode, mnt.cgroup], capture_output=True, text=True)
    assert MAGIC not in res.stdout


def _magic(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True,
                          text=True).stdout.strip()


def test_the_answer_is_cgroup2s_and_only_under_the_cgroup_root(mnt: Mounted,
                                                               dmem_child: str) -> None:
    code = ("import os, sys\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n"
            "        s = os.statvfs(p)\n"
            "        print(p, s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, s.f_files,"
            " s.f_ffree, s.f_namemax)\n"
            "    except OSError as e:\n"
            "        print(p, e.strerror)\n")
    paths = [mnt.cgroup, os.path.join(dmem_child, "dmem.max"), "cgroup.procs", "a", "nope",
             os.path.join(mnt.cgroup, "cgroup.procs", "x")]
    res = subprocess.run([sys.executable, "-m", "dmemfs", "as-cgroup2", mnt.path, "--",
                          sys.executable, "-c", code, *paths], capture_output=True,
                         text=True, cwd=mnt.cgroup, timeout=60)
    assert res.stdout.splitlines() == [
        f"{mnt.cgroup} 4096 4096 0 0 0 0 255",  # what the kernel gives for cgroup2
        f"{dmem_child}/dmem.max 4096 4096 0 0 0 0 255",
        "cgroup.procs 4096 4096 0 0 0 0 255",  # relative to the caller's cwd
        "a 4096 4096 0 0 0 0 255",
        "nope No such file or directory",  # the kernel's own errors
        f"{mnt.cgroup}/cgroup.procs/x Not a directory",
    ], res.stderr
    # Elsewhere on the mount and off it, the calls continue to the kernel.
    res = run(mnt, mnt.path, "--", "stat", "-f", "-c", "%t", mnt.path, mnt.dri, "/tmp")
    assert res.stdout.splitlines() == [_magic(mnt.path), _magic(mnt.dri), _magic("/tmp")]
    assert MAGIC not in res.stdout


def test_fstatfs_of_descriptors(mnt: Mounted) -> None:
    code = ("import ctypes, os, sys\n"
            "buf = ctypes.create_string_buffer(120)\n"
            "for p in sys.argv[1:]:\n"
            "    fd = os.open(p, os.O_RDONLY)\n"
            "    ctypes.CDLL(None).fstatfs(fd, buf)\n"
            "    print(hex(int.from_bytes(buf.raw[:8], 'little'))[2:])\n"
            "print(ctypes.CDLL(None, use_errno=True).fstatfs(999, buf), ctypes.get_errno())\n")
    res = run(mnt, mnt.path, "--", sys.executable, "-c", code, mnt.cgroup,
              os.path.join(mnt.cgroup, "cgroup.procs"), "/tmp")
    assert res.stdout.splitlines() == [MAGIC, MAGIC, _magic("/tmp"), "-1 9"], res.stderr


def test_options_anywhere_before_the_command(mnt: Mounted) -> None:
    for args in (["--at", "/sys/fs/cgroup", mnt.path], [mnt.path, "--at", "/sys/fs/cgroup"]):
        res = run(mnt, *args, "--", "stat", "-f", "-c", "%T", "/sys/fs/cgroup")
        assert res.returncode == 0 and res.stdout == "cgroup2fs\n", (args, res.stderr)
    res = run(mnt, mnt.path, "--at", "/sys/fs/cgroup", "--", "cat", "/proc/self/mounts")
    assert res.stdout == "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def _as(user: str) -> list[str]:
    import pwd

    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]


def test_nothing_is_granted_to_a_caller_the_mount_refuses(mnt: Mounted) -> None:
    """Without --allow-other FUSE refuses other users the whole mount: so does statfs."""
    res = run(mnt, mnt.path, "--", *_as("nobody"), "stat", "-f", "-c", "%T", mnt.cgroup)
    assert res.returncode == 1 and "Permission denied" in res.stderr


@pytest.mark.dmemfs_args("--allow-other")
def test_path_lookup_uses_the_callers_credentials(mnt: Mounted) -> None:
    private = os.path.join(mnt.cgroup, "private")
    os.mkdir(private)
    os.chmod(private, 0o700)
    target = os.path.join(private, "cgroup.procs")
    res = run(mnt, mnt.path, "--", *_as("nobody"), "stat", "-f", "-c", "%T", mnt.cgroup,
              target)
    assert res.stdout == "cgroup2fs\n"  # the root it may search, not the private one
    assert "Permission denied" in res.stderr
    res = run(mnt, mnt.path, "--", "stat", "-f", "-c", "%T", target)  # root may
    assert res.stdout == "cgroup2fs\n", res.stderr
    # Root without CAP_DAC_READ_SEARCH/CAP_DAC_OVERRIDE is refused too, as by the kernel.
    os.chown(private, 65534, 65534)
    res = run(mnt, mnt.path, "--", "setpriv", "--inh-caps=-all", "--bounding-set=-all",
              "stat", "-f", "-c", "%T", target)
    assert "Permission denied" in res.stderr, res.stdout


def test_device_programs_are_recorded_like_the_kernel_does(mnt: Mounted,
                                                           dmem_child: str) -> None:
    """The same sequence on the real cgroup2 (checked on Linux 6.18) prints the same."""
    actions = ["query", "attach", "query", "attach", "attach:none", "replace", "query",
               "detach", "query"]
    res = run(mnt, mnt.path, "--", sys.executable, BPF, dmem_child, *actions)
    assert res.stdout.splitlines() == [
        "query flags=0 count=0", "attach ok", "query flags=2 count=1", "attach ok",
        "attach Operation not permitted", "replace ok", "query flags=2 count=2", "detach ok",
        "query flags=2 count=1"], res.stderr
    # The attachment outlives the process that made it, as in the kernel, and is listed.
    view = Path(mnt.debug, "cgroup-bpf").read_text()
    assert re.fullmatch(r"/a device id=\d+ tag=[0-9a-f]{16} flags=multi\n", view), view
    # A program kept by the daemon can be found by id, as runc does before replacing it.
    res = run(mnt, mnt.path, "--", sys.executable, BPF, dmem_child, "query", "attach", "query")
    assert res.stdout.splitlines() == ["query flags=2 count=1", "attach ok",
                                       "query flags=2 count=2"], res.stderr
    # rmdir releases them.
    os.rmdir(dmem_child)
    assert Path(mnt.debug, "cgroup-bpf").read_text() == ""


def test_device_programs_elsewhere_go_to_the_kernel(mnt: Mounted) -> None:
    # A FUSE directory is no cgroup for the kernel (EBADF), without as-cgroup2 ...
    res = subprocess.run([sys.executable, BPF, mnt.cgroup, "attach"], capture_output=True,
                         text=True)
    assert res.stdout == "attach Bad file descriptor\n", res.stderr
    # ... and so are other directories under it.
    res = run(mnt, mnt.path, "--", sys.executable, BPF, "/tmp", "attach", "query")
    assert res.stdout == "attach Bad file descriptor\nquery Bad file descriptor\n"
    res = run(mnt, mnt.path, "--", sys.executable, BPF, mnt.dri, "attach")
    assert res.stdout == "attach Bad file descriptor\n"
    # Only a caller the kernel would let attach may: no CAP_NET_ADMIN, no attach.
    res = run(mnt, mnt.path, "--", "setpriv", "--inh-caps=-all", "--bounding-set=-net_admin,"
              "-sys_admin", sys.executable, BPF, mnt.cgroup, "attach")
    assert res.stdout == "attach Operation not permitted\n", res.stderr
    assert Path(mnt.debug, "cgroup-bpf").read_text() == ""


def _supervisor_pid(log: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = re.search(r"supervising .* \(pid (\d+)\)", log.read_text() if log.exists() else "")
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("no supervisor in " + log.read_text())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_supervisor_outlives_the_command_while_its_processes_run(
        mnt: Mounted, tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    out = tmp_path / "late"
    env = dict(os.environ, DMEMFS_SUPERVISOR_LOG=str(log))
    # CMD returns at once, leaving a process behind (as `runc run -d` leaves a container).
    script = (f"(sleep 1; stat -f -c %T {mnt.cgroup} > {out}) > /dev/null 2>&1 &")
    res = run(mnt, mnt.path, "--", "sh", "-c", script, env=env, timeout=10)
    assert res.returncode == 0, res.stderr
    pid = _supervisor_pid(log)
    assert _alive(pid)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.read_text() == "cgroup2fs\n"
    assert not _alive(pid), "the supervisor stayed after the last process"
    assert "no process left under the filter: exiting" in log.read_text()


def test_when_the_supervisor_dies_its_calls_fail_and_nothing_else(mnt: Mounted,
                                                                  tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    env = dict(os.environ, DMEMFS_SUPERVISOR_LOG=str(log))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmemfs", "as-cgroup2", mnt.path, "--", sys.executable, "-c",
         "import os, sys; sys.stdin.readline(); print(open(sys.argv[1]).read(), end='')\n"
         "try:\n    os.statvfs(sys.argv[1])\nexcept OSError as e:\n    print(e.strerror)\n",
         os.path.join(mnt.cgroup, "cgroup.controllers")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        os.kill(_supervisor_pid(log), signal.SIGKILL)
        out, _ = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
    assert out == "dmem\nFunction not implemented\n"  # ENOSYS, the kernel's answer


def test_a_new_cgroup2_mount_is_refused_other_mounts_are_not(mnt: Mounted,
                                                             tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    script = (f"mount -t cgroup2 none {target} 2>&1; echo cgroup2=$?; "
              f"mount --bind {mnt.cgroup} {target} && cat {target}/cgroup.controllers")
    res = run(mnt, mnt.path, "--", "unshare", "-m", "sh", "-c", script)
    lines = res.stdout.splitlines()
    assert lines[0] == f"mount: {target}: permission denied.", res.stdout
    assert lines[-2:] == ["cgroup2=32", "dmem"], res.stdout


def test_memlock_raise_beyond_the_hard_limit(mnt: Mounted) -> None:
    code = ("import resource as r\n"
            "soft, hard = r.getrlimit(r.RLIMIT_MEMLOCK)\n"
            "try:\n"
            "    r.setrlimit(r.RLIMIT_MEMLOCK, (r.RLIM_INFINITY, r.RLIM_INFINITY))\n"
            "    print('ok', r.getrlimit(r.RLIMIT_MEMLOCK) == (hard, hard))\n"
            "except (OSError, ValueError):\n"  # Python turns EPERM into ValueError
            "    print('refused raise')\n"
            "try:\n"
            "    r.setrlimit(r.RLIMIT_MEMLOCK, (hard, hard // 2))\n"  # soft above hard: EINVAL
            "except ValueError as e:\n"
            "    print('refused')\n")
    hard = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    res = run(mnt, mnt.path, "--", sys.executable, "-c", code)
    if hard.stdout.startswith("ok"):
        pytest.skip("this host lets the raise through (CAP_SYS_RESOURCE or no hard limit)")
    assert hard.stdout == "refused raise\nrefused\n"
    assert res.stdout == "ok True\nrefused\n", res.stderr
