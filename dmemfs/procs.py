"""Host processes: the only module that reads ``/proc`` or sends signals.

Maps real processes onto the engine's abstract members: thread id → thread group, unknown
processes resolved through their parent chain (a process forked after its parent joined a
cgroup belongs to that cgroup), start times against PID reuse, dead processes pruned.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import psutil

from dmemfs.engine.cgroup import Cgroup, CgroupTree, Creds
from dmemfs.errors import NoProcess

log = logging.getLogger(__name__)

#: /proc start times have clock-tick resolution (10 ms): a child forked within this window of
#: its parent's migration counts as forked after it.
FORK_SLACK = 0.05
#: Migrations remembered per process, to place children forked before the latest one.
HISTORY = 8


def tgid_of(tid: int) -> int:
    """The thread group (process) of a thread id; ESRCH when no such thread exists."""
    if tid <= 0:
        raise NoProcess(f"no process {tid}")
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    raise NoProcess(f"no process {tid}")


def supplementary_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return frozenset()


def creds_of(pid: int, uid: int, gid: int) -> Creds:
    return Creds(uid, gid, supplementary_groups(pid))


def _now() -> float:
    """Now, on the clock psutil's ``create_time()`` uses (boot time + time since boot)."""
    return float(psutil.boot_time()) + time.clock_gettime(time.CLOCK_BOOTTIME)


def _start_time(pid: int) -> float | None:
    """Start time of a live (non-zombie) process, or None."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return float(p.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class HostProcesses:
    """The engine's view of host processes (implements the engine's ``Host`` protocol)."""

    def __init__(self, tree: CgroupTree) -> None:
        self.tree = tree
        self.self_pid = os.getpid()
        self._start: dict[int, float] = {}
        self._history: dict[int, list[tuple[float, Cgroup]]] = {}
        tree.host = self
        tree.on_migrate = self._migrated

    # -- Host protocol ---------------------------------------------------------------------

    def all_pids(self) -> list[int]:
        return [p for p in psutil.pids() if _start_time(p) is not None]

    def threads(self, pid: int) -> list[int]:
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except (FileNotFoundError, ProcessLookupError):
            return []
        if pid in tids:
            tids.remove(pid)
            tids.insert(0, pid)
        return tids

    # -- resolution -------------------------------------------------------------------------

    def resolve(self, pid_or_tid: int) -> int:
        """The thread group of ``pid_or_tid``, known to the engine afterwards (ESRCH if none)."""
        tgid = tgid_of(pid_or_tid)
        self.ensure_known(tgid)
        return tgid

    def cgroup_of(self, pid_or_tid: int) -> Cgroup:
        return self.tree.cgroup_of(self.resolve(pid_or_tid))

    def ensure_known(self, tgid: int) -> None:
        start = _start_time(tgid)
        if start is None:
            self._drop(tgid)
            raise NoProcess(f"no process {tgid}")
        if self.tree.knows(tgid) and self._start.get(tgid) == start:
            return
        self._drop(tgid)  # unknown, or a new process that reuses the id of a dead one
        cgroup = self._inherited(tgid, start)
        self._start[tgid] = start
        self._history[tgid] = [(start, cgroup)]
        self.tree.adopt(tgid, cgroup)

    def _inherited(self, pid: int, start: float) -> Cgroup:
        """The cgroup ``pid`` was forked into: its parent's cgroup at ``start``."""
        try:
            ppid = psutil.Process(pid).ppid()
        except psutil.Error:
            return self.tree.root
        if ppid <= 0:
            return self.tree.root
        try:
            self.ensure_known(ppid)
        except NoProcess:
            return self.tree.root
        return self._cgroup_at(ppid, start)

    def _cgroup_at(self, pid: int, when: float) -> Cgroup:
        history = self._history.get(pid) or [(0.0, self.tree.cgroup_of(pid))]
        cgroup = history[0][1]
        for t, cg in history:
            if t <= when + FORK_SLACK:
                cgroup = cg
        while cgroup.dying and cgroup.parent is not None:
            cgroup = cgroup.parent
        return cgroup

    def _migrated(self, pid: int, cgroup: Cgroup) -> None:
        history = self._history.setdefault(pid, [])
        history.append((_now(), cgroup))
        del history[:-HISTORY]

    def _drop(self, pid: int) -> None:
        self.tree.forget(pid)
        self._start.pop(pid, None)
        self._history.pop(pid, None)

    # -- liveness and signals ----------------------------------------------------------------

    def prune(self, cgroup: Cgroup) -> None:
        """Forget member processes of ``cgroup``'s subtree that exited (or were reaped)."""
        for c in cgroup.walk():
            for pid in list(c.procs):
                start = self._start.get(pid)
                if start is None or _start_time(pid) != start:
                    self._drop(pid)

    def refresh(self) -> None:
        """Learn processes created since the last look and forget those that vanished.

        Costs one listing of /proc plus a parent-chain resolution per new process; start
        times of known members are checked by :meth:`prune` where it matters.
        """
        live = set(psutil.pids())
        for pid in [p for p in self.tree.members if p not in live]:
            self._drop(pid)
        for pid in sorted(live.difference(self.tree.members)):
            try:
                self.ensure_known(pid)
            except NoProcess:
                pass

    def kill(self, pids: list[int]) -> None:
        for pid in pids:
            if pid == self.self_pid:
                log.warning("cgroup.kill: not killing the dmemfs daemon itself (pid %d)", pid)
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:
                log.warning("cgroup.kill: no permission to kill pid %d", pid)
