"""Through a mount: cpu.stat from real CPU time, the pressure files, poll() on cgroup.events,
and the kernfs basics (root mode, link counts, listing order, times)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from dmemfs.engine.kernfs import listing_order
from dmemfs.testing import Mounted

#: Burns CPU for the number of seconds read from each stdin line, then answers "done".
_BURNER = (
    "import sys, time\n"
    "for line in sys.stdin:\n"
    "    end = time.process_time() + float(line)\n"
    "    while time.process_time() < end:\n"
    "        for _ in range(20000):\n"
    "            pass\n"
    "    print('done', flush=True)\n"
)


@contextlib.contextmanager
def _burner() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", _BURNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _burn(proc: subprocess.Popen[str], seconds: float) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{seconds}\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "done\n"


def _cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _cpu_stat(mnt: Mounted, rel: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in mnt.read(rel).splitlines())}


def _errno(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno


# -- cpu.stat --------------------------------------------------------------------------------


def test_cpu_stat_counts_member_time_since_joining(mnt: Mounted) -> None:
    os.makedirs(os.path.join(mnt.cgroup, "a", "b"))
    with _burner() as proc:
        _burn(proc, 0.2)  # in the root: not a's
        before = _cpu_seconds(proc.pid)
        mnt.write("a/b/cgroup.procs", str(proc.pid))
        assert _cpu_stat(mnt, "a/b/cpu.stat")["usage_usec"] < 20_000
        _burn(proc, 0.3)
        used = _cpu_seconds(proc.pid) - before
        b = _cpu_stat(mnt, "a/b/cpu.stat")
        assert abs(b["usage_usec"] / 1e6 - used) < 0.05, (b, used)
        # cputime_adjust() splits the exact runtime (each printed rounded down).
        assert 0 <= b["usage_usec"] - b["user_usec"] - b["system_usec"] <= 1
        assert b["user_usec"] > b["system_usec"]  # a busy loop in user space
        assert b["nice_usec"] == 0
        a = _cpu_stat(mnt, "a/cpu.stat")
        assert a["usage_usec"] >= b["usage_usec"]  # the parent includes its children
        proc.kill()
        proc.wait()
        # An exited member's time stays, as the kernel's rstat keeps it.
        after = _cpu_stat(mnt, "a/b/cpu.stat")["usage_usec"]
        assert after >= b["usage_usec"]
        assert abs(after / 1e6 - used) < 0.05
    os.rmdir(os.path.join(mnt.cgroup, "a", "b"))
    assert _cpu_stat(mnt, "a/cpu.stat")["usage_usec"] >= after  # folded into the parent


def test_cpu_stat_counts_children_forked_inside(mnt: Mounted) -> None:
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    burn = ("import time\nend = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\n")
    # The shell joins, its child burns and exits without dmemfs ever seeing it.
    script = f"echo $$ > {mnt.cgroup}/a/cgroup.procs && {sys.executable} -c '{burn}'; :"
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    deadline = time.monotonic() + 5
    while _cpu_stat(mnt, "a/cpu.stat")["usage_usec"] < 280_000:
        assert time.monotonic() < deadline, mnt.read("a/cpu.stat")
        time.sleep(0.05)


def test_root_cpu_stat_is_the_machine(mnt: Mounted) -> None:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline()
                                                             .split()[1:8])
    hz = os.sysconf("SC_CLK_TCK")
    root = _cpu_stat(mnt, "cpu.stat")
    assert abs(root["user_usec"] - (user + nice) * 1e6 / hz) < 5e6
    assert abs(root["system_usec"] - (system + irq + softirq) * 1e6 / hz) < 5e6
    assert root["usage_usec"] == root["user_usec"] + root["system_usec"]
    assert mnt.read("cpu.stat.local") == "" and mnt.read("cgroup.pressure") == "1\n"


# -- pressure ------------------------------------------------------------------------------


def test_pressure_files(mnt: Mounted) -> None:
    a = os.path.join(mnt.cgroup, "a")
    os.mkdir(a)
    for res in ("cpu", "io", "memory"):
        assert mnt.read(f"a/{res}.pressure") == (
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        if os.path.exists(f"/proc/pressure/{res}"):
            root = mnt.read(f"{res}.pressure").splitlines()
            with open(f"/proc/pressure/{res}") as f:
                host = f.read().splitlines()
            assert [line.split()[0] for line in root] == [line.split()[0] for line in host]
            root_total = int(root[0].rsplit("=", 1)[1])
            assert 0 <= int(host[0].rsplit("=", 1)[1]) - root_total < 60_000_000
    fd = os.open(os.path.join(a, "cpu.pressure"), os.O_RDWR)
    try:
        mnt.write("a/cgroup.pressure", "0")
        assert not [n for n in os.listdir(a) if n.endswith(".pressure") and n != "cgroup.pressure"]
        assert _errno(os.open, os.path.join(a, "io.pressure"), os.O_RDONLY) == errno.ENOENT
        assert _errno(os.mkdir, os.path.join(a, "io.pressure")) == errno.EEXIST
        assert _errno(os.pread, fd, 100, 0) == errno.ENODEV
        mnt.write("a/cgroup.pressure", "1")
        assert _errno(os.pread, fd, 100, 0) == errno.ENODEV  # dead for good
        assert "io.pressure" in os.listdir(a)
    finally:
        os.close(fd)
    fd = os.open(os.path.join(a, "memory.pressure"), os.O_RDWR)
    try:
        assert _errno(os.write, fd, b"some 150000 1000001") == errno.EINVAL
        assert os.write(fd, b"some 150000 2000000") == 19
        assert _errno(os.write, fd, b"some 150000 2000000") == errno.EBUSY
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        assert poller.poll(0) == []  # a trigger that has not fired
    finally:
        os.close(fd)


# -- poll() on cgroup.events --------------------------------------------------------------


def test_poll_wakes_up_when_the_last_member_exits(mnt: Mounted) -> None:
    a = os.path.join(mnt.cgroup, "a")
    os.mkdir(a)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        mnt.write("a/cgroup.procs", str(sleeper.pid))
        fd = os.open(os.path.join(a, "cgroup.events"), os.O_RDONLY)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            assert poller.poll(0) == [(fd, select.POLLPRI | select.POLLERR)]  # never read
            assert os.pread(fd, 100, 0) == b"populated 1\nfrozen 0\n"
            assert poller.poll(0) == []
            woken: list[list[tuple[int, int]]] = []
            waiter = threading.Thread(target=lambda: woken.append(poller.poll(10_000)))
            waiter.start()
            time.sleep(0.2)
            sleeper.kill()  # nobody reads anything: the exit itself must wake the poller
            waiter.join(15)
            assert woken == [[(fd, select.POLLPRI | select.POLLERR)]]
            assert os.pread(fd, 100, 0) == b"populated 0\nfrozen 0\n"
        finally:
            os.close(fd)
    finally:
        sleeper.kill()
        sleeper.wait()


# -- kernfs basics ---------------------------------------------------------------------------


def test_root_mode_link_counts_and_listing_order(mnt: Mounted) -> None:
    st = os.stat(mnt.cgroup)
    assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_nlink == 2
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    os.mkdir(os.path.join(mnt.cgroup, "b"))
    assert os.stat(mnt.cgroup).st_nlink == 4  # the kernel's cached attributes were dropped
    os.rmdir(os.path.join(mnt.cgroup, "b"))
    assert os.stat(mnt.cgroup).st_nlink == 3
    names = os.listdir(os.path.join(mnt.cgroup, "a"))
    assert names == listing_order(names) and "cgroup.stat.local" in names


def test_explicit_times_are_kept(mnt: Mounted) -> None:
    a = os.path.join(mnt.cgroup, "a")
    os.mkdir(a)
    procs = os.path.join(a, "cgroup.procs")
    os.utime(procs, (1000, 2000))
    st = os.stat(procs)
    assert (st.st_atime, st.st_mtime) == (1000, 2000)
    assert abs(st.st_ctime - time.time()) < 60
    subprocess.run(["touch", "-d", "2001-02-03 04:05:06 UTC", a], check=True)
    assert os.stat(a).st_mtime == 981173106
    os.mkdir(os.path.join(a, "b"))  # a child changes the mtime of a directory with times
    assert abs(os.stat(a).st_mtime - time.time()) < 60
