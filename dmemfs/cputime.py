"""CPU times of host processes and of the machine, for ``cpu.stat`` (the engine's CpuSource).

A process's times come from the kernel's taskstats interface (generic netlink, "TASKSTATS",
kernel/taskstats.c): a ``TASKSTATS_CMD_ATTR_TGID`` query gives the thread group's exact
runtime (``cpu_run_virtual_total``: the sum of ``sum_exec_runtime`` of its threads, the exited
ones included) and its user and system time. When a process exits the kernel sends the same
figures, final, to every listener registered for the CPU it exits on: the record flagged
``AGROUP`` is the group's last task, and a group that ever had several threads comes with a
per-group aggregate. Those exit records make the time of members that exited exact.

Taskstats needs CAP_NET_ADMIN. Without it the figures of live members come from
/proc/PID/stat (user and system time in 10 ms ticks, their sum standing for the runtime), and
a member that exits counts up to the last time it was sampled.

The machine's figures (the root cgroup) come from the first line of /proc/stat, like
``root_cgroup_cputime()``: user = user + nice, system = system + irq + softirq, in USER_HZ
ticks (10 ms).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import trio

from dmemfs.engine.cgroup import Cgroup, CgroupTree
from dmemfs.engine.cputime import CpuTimes

log = logging.getLogger(__name__)

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3

TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_TGID = 2
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
TASKSTATS_TYPE_AGGR_TGID = 5
TASKSTATS_CMD_ATTR_TGID = 2
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
#: ``ac_flag`` bit of the last task of a thread group (include/uapi/linux/acct.h).
AGROUP = 0x20
SO_RCVBUFFORCE = 33

#: Offsets in ``struct taskstats`` (include/uapi/linux/taskstats.h, 64-bit alignment).
_OFF_FLAG, _OFF_NICE = 8, 9
_OFF_RUN_VIRTUAL = 72
_OFF_PPID = 132
_OFF_UTIME, _OFF_STIME = 152, 160
_OFF_TGID = 368

_HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """The figures of one taskstats record (nanoseconds)."""

    rtime: int
    utime: int
    stime: int
    nice: int
    flag: int
    ppid: int
    tgid: int | None

    @classmethod
    def decode(cls, raw: bytes) -> TaskRecord:
        (rtime,) = struct.unpack_from("Q", raw, _OFF_RUN_VIRTUAL)
        utime, stime = struct.unpack_from("QQ", raw, _OFF_UTIME)
        (ppid,) = struct.unpack_from("I", raw, _OFF_PPID)
        tgid = struct.unpack_from("I", raw, _OFF_TGID)[0] if len(raw) >= _OFF_TGID + 4 else None
        return cls(rtime, utime * 1000, stime * 1000, struct.unpack_from("b", raw, _OFF_NICE)[0],
                   raw[_OFF_FLAG], ppid, tgid)


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, i)
        if length < 4:
            break
        out.append((kind & 0x3FFF, data[i + 4:i + length]))
        i += (length + 3) & ~3
    return out


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, i)
        if length < 16:
            break
        out.append((kind, data[i + 16:i + length]))
        i += (length + 3) & ~3
    return out


def _netlink() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_GENERIC)
    sock.bind((0, 0))
    return sock


class Taskstats:
    """Generic-netlink sockets speaking the TASKSTATS family: one for queries, one (once
    listening) that receives exit records."""

    def __init__(self) -> None:
        self.sock = _netlink()
        self.events: socket.socket | None = None
        self._seq = 0
        reply = self._request(self.sock, GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                              _attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"))
        ids = [struct.unpack_from("H", v)[0] for k, v in _attrs(reply[4:])
               if k == CTRL_ATTR_FAMILY_ID]
        if not ids:
            self.close()
            raise OSError(errno.ENOENT, "no TASKSTATS netlink family")
        self.family = ids[0]

    def close(self) -> None:
        self.sock.close()
        if self.events is not None:
            self.events.close()

    def _request(self, sock: socket.socket, family: int, cmd: int, payload: bytes,
                 flags: int = 0) -> bytes:
        """Send a request and return the reply's payload (raises OSError for an error)."""
        self._seq += 1
        seq = self._seq
        body = struct.pack("BBH", cmd, 1, 0) + payload
        sock.send(struct.pack("IHHII", 16 + len(body), family, NLM_F_REQUEST | flags, seq, 0)
                  + body)
        while True:
            data = sock.recv(65536)
            for kind, body in _messages(data):
                (rseq,) = struct.unpack_from("I", data, 8)
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("i", body)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return b""
                return body

    def query_tgid(self, tgid: int) -> TaskRecord | None:
        """The thread group's figures now; None if there is no such process."""
        try:
            reply = self._request(self.sock, self.family, TASKSTATS_CMD_GET,
                                  _attr(TASKSTATS_CMD_ATTR_TGID, struct.pack("I", tgid)))
        except OSError as e:
            if e.errno in (errno.ESRCH, errno.EINVAL):
                return None
            raise
        for kind, value in _attrs(reply[4:]):
            if kind == TASKSTATS_TYPE_AGGR_TGID:
                for k, v in _attrs(value):
                    if k == TASKSTATS_TYPE_STATS:
                        return TaskRecord.decode(v)
        return None

    def listen(self) -> None:
        """Receive an exit record for every task that exits on any CPU (CAP_NET_ADMIN), on a
        socket of its own (a query's reply must not be mistaken for a record, or eat one)."""
        events = _netlink()
        try:
            events.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        except OSError:
            events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        try:
            self._request(events, self.family, TASKSTATS_CMD_GET, _attr(
                TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, _possible_cpus().encode() + b"\0"),
                NLM_F_ACK)
        except OSError:
            events.close()
            raise
        self.events = events

    def exits(self) -> list[tuple[int, TaskRecord]]:
        """Exit records received so far, without waiting: (tgid, final figures) of every
        thread group whose last task exited."""
        out: list[tuple[int, TaskRecord]] = []
        if self.events is None:
            return out
        while True:
            try:
                data = self.events.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    log.warning("taskstats: exit records were lost (receive buffer full)")
                    continue
                raise
            for kind, body in _messages(data):
                if kind == self.family and body[:1] == bytes([TASKSTATS_CMD_NEW]):
                    record = _group_exit(body[4:])
                    if record is not None:
                        out.append(record)


def _possible_cpus() -> str:
    """The CPU list the kernel accepts for a listener: every possible CPU."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            return f.read().strip()
    except OSError:
        return f"0-{(os.cpu_count() or 1) - 1}"


def _group_exit(payload: bytes) -> tuple[int, TaskRecord] | None:
    task: tuple[int, TaskRecord] | None = None
    group: tuple[int, TaskRecord] | None = None
    for kind, value in _attrs(payload):
        ident, record = 0, None
        for k, v in _attrs(value):
            if k in (TASKSTATS_TYPE_PID, TASKSTATS_TYPE_TGID):
                (ident,) = struct.unpack_from("I", v)
            elif k == TASKSTATS_TYPE_STATS:
                record = TaskRecord.decode(v)
        if record is None:
            continue
        if kind == TASKSTATS_TYPE_AGGR_PID:
            task = (ident, record)
        elif kind == TASKSTATS_TYPE_AGGR_TGID:
            group = (ident, record)
    if task is None or not task[1].flag & AGROUP:
        return None  # a thread exited, its process lives on
    tid, record = task
    if group is not None:  # the group's sum; the last task's record knows the parent
        return group[0], TaskRecord(group[1].rtime, group[1].utime, group[1].stime,
                                    record.nice, record.flag, record.ppid, group[0])
    return (record.tgid or tid), record


def _proc_record(pid: int) -> TaskRecord | None:
    """A process's user and system time from /proc/PID/stat (ticks), None if it is gone or a
    zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if fields[0] == b"Z":
        return None
    tick = 1_000_000_000 // _HZ
    utime, stime = int(fields[11]) * tick, int(fields[12]) * tick
    return TaskRecord(utime + stime, utime, stime, int(fields[16]), 0, int(fields[1]), pid)


def system_cputime() -> CpuTimes:
    """The machine's CPU time since boot (/proc/stat), as the root cgroup shows it."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return CpuTimes()
    user, nice, system, _idle, _iowait, irq, softirq = fields
    tick = 1_000_000_000 // _HZ
    utime, stime = (user + nice) * tick, (system + irq + softirq) * tick
    return CpuTimes(utime + stime, utime, stime, nice * tick)


class HostCpu:
    """The engine's CpuSource for host processes (see the module's docstring)."""

    def __init__(self, tree: CgroupTree, locate: Callable[[int], Cgroup | None]) -> None:
        self.tree = tree
        #: The cgroup a live process is in (resolving it if needed), for exits of processes
        #: dmemfs never saw: their parent's.
        self.locate = locate
        self._watched: set[int] = set()
        self._last: dict[int, CpuTimes] = {}
        self._finals: dict[int, CpuTimes] = {}
        #: Exits of processes dmemfs never saw: (parent's cgroup, or the parent to locate;
        #: figures), charged by flush().
        self._orphans: list[tuple[Cgroup | int, CpuTimes]] = []
        #: Watched processes whose exit record arrived, and who to tell (see run()).
        self._exited: list[int] = []
        self._exits_pending = trio.Event()
        self.on_exit: Callable[[list[int]], None] = lambda pids: None
        self.ts: Taskstats | None = None
        self.listening = False

    def start(self) -> None:
        """Open the taskstats socket and listen to exits (until then, and without taskstats,
        figures come from /proc)."""
        try:
            self.ts = Taskstats()
            self.ts.query_tgid(os.getpid())
            self.ts.listen()
            self.listening = True
        except OSError as e:
            log.info("cpu.stat: no taskstats (%s): CPU times from /proc/PID/stat", e)
            self.close()

    def close(self) -> None:
        if self.ts is not None:
            self.ts.close()
            self.ts = None
            self.listening = False

    # -- CpuSource ----------------------------------------------------------------------------

    def system(self) -> CpuTimes:
        return system_cputime()

    def watch(self, pid: int) -> None:
        self._watched.add(pid)

    def release(self, pid: int) -> None:
        self._watched.discard(pid)
        self._last.pop(pid, None)
        self._finals.pop(pid, None)

    def sample(self, pid: int) -> CpuTimes | None:
        final = self._finals.get(pid)
        if final is not None:
            return final
        if self.ts is None:
            record = _proc_record(pid)
        else:
            try:
                record = self.ts.query_tgid(pid)
            except OSError as e:
                log.warning("taskstats query of %d failed: %s", pid, e)
                record = None
        last = self._last.get(pid)
        if record is None or (last is not None and record.rtime < last.rtime):
            # Gone, or a zombie whose live threads no longer count: its exit record (already
            # queued, the kernel sends it before the task becomes a zombie) has the figures.
            self.drain()
            return self._finals.get(pid, last)
        times = self._times(pid, record)
        if pid in self._watched:
            self._last[pid] = times
        return times

    def _times(self, pid: int, record: TaskRecord) -> CpuTimes:
        """A record as CpuTimes; user time while the process is niced counts as nice time
        (the kernel sorts each tick by the task's nice value then)."""
        last = self._last.get(pid)
        ntime = last.ntime if last is not None else 0
        if record.nice > 0:
            ntime += max(0, record.utime - (last.utime if last is not None else 0))
        return CpuTimes(record.rtime, record.utime, record.stime, ntime)

    # -- exit records -------------------------------------------------------------------------

    def drain(self) -> None:
        """Take in the exit records received so far (changes no cgroup: safe in the middle of
        an engine operation)."""
        if not self.listening or self.ts is None:
            return
        for tgid, record in self.ts.exits():
            if tgid in self._watched:
                self._finals[tgid] = self._times(tgid, record)
                self._exited.append(tgid)
                self._exits_pending.set()
            elif (record.ppid > 0 and not self.tree.knows(tgid)
                  and any(c.nr_populated for c in self.tree.root.children.values())):
                # A known parent's cgroup now: it may exit before flush() runs.
                parent: Cgroup | int = (self.tree.cgroup_of(record.ppid)
                                        if self.tree.knows(record.ppid) else record.ppid)
                self._orphans.append((parent, self._times(tgid, record)))

    def flush(self) -> None:
        """Charge the exits of processes dmemfs never saw to their parent's cgroup."""
        self.drain()
        orphans, self._orphans = self._orphans, []
        for parent, times in orphans:
            cgroup = self.locate(parent) if isinstance(parent, int) else parent
            if cgroup is not None:
                self.tree.charge_cputime(cgroup, times)

    async def run(self) -> None:
        """Take in exit records as they come and report exited members (in the daemon's trio
        loop, between requests: never in the middle of an engine operation)."""
        if not self.listening or self.ts is None:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_exits)
            while True:
                await self._exits_pending.wait()
                self._exits_pending = trio.Event()
                exited, self._exited = self._exited, []
                self.on_exit(exited)

    async def _read_exits(self) -> None:
        assert self.ts is not None and self.ts.events is not None
        while True:
            await trio.lowlevel.wait_readable(self.ts.events)
            self.flush()


def read_pressure(resource: str) -> str | None:
    """The machine's pressure figures (/proc/pressure/RESOURCE), as the root cgroup shows
    them; None without PSI."""
    try:
        with open(f"/proc/pressure/{resource}") as f:
            return f.read()
    except OSError:
        return None


def has_psi() -> bool:
    """The host kernel measures pressure (CONFIG_PSI, not disabled with psi=0)."""
    return os.path.isdir("/proc/pressure")


def has_irq_pressure() -> bool:
    return os.path.exists("/proc/pressure/irq")
