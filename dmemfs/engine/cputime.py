"""CPU time of cgroups: the base stats of kernel/cgroup/rstat.c and ``cputime_adjust()``.

The kernel charges every task's CPU time to the cgroup the task is in while it runs:
``sum_exec_runtime`` exactly, user/system/nice time per tick. A cgroup's ``cpu.stat`` shows the
sum over its subtree, with user and system time scaled so that they add up to the exact
runtime (``cputime_adjust()`` in kernel/sched/cputime.c, kept monotonic per cgroup). The root
shows the whole machine's figures instead (``root_cgroup_cputime()``).

Here a process's cumulative times come from a :class:`CpuSource` (the host layer: taskstats);
a cgroup keeps what its former members and removed children used, and each current member
counts from the moment it joined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

NSEC_PER_USEC = 1000


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative CPU time in nanoseconds: exact runtime, and user/system/nice time."""

    rtime: int = 0
    utime: int = 0
    stime: int = 0
    ntime: int = 0

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.rtime + other.rtime, self.utime + other.utime,
                        self.stime + other.stime, self.ntime + other.ntime)

    def since(self, base: CpuTimes) -> CpuTimes:
        """What was used since ``base`` (never negative)."""
        return CpuTimes(max(0, self.rtime - base.rtime), max(0, self.utime - base.utime),
                        max(0, self.stime - base.stime), max(0, self.ntime - base.ntime))


ZERO = CpuTimes()


class CpuSource(Protocol):
    """Where CPU times come from (the host layer implements it)."""

    def sample(self, pid: int) -> CpuTimes | None:
        """The cumulative times of a process: now, or at its exit if it exited; None if
        unknown."""
        ...

    def watch(self, pid: int) -> None:
        """``pid`` is a member of a non-root cgroup: keep its exit figures until released."""
        ...

    def release(self, pid: int) -> None:
        """``pid`` left its cgroup (or exited and was forgotten)."""
        ...

    def system(self) -> CpuTimes:
        """The whole machine's times (the root cgroup's ``cpu.stat``)."""
        ...

    def flush(self) -> None:
        """Account what happened meanwhile (e.g. exits of processes never tracked); called
        before a cgroup's figures are summed, never in the middle of a change."""
        ...


class NoCpuSource:
    """No CPU accounting: every figure is zero."""

    def sample(self, pid: int) -> CpuTimes | None:
        return None

    def watch(self, pid: int) -> None:
        pass

    def release(self, pid: int) -> None:
        pass

    def system(self) -> CpuTimes:
        return ZERO

    def flush(self) -> None:
        pass


class PrevCputime:
    """``struct prev_cputime``: the last user/system split shown, to keep both monotonic."""

    __slots__ = ("stime", "utime")

    def __init__(self) -> None:
        self.utime = 0
        self.stime = 0


def cputime_adjust(curr: CpuTimes, prev: PrevCputime) -> tuple[int, int]:
    """Split the exact runtime ``curr.rtime`` into user and system time in the ratio of the
    sampled ``curr.utime``/``curr.stime``, never going back from ``prev``; returns
    (utime, stime) and updates ``prev``."""
    rtime = curr.rtime
    if prev.stime + prev.utime >= rtime:
        return prev.utime, prev.stime
    stime, utime = curr.stime, curr.utime
    if stime == 0:
        utime = rtime
    elif utime == 0:
        stime = rtime
    else:
        stime = min(stime * rtime // (stime + utime), rtime)
    stime = max(stime, prev.stime)
    utime = rtime - stime
    if utime < prev.utime:
        utime = prev.utime
        stime = rtime - utime
    prev.utime, prev.stime = utime, stime
    return utime, stime


def format_cpu_stat(usage: int, utime: int, stime: int, ntime: int) -> str:
    """The base lines of ``cpu.stat`` (``cgroup_base_stat_cputime_show()``), in microseconds."""
    return (f"usage_usec {usage // NSEC_PER_USEC}\n"
            f"user_usec {utime // NSEC_PER_USEC}\n"
            f"system_usec {stime // NSEC_PER_USEC}\n"
            f"nice_usec {ntime // NSEC_PER_USEC}\n")
