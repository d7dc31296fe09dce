"""The supervisor of ``dmemfs as-cgroup2``: answers the system calls that tell cgroup2 apart.

CMD and everything it starts run under a seccomp filter (dmemfs/seccomp.py) that stops
``statfs``, ``fstatfs`` and ``bpf`` and hands them to this process, which is not under the
filter:

- ``statfs(path)`` and ``fstatfs(fd)``: the path is resolved as the caller would resolve it
  (its root and working directory, its filesystem uid, gid, groups and capabilities, so a
  path it may not search fails as it would); if it is on the dmemfs mount and under its
  cgroup root (a directory or an interface file, whichever bind mount or namespace it is
  seen through), the answer is what the kernel gives for cgroup2 (``CGROUP2_SUPER_MAGIC``,
  4096-byte blocks, no blocks and no inodes, names up to 255 bytes; the id and the mount
  flags of the real call). Everything else, and every call that fails, is made by the
  kernel itself as if it had never been stopped (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``).
- ``bpf(BPF_PROG_ATTACH / BPF_PROG_DETACH / BPF_PROG_QUERY)`` of a ``BPF_CGROUP_DEVICE``
  program on a dmemfs cgroup directory: forwarded to the daemon, which checks and records it
  (dmemfs/fs/bpf.py). Other ``bpf`` calls continue.
- ``mount`` of a new cgroup2 filesystem: ``EPERM`` (see :meth:`Supervisor._mount`).
- ``setrlimit``/``prlimit64`` raising RLIMIT_MEMLOCK: see :meth:`Supervisor._memlock`.

A call is never held longer than :data:`TIMEOUT`: if the mount does not answer in time the
call continues to the kernel. The supervisor keeps running, in the background, until the
last process under the filter has exited (a detached container's processes included). If it
is killed, the calls it would answer fail with ``ENOSYS`` (the kernel's answer when a
filter's listener is gone); everything else goes on working.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import logging
import os
import select
import struct
import threading
from dataclasses import dataclass

from dmemfs import seccomp
from dmemfs.seccomp import Notification

log = logging.getLogger(__name__)

#: System calls stopped by the filter (setrlimit/prlimit64 only for RLIMIT_MEMLOCK).
SYSCALLS = ["statfs", "fstatfs", "bpf", "mount", "setrlimit", "prlimit64"]
#: Seconds a call may wait for an answer before it continues to the kernel.
TIMEOUT = 5.0

CGROUP2_SUPER_MAGIC = 0x63677270
#: struct statfs on x86_64: f_type, f_bsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree,
#: f_fsid, f_namelen, f_frsize, f_flags, f_spare[4].
STATFS = struct.Struct("=7q2i3q4q")

# include/uapi/linux/bpf.h
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_QUERY = 16
BPF_CGROUP_DEVICE = 6

RESOLVE_IN_ROOT = 0x10
RLIMIT_MEMLOCK = 8
CAP_SYS_RESOURCE = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Creds:
    """The filesystem credentials of a process (``/proc/PID/status``)."""

    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_eff: int

    @classmethod
    def of(cls, pid: int) -> Creds:
        fields: dict[str, list[str]] = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return cls(int(fields["Uid"][3]), int(fields["Gid"][3]),
                   tuple(int(g) for g in fields.get("Groups", [])), int(fields["CapEff"][0], 16))

    def like_ours(self) -> bool:
        dac = 1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH
        return self.fsuid == os.geteuid() and self.fsgid == os.getegid() and (
            self.cap_eff & dac == dac)


class _ThreadCreds:
    """Take ``creds`` for path lookups in the calling thread only (raw system calls: the
    C library would change every thread), and give them back."""

    def __init__(self, creds: Creds) -> None:
        self.creds = creds
        self._header = ctypes.create_string_buffer(struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3,
                                                               0), 8)
        self._saved = ctypes.create_string_buffer(24)
        self._groups = os.getgroups()

    def __enter__(self) -> None:
        seccomp.syscall("capget", self._header, self._saved)
        c = self.creds
        groups = (ctypes.c_uint32 * max(1, len(c.groups)))(*c.groups)
        seccomp.syscall("setgroups", len(c.groups), groups)
        seccomp.syscall("setfsgid", c.fsgid)
        seccomp.syscall("setfsuid", c.fsuid)
        _, perm0, inh0, _, perm1, inh1 = struct.unpack("=6I", self._saved.raw)
        eff = (c.cap_eff & (perm0 | perm1 << 32))
        data = ctypes.create_string_buffer(struct.pack(
            "=6I", eff & 0xFFFFFFFF, perm0, inh0, eff >> 32, perm1, inh1), 24)
        seccomp.syscall("capset", self._header, data)

    def __exit__(self, *exc: object) -> None:
        # Capabilities first: giving the groups back needs CAP_SETGID.
        seccomp.syscall("capset", self._header, self._saved)
        seccomp.syscall("setfsuid", os.geteuid())
        seccomp.syscall("setfsgid", os.getegid())
        groups = (ctypes.c_uint32 * max(1, len(self._groups)))(*self._groups)
        seccomp.syscall("setgroups", len(self._groups), groups)


def resolve_path(pid: int, path: bytes) -> int:
    """An O_PATH descriptor for ``path`` looked up as process ``pid`` would look it up."""
    absolute = path.startswith(b"/")
    base = os.open(f"/proc/{pid}/{'root' if absolute else 'cwd'}",
                   os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        creds = Creds.of(pid)
        how = ctypes.create_string_buffer(struct.pack(
            "=QQQ", os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT if absolute else 0), 24)
        name = ctypes.c_char_p(path)
        if creds.like_ours():
            return seccomp.syscall("openat2", base, name, how, 24)
        with _ThreadCreds(creds):
            return seccomp.syscall("openat2", base, name, how, 24)
    finally:
        os.close(base)


def open_descriptor(pid: int, fd: int) -> int:
    """An O_PATH descriptor for what process ``pid``'s descriptor ``fd`` refers to."""
    if fd < 0 or fd > 0x7FFFFFFF:
        raise OSError(errno.EBADF, "bad descriptor")
    return os.open(f"/proc/{pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)


def cgroup2_statfs(fd: int) -> bytes:
    """What statfs() returns on cgroup2, with the id and mount flags of ``fd``'s mount."""
    buf = ctypes.create_string_buffer(STATFS.size)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    fields = list(STATFS.unpack(buf.raw))
    fsid0, fsid1, flags = fields[7], fields[8], fields[11]
    return STATFS.pack(CGROUP2_SUPER_MAGIC, 4096, 0, 0, 0, 0, 0, fsid0, fsid1, 255, 4096,
                       flags, 0, 0, 0, 0)


def fuse_access(mountpoint: str) -> tuple[int, int] | None:
    """(user_id, group_id) of the FUSE mount at ``mountpoint`` when only processes with
    those ids may use it (no ``allow_other``: ``fuse_allow_current_process``), else None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") != mountpoint:
                continue
            opts = dict(o.partition("=")[::2] for o in fields[fields.index("-") + 3].split(","))
            if "allow_other" in opts:
                return None
            return int(opts.get("user_id", 0)), int(opts.get("group_id", 0))
    return None


def _tgid(tid: int) -> int:
    """The process (thread group) of thread ``tid``: a seccomp notification names the
    calling thread."""
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    return tid


def _kernel() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    minor = "".join(c for c in (parts[1] if len(parts) > 1 else "") if c.isdigit())
    return int(parts[0]), int(minor or 0)


def _ids(pid: int) -> tuple[set[int], set[int]]:
    """(uids, gids) of ``pid``: real, effective, saved and filesystem ids."""
    uids: set[int] = set()
    gids: set[int] = set()
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uids = {int(v) for v in line.split()[1:]}
            elif line.startswith("Gid:"):
                gids = {int(v) for v in line.split()[1:]}
    return uids, gids


class Supervisor:
    def __init__(self, listener: int, mountpoint: str) -> None:
        self.listener = listener
        self.mountpoint = os.path.realpath(mountpoint)
        self.dev = os.stat(os.path.join(mountpoint, "cgroup")).st_dev
        self.owner = fuse_access(self.mountpoint)
        self._query_fd: int | None = None
        self._query_lock = threading.Lock()
        self._kinds: dict[int, str] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(4, "dmemfs-supervisor")

    # -- the daemon ----------------------------------------------------------------------

    def ask(self, text: str) -> str:
        """One request to MOUNT/debug/supervisor (dmemfs/fs/bpf.py); OSError with the
        daemon's errno."""
        with self._query_lock:  # a worker that timed out may still hold it
            if self._query_fd is None:
                self._query_fd = os.open(os.path.join(self.mountpoint, "debug", "supervisor"),
                                         os.O_RDWR | os.O_CLOEXEC)
            os.write(self._query_fd, text.encode())
            return os.read(self._query_fd, 65536).decode()

    def _write(self, n: Notification, addr: int, data: bytes) -> bool:
        """Write into the caller's memory, only while it still waits (its pid is not reused
        by another process)."""
        return seccomp.still_valid(self.listener, n) and seccomp.write_memory(n.pid, addr, data)

    def kind(self, fd: int) -> tuple[str, int]:
        """("cgroup" | "file" | "other" | "elsewhere", inode) for an O_PATH descriptor."""
        st = os.fstat(fd)
        if st.st_dev != self.dev:
            return "elsewhere", st.st_ino
        kind = self._kinds.get(st.st_ino)
        if kind is None:  # inode numbers are never reused by a mount
            kind = self.ask(f"ino {st.st_ino}").split()[0]
            self._kinds[st.st_ino] = kind
        return kind, st.st_ino

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until no process is left under the filter."""
        log.info("supervising %s (pid %d)", self.mountpoint, os.getpid())
        poll = select.poll()
        poll.register(self.listener, select.POLLIN)
        while True:
            events = dict(poll.poll())
            mask = events.get(self.listener, 0)
            if mask & select.POLLIN:
                n = seccomp.receive(self.listener)
                if n is not None:
                    self.handle(n)
            elif mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                log.info("no process left under the filter: exiting")
                return

    def handle(self, n: Notification) -> None:
        try:
            answer = self._pool.submit(self.answer, n).result(timeout=TIMEOUT)
        except concurrent.futures.TimeoutError:
            log.warning("%s of pid %d: no answer within %.0f s, continuing it",
                        n.name, n.pid, TIMEOUT)
            answer = None
        except Exception:
            log.exception("%s of pid %d", n.name, n.pid)
            answer = None
        if answer is None or not seccomp.still_valid(self.listener, n):
            seccomp.proceed(self.listener, n)
        else:
            seccomp.respond(self.listener, n, *answer)

    def answer(self, n: Notification) -> tuple[int, int] | None:
        """(return value, errno) for the call, or None to let the kernel make it."""
        if n.name == "statfs":
            path = seccomp.read_string(n.pid, n.args[0])
            if path is None or not seccomp.still_valid(self.listener, n):
                return None
            return self._statfs(n, lambda: resolve_path(n.pid, path))
        if n.name == "fstatfs":
            return self._statfs(n, lambda: open_descriptor(n.pid, n.args[0] & 0xFFFFFFFF))
        if n.name == "bpf":
            return self._bpf(n)
        if n.name in ("setrlimit", "prlimit64"):
            return self._memlock(n)
        if n.name == "mount":
            return self._mount(n)
        return None

    def _mount(self, n: Notification) -> tuple[int, int] | None:
        """A new cgroup2 mount would show the kernel's own hierarchy, not the mount's: it
        fails with EPERM, on which runc and crun bind the cgroup2 they see at
        /sys/fs/cgroup instead (as they do where cgroup2 may not be mounted)."""
        fstype = seccomp.read_string(n.pid, n.args[2], 64) if n.args[2] else None
        if fstype != b"cgroup2" or not seccomp.still_valid(self.listener, n):
            return None
        log.info("pid %d: mount of a new cgroup2 refused (EPERM)", n.pid)
        return 0, errno.EPERM

    def _memlock(self, n: Notification) -> tuple[int, int] | None:
        """A raise of the caller's own RLIMIT_MEMLOCK that the kernel would refuse (EPERM:
        above the hard limit, without CAP_SYS_RESOURCE) succeeds, with the soft limit
        raised to the hard limit and the hard limit unchanged. crun makes that raise
        before it loads its device program; since Linux 5.11 BPF memory is charged to the
        memory cgroup, not to this limit, so the raise changes nothing the program needs."""
        if _kernel() < (5, 11):
            return None
        caller = _tgid(n.pid)
        if n.name == "setrlimit":
            target, new_addr, old_addr = caller, n.args[1], 0
        else:
            target = n.args[0] & 0xFFFFFFFF or caller
            new_addr, old_addr = n.args[2], n.args[3]
        raw = seccomp.read_memory(n.pid, new_addr, 16)
        if target != caller or len(raw) < 16 or not seccomp.still_valid(self.listener, n):
            return None
        cur, hard = struct.unpack("=QQ", raw)
        if Creds.of(n.pid).cap_eff & 1 << CAP_SYS_RESOURCE:
            return None
        old = ctypes.create_string_buffer(16)
        seccomp.syscall("prlimit64", target, RLIMIT_MEMLOCK, None, old)
        _, hard0 = struct.unpack("=QQ", old.raw)
        if cur > hard or hard <= hard0:
            return None  # the kernel's own answer: EINVAL, or allowed
        new = ctypes.create_string_buffer(struct.pack("=QQ", min(cur, hard0), hard0), 16)
        seccomp.syscall("prlimit64", target, RLIMIT_MEMLOCK, new, None)
        log.info("pid %d: RLIMIT_MEMLOCK %d/%d requested, soft limit raised to the hard limit",
                 caller, cur, hard)
        if old_addr and not self._write(n, old_addr, old.raw):
            return 0, errno.EFAULT
        return 0, 0

    def _allowed(self, pid: int) -> bool:
        """Whether FUSE lets ``pid`` use the mount (without allow_other, only the ids of
        the user who mounted it); the kernel answers the others itself."""
        if self.owner is None:
            return True
        uids, gids = _ids(pid)
        return uids == {self.owner[0]} and gids == {self.owner[1]}

    def _statfs(self, n: Notification, opener: object) -> tuple[int, int] | None:
        if not self._allowed(n.pid):
            return None
        try:
            fd = opener()  # type: ignore[operator]
        except OSError:
            return None  # the kernel fails it the same way
        try:
            if self.kind(fd)[0] not in ("cgroup", "file"):
                return None
            data = cgroup2_statfs(fd)
        finally:
            os.close(fd)
        if not self._write(n, n.args[1], data):
            return 0, errno.EFAULT
        return 0, 0

    def _bpf(self, n: Notification) -> tuple[int, int] | None:
        cmd, addr, size = n.args[0], n.args[1], n.args[2]
        if cmd not in (BPF_PROG_ATTACH, BPF_PROG_DETACH, BPF_PROG_QUERY) or size < 16:
            return None
        attr = seccomp.read_memory(n.pid, addr, min(size, 32)).ljust(32, b"\0")
        if cmd == BPF_PROG_QUERY:
            target, attach_type = struct.unpack_from("=II", attr)
        else:
            target, prog_fd, attach_type, flags, replace_fd = struct.unpack_from("=5I", attr)
        if attach_type != BPF_CGROUP_DEVICE or not self._allowed(n.pid) or (
                not seccomp.still_valid(self.listener, n)):
            return None
        try:
            fd = open_descriptor(n.pid, target)
        except OSError:
            return None
        try:
            kind, ino = self.kind(fd)
        finally:
            os.close(fd)
        if kind != "cgroup":
            return None
        try:
            if cmd == BPF_PROG_QUERY:
                return self._query(n, ino, addr, attr)
            if cmd == BPF_PROG_ATTACH:
                replace = replace_fd if flags & 4 else -1
                self.ask(f"attach pid={_tgid(n.pid)} ino={ino} prog_fd={prog_fd} flags={flags} "
                         f"replace_fd={replace}")
            else:
                self.ask(f"detach pid={_tgid(n.pid)} ino={ino} "
                         f"prog_fd={prog_fd if prog_fd else -1}")
        except OSError as e:
            return 0, e.errno or errno.EINVAL
        return 0, 0

    def _query(self, n: Notification, ino: int, addr: int, attr: bytes) -> tuple[int, int]:
        """BPF_PROG_QUERY: attach_flags, prog_ids and prog_cnt written back as the kernel's
        ``__cgroup_bpf_query`` does (ENOSPC with the count when the array is too small)."""
        reply = dict(w.split("=", 1) for w in self.ask(f"query ino={ino}").split())
        ids = [int(i) for i in reply["ids"].split(",") if i]
        prog_ids, cnt = struct.unpack_from("=QI", attr, 16)
        ok = self._write(n, addr + 12, struct.pack("=I", int(reply["flags"])))
        if prog_ids and ids:
            ok = ok and self._write(n, prog_ids, struct.pack(
                f"={min(cnt, len(ids))}I", *ids[:cnt]))
        ok = ok and self._write(n, addr + 24, struct.pack("=I", len(ids)))
        if not ok:
            return 0, errno.EFAULT
        return 0, errno.ENOSPC if prog_ids and cnt < len(ids) else 0
