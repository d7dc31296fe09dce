"""The host side of cpu.stat: taskstats queries and exit records, and the /proc fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from dmemfs.cputime import HostCpu, Taskstats, _proc_record, read_pressure, system_cputime
from dmemfs.engine.cgroup import Cgroup, CgroupTree
from dmemfs.profile import LATEST

BURN = "import time\nend = time.process_time() + {}\nwhile time.process_time() < end: pass\n"


def _taskstats_or_skip() -> Taskstats:
    try:
        ts = Taskstats()
        ts.query_tgid(os.getpid())
    except OSError as e:
        pytest.skip(f"no taskstats here: {e}")
    return ts


def test_query_matches_the_process_own_cpu_time() -> None:
    ts = _taskstats_or_skip()
    try:
        end = time.process_time() + 0.1
        while time.process_time() < end:
            pass
        record = ts.query_tgid(os.getpid())
        assert record is not None
        own = psutil.Process().cpu_times()
        assert abs(record.rtime / 1e9 - (own.user + own.system)) < 0.05
        assert record.utime > 0
        assert ts.query_tgid(4 * 1024 * 1024) is None  # no such process
    finally:
        ts.close()


def test_exit_records_give_the_final_figures_of_watched_processes() -> None:
    tree = CgroupTree(LATEST)
    cpu = HostCpu(tree, lambda pid: None)
    cpu.start()
    if not cpu.listening:
        pytest.skip("cannot listen to taskstats exit records (CAP_NET_ADMIN)")
    try:
        proc = subprocess.Popen([sys.executable, "-c", BURN.format(0.2) + "input()\n"],
                                stdin=subprocess.PIPE)
        cpu.watch(proc.pid)
        time.sleep(0.05)
        live = cpu.sample(proc.pid)
        assert live is not None
        assert proc.stdin is not None
        proc.stdin.close()  # input() returns: the process exits
        proc.wait()
        final = cpu.sample(proc.pid)  # gone: its exit record answers
        assert final is not None and final.rtime >= live.rtime
        assert 0.15 < final.rtime / 1e9 < 1.0
        cpu.release(proc.pid)
        assert cpu.sample(proc.pid) is None
    finally:
        cpu.close()


@pytest.mark.parametrize("parent_known", [True, False])
def test_exits_of_processes_never_seen_are_charged_to_their_parent_cgroup(
    parent_known: bool,
) -> None:
    tree = CgroupTree(LATEST)
    a = tree.mkdir(tree.root, "a")
    if parent_known:
        tree.migrate(os.getpid(), a)  # this process is a's member
    else:
        tree.migrate(4 * 1024 * 1024, tree.mkdir(tree.root, "b"))  # someone somewhere
    located: list[int] = []

    def locate(pid: int) -> Cgroup | None:
        located.append(pid)
        return a

    cpu = HostCpu(tree, locate)
    cpu.start()
    if not cpu.listening:
        pytest.skip("cannot listen to taskstats exit records (CAP_NET_ADMIN)")
    try:
        subprocess.run([sys.executable, "-c", BURN.format(0.2)], check=True)
        deadline = time.monotonic() + 5
        while a.cpu_acc.rtime < 150_000_000:
            assert time.monotonic() < deadline, a.cpu_acc
            cpu.flush()
            time.sleep(0.02)
        # A known parent's cgroup is taken when the record arrives (the parent may be gone
        # by the time it is charged); an unknown one is located then.
        assert (os.getpid() in located) is not parent_known
    finally:
        cpu.close()


def test_without_taskstats_figures_come_from_proc() -> None:
    cpu = HostCpu(CgroupTree(LATEST), lambda pid: None)  # not started: no taskstats
    record = _proc_record(os.getpid())
    assert record is not None and record.rtime == record.utime + record.stime
    sample = cpu.sample(os.getpid())
    assert sample is not None and sample.rtime >= record.rtime
    assert _proc_record(4 * 1024 * 1024) is None


def test_machine_figures() -> None:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    t = system_cputime()
    hz = os.sysconf("SC_CLK_TCK")
    assert t.rtime == t.utime + t.stime
    assert abs(t.utime - (fields[0] + fields[1]) * 1e9 / hz) < 5e9
    assert t.ntime == fields[1] * 1_000_000_000 // hz
    if os.path.exists("/proc/pressure/cpu"):
        text = read_pressure("cpu")
        assert text is not None and text.startswith("some avg10=")
    assert read_pressure("nosuch") is None
