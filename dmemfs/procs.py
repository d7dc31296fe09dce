"""Host processes: the only module that reads ``/proc`` or sends signals.

Maps real processes onto the engine's abstract members: thread id → thread group, and where
each process is. Two ways to know where a new process is:

- **fork events** (dmemfs/lineage.py, as root where tracefs can be used): a child is placed in
  the cgroup its *forking* task was in at the fork's time, as the kernel does, and a process
  is forgotten when its last thread exits. Nothing is rescanned.
- **the /proc parent chain** (the fallback): an unknown process is placed in the cgroup its
  current parent was in when it started, start times guard against PID reuse, and /proc is
  listed again to learn about new and dead processes. This gets wrong what /proc cannot
  show: a process whose parent exited (a double fork reparents it to init or a subreaper) is
  placed by its new parent, so it can leave a limited cgroup; a child cloned with
  ``CLONE_PARENT`` (runc's container init) is placed with its forker's parent; a process is
  only placed when dmemfs first looks at it, so one that moved in and out between two looks
  is placed by where its parent is then.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time

import psutil

from dmemfs.engine.cgroup import Cgroup, CgroupTree, Creds
from dmemfs.errors import NoProcess
from dmemfs.lineage import Exit, Fork, TraceLineage

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


def process_creds(tid: int) -> Creds | None:
    """The credentials a thread acts with (its file-system uid and gid, as permission checks
    use, and supplementary groups), or None if it is gone."""
    uid = gid = caps = None
    groups: frozenset[int] = frozenset()
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    uid = int(line.split()[4])  # real, effective, saved, file system
                elif line.startswith(b"Gid:"):
                    gid = int(line.split()[4])
                elif line.startswith(b"Groups:"):
                    groups = frozenset(int(g) for g in line.split()[1:])
                elif line.startswith(b"CapEff:"):
                    caps = int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    if uid is None or gid is None:
        return None
    return Creds(uid, gid, groups, caps)


def creds_of(pid: int, uid: int, gid: int) -> Creds:
    return Creds(uid, gid, supplementary_groups(pid), capabilities(pid))


def capabilities(pid: int) -> int | None:
    """The effective capability set of a process (``CapEff:``), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return None


#: ``PF_NO_SETAFFINITY`` (include/linux/sched.h): a kernel thread bound to its CPUs.
PF_NO_SETAFFINITY = 0x04000000


def no_setaffinity(pid: int) -> bool:
    """A task the kernel refuses to move between cgroups (``cgroup_procs_write_start()``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            flags = int(f.read().rpartition(b")")[2].split()[6])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return False
    return bool(flags & PF_NO_SETAFFINITY)


def zombie_tgid(tid: int) -> int | None:
    """The thread group of ``tid`` if it is a process that exited and was not reaped yet."""
    if tid <= 0:
        return None
    try:
        with open(f"/proc/{tid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return tgid_of(tid) if state == b"Z" else None


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

    def __init__(self, tree: CgroupTree, lineage: TraceLineage | None = None) -> None:
        self.tree = tree
        self.self_pid = os.getpid()
        self._start: dict[int, float] = {}
        self._history: dict[int, list[tuple[float, Cgroup]]] = {}
        tree.host = self
        tree.on_migrate = self._migrated
        #: Fork and exit events (None: the /proc fallback).
        self.lineage = lineage
        #: With events: every live process, and the process of each thread created since.
        self._live: set[int] = set()
        self._thread_of: dict[int, int] = {}
        #: With events: a token per live process, new for each process that reuses an id.
        self._born: dict[int, int] = {}
        self._births = itertools.count(1)
        #: The mount point (holders of an open file are found under it).
        self.mountpoint = "/"
        if lineage is not None:
            self._rescan()

    @property
    def mode(self) -> str:
        return "fork events" if self.lineage is not None else "/proc parent chain"

    # -- Host protocol ---------------------------------------------------------------------

    def all_pids(self) -> list[int]:
        if self.lineage is not None:
            self.sync()
            return sorted(self._live)
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
        if self.lineage is not None:
            self.sync()
            tgid = self._thread_of.get(pid_or_tid) or tgid_of(pid_or_tid)
            if tgid not in self._live:
                raise NoProcess(f"no process {pid_or_tid}")
            return tgid
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
            if t <= when + (0.0 if self.lineage is not None else FORK_SLACK):
                cgroup = cg
        while cgroup.dying and cgroup.parent is not None:
            cgroup = cgroup.parent
        return cgroup

    def _migrated(self, pid: int, cgroup: Cgroup) -> None:
        history = self._history.setdefault(pid, [])
        history.append((time.monotonic() if self.lineage is not None else _now(), cgroup))
        del history[:-HISTORY]

    # -- fork and exit events ----------------------------------------------------------------

    def sync(self) -> None:
        """Apply the fork and exit events recorded since the last call (cheap when none)."""
        assert self.lineage is not None
        for event in self.lineage.read():
            if isinstance(event, Fork):
                self._forked(event)
            elif isinstance(event, Exit):
                self._exited(event)
            else:
                log.warning("fork/exit events were lost (a busy host outran the trace "
                            "buffer); new processes are placed by their /proc parent this once")
                self._rescan()

    def _forked(self, e: Fork) -> None:
        forker = self._thread_of.get(e.forker_tid, e.forker)
        if e.thread:
            self._thread_of[e.child] = forker
            return
        self._drop(e.child)  # a reused id: the old process is gone
        self._live.add(e.child)
        self._born[e.child] = next(self._births)
        if forker not in self._live:
            self._live.add(forker)
            self._born[forker] = next(self._births)
        cgroup = self._cgroup_at(forker, e.when / 1e9)
        if cgroup is not self.tree.root:
            self.tree.adopt(e.child, cgroup)

    def _exited(self, e: Exit) -> None:
        tgid = self._thread_of.pop(e.tid, 0) or e.tgid or e.tid
        if e.group_dead:
            self._live.discard(tgid)
            self._born.pop(tgid, None)
            self._drop(tgid)

    def _rescan(self) -> None:
        """Learn the live processes from /proc: at start, and after events were lost."""
        live = {p for p in psutil.pids() if _start_time(p) is not None}
        for pid in [p for p in self.tree.members if p not in live]:
            self._drop(pid)
        new = live - self._live
        self._live = live
        self._born = {p: self._born.get(p) or next(self._births) for p in live}
        self._thread_of = {t: p for t, p in self._thread_of.items() if p in live}
        if self.tree.members:  # processes were placed: a new one may descend from them
            for pid in sorted(new):
                with contextlib.suppress(NoProcess):
                    self.tree.adopt(pid, self._parent_chain(pid))

    def _parent_chain(self, pid: int) -> Cgroup:
        try:
            ppid = psutil.Process(pid).ppid()
        except psutil.Error:
            return self.tree.root
        return self.tree.cgroup_of(ppid) if ppid > 0 else self.tree.root

    def _drop(self, pid: int) -> None:
        self.tree.forget(pid)
        self._start.pop(pid, None)
        self._history.pop(pid, None)

    # -- who holds an open file ------------------------------------------------------------

    def birth(self, tgid: int) -> float | None:
        """A token that changes when ``tgid`` exits or its id is reused (None: not alive)."""
        if self.lineage is not None:
            self.sync()
            return self._born.get(tgid)
        return _start_time(tgid)

    def holder(self, ino: int, pos: int, hint: tuple[int, int] | None
               ) -> tuple[int, int] | None:
        """A live process holding an open file of inode ``ino`` of this mount at file
        position ``pos`` (from ``/proc/PID/fdinfo``): ``(pid, fd)``, ``hint`` first.

        A shared open file has one position, so among the files of that inode this picks
        the right one unless two are at the same position; among several processes sharing
        it, the one with the lowest pid.
        """
        if hint is not None and self._holds(*hint, ino, pos):
            return hint
        pids = sorted(self._live) if self.lineage is not None else psutil.pids()
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                if self._holds(pid, int(fd), ino, pos):
                    return pid, int(fd)
        return None

    def open_file(self, pid: int, fd: int) -> str | None:
        """The path inside this mount of the file process ``pid`` holds open as ``fd``
        (``/proc/PID/fd``; no request to the mount is made), or None."""
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return None
        prefix = self.mountpoint + "/"
        return target[len(prefix):] if target.startswith(prefix) else None

    def _holds(self, pid: int, fd: int, ino: int, pos: int) -> bool:
        try:
            if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(self.mountpoint + "/"):
                return False
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                info = dict(line.split(b":", 1) for line in f.read().splitlines()
                            if b":" in line)
            return (int(info.get(b"ino", b"-1")) == ino
                    and int(info.get(b"pos", b"-1")) == pos
                    and _start_time(pid) is not None)
        except (OSError, ValueError):
            return False

    # -- liveness and signals ----------------------------------------------------------------

    def prune(self, cgroup: Cgroup) -> None:
        """Forget member processes of ``cgroup``'s subtree that exited (or were reaped), and
        learn those forked into it (see :meth:`refresh`)."""
        if self.lineage is not None:
            self.sync()
            return
        self.refresh()
        for c in cgroup.walk():
            for pid in list(c.procs):
                start = self._start.get(pid)
                if start is None or _start_time(pid) != start:
                    self._drop(pid)

    def refresh(self) -> None:
        """Learn processes created since the last look and forget those that vanished.

        Costs one listing of /proc plus a parent-chain resolution per new process; start
        times of known members are checked by :meth:`prune` where it matters. With fork
        events, only the events since the last look are applied.
        """
        if self.lineage is not None:
            self.sync()
            return
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
