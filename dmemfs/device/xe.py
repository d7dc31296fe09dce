"""The simulated xe GPU: its DRM clients, their handles, and the uAPI checks of each ioctl.

Objects and validation only, as drivers/gpu/drm/xe/xe_bo.c, xe_gem.c and xe_dma_buf.c hold
them: where a buffer object lives and who is evicted is decided in :mod:`dmemfs.device.ttm`,
and sharing between devices goes through the dma-buf core in :mod:`dmemfs.device.dmabuf`;
this module calls both (never the other way round). docs/kernel-model.md §12 and §16 list
the rules.
"""

from __future__ import annotations

import enum
import itertools
import logging

from dmemfs.device import ttm
from dmemfs.device.config import SYSTEM_PAGE, VRAM_PAGE, DeviceConfig
from dmemfs.device.dmabuf import Attachment, DmaBuf, DmaBufTable, Importer
from dmemfs.engine.cgroup import Attr, Cgroup, CgroupTree, Creds
from dmemfs.engine.dmem import DmemCss
from dmemfs.errors import (
    Busy,
    InvalidArgument,
    NoMemory,
    NotFound,
    NotPermitted,
    NotSupported,
)

log = logging.getLogger(__name__)


class Flag(enum.Enum):
    DEFER_BACKING = "DEFER_BACKING"
    SCANOUT = "SCANOUT"
    NEEDS_VISIBLE_VRAM = "NEEDS_VISIBLE_VRAM"
    #: The pinning RFC's DRM_XE_GEM_CREATE_FLAG_PINNED (absent with ``--pinning off``).
    PINNED = "PINNED"


class Caching(enum.Enum):
    WB = "wb"
    WC = "wc"


SYSTEM = "system"
#: BOs one client may hold at once; one more GEM_CREATE fails with ENOMEM. The kernel has no
#: such number (a BO costs it memory it may fail to get); dmemfs needs ~0.8 KiB per BO.
MAX_BOS_PER_CLIENT = 1 << 18
#: xe retries a validation that failed with -ENOMEM (``xe_vm_validate_should_retry``: for a
#: second, in 20 ms sleeps). Nothing else runs meanwhile here, so a retry can only differ when
#: the previous attempt evicted something; at most this many are made.
ENOMEM_RETRIES = 50


class XeBo(ttm.BufferObject):
    """A GEM buffer object (``struct xe_bo``), created by one client.

    Its references (``refs``) are the handles naming it in any client and the dma-buf it was
    exported as; it is freed when the last one goes. An imported BO (``import_attach`` set)
    has no memory of its own: it is the importing device's view of another device's BO.
    """

    __slots__ = ("client", "dma_buf", "flags", "handle", "import_attach", "refs", "rfc_pin",
                 "vm_id")

    def __init__(self, client: Client, handle: int, size: int, places: tuple[ttm.Place, ...],
                 flags: frozenset[Flag], vm_id: int) -> None:
        super().__init__(client.device, size, places)
        self.client = client
        self.handle = handle
        self.flags = flags
        self.vm_id = vm_id
        self.refs = 1
        #: The dma-buf this BO was exported as (``obj->dma_buf``).
        self.dma_buf: DmaBuf | None = None
        #: For an imported BO: its attachment to the exporter's dma-buf.
        self.import_attach: Attachment | None = None
        #: The RFC's pin taken at creation is still held (dmem pin + TTM pin).
        self.rfc_pin = False

    @property
    def exported_bo(self) -> XeBo:
        """The BO whose memory this handle uses: itself, or the exporter's for an import."""
        if self.import_attach is not None:
            exporter = self.import_attach.dmabuf.exporter
            assert isinstance(exporter, XeExport)
            return exporter.bo
        return self

    def __repr__(self) -> str:
        return f"XeBo({self.client.pid}:{self.handle}, {self.size}, {self.placement})"


class Client:
    """One open of the device file (``struct drm_file``): its handles and VMs."""

    def __init__(self, device: Device, pid: int, uid: int) -> None:
        self.device = device
        #: The process and user that opened the device file.
        self.pid = pid
        self.uid = uid
        self.bos: dict[int, XeBo] = {}
        #: ``file_priv->prime``: the dma-buf each handle was exported as or imported from
        #: (each holds a reference on it until the handle is closed).
        self.prime: dict[int, DmaBuf] = {}
        self.vms: set[int] = set()
        self._handles = itertools.count(1)
        self._vm_ids = itertools.count(1)

    def prime_handle(self, dmabuf: DmaBuf) -> int | None:
        """``drm_prime_lookup_buf_handle``: this client's handle for ``dmabuf``, if any."""
        for handle, known in self.prime.items():
            if known is dmabuf:
                return handle
        return None

    def new_handle(self) -> int:
        return next(self._handles)

    def new_vm(self) -> int:
        vm = next(self._vm_ids)
        self.vms.add(vm)
        return vm


class Device(ttm.TtmDevice):
    """One simulated xe device at a PCI address (``struct xe_device``)."""

    def __init__(self, config: DeviceConfig, minor: int, tree: CgroupTree, *,
                 fast_path: int | None = ttm.FAST_PATH,
                 dmabufs: DmaBufTable | None = None) -> None:
        super().__init__(tree.dmem, tree.profile, config.system, fast_path=fast_path)
        self.config = config
        self.pci = config.pci
        self.minor = minor
        self.tree = tree
        for i, (name, size) in enumerate(zip(config.region_names(), config.vram, strict=True)):
            self.add_vram(f"vram{i}", size, name)
        self.clients: list[Client] = []
        #: Every dma-buf of the mount (shared by its devices).
        self.dmabufs = dmabufs if dmabufs is not None else DmaBufTable()
        #: Stalls of this device's dynamic importers, by the importer's cgroup.
        self.stalls: dict[Cgroup, int] = {}

    @property
    def node_name(self) -> str:
        return f"renderD{128 + self.minor}"

    def region(self, name: str) -> ttm.VramManager:
        for man in self.vram:
            if man.name == name:
                return man
        raise InvalidArgument(f"{self.pci} has no region {name!r}")

    # -- clients ---------------------------------------------------------------------------

    def open(self, pid: int, uid: int = 0) -> Client:
        client = Client(self, pid, uid)
        self.clients.append(client)
        return client

    def close(self, client: Client) -> None:
        """The file was closed: every handle of the client goes (kill -9 included)."""
        for handle in list(client.bos):
            self.handle_close(client, handle)
        self.clients.remove(client)

    def all_bos(self) -> list[XeBo]:
        """Every BO a client of this device has a handle to (once each)."""
        seen: dict[XeBo, None] = {}
        for c in self.clients:
            for bo in c.bos.values():
                seen[bo] = None
        return list(seen)

    def handles(self) -> list[tuple[Client, int, XeBo]]:
        return [(c, h, bo) for c in self.clients for h, bo in c.bos.items()]

    # -- GEM_CREATE ----------------------------------------------------------------------

    def gem_create(
        self,
        client: Client,
        css: DmemCss,
        size: int,
        placement: tuple[str, ...],
        flags: frozenset[Flag] = frozenset(),
        cpu_caching: Caching | None = None,
        vm_id: int = 0,
    ) -> XeBo:
        """``DRM_IOCTL_XE_GEM_CREATE``: validate, create, place (charging ``css``), maybe pin."""
        places = self._validate(client, size, placement, flags, cpu_caching, vm_id)
        if len(client.bos) >= MAX_BOS_PER_CLIENT:
            raise NoMemory(f"this client holds {len(client.bos)} BOs, the most dmemfs allows")
        bo = XeBo(client, client.new_handle(), size, places, flags, vm_id)
        ctx = ttm.OperationCtx(css, client.pid, ticket=self.profile.protection_aware_eviction)
        if Flag.DEFER_BACKING in flags:
            self.place_in(bo, self.system)  # VRAM (and its dmem charge) only on first use
        else:
            self._validate_retrying(bo, ctx)
        if Flag.PINNED in flags:
            try:
                self.pin_charged(bo)
            except BaseException:
                self.release(bo)
                raise
            bo.rfc_pin = True
        client.bos[bo.handle] = bo
        return bo

    def _validate_retrying(self, bo: XeBo, ctx: ttm.OperationCtx) -> int:
        """``xe_bo_validate`` as its callers use it: retried on ENOMEM while it evicts."""
        evicted = 0
        for _ in range(ENOMEM_RETRIES):
            before = self.evicted_bytes
            try:
                return evicted + self.validate(bo, ctx)
            except NoMemory:
                evicted += self.evicted_bytes - before
                if self.evicted_bytes == before:
                    raise
        return evicted + self.validate(bo, ctx)

    def _validate(
        self,
        client: Client,
        size: int,
        placement: tuple[str, ...],
        flags: frozenset[Flag],
        cpu_caching: Caching | None,
        vm_id: int,
    ) -> tuple[ttm.Place, ...]:
        """The checks of ``xe_gem_create_ioctl`` in its order, and the RFC's for PINNED."""
        if not placement:
            raise InvalidArgument("placement is empty")
        if len(set(placement)) != len(placement):
            raise InvalidArgument("placement lists a region twice")
        vram = [self.region(p) for p in placement if p != SYSTEM]
        if Flag.PINNED in flags:
            if not self.profile.has_pinning:
                raise InvalidArgument("unknown flag PINNED (the pinning RFC is off)")
            if len(placement) != 1:
                raise InvalidArgument("PINNED needs exactly one placement")
            if vm_id:
                raise InvalidArgument("PINNED BOs are meant for export: vm_id must be 0")
            if Flag.DEFER_BACKING in flags:
                raise InvalidArgument("PINNED and DEFER_BACKING exclude each other")
        if size == 0 or size % SYSTEM_PAGE:
            raise InvalidArgument(f"size {size} is not a positive multiple of {SYSTEM_PAGE}")
        if Flag.NEEDS_VISIBLE_VRAM in flags and not vram:
            raise InvalidArgument("NEEDS_VISIBLE_VRAM without a VRAM placement")
        caching = cpu_caching or (Caching.WC if vram else Caching.WB)
        if vram and caching is not Caching.WC:
            raise InvalidArgument("VRAM placements need cpu_caching=wc")
        if Flag.SCANOUT in flags and caching is Caching.WB:
            raise InvalidArgument("SCANOUT needs cpu_caching=wc")
        if vm_id and vm_id not in client.vms:
            raise NotFound(f"no VM {vm_id}")
        if vram and size % VRAM_PAGE:
            raise InvalidArgument(f"size {size} is not a multiple of 64 KiB (VRAM pages)")
        # xe's order: VRAM first; system memory last, a FALLBACK when VRAM is possible.
        places = tuple(ttm.Place(m) for m in vram)
        if SYSTEM in placement:
            places += (ttm.Place(self.system, ttm.FALLBACK if vram else 0),)
        return places

    # -- GEM_CLOSE -------------------------------------------------------------------------

    def gem_close(self, client: Client, handle: int) -> None:
        if handle not in client.bos:
            raise InvalidArgument(f"no handle {handle}")
        self.handle_close(client, handle)

    def handle_close(self, client: Client, handle: int) -> None:
        """``drm_gem_handle_delete``: the driver's close hook, the handle's cached dma-buf
        reference, then the handle's reference on the BO."""
        bo = client.bos.pop(handle)
        if bo.rfc_pin and not bo.vm_id:
            # The RFC's xe_gem_object_close unpins on every handle close; with a second
            # handle to the same BO that would unpin twice. dmemfs unpins at the first.
            bo.rfc_pin = False
            self.unpin_charged(bo)
        dmabuf = client.prime.pop(handle, None)
        if dmabuf is not None:
            dmabuf.put(self.dmabufs)
        self.bo_put(bo)

    def bo_put(self, bo: XeBo) -> None:
        """Drop a reference; the last one frees the BO (an import detaches from its
        dma-buf and drops its reference on it)."""
        bo.refs -= 1
        if bo.refs > 0:
            return
        a = bo.import_attach
        if a is not None:
            a.dmabuf.detach(a)
            a.dmabuf.put(self.dmabufs)
            bo.import_attach = None
        bo.device.release(bo)

    # -- EXEC ------------------------------------------------------------------------------

    def exec(self, client: Client, css: DmemCss, bos: list[XeBo]) -> tuple[int, int]:
        """A GPU job that needs these BOs: each is validated into its places (charging
        ``css``), the job's other BOs reserved; resident ones become most recently used.

        Returns (bytes moved into VRAM, bytes evicted). A BO that may live in system memory
        comes back to VRAM only when that needs no forced eviction (TTM keeps a BO in a
        compatible FALLBACK place); a VRAM-only one evicts others.
        """
        # The job locks all its BOs under one ticket; an imported BO shares the exporter's
        # reservation object (drm_gem_prime_import_dev: obj->resv = dma_buf->resv), so the
        # exporter's BO is locked too. TTM's eviction walk skips what the ticket holds, so
        # making room for one of the job's buffers never evicts another.
        busy = frozenset(bos) | frozenset(bo.exported_bo for bo in bos)
        ctx = ttm.OperationCtx(css, client.pid, busy=busy, ticket=True)
        migrated = evicted = 0
        for bo in bos:
            a = bo.import_attach
            if a is not None:
                # An imported BO: map the exporter's buffer again if it moved since.
                target = bo.exported_bo
                before = (target.in_vram, target.device.evicted_bytes)
                if not a.mapped:
                    a.dmabuf.map(a, ctx)
                if target.in_vram and not before[0]:
                    migrated += target.size
                evicted += target.device.evicted_bytes - before[1]
                continue
            if bo.pinned:
                continue  # xe_bo_validate leaves pinned BOs where they are
            if bo.in_vram:
                self.touch(bo)
                continue
            evicted += self._validate_retrying(bo, ctx)
            if bo.in_vram:
                migrated += bo.size
        return migrated, evicted

    # -- PRIME ------------------------------------------------------------------------------

    def prime_export(self, client: Client, handle: int, creds: Creds) -> DmaBuf:
        """``DRM_IOCTL_PRIME_HANDLE_TO_FD``: the BO as a dma-buf (made once, then the same).
        A BO private to a VM cannot be exported (``xe_gem_prime_export``: EPERM)."""
        bo = client.bos.get(handle)
        if bo is None:
            raise NotFound(f"no handle {handle}")  # drm_gem_prime_handle_to_fd: -ENOENT
        if bo.import_attach is not None:
            return bo.import_attach.dmabuf  # re-exporting an import gives its dma-buf back
        if bo.dma_buf is None:
            if bo.vm_id:
                raise NotPermitted("a BO private to a VM cannot be exported")
            dmabuf = DmaBuf(self.dmabufs, XeExport(self, bo), bo.size, creds.uid, creds.gid)
            dmabuf.on_release.append(self._dmabuf_released)
            bo.dma_buf = dmabuf
            bo.refs += 1  # the dma-buf holds the GEM object
        if client.prime_handle(bo.dma_buf) is None:
            client.prime[handle] = bo.dma_buf
            bo.dma_buf.get()  # the exporting handle's cached reference
        return bo.dma_buf

    def _dmabuf_released(self, dmabuf: DmaBuf) -> None:
        exporter = dmabuf.exporter
        assert isinstance(exporter, XeExport)
        exporter.bo.dma_buf = None
        self.bo_put(exporter.bo)

    def prime_import(self, client: Client, dmabuf: DmaBuf, kind: Importer,
                     css: DmemCss) -> tuple[int, XeBo]:
        """``DRM_IOCTL_PRIME_FD_TO_HANDLE``: a handle for the dma-buf in this client.

        The client's cached handle if it has one; on the exporting device the exporter's BO
        itself (another reference: no attachment, no pin, no move); on another device a new
        BO attached to it as ``kind`` (``xe_gem_prime_import``), mapped at once.
        """
        handle = client.prime_handle(dmabuf)
        if handle is not None:
            return handle, client.bos[handle]
        exporter = dmabuf.exporter
        assert isinstance(exporter, XeExport)
        if exporter.device is self:
            bo = exporter.bo
            bo.refs += 1
        else:
            if len(client.bos) >= MAX_BOS_PER_CLIENT:
                raise NoMemory("this client holds the most BOs dmemfs allows")
            bo = XeBo(client, client.new_handle(), dmabuf.size, (ttm.Place(self.system),),
                      frozenset(), 0)
            ctx = ttm.OperationCtx(css, client.pid, busy=frozenset({exporter.bo}))
            p2p = self.config.p2p and exporter.device.config.p2p
            bo.import_attach = dmabuf.attach(kind, bo, p2p, ctx)  # may raise
            dmabuf.get()  # the imported BO holds the dma-buf
            try:
                if kind is Importer.PIN:
                    dmabuf.pin(bo.import_attach, ctx)
                if not bo.import_attach.mapped:
                    dmabuf.map(bo.import_attach, ctx)
            except BaseException:
                self.bo_put(bo)
                raise
            client.bos[bo.handle] = bo
            client.prime[bo.handle] = dmabuf
            dmabuf.get()
            return bo.handle, bo
        handle = client.new_handle()
        client.bos[handle] = bo
        client.prime[handle] = dmabuf
        dmabuf.get()
        return handle, bo

    def importer_stalled(self, a: Attachment) -> str:
        """Count a stall of an importer of this device; a label for the eviction log."""
        bo = a.importer
        assert isinstance(bo, XeBo)
        cg = self.tree.cgroup_of(bo.client.pid)
        self.stalls[cg] = self.stalls.get(cg, 0) + 1
        return f"{self.pci}:{bo.client.pid}:{bo.handle}"

    def dmabuf_stalls(self) -> dict[str, int]:
        """Stalls of this device's dynamic importers by cgroup path."""
        out: dict[str, int] = {}
        for cg, n in self.stalls.items():
            out[cg.path] = out.get(cg.path, 0) + n
        return out

    def moved(self, bo: ttm.BufferObject) -> tuple[str, ...]:
        """An exported BO moved: its dynamic importers lose their mapping (they stall)."""
        if isinstance(bo, XeBo) and bo.dma_buf is not None:
            labels = []
            for a in bo.dma_buf.move_notify():
                importer = a.importer
                assert isinstance(importer, XeBo) and isinstance(importer.device, Device)
                labels.append(importer.device.importer_stalled(a))
            return tuple(labels)
        return ()


class XeExport:
    """``xe_dmabuf_ops``: what the exporting xe device does for the dma-buf core."""

    def __init__(self, device: Device, bo: XeBo) -> None:
        self.device = device
        self.bo = bo

    def can_migrate_to_system(self) -> bool:
        """``xe_bo_can_migrate(bo, XE_PL_TT)``: is system memory one of its placements?"""
        return any(p.manager is self.device.system for p in self.bo.places)

    def attach(self, a: Attachment) -> None:
        """``xe_dma_buf_attach``: an importer that cannot use VRAM peer-to-peer needs a BO
        that can move to system memory."""
        if not a.p2p and not self.can_migrate_to_system():
            raise NotSupported("this BO cannot leave VRAM and the importer has no "
                               "peer-to-peer access")

    def pin(self, a: Attachment, ctx: ttm.OperationCtx) -> None:
        """``xe_dma_buf_pin`` of the emulated kernel (with the RFC's change first)."""
        bo, dev = self.bo, self.device
        if dev.profile.has_pinning and Flag.PINNED in bo.flags:
            dev.pin(bo)  # RFC 3/3: a PINNED BO is pinned in place
            return
        # Since "drm/xe/dma-buf: Allow pinning of p2p dma-buf" (7.3): VRAM may stay pinned
        # when every importer is peer-to-peer; before, a pin moves the BO to system memory.
        allow_vram = dev.profile.pin_p2p_dma_buf and all(x.p2p for x in a.dmabuf.attachments)
        in_system = bo.resource is dev.system
        if bo.pinned and not in_system and not (bo.in_vram and allow_vram):
            raise InvalidArgument("a BO pinned in VRAM cannot be pinned for this importer")
        if not allow_vram:
            self._migrate_to_system(ctx)
        elif not bo.pinned:
            dev._validate_retrying(bo, ctx)  # xe_bo_pin_external(bo, in_place=false)
        dev.pin(bo)

    def _migrate_to_system(self, ctx: ttm.OperationCtx) -> None:
        """``xe_bo_migrate(bo, XE_PL_TT)``."""
        bo, dev = self.bo, self.device
        if bo.resource is dev.system:
            return
        if bo.pinned:
            raise Busy("a pinned BO cannot move")
        if not self.can_migrate_to_system():
            raise InvalidArgument("this BO cannot live in system memory")
        dev.migrate(bo, dev.system, ctx)

    def unpin(self, a: Attachment) -> None:
        """``xe_dma_buf_unpin`` (RFC: a PINNED BO was pinned with ttm_bo_pin)."""
        self.device.unpin(self.bo)

    def map(self, a: Attachment, ctx: ttm.OperationCtx) -> None:
        """``xe_dma_buf_map``: peer-to-peer importers get the BO validated into its places
        (back into VRAM, charged to the caller, if it fits); others get it in system memory."""
        bo = self.bo
        if not a.p2p and not self.can_migrate_to_system():
            raise NotSupported("this BO cannot leave VRAM and the importer has no "
                               "peer-to-peer access")
        if bo.pinned:
            return
        if a.p2p:
            self.device._validate_retrying(bo, ctx)
        else:
            self._migrate_to_system(ctx)

    def describe(self) -> str:
        bo = self.bo
        return (f"{self.device.pci} pid={bo.client.pid} handle={bo.handle} size={bo.size} "
                f"placement={bo.placement} pinned={bo.pin_count}")


def may_open(dmabuf: DmaBuf, creds: Creds) -> bool:
    """Could ``creds`` open ``MOUNT/dev/dma_buf/ID`` for reading?"""
    return Attr(dmabuf.uid, dmabuf.gid, dmabuf.mode).allows(creds, 4)
