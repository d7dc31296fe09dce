"""Process lineage from the kernel's own events: who forked whom, who exited.

The kernel puts a new process in the cgroup of the task that *forked* it, at fork time.
Neither ``/proc`` nor the proc connector can say who that was once the child is reparented
(a double fork ends under init) or when it was cloned with ``CLONE_PARENT`` (as runc starts
every container's init: the child's parent is then the forker's parent). The
``task:task_newtask`` tracepoint can: it fires in ``copy_process()`` in the context of the
forking task (its ``common_pid``, and with the ``record-tgid`` option its process id), with the
child's id and the clone flags (``CLONE_THREAD`` for a thread). ``sched:sched_process_exit``
fires when a task exits, with ``group_dead`` once its whole process is gone.

dmemfs reads both from a tracefs *instance* of its own (``instances/dmemfs-PID-RANDOM``), so
several daemons, and anyone else using tracefs, do not disturb each other. When tracefs is not
mounted it is mounted on a scratch directory, the files needed are opened and the mount is
detached at once (the open descriptors keep working), so nothing stays mounted. The instance
is removed at exit; one left behind by a killed daemon is removed by the next daemon that
starts. Events are read without blocking, by the daemon's request loop, before any answer
that depends on which processes exist or where they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

CLONE_THREAD = 0x00010000
#: Instance names: ``dmemfs-<daemon pid>-<random>``.
PREFIX = "dmemfs-"
MNT_DETACH = 2
EVENTS = ("task/task_newtask", "sched/sched_process_exit")

# "<comm>-<pid> (<tgid>) [cpu] flags seconds.micros" before ": <event>: ", parsed from the
# right: a command name (chosen by the process itself) cannot fake any of it.
_HEADER = re.compile(r"-(\d+)\s+\(\s*(\d+|-+)\)\s+\[\d+\]\s+\S+\s+(\d+)\.(\d+)$")
_NEWTASK = ": task_newtask: pid="
_EXIT = ": sched_process_exit: comm="


class LineageUnavailable(Exception):
    """Tracing cannot be used here (one line saying why)."""


@dataclass(frozen=True, slots=True)
class Fork:
    #: CLOCK_MONOTONIC nanoseconds of the fork.
    when: int
    #: The forking task's process (thread group) id, and its thread id.
    forker: int
    forker_tid: int
    child: int
    thread: bool


@dataclass(frozen=True, slots=True)
class Exit:
    when: int
    tid: int
    #: The process id, when the trace knows it (0 otherwise).
    tgid: int
    #: The whole process is gone (its last thread exited).
    group_dead: bool


@dataclass(frozen=True, slots=True)
class Lost:
    """The trace buffer overflowed: events were dropped."""


Event = Fork | Exit | Lost


def parse_line(line: str) -> Event | None:
    """One line of ``trace_pipe`` as an event (None for anything else)."""
    if line.startswith("CPU:") and "LOST" in line:
        return Lost()
    at = line.find(_NEWTASK)
    kind = "fork"
    if at < 0:
        at = line.find(_EXIT)
        kind = "exit"
        if at < 0:
            return None
    m = _HEADER.search(line, 0, at)
    if m is None:
        return None
    tid = int(m.group(1))
    tgid = int(m.group(2)) if m.group(2).isdigit() else 0
    when = int(m.group(3)) * 1_000_000_000 + int(m.group(4).ljust(9, "0")[:9])
    fields = line[at:].split(" ")
    try:
        if kind == "fork":
            child = int(line[at + len(_NEWTASK):].split(" ", 1)[0])
            flags = int(fields[-2].removeprefix("clone_flags="), 16)
            return Fork(when, tgid or tid, tid, child, bool(flags & CLONE_THREAD))
        group_dead = fields[-1] == "group_dead=true"
        return Exit(when, tid, tgid, group_dead)
    except (ValueError, IndexError):
        return None


def _tracefs_mounted() -> str | None:
    """A tracefs mount point of this mount namespace, if any."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "tracefs":
                    return fields[1].replace("\\040", " ")
    except OSError:
        pass
    return None


def _in_init_pid_namespace() -> bool:
    """Trace events carry pids of the initial pid namespace; /proc here must agree."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        return False
    return True


def _write(dir_fd: int, name: str, value: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_TRUNC, dir_fd=dir_fd)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class TraceLineage:
    """Fork and exit events of every process, from a tracefs instance of this daemon."""

    def __init__(self, instances_fd: int, name: str, instance_fd: int, pipe_fd: int) -> None:
        self._instances = instances_fd
        self.name = name
        self._instance = instance_fd
        self._pipe = pipe_fd
        self._partial = b""

    @classmethod
    def open(cls) -> TraceLineage:
        """Start tracing; LineageUnavailable when it is not permitted here."""
        if not _in_init_pid_namespace():
            raise LineageUnavailable("the daemon is not in the initial pid namespace")
        root = _tracefs_mounted()
        scratch = None
        if root is None:
            scratch = tempfile.mkdtemp(prefix="dmemfs-tracefs-")
            res = subprocess.run(["mount", "-t", "tracefs", "nodev", scratch],
                                 capture_output=True, text=True)
            if res.returncode:
                os.rmdir(scratch)
                reason = (res.stderr.strip().splitlines() or ["mount failed"])[-1]
                raise LineageUnavailable(f"cannot mount tracefs: {reason}")
            root = scratch
        try:
            instances = os.open(os.path.join(root, "instances"), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise LineageUnavailable(f"tracefs instances: {e.strerror}") from None
        finally:
            if scratch is not None:
                _detach(scratch)
        try:
            return cls._start(instances)
        except OSError as e:
            os.close(instances)
            raise LineageUnavailable(f"cannot trace fork and exit events: {e.strerror}") from None

    @classmethod
    def _start(cls, instances: int) -> TraceLineage:
        _remove_stale(instances)
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(name, dir_fd=instances)
        try:
            inst = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=instances)
            _write(inst, "trace_clock", "mono")
            _write(inst, "options/record-tgid", "1")
            per_cpu_kb = max(128, min(2048, 65536 // (os.cpu_count() or 1)))
            _write(inst, "buffer_size_kb", str(per_cpu_kb))
            pipe = os.open("trace_pipe", os.O_RDONLY | os.O_NONBLOCK, dir_fd=inst)
            for event in EVENTS:
                _write(inst, f"events/{event}/enable", "1")
        except BaseException:
            _rmdir_instance(instances, name)
            raise
        log.info("process lineage from tracefs instance %s", name)
        return cls(instances, name, inst, pipe)

    def read(self) -> list[Event]:
        """Every event recorded since the last call (never blocks)."""
        chunks = [self._partial]
        while True:
            try:
                chunk = os.read(self._pipe, 1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for raw in lines:
            event = parse_line(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> None:
        with contextlib.suppress(OSError):
            _write(self._instance, "events/enable", "0")
        for fd in (self._pipe, self._instance):
            with contextlib.suppress(OSError):
                os.close(fd)
        _rmdir_instance(self._instances, self.name)
        os.close(self._instances)


def _detach(path: str) -> None:
    """Lazily unmount ``path`` (descriptors opened in it keep working) and remove it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), MNT_DETACH) != 0:
        log.warning("cannot detach tracefs from %s: %s", path, os.strerror(ctypes.get_errno()))
        return
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _rmdir_instance(instances: int, name: str) -> None:
    # The kernel refuses to remove an instance whose trace_pipe is open (EBUSY) only briefly.
    try:
        os.rmdir(name, dir_fd=instances)
    except OSError as e:
        log.warning("cannot remove tracefs instance %s: %s", name, e.strerror)


def _remove_stale(instances: int) -> None:
    """Remove instances of daemons that no longer run (killed without cleaning up)."""
    for name in os.listdir(instances):
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=instances)
                log.info("removed the tracefs instance %s of a daemon that is gone", name)
