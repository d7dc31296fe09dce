"""Explicit inodes with exact lookup counts.

Every node the kernel knows has an inode number and a lookup count. Cgroup directories and
interface files get a node when first looked up (or listed) and lose it when the kernel has
forgotten it, so a removed cgroup's nodes stay valid for as long as the kernel holds them.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyfuse3

from dmemfs.engine.cgroup import Attr, Cgroup, CgroupTree
from dmemfs.engine.files import CgroupFile
from dmemfs.engine.kernfs import Stamp

if TYPE_CHECKING:
    from dmemfs.fs.handles import Handle, Opener

ROOT_INODE = pyfuse3.ROOT_INODE


class Node:
    __slots__ = ("ino", "lookups", "mtime_ns", "stamp")

    #: Static nodes are never dropped from the table.
    persistent = False
    #: The kernel must ask about this node at every lookup and stat (no cached entry or
    #: attributes): it may vanish at any time without a request to this mount.
    volatile = False

    def __init__(self) -> None:
        self.ino = 0
        self.lookups = 0
        self.mtime_ns = time.time_ns()
        #: Times set on a static node (cgroup nodes keep theirs in the engine).
        self.stamp: Stamp | None = None

    @property
    def gone(self) -> bool:
        """True once the object behind this node was removed (the kernel may still hold it)."""
        return False


class StaticDir(Node):
    """A directory of the mount's fixed layout (``/``, ``dev/dri``, ``debug`` …)."""

    __slots__ = ("attr", "children", "parent")
    persistent = True

    def __init__(self, parent: Node | None, attr: Attr | None = None) -> None:
        super().__init__()
        self.parent = parent
        self.attr = attr or Attr(0, 0, 0o755)
        self.children: dict[str, Node] = {}


class CgroupDir(Node):
    __slots__ = ("cgroup",)

    def __init__(self, cgroup: Cgroup) -> None:
        super().__init__()
        self.cgroup = cgroup

    @property
    def gone(self) -> bool:
        return self.cgroup.dying


class RootCgroupDir(CgroupDir):
    """``MOUNT/cgroup``: part of the fixed layout, never dropped."""

    __slots__ = ()
    persistent = True


class CgroupFileNode(Node):
    __slots__ = ("cgroup", "row", "shown")

    def __init__(self, cgroup: Cgroup, row: CgroupFile) -> None:
        super().__init__()
        self.cgroup = cgroup
        self.row = row
        #: With --page-cache: the content the kernel's page cache holds (None: unknown).
        self.shown: bytes | None = None

    @property
    def gone(self) -> bool:
        return self.cgroup.dying


class SpecialFile(Node):
    """A file served by a handle factory: device control files and debug views."""

    __slots__ = ("attr", "open_handle")
    persistent = True

    def __init__(self, attr: Attr, open_handle: Callable[[Opener, int], Handle]) -> None:
        super().__init__()
        self.attr = attr
        self.open_handle = open_handle


class DynamicDir(StaticDir):
    """A directory of the fixed layout whose entries come and go without a request to the
    mount (``dev/dma_buf``). Its entries are :class:`DynamicFile` nodes, made on lookup and
    dropped when the kernel forgets them."""

    __slots__ = ()

    def child(self, name: str, inodes: InodeTable) -> Node | None:
        raise NotImplementedError

    def entries(self, inodes: InodeTable) -> list[tuple[str, Callable[[], Node]]]:
        raise NotImplementedError

    def dropped(self, node: DynamicFile) -> None:
        """``node`` left the inode table."""


class DynamicFile(SpecialFile):
    """An entry of a :class:`DynamicDir`."""

    __slots__ = ("directory",)
    persistent = False
    volatile = True

    def __init__(self, directory: DynamicDir, attr: Attr,
                 open_handle: Callable[[Opener, int], Handle]) -> None:
        super().__init__(attr, open_handle)
        self.directory = directory


class InodeTable:
    def __init__(self, tree: CgroupTree) -> None:
        self.tree = tree
        self._nodes: dict[int, Node] = {}
        self._cgroup_dirs: dict[Cgroup, CgroupDir] = {}
        self._cgroup_files: dict[tuple[Cgroup, str], CgroupFileNode] = {}
        self._next = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._nodes)

    def add(self, node: Node, ino: int | None = None) -> Node:
        if ino is None:
            ino = self._next
            self._next += 1
        node.ino = ino
        self._nodes[ino] = node
        return node

    def get(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def cgroup_dir(self, cgroup: Cgroup) -> CgroupDir:
        node = self._cgroup_dirs.get(cgroup)
        if node is None:
            node = CgroupDir(cgroup) if cgroup.parent is not None else RootCgroupDir(cgroup)
            self.add(node)
            self._cgroup_dirs[cgroup] = node
        return node

    def cgroup_file(self, cgroup: Cgroup, row: CgroupFile) -> CgroupFileNode:
        key = (cgroup, row.name)
        node = self._cgroup_files.get(key)
        if node is None or node.row is not row:
            node = CgroupFileNode(cgroup, row)
            self.add(node)
            self._cgroup_files[key] = node
        return node

    def peek_cgroup_dir(self, cgroup: Cgroup) -> CgroupDir | None:
        return self._cgroup_dirs.get(cgroup)

    def peek_cgroup_file(self, cgroup: Cgroup, name: str) -> CgroupFileNode | None:
        return self._cgroup_files.get((cgroup, name))

    def forget(self, ino: int, n: int) -> None:
        node = self._nodes.get(ino)
        if node is None:
            return
        node.lookups = max(0, node.lookups - n)
        if node.lookups == 0 and not node.persistent:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        del self._nodes[node.ino]
        if isinstance(node, CgroupDir):
            if self._cgroup_dirs.get(node.cgroup) is node:
                del self._cgroup_dirs[node.cgroup]
        elif isinstance(node, CgroupFileNode):
            key = (node.cgroup, node.row.name)
            if self._cgroup_files.get(key) is node:
                del self._cgroup_files[key]
        elif isinstance(node, DynamicFile):
            node.directory.dropped(node)

    # -- attributes ---------------------------------------------------------------------------

    def attr_of(self, node: Node) -> Attr:
        if isinstance(node, CgroupDir):
            return node.cgroup.attr
        if isinstance(node, CgroupFileNode):
            return self.tree.file_attr(node.cgroup, node.row.name)
        if isinstance(node, StaticDir | SpecialFile):
            return node.attr
        raise TypeError(node)

    def is_dir(self, node: Node) -> bool:
        return isinstance(node, StaticDir | CgroupDir)

    def stamp_of(self, node: Node) -> Stamp | None:
        """Times set on a cgroup directory or interface file (they outlive the node)."""
        if isinstance(node, CgroupDir):
            return self.tree.stamp(node.cgroup, "")
        if isinstance(node, CgroupFileNode):
            return self.tree.stamp(node.cgroup, node.row.name)
        return node.stamp

    def nlink(self, node: Node) -> int:
        """Like kernfs: a directory has 2 links plus one per subdirectory; a removed cgroup
        keeps the count it had."""
        if isinstance(node, CgroupDir):
            return 2 + (0 if node.cgroup.dying else len(node.cgroup.children))
        if isinstance(node, StaticDir):
            return 2 + sum(1 for c in node.children.values() if self.is_dir(c))
        return 1

    def entry(self, node: Node, timeout: float) -> pyfuse3.EntryAttributes:
        if node.volatile:
            timeout = 0.0
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = timeout
        e.attr_timeout = timeout
        if type(node) is CgroupFileNode:  # most entries: the fast path of a listing
            cg, name = node.cgroup, node.row.name
            if cg.file_attrs and name in cg.file_attrs:
                a = cg.file_attrs[name]
                e.st_mode, e.st_uid, e.st_gid = stat.S_IFREG | a.mode, a.uid, a.gid
            else:
                e.st_mode = stat.S_IFREG | node.row.mode
                e.st_uid, e.st_gid = (cg.dmem_owner if node.row.controller == "dmem"
                                      else cg.files_owner)
            e.st_nlink = 1
            stamp = cg.stamps.get(name) if cg.stamps else None
        else:
            a = self.attr_of(node)
            e.st_mode = (stat.S_IFDIR if self.is_dir(node) else stat.S_IFREG) | a.mode
            e.st_uid, e.st_gid = a.uid, a.gid
            e.st_nlink = self.nlink(node)
            stamp = self.stamp_of(node)
        e.st_rdev = 0
        e.st_size = 0
        e.st_blksize = 4096
        e.st_blocks = 0
        if stamp is None:  # no times of its own: those of the inode's creation, like kernfs
            e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = node.mtime_ns
        else:
            e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = stamp.atime, stamp.mtime, stamp.ctime
        return e
