"""dma-buf sharing between simulated devices (``drivers/dma-buf/dma-buf.c``).

A :class:`DmaBuf` is a buffer object one device exported; other devices attach to it. This
module is the dma-buf core: references and lifetime, the three kinds of importer, pinning,
mapping and the move notification. What the exporter does on pin, unpin and map is xe's
business (``xe_dma_buf.c``, in :mod:`dmemfs.device.xe`), reached through :class:`Exporter`.
docs/kernel-model.md §16 lists the rules.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

from dmemfs.device.ttm import OperationCtx


class Importer(enum.Enum):
    """How an importer attaches (``struct dma_buf_attach_ops`` or none)."""

    #: Another GPU: a dynamic importer that allows peer-to-peer and has ``move_notify``; it
    #: does not pin, the exporter may move the buffer, and the importer maps it again.
    DYNAMIC = "dynamic"
    #: A device that pins its mapping (``dma_buf_pin``), as an RDMA NIC does: peer-to-peer
    #: allowed, ``move_notify`` unsupported.
    PIN = "pin"
    #: A non-dynamic importer (``dma_buf_attach``): no peer-to-peer; the core pins and maps
    #: the buffer at attach time because the exporter is dynamic.
    STATIC = "static"


class Exporter(Protocol):
    """The exporting driver's ``struct dma_buf_ops`` (only what the simulation needs)."""

    def attach(self, attachment: Attachment) -> None:
        """``ops->attach``: may refuse (raise) or clear ``attachment.p2p``."""
        ...

    def pin(self, attachment: Attachment, ctx: OperationCtx) -> None:
        """``ops->pin``: keep the buffer where the importer can use it; may raise. ``ctx``
        is the call that pins it (it pays if the buffer has to come back to VRAM)."""
        ...

    def unpin(self, attachment: Attachment) -> None:
        """``ops->unpin``."""
        ...

    def map(self, attachment: Attachment, ctx: OperationCtx) -> None:
        """``ops->map_dma_buf``: make the buffer usable by the importer; ``ctx`` is the call
        that maps it."""
        ...

    def describe(self) -> str:
        """One line for the debug view (where the buffer lives, who exported it)."""
        ...


class Attachment:
    """``struct dma_buf_attachment``: one importer of one dma-buf."""

    __slots__ = ("dmabuf", "importer", "kind", "mapped", "p2p", "pinned", "stalls")

    def __init__(self, dmabuf: DmaBuf, kind: Importer, importer: object, p2p: bool) -> None:
        self.dmabuf = dmabuf
        self.kind = kind
        #: The importing side (xe: the importer's GEM object), opaque here.
        self.importer = importer
        #: ``attach->peer2peer``: the importer may use the buffer in the exporter's VRAM.
        self.p2p = p2p
        self.pinned = False
        #: A mapping is held (dynamic importers lose it when the buffer moves).
        self.mapped = False
        #: Times the buffer moved while attached (a simulation counter: the kernel only
        #: calls ``move_notify``, and the importer waits to map the buffer again).
        self.stalls = 0

    @property
    def dynamic(self) -> bool:
        return self.kind is not Importer.STATIC


class DmaBuf:
    """``struct dma_buf``: an exported buffer, alive while anything references it."""

    __slots__ = ("attachments", "exporter", "gid", "id", "mode", "on_release", "refs", "size",
                 "uid")

    def __init__(self, table: DmaBufTable, exporter: Exporter, size: int, uid: int,
                 gid: int) -> None:
        self.id = next(table.ids)
        self.exporter = exporter
        self.size = size
        #: Owner and mode of ``MOUNT/dev/dma_buf/ID`` (the exporter's file, 0600).
        self.uid = uid
        self.gid = gid
        self.mode = 0o600
        self.attachments: list[Attachment] = []
        #: References: open files of it, the exporting handle's, each importing handle's.
        self.refs = 0
        self.on_release: list[Callable[[DmaBuf], None]] = []
        table.bufs[self.id] = self

    # -- references (get_dma_buf / dma_buf_put) --------------------------------------------

    def get(self) -> None:
        self.refs += 1

    def put(self, table: DmaBufTable) -> None:
        self.refs -= 1
        if self.refs <= 0 and table.bufs.get(self.id) is self:
            del table.bufs[self.id]
            for callback in self.on_release:
                callback(self)

    # -- attach / detach (dma_buf_dynamic_attach, dma_buf_detach) -------------------------

    def attach(self, kind: Importer, importer: object, p2p: bool, ctx: OperationCtx
               ) -> Attachment:
        """Attach an importer (``p2p``: both devices can do peer-to-peer). A non-dynamic
        importer of this (dynamic) exporter gets the buffer pinned and mapped at once, as
        the core caches its mapping."""
        a = Attachment(self, kind, importer, p2p and kind is not Importer.STATIC)
        self.exporter.attach(a)  # may raise (EOPNOTSUPP)
        self.attachments.append(a)
        if kind is Importer.STATIC:
            try:
                self.pin(a, ctx)
                self.map(a, ctx)
            except BaseException:
                self.detach(a)
                raise
        return a

    def detach(self, a: Attachment) -> None:
        if a.pinned:
            self.unpin(a)
        a.mapped = False
        if a in self.attachments:
            self.attachments.remove(a)

    # -- pin / map ------------------------------------------------------------------------------

    def pin(self, a: Attachment, ctx: OperationCtx) -> None:
        """``dma_buf_pin``."""
        self.exporter.pin(a, ctx)
        a.pinned = True

    def unpin(self, a: Attachment) -> None:
        """``dma_buf_unpin``."""
        a.pinned = False
        self.exporter.unpin(a)

    def map(self, a: Attachment, ctx: OperationCtx) -> None:
        """``dma_buf_map_attachment`` for the importer's use (import, a later EXEC)."""
        self.exporter.map(a, ctx)
        a.mapped = True

    def move_notify(self) -> list[Attachment]:
        """``dma_buf_move_notify``: the buffer moved. It is called for every dynamic
        importer with ``move_notify``; each counts a stall and loses its mapping (its next
        use maps the buffer again). Returns those importers."""
        stalled = [a for a in self.attachments if a.kind is Importer.DYNAMIC]
        for a in stalled:
            a.mapped = False
            a.stalls += 1
        return stalled

    @property
    def stalls(self) -> int:
        return sum(a.stalls for a in self.attachments)


class DmaBufTable:
    """Every live dma-buf of a mount by id (``MOUNT/dev/dma_buf/ID``)."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.bufs: dict[int, DmaBuf] = {}

    def get(self, dmabuf_id: int) -> DmaBuf | None:
        return self.bufs.get(dmabuf_id)

    def __iter__(self) -> Iterator[DmaBuf]:
        return iter(list(self.bufs.values()))
