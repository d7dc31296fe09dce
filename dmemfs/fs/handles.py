"""Open files. Each carries who opened it and, for generated files, a rendered snapshot.

A write is made by a :class:`Call`: the process the kernel says sent it and the open file's
flags at that moment (both read from the FUSE request, dmemfs/fs/request.py), falling back
to the opener and the flags of the open where the request could not be read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from dmemfs.device.protocol import Session
from dmemfs.engine.cgroup import Creds
from dmemfs.engine.files import CgroupFile, read_file, write_file
from dmemfs.engine.psi import PsiTrigger
from dmemfs.errors import DmemError, InvalidArgument, NoDevice
from dmemfs.fs.inodes import CgroupFileNode
from dmemfs.procs import HostProcesses, creds_of, no_setaffinity, process_creds, zombie_tgid
from dmemfs.profile import MAX_WRITE

#: Where exported dma-bufs appear, relative to the mount (see dmemfs/fs/dmabufs.py).
DMABUF_DIR = "dev/dma_buf"


class Opener:
    """The process that opened a file, with its credentials and the open's flags.

    The kernel checks a cgroup file write against the credentials of the opener
    (``of->file->f_cred``), so permissions come from here whoever writes. Who it is (thread
    group, supplementary groups) is looked up in /proc only when a write needs it, so opening
    a file to read costs none.
    """

    __slots__ = ("_birth", "_creds", "_holder", "_pid", "flags", "gid", "host", "ino",
                 "position", "psi_trigger", "tid", "uid")

    def __init__(self, tid: int, uid: int, gid: int, host: HostProcesses,
                 flags: int = os.O_RDONLY) -> None:
        self.tid = tid
        self.uid = uid
        self.gid = gid
        self.host = host
        #: The flags given to open() (what ``f_flags`` was before any fcntl).
        self.flags = flags
        #: The opened file's inode, and its file position at the current call (set by the
        #: request handlers): they identify the open file in /proc/PID/fdinfo.
        self.ino = 0
        self.position = 0
        self._pid: int | None = None
        self._birth: float | None = None
        self._creds: Creds | None = None
        self._holder: tuple[int, int] | None = None
        #: A pressure trigger written to this open file (one per open file).
        self.psi_trigger: PsiTrigger | None = None

    @property
    def pid(self) -> int:
        """Thread group of the opener, known to the engine (its cgroup resolved)."""
        if self._pid is None:
            try:
                self._pid = self.host.resolve(self.tid)
                self._birth = self.host.birth(self._pid)
            except DmemError:
                self._pid = self.tid  # it already exited; it cannot be moved either
        return self._pid

    @property
    def creds(self) -> Creds:
        if self._creds is None:
            self._creds = creds_of(self.tid, self.uid, self.gid)
        return self._creds

    def caller_pid(self) -> int:
        """Who makes a call on this open file when the FUSE request did not say (see
        :class:`Call`): one of the live processes holding this open file.

        That is the opener while it lives; once it exited, a process that inherited the file
        or was passed it, found in /proc by the file's inode and position (see
        :meth:`HostProcesses.holder`). Only when no live holder can be seen (all of them in
        another PID namespace, say) does the exited opener stand in, and its cgroup is then
        the root's.
        """
        pid = self.pid
        if self._birth is not None and self.host.birth(pid) == self._birth:
            return pid
        self._holder = self.host.holder(self.ino, self.position, self._holder)
        if self._holder is None:
            return pid
        try:
            return self.host.resolve(self._holder[0])
        except DmemError:
            return pid

    def resolve_pid(self, pid: int) -> int:
        return self.host.resolve(pid)

    def zombie(self, pid: int) -> int | None:
        return zombie_tgid(pid)

    def migratable(self, pid: int) -> bool:
        return not no_setaffinity(pid)

    def kill(self, pids: list[int]) -> None:
        self.host.kill(pids)


class Call:
    """One ``write()``: the engine's ``WriteContext`` for it.

    ``tid`` is the calling thread the FUSE request names (None when unknown) and ``flags``
    the open file's ``f_flags`` at the time of the write.
    """

    __slots__ = ("_pid", "flags", "opener", "tid")

    def __init__(self, opener: Opener, tid: int | None = None, flags: int | None = None
                 ) -> None:
        self.opener = opener
        self.tid = tid
        self.flags = opener.flags if flags is None else flags
        self._pid: int | None = None

    @property
    def pid(self) -> int:
        """The calling process (``current``), known to the engine; the opener if unknown."""
        if self._pid is None:
            pid = None
            if self.tid:
                try:
                    pid = self.opener.host.resolve(self.tid)
                except DmemError:
                    pid = None  # it exited meanwhile
            self._pid = pid if pid is not None else self.opener.caller_pid()
        return self._pid

    @property
    def creds(self) -> Creds:
        """Whose permissions a cgroup file write is checked against: the opener's."""
        return self.opener.creds

    @property
    def caller_creds(self) -> Creds:
        """The calling thread's own credentials (an ioctl checks them, not the opener's);
        the opener's when the request did not name the caller or it is gone."""
        creds = process_creds(self.tid) if self.tid else None
        return creds if creds is not None else self.opener.creds

    def dmabuf_fd(self, fd: int) -> int | None:
        """The dma-buf the calling process holds open as descriptor ``fd``: its
        ``MOUNT/dev/dma_buf/ID`` file."""
        path = self.opener.host.open_file(self.tid or self.pid, fd)
        if path is None or not path.startswith(DMABUF_DIR + "/"):
            return None
        name = path[len(DMABUF_DIR) + 1:]
        return int(name) if name.isascii() and name.isdigit() else None

    @property
    def nonblock(self) -> bool:
        return bool(self.flags & os.O_NONBLOCK)

    @property
    def psi_trigger(self) -> PsiTrigger | None:
        """The open file's pressure trigger (kept by the open file, not the call)."""
        return self.opener.psi_trigger

    @psi_trigger.setter
    def psi_trigger(self, trigger: PsiTrigger | None) -> None:
        self.opener.psi_trigger = trigger

    def resolve_pid(self, pid: int) -> int:
        return self.opener.resolve_pid(pid)

    def zombie(self, pid: int) -> int | None:
        return self.opener.zombie(pid)

    def migratable(self, pid: int) -> bool:
        return self.opener.migratable(pid)

    def kill(self, pids: list[int]) -> None:
        self.opener.kill(pids)


class Handle:
    """Base class: a file handle with seq_file-like reads."""

    __slots__ = ("buf", "opener", "read_pos")

    def __init__(self, opener: Opener) -> None:
        self.opener = opener
        self.buf: bytes | None = None
        #: Where the last read ended (``seq_file.read_pos``).
        self.read_pos = 0

    def render(self) -> bytes:
        raise InvalidArgument("not readable")

    def read(self, off: int, size: int) -> bytes:
        """``seq_read_iter()``: a read that continues where the last one ended slices the
        snapshot that one made; a read at offset 0, or anywhere else, renders a fresh one."""
        if off == 0 or self.buf is None or off != self.read_pos:
            self.buf = self.render()
        data = self.buf[off : off + size]
        self.read_pos = off + len(data)
        return data

    def write(self, data: bytes, call: Call) -> int:
        raise InvalidArgument("not writable")

    def release(self) -> None:
        pass


#: Core files whose content depends on process liveness: dead members are pruned first.
PROCESS_FILES = frozenset(
    {"cgroup.procs", "cgroup.threads", "cgroup.events", "cgroup.kill", "cgroup.subtree_control",
     "cpu.stat"}
)
#: Files whose content follows the host or the clock, not requests: never page-cached.
LIVE_FILES = PROCESS_FILES | {"cgroup.stat.local", "cpu.pressure", "io.pressure",
                              "memory.pressure", "irq.pressure"}


class CgroupFileHandle(Handle):
    __slots__ = ("event", "node", "psi_gen")

    def __init__(self, opener: Opener, node: CgroupFileNode) -> None:
        super().__init__(opener)
        self.node = node
        #: The file's change count when this open file last read it (``of->event``); a file
        #: not read yet counts as changed (kernfs starts an open node's count at 1, an open
        #: file's at 0).
        self.event = -1
        #: Pressure files hidden by cgroup.pressure after this open stay dead for it, even
        #: when shown again (kernfs drains the open files of a deactivated node).
        self.psi_gen = node.cgroup.psi_gen

    @property
    def row(self) -> CgroupFile:
        return self.node.row

    def changes(self) -> int:
        """How often the file changed (only ``cgroup.events`` notifies, cgroup_file_notify())."""
        return self.node.cgroup.events_seq if self.row.name == "cgroup.events" else 0

    def _check(self) -> None:
        if self.node.gone:
            raise NoDevice(f"{self.node.cgroup.path} was removed")
        if self.row.psi is not None and self.psi_gen != self.node.cgroup.psi_gen:
            raise NoDevice(f"{self.node.cgroup.path}/{self.row.name} was hidden")
        if self.row.name in PROCESS_FILES:
            self.opener.host.prune(self.node.cgroup)

    def render(self) -> bytes:
        self._check()
        self.event = self.changes()
        return read_file(self.opener.host.tree, self.node.cgroup, self.row)

    def write(self, data: bytes, call: Call) -> int:
        if 0 < len(data) <= MAX_WRITE:
            self._check()
        return write_file(self.opener.host.tree, self.node.cgroup, self.row, data, call)


class CachedFileHandle(CgroupFileHandle):
    """A read-only open served through the page cache (``--page-cache``): what a read
    request returns is what the kernel now caches."""

    __slots__ = ()

    def read(self, off: int, size: int) -> bytes:
        data = super().read(off, size)
        self.node.shown = self.buf
        return data


class TextHandle(Handle):
    """A read-only generated text file (debug views)."""

    __slots__ = ("_render",)

    def __init__(self, opener: Opener, render: Callable[[], str]) -> None:
        super().__init__(opener)
        self._render = render

    def render(self) -> bytes:
        return self._render().encode()


class QueryHandle(Handle):
    """Write a request, read the reply from the same open file (like the device file).

    The reply is a stream consumed by reads whatever the file offset (a write moves the
    offset too); a read with no pending reply returns 0 bytes. A request that fails still
    fails with its errno, and leaves one line saying why for the next read:
    ``error=EINVAL reason=<what was wrong>``.
    """

    __slots__ = ("_answer", "placed", "reply_at")

    def __init__(self, opener: Opener, answer: Callable[[Opener, str], str]) -> None:
        super().__init__(opener)
        self._answer = answer
        self.buf = b""
        #: The file offset where the last write ended: where a reader that shares the
        #: file position finds the reply.
        self.reply_at = 0
        #: The reply as page-cache READs see it, at :attr:`reply_at` (kept until the next
        #: write: the kernel may read the same page again).
        self.placed = b""

    def read(self, off: int, size: int) -> bytes:
        pending = self.buf or b""
        self.buf = pending[size:]
        return pending[:size]

    def page_read(self, off: int, size: int) -> tuple[bytes, bytes]:
        """A READ that fills the kernel's page cache (splice, sendfile: see fs/splice.py),
        which asks for whole pages: the reply is placed at :attr:`reply_at`, zeros before
        it. Returns the READ's data and what follows it; the reply is consumed for
        ``read()``."""
        if self.buf:
            self.placed += self.buf
            self.buf = b""
        end = self.reply_at + len(self.placed)
        if off >= end:
            return b"", b""
        content = bytes(max(0, self.reply_at - off)) + self.placed[max(0, off - self.reply_at):]
        first = off <= self.reply_at < off + size
        return content[:size], content[size:] if first else b""

    def write(self, data: bytes, call: Call) -> int:
        return self._serve(data, lambda: self._answer(self.opener, data.decode("latin-1")))

    def _serve(self, data: bytes, answer: Callable[[], str]) -> int:
        """Run one request: its reply, or the reason it failed, is what the next read gets."""
        self.buf = b""
        try:
            reply = answer()
        except DmemError as e:
            self.buf = error_reply(e).encode()
            raise
        self.buf = reply.encode()
        return len(data)


#: The kernel's names where Python's errno table picks an alias of the same number.
_ERRNO_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EDEADLK: "EDEADLK"}


def error_reply(error: DmemError) -> str:
    """``error=EINVAL reason=…``: one line, whatever the message holds."""
    name = _ERRNO_NAMES.get(error.errno) or errno.errorcode.get(error.errno, str(error.errno))
    reason = " ".join(str(error).split()) or name
    return f"error={name} reason={reason}\n"


class DeviceHandle(QueryHandle):
    """An open device file: a DRM client; one write is one ioctl, its reply is read back."""

    __slots__ = ("session",)

    def __init__(self, opener: Opener, session: Session) -> None:
        super().__init__(opener, lambda o, text: "")
        self.session = session

    def write(self, data: bytes, call: Call) -> int:
        return self._serve(data, lambda: self.session.request(data, call))

    def release(self) -> None:
        self.session.close()


class CommandHandle(Handle):
    """A write-only control file: each write runs ``command(opener, data)``."""

    __slots__ = ("_command",)

    def __init__(self, opener: Opener, command: Callable[[Call, bytes], None]) -> None:
        super().__init__(opener)
        self._command = command

    def write(self, data: bytes, call: Call) -> int:
        self._command(call, data)
        return len(data)
