"""pyfuse3 request handlers. Thin: each looks up nodes, calls a helper, builds the reply."""

from __future__ import annotations

import collections
import errno
import functools
import heapq
import logging
import os
import select
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from dmemfs.engine.cgroup import CAP_SYS_ADMIN, Attr, Cgroup, CgroupTree, Creds
from dmemfs.engine.files import (
    FILES,
    PRESSURE_FILES,
    CgroupFile,
    files_of,
    files_shape,
    lookup_file,
    read_file,
)
from dmemfs.engine.kernfs import Stamp, check_xattr, name_hash, set_xattr
from dmemfs.errors import DmemError
from dmemfs.fs import request, splice
from dmemfs.fs.handles import (
    LIVE_FILES,
    CachedFileHandle,
    Call,
    CgroupFileHandle,
    Handle,
    Opener,
    QueryHandle,
)
from dmemfs.fs.inodes import (
    ROOT_INODE,
    CgroupDir,
    CgroupFileNode,
    DynamicDir,
    InodeTable,
    Node,
    SpecialFile,
    StaticDir,
)
from dmemfs.fs.splice import SpliceReads
from dmemfs.procs import HostProcesses, capabilities

log = logging.getLogger(__name__)

#: How long the kernel may cache entries and attributes (seconds). Only dmemfs changes them,
#: and it tells the kernel when it does (see _controller_files_changed); everything else the
#: kernel learns from the replies to its own mkdir/rmdir/setattr.
TIMEOUT = 300.0

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: What poll() reports for any open cgroupfs file (``DEFAULT_POLLMASK``)...
DEFAULT_POLLMASK = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM
#: ...plus this when the file changed since the opener last read it (``kernfs_generic_poll()``),
#: or for a pressure file without a trigger (``psi_trigger_poll()``).
CHANGED = select.POLLERR | select.POLLPRI

#: FUSE requests served, by handler name (shown in MOUNT/debug/requests).
REQUESTS: collections.Counter[str] = collections.Counter()


def fuse_errors(fn: F) -> F:
    """The one boundary: DmemError → its errno; anything unexpected is logged and EIO."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        REQUESTS[name] += 1
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except DmemError as e:
            log.debug("%s: %s (%s)", fn.__name__, e, errno.errorcode.get(e.errno))
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _name(name: bytes) -> str:
    return os.fsdecode(name)


CONTROLLER_FILES = [row for row in FILES if row.controller is not None]


def _same(node: Node) -> Node:
    return node


def _invalidate(entries: list[tuple[int, bytes]], attrs: list[int]) -> None:
    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError:
            pass  # the kernel had already forgotten it
    for ino in attrs:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError:
            pass


def _configured_by(handle: Handle) -> list[Cgroup]:
    """The cgroups whose configuration a write through ``handle`` may change."""
    if not isinstance(handle, CgroupFileHandle):
        return []
    cg = handle.node.cgroup
    if handle.row.name == "cgroup.subtree_control":
        return [cg, *cg.children.values()]
    return [cg]


class DirHandle:
    __slots__ = ("entries", "node")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.entries: list[tuple[str, Callable[[], Node]]] | None = None


class Operations(pyfuse3.Operations):
    """The mount: ``/cgroup`` (the cgroup v2 root), ``/dev/dri`` and ``/debug``."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: CgroupTree, host: HostProcesses, *, page_cache: bool = False
                 ) -> None:
        super().__init__()
        self.tree = tree
        self.host = host
        #: Serve read-only opens of generated files through the page cache (see README).
        self.page_cache = page_cache
        #: Nodes with open page-cache handles, and how many.
        self._cached_open: dict[CgroupFileNode, int] = {}
        #: --state: awaited after a request that may have changed the configuration of these
        #: cgroups (a removed one is dying); returns once the change is durable.
        self.config_changed: Callable[[list[Cgroup]], Awaitable[None]] | None = None
        #: --state: one line saying whether the configuration is saved (debug/daemon).
        self.state_status: Callable[[], str] | None = None
        self.root = StaticDir(None)
        self.inodes = InodeTable(tree)
        self.inodes.add(self.root, ROOT_INODE)
        self.cgroup_root = self.inodes.cgroup_dir(tree.root)
        self.root.children["cgroup"] = self.cgroup_root
        self.dev = self.add_dir(self.root, "dev")
        self.dri = self.add_dir(self.dev, "dri")
        self.debug = self.add_dir(self.root, "debug")
        self._handles: dict[int, Handle] = {}
        self._rows_by_shape: dict[tuple[bool, bool, bool],
                                  list[tuple[tuple[int, str], CgroupFile]]] = {}
        #: poll() waiters on cgroup.events, by file handle: woken when the file changes.
        self._pollers: dict[int, tuple[CgroupFileHandle, pyfuse3.PollHandle]] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        #: sendfile/splice readers of the direct-I/O files (see fs/splice.py).
        self.splice = SpliceReads()

    # -- building the static layout ------------------------------------------------------

    def add_dir(self, parent: StaticDir, name: str) -> StaticDir:
        node = StaticDir(parent)
        self.inodes.add(node)
        parent.children[name] = node
        return node

    def add_dir_once(self, parent: StaticDir, name: str) -> StaticDir:
        node = parent.children.get(name)
        if isinstance(node, StaticDir):
            return node
        return self.add_dir(parent, name)

    def add_file(self, parent: StaticDir, name: str, node: SpecialFile) -> SpecialFile:
        self.inodes.add(node)
        parent.children[name] = node
        return node

    # -- helpers -----------------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _reply(self, node: Node) -> pyfuse3.EntryAttributes:
        entry = self.inodes.entry(node, TIMEOUT)
        if isinstance(node, CgroupFileNode):
            if self._cacheable(node):
                entry.st_size = len(self._render(node) or b"")
            elif node.row.show is not None:
                entry.st_size = splice.SIZE
        elif isinstance(node, SpecialFile) and node.attr.mode & 0o444:
            entry.st_size = splice.SIZE
        return entry

    # -- --page-cache --------------------------------------------------------------------

    def _cacheable(self, node: CgroupFileNode) -> bool:
        return (self.page_cache and node.row.show is not None
                and node.row.name not in LIVE_FILES)

    def _render(self, node: CgroupFileNode) -> bytes | None:
        try:
            return read_file(self.tree, node.cgroup, node.row)
        except DmemError:
            return None

    def _open_cached(self, node: CgroupFileNode) -> bool:
        """Before a read-only open returns: may the kernel keep what it caches of ``node``?

        If the content changed since the kernel last read it, no: the open drops the cached
        pages (``keep_cache`` off, done by the kernel in the opener's context) and the size is
        asked for again, so the read that follows fetches the new content.
        """
        if self._render(node) == node.shown:
            return True
        self._stale(node)
        return False

    async def _after_change(self, changed: Sequence[Cgroup] = ()) -> None:
        """After a request that may have changed the engine: refresh what the page cache
        holds of open files, wake pollers of files that changed, and tell --state the
        configuration of ``changed`` may differ (returning once that is saved). A splice
        reader's pages are dropped first (fs/splice.py)."""
        await self.splice.settled()
        self._settle()
        if changed and self.config_changed is not None:
            await self.config_changed(list(changed))

    def _settle(self) -> None:
        """The part of :meth:`_after_change` that needs no await."""
        if self._cached_open:
            self._refresh_cached()
        if self._pollers:
            self._wake_pollers()

    def _wake_pollers(self) -> None:
        for fh, (handle, poll_handle) in list(self._pollers.items()):
            if handle.event != handle.changes() or handle.node.gone:
                del self._pollers[fh]
                try:
                    poll_handle.notify()
                except OSError:
                    pass  # the waiter is gone

    def processes_exited(self, pids: list[int]) -> None:
        """Member processes exited (their exit records arrived): they leave their cgroups now,
        as in ``cgroup_exit()``, and pollers of ``cgroup.events`` wake up."""
        for pid in pids:
            self.tree.forget(pid)
        self._settle()

    def _refresh_cached(self) -> None:
        """Mark stale the cached pages of open files whose content is no longer what they show."""
        for node in self._cached_open:
            if node.shown is not None and self._render(node) != node.shown:
                self._stale(node)

    def _stale(self, node: CgroupFileNode) -> None:
        """The kernel's copy of ``node`` is out of date: give it a new mtime and make the
        kernel ask for the attributes again. (A file with times of its own, set by utime or
        chmod, gets the new mtime there: only a new mtime makes the kernel drop the pages.)

        Only the attributes are invalidated here: dropping pages (``attr_only=False``) or
        storing new ones (``notify_store``) must lock each page, and a reader may hold that
        lock while it waits for a READ this loop would never serve (a deadlock). The pages
        are dropped by the kernel itself, in the reader's context, when the next read (or
        stat) gets attributes with a new mtime (FUSE's auto_inval_data, on by default).
        """
        node.shown = None
        node.mtime_ns = max(time.time_ns(), node.mtime_ns + 1)
        stamp = self.tree.stamp(node.cgroup, node.row.name)
        if stamp is not None:
            self.tree.set_times(node.cgroup, node.row.name,
                                mtime=max(node.mtime_ns, stamp.mtime + 1))
        try:
            pyfuse3.invalidate_inode(node.ino, attr_only=True)
        except OSError:
            pass  # the kernel dropped the inode meanwhile; it will ask again

    def _child(self, parent: Node, name: str) -> Node | None:
        """The node named ``name`` in directory ``parent`` (created on demand), or None."""
        if isinstance(parent, DynamicDir):
            return parent.child(name, self.inodes)
        if isinstance(parent, StaticDir):
            return parent.children.get(name)
        if isinstance(parent, CgroupDir):
            cg = parent.cgroup
            if cg.dying:
                return None
            child = cg.children.get(name)
            if child is not None:
                return self.inodes.cgroup_dir(child)
            row = lookup_file(self.tree, cg, name)
            if row is not None:
                return self.inodes.cgroup_file(cg, row)
            return None
        raise _err(errno.ENOTDIR)

    def _parent_of(self, node: Node) -> Node:
        if isinstance(node, StaticDir):
            return node.parent or node
        if isinstance(node, CgroupDir):
            parent = node.cgroup.parent
            if parent is None:
                return self.root
            return self.inodes.cgroup_dir(parent)
        raise _err(errno.ENOTDIR)

    def _entries(self, node: Node) -> list[tuple[str, Callable[[], Node]]]:
        """A snapshot of a directory's entries; nodes are made when they are listed."""
        if isinstance(node, DynamicDir):
            return node.entries(self.inodes)
        if isinstance(node, StaticDir):
            return [(name, functools.partial(_same, n)) for name, n in node.children.items()]
        if isinstance(node, CgroupDir):
            cg = node.cgroup
            if cg.dying:
                return []
            # kernfs lists a directory in the order of its name hashes (then names).
            file_node = self.inodes.cgroup_file
            dir_node = self.inodes.cgroup_dir
            files: list[tuple[tuple[int, str], Callable[[], Node]]] = [
                (key, functools.partial(file_node, cg, row)) for key, row in self._listed_rows(cg)]
            dirs: list[tuple[tuple[int, str], Callable[[], Node]]] = sorted(
                (((name_hash(name), name), functools.partial(dir_node, c))
                 for name, c in cg.children.items()), key=lambda t: t[0])
            return [(key[1], make) for key, make in heapq.merge(files, dirs, key=lambda t: t[0])]
        raise _err(errno.ENOTDIR)

    def _listed_rows(self, cg: Cgroup) -> list[tuple[tuple[int, str], CgroupFile]]:
        """The files of ``cg`` with their sort keys, in listing order (cached per shape)."""
        shape = files_shape(cg)
        rows = self._rows_by_shape.get(shape)
        if rows is None:
            rows = sorted(((name_hash(r.name), r.name), r) for r in files_of(self.tree, cg))
            self._rows_by_shape[shape] = rows
        return rows

    def _cgroup_dir(self, ino: int) -> Cgroup:
        node = self._node(ino)
        if isinstance(node, CgroupDir):
            if node.cgroup.dying:
                raise _err(errno.ENOENT)
            return node.cgroup
        if isinstance(node, StaticDir):
            raise _err(errno.EPERM)
        raise _err(errno.ENOTDIR)

    def _opener(self, ctx: pyfuse3.RequestContext, flags: int = os.O_RDONLY) -> Opener:
        return Opener(ctx.pid, ctx.uid, ctx.gid, self.host, flags)

    def _new_fh(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise _err(errno.EBADF) from None

    # -- lookups and attributes -----------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            node: Node | None = parent
        elif name == b"..":
            node = self._parent_of(parent)
        else:
            node = self._child(parent, _name(name))
        if node is None:
            raise _err(errno.ENOENT)
        node.lookups += 1
        return self._reply(node)

    @fuse_errors
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._reply(self._node(inode))

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        uid = attr.st_uid if fields.update_uid else None
        gid = attr.st_gid if fields.update_gid else None
        mode = attr.st_mode & 0o7777 if fields.update_mode else None
        if uid is not None or gid is not None or mode is not None:
            self._set_attr(node, uid, gid, mode)
        if (uid is not None or gid is not None or mode is not None or fields.update_atime
                or fields.update_mtime or fields.update_ctime):
            # kernfs_setattr(): every change stores times (ctime: now), explicit ones as given.
            self._set_times(node, attr.st_atime_ns if fields.update_atime else None,
                            attr.st_mtime_ns if fields.update_mtime else None)
            await self._after_change(
                [node.cgroup] if isinstance(node, CgroupDir | CgroupFileNode) else [])
        # Truncation (O_TRUNC, truncate(1)) is accepted and ignored, as kernfs does.
        return self._reply(node)

    def _set_times(self, node: Node, atime: int | None, mtime: int | None) -> None:
        if isinstance(node, CgroupDir | CgroupFileNode):
            if node.gone:
                raise _err(errno.ENOENT)
            name = node.row.name if isinstance(node, CgroupFileNode) else ""
            self.tree.set_times(node.cgroup, name, atime=atime, mtime=mtime)
        else:
            now = self.tree.clock()
            old = node.stamp or Stamp(now, now, now)
            node.stamp = Stamp(old.atime if atime is None else atime,
                               old.mtime if mtime is None else mtime, now)

    def _set_attr(self, node: Node, uid: int | None, gid: int | None, mode: int | None) -> None:
        if isinstance(node, CgroupDir):
            if node.gone:
                raise _err(errno.ENOENT)
            self.tree.set_dir_attr(node.cgroup, uid=uid, gid=gid, mode=mode)
        elif isinstance(node, CgroupFileNode):
            if node.gone:
                raise _err(errno.ENOENT)
            self.tree.set_file_attr(node.cgroup, node.row.name, uid=uid, gid=gid, mode=mode)
        elif isinstance(node, StaticDir | SpecialFile):
            old = node.attr
            node.attr = Attr(
                old.uid if uid is None else uid,
                old.gid if gid is None else gid,
                old.mode if mode is None else mode,
            )

    # -- directories ---------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not self.inodes.is_dir(node):
            raise _err(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirHandle(node)
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise _err(errno.EBADF)
        # Offsets index a snapshot taken when the listing starts (or is rewound), so
        # concurrent mkdir/rmdir never make an entry appear twice or be skipped.
        if start_id == 0 or handle.entries is None:
            node = handle.node
            handle.entries = [(".", functools.partial(_same, node)),
                              ("..", functools.partial(self._parent_of, node)),
                              *self._entries(node)]
        entries = handle.entries
        for i in range(start_id, len(entries)):
            name, make = entries[i]
            child = make()
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._reply(child), i + 1):
                break
            if i >= 2:  # the kernel takes no reference for "." and ".." (fuse_direntplus_link)
                child.lookups += 1

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._cgroup_dir(parent_inode)
        creds = Creds(ctx.uid, ctx.gid)
        child = self.tree.mkdir(parent, _name(name), creds, mode & 0o7777 & ~ctx.umask)
        await self._after_change([child])
        node = self.inodes.cgroup_dir(child)
        node.lookups += 1
        return self._reply(node)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        static = self._node(parent_inode)
        if isinstance(static, StaticDir):
            node = static.children.get(_name(name))
            if node is None:
                raise _err(errno.ENOENT)
            # The cgroup root cannot go (like a cgroup2 mount's root); the layout is fixed.
            raise _err(errno.EBUSY if node is self.cgroup_root else errno.EPERM)
        parent = self._cgroup_dir(parent_inode)
        child = parent.children.get(_name(name))
        if child is None:
            is_file = lookup_file(self.tree, parent, _name(name)) is not None
            raise _err(errno.ENOTDIR if is_file else errno.ENOENT)
        self.host.prune(child)
        self.tree.rmdir(child)
        await self._after_change([child])

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise _err(errno.EPERM)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._child(self._node(parent_inode), _name(name))
        raise _err(errno.ENOENT if node is None else errno.EPERM)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        # kernfs directories have no ->create: the VFS answers EACCES (root included).
        raise _err(errno.EACCES)

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        # A regular file goes through ->create (EACCES), anything else through ->mknod (EPERM).
        raise _err(errno.EACCES if stat.S_ISREG(mode) or not stat.S_IFMT(mode) else errno.EPERM)

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _err(errno.EPERM)

    @fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _err(errno.EPERM)

    # -- files ------------------------------------------------------------------------------

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if self.inodes.is_dir(node):
            raise _err(errno.EISDIR)
        if node.gone:
            raise _err(errno.ENODEV)
        wants_write = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        wants_read = flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)
        opener = self._opener(ctx, flags)
        opener.ino = inode
        handle: Handle
        if isinstance(node, CgroupFileNode):
            if not node.row.exists(self.tree, node.cgroup):
                raise _err(errno.ENOENT)  # e.g. a dmem file of a cgroup whose parent did -dmem
            # Whoever passed the VFS's permission check (mode bits; root passes) may open any
            # file for any access: cgroupfs has none of sysfs's extra open checks. A read or a
            # write the file has no handler for fails later with EINVAL.
            if not wants_write and self._cacheable(node):
                keep = self._open_cached(node)
                self._cached_open[node] = self._cached_open.get(node, 0) + 1
                fh = self._new_fh(CachedFileHandle(opener, node))
                return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=keep)
            handle = CgroupFileHandle(opener, node)
        elif isinstance(node, SpecialFile):
            handle = node.open_handle(opener, flags)
        else:
            raise _err(errno.EINVAL)
        if wants_read:
            await self.splice.opening(inode)
        if flags & os.O_TRUNC:
            self.splice.truncated(inode)
        return pyfuse3.FileInfo(fh=self._new_fh(handle), direct_io=True, keep_cache=False)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        page_cache = self.splice.is_page_cache_read(fh)  # first: before any await
        handle = self._handle(fh)
        if page_cache is None:
            # Unknown: a snapshot's page-cache handling serves read() too, a reply's does not.
            page_cache = not isinstance(handle, QueryHandle)
        if not page_cache or isinstance(handle, CachedFileHandle):
            return handle.read(off, size)
        if isinstance(handle, QueryHandle):
            data, rest = handle.page_read(off, size)
        else:
            data = handle.read(off, size)
            rest = handle.buf[off + size:] if off == 0 and handle.buf else b""
        await self.splice.read(handle.opener.ino, off + size, rest,
                               drop=not isinstance(handle, QueryHandle))
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        call = self._call(fh)  # first: the request is only ours until the first await
        handle = self._handle(fh)
        handle.opener.position = off
        written = 0
        try:
            written = handle.write(buf, Call(handle.opener, *call))
        finally:
            # Even a failed write may have changed something (6.14 applies lines up to the
            # first bad one). Device ioctls change usage, not configuration; +dmem/-dmem
            # changes the children's dmem files too.
            await self._after_change(_configured_by(handle))
            if isinstance(handle, QueryHandle):
                # The reply (or a failure's reason) is where the file position is now.
                handle.reply_at, handle.placed = off + written, b""
                await self.splice.reply_written(handle.opener.ino, handle.reply_at)
        if isinstance(handle, CgroupFileHandle) and handle.row.name == "cgroup.subtree_control":
            await self._controller_files_changed(handle.node.cgroup)
        if isinstance(handle, CgroupFileHandle) and handle.row.name == "cgroup.pressure":
            await self._pressure_files_changed(handle.node.cgroup)
        return written

    @staticmethod
    def _call(fh: int) -> tuple[int | None, int | None]:
        """(thread id, file flags) of the WRITE request being handled, if it can be read."""
        req = request.current()
        if req is None or req.fh != fh:
            return None, None
        return req.pid or None, req.flags

    async def _controller_files_changed(self, cgroup: Cgroup) -> None:
        """+dmem/-dmem in ``cgroup`` made the children's dmem files appear (owned by the
        writer) or vanish: drop what the kernel caches of them before the write returns.

        Done in a worker thread while this task awaits it: the kernel may need other requests
        served (a lookup holding a child directory's lock) before it can take the notice.
        """
        entries: list[tuple[int, bytes]] = []
        attrs: list[int] = []
        for child in cgroup.children.values():
            self._files_changed(child, CONTROLLER_FILES, entries, attrs)
        if entries or attrs:
            await trio.to_thread.run_sync(_invalidate, entries, attrs)

    def _files_changed(self, cgroup: Cgroup, rows: Sequence[CgroupFile],
                       entries: list[tuple[int, bytes]], attrs: list[int]) -> None:
        """Some of ``rows`` appeared in, vanished from, or changed owner in ``cgroup``: add
        what the kernel caches of them (and the directory's times, if it keeps its own) to
        ``entries`` and ``attrs`` to invalidate."""
        dir_node = self.inodes.peek_cgroup_dir(cgroup)
        if dir_node is None:
            return  # the kernel knows nothing under it
        if self.tree.stamp(cgroup, "") is not None:
            attrs.append(dir_node.ino)
        for row in rows:
            node = self.inodes.peek_cgroup_file(cgroup, row.name)
            if node is None:
                continue
            if row.exists(self.tree, cgroup):
                attrs.append(node.ino)
            else:
                entries.append((dir_node.ino, row.name.encode()))

    async def _pressure_files_changed(self, cgroup: Cgroup) -> None:
        """cgroup.pressure hid or showed the pressure files of ``cgroup``."""
        entries: list[tuple[int, bytes]] = []
        self._files_changed(cgroup, PRESSURE_FILES, entries, [])
        if entries:
            await trio.to_thread.run_sync(_invalidate, entries, [])

    @fuse_errors
    async def poll(self, inode: int, fh: int, poll_handle: pyfuse3.PollHandle | None,
                   ctx: pyfuse3.RequestContext) -> int:
        handle = self._handle(fh)
        if not isinstance(handle, CgroupFileHandle):
            return DEFAULT_POLLMASK
        if handle.row.psi is not None:
            # A trigger would add POLLPRI when it fires; nothing is measured that could.
            return DEFAULT_POLLMASK if handle.opener.psi_trigger else DEFAULT_POLLMASK | CHANGED
        if handle.event != handle.changes():
            return DEFAULT_POLLMASK | CHANGED
        if poll_handle is not None and handle.row.name == "cgroup.events":
            self._pollers[fh] = (handle, poll_handle)
        return DEFAULT_POLLMASK

    @fuse_errors
    async def release(self, fh: int) -> None:
        self._pollers.pop(fh, None)
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.release()
        if isinstance(handle, CachedFileHandle):
            n = self._cached_open.pop(handle.node, 1) - 1
            if n:
                self._cached_open[handle.node] = n
        else:
            await self._after_change()  # closing a device file frees its buffers

    # -- extended attributes (kernfs: user.*, trusted.*, security.* on dirs and files) -------

    def _xattr_target(self, inode: int) -> tuple[Cgroup, str]:
        """The cgroup and file name ("" for the directory) that holds ``inode``'s xattrs."""
        node = self._node(inode)
        if not isinstance(node, CgroupDir | CgroupFileNode):
            raise _err(errno.EOPNOTSUPP)  # the mount's own layout keeps none
        if node.gone:
            raise _err(errno.ENOENT)
        return node.cgroup, (node.row.name if isinstance(node, CgroupFileNode) else "")

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        cg, target = self._xattr_target(inode)
        check_xattr(_name(name))
        value = self.tree.xattrs_of(cg, target).get(_name(name))
        if value is None:
            raise _err(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        cg, target = self._xattr_target(inode)
        self.tree.set_xattrs(cg, target,
                             set_xattr(self.tree.xattrs_of(cg, target), _name(name), value))
        await self._after_change([cg])

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self._node(inode)
        if not isinstance(node, CgroupDir | CgroupFileNode) or node.gone:
            return []
        cg, target = self._xattr_target(inode)
        names = list(self.tree.xattrs_of(cg, target))
        if any(n.startswith("trusted.") for n in names):
            # simple_xattr_list() shows trusted.* only to callers with CAP_SYS_ADMIN.
            caller = Creds(ctx.uid, ctx.gid, caps=capabilities(ctx.pid))
            if not caller.capable(CAP_SYS_ADMIN):
                names = [n for n in names if not n.startswith("trusted.")]
        return [os.fsencode(n) for n in names]

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        cg, target = self._xattr_target(inode)
        check_xattr(_name(name))
        xattrs = dict(self.tree.xattrs_of(cg, target))
        if xattrs.pop(_name(name), None) is None:
            raise _err(pyfuse3.ENOATTR)
        self.tree.set_xattrs(cg, target, xattrs)
        await self._after_change([cg])

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.inodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s
