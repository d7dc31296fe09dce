"""``MOUNT/dev/dma_buf``: one file per exported dma-buf, named by its id.

PRIME_EXPORT replies with an id; the file ``dev/dma_buf/ID`` stands for the dma-buf's file
descriptor. Holding it open holds a reference to the dma-buf (as a dma-buf fd does), so the
buffer outlives the exporter's handle; another process imports it either by id
(``PRIME_IMPORT dmabuf=ID``: the caller must be able to open the file) or by the descriptor
it holds open (``PRIME_IMPORT fd=N``, which works after the descriptor was passed over a
Unix socket). An entry goes when its dma-buf is released; the kernel asks again at every
lookup (the entries are volatile), so it never sees a stale one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from dmemfs.device.dmabuf import DmaBuf, DmaBufTable
from dmemfs.engine.cgroup import Attr
from dmemfs.fs.handles import Handle, Opener
from dmemfs.fs.inodes import DynamicDir, DynamicFile, InodeTable, Node


class DmaBufFile(DynamicFile):
    """The file of one dma-buf; its owner and mode are the dma-buf's (the exporter, 0600)."""

    __slots__ = ("dmabuf", "table")

    def __init__(self, directory: DmaBufDir, table: DmaBufTable, dmabuf: DmaBuf) -> None:
        self.dmabuf = dmabuf
        self.table = table
        super().__init__(directory, Attr(dmabuf.uid, dmabuf.gid, dmabuf.mode), self._open)

    @property
    def attr(self) -> Attr:
        return Attr(self.dmabuf.uid, self.dmabuf.gid, self.dmabuf.mode)

    @attr.setter
    def attr(self, value: Attr) -> None:
        self.dmabuf.uid, self.dmabuf.gid, self.dmabuf.mode = value.uid, value.gid, value.mode

    @property
    def gone(self) -> bool:
        return self.table.get(self.dmabuf.id) is not self.dmabuf

    def _open(self, opener: Opener, flags: int) -> Handle:
        return DmaBufHandle(opener, self.table, self.dmabuf)


class DmaBufHandle(Handle):
    """An open dma-buf file: a reference to the dma-buf; reading it describes the buffer."""

    __slots__ = ("dmabuf", "table")

    def __init__(self, opener: Opener, table: DmaBufTable, dmabuf: DmaBuf) -> None:
        super().__init__(opener)
        self.table = table
        self.dmabuf = dmabuf
        dmabuf.get()

    def render(self) -> bytes:
        return describe(self.dmabuf).encode()

    def release(self) -> None:
        self.dmabuf.put(self.table)


def describe(dmabuf: DmaBuf) -> str:
    """What an open dma-buf file reads: the buffer, then one line per importer."""
    lines = [f"dmabuf={dmabuf.id} size={dmabuf.size} refs={dmabuf.refs} "
             f"exporter={dmabuf.exporter.describe()}\n"]
    for a in dmabuf.attachments:
        lines.append(f"importer={a.kind.value} p2p={int(a.p2p)} pinned={int(a.pinned)} "
                     f"mapped={int(a.mapped)} stalls={a.stalls}\n")
    return "".join(lines)


class DmaBufDir(DynamicDir):
    """``dev/dma_buf``: the live dma-bufs of the mount."""

    __slots__ = ("files", "table")

    def __init__(self, parent: Node, table: DmaBufTable) -> None:
        super().__init__(parent, Attr(0, 0, 0o755))
        self.table = table
        #: The node the kernel knows for each dma-buf id.
        self.files: dict[int, DmaBufFile] = {}

    def _file(self, dmabuf: DmaBuf, inodes: InodeTable) -> DmaBufFile:
        node = self.files.get(dmabuf.id)
        if node is None or node.dmabuf is not dmabuf:
            node = DmaBufFile(self, self.table, dmabuf)
            inodes.add(node)
            self.files[dmabuf.id] = node
        return node

    def child(self, name: str, inodes: InodeTable) -> Node | None:
        if not (name.isascii() and name.isdigit()) or name != str(int(name)):
            return None
        dmabuf = self.table.get(int(name))
        return self._file(dmabuf, inodes) if dmabuf is not None else None

    def entries(self, inodes: InodeTable) -> list[tuple[str, Callable[[], Node]]]:
        return [(str(b.id), functools.partial(self._file, b, inodes)) for b in self.table]

    def dropped(self, node: DynamicFile) -> None:
        assert isinstance(node, DmaBufFile)
        if self.files.get(node.dmabuf.id) is node:
            del self.files[node.dmabuf.id]
