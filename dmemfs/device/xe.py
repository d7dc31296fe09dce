"""The simulated xe GPU: its DRM clients, their handles, and the uAPI checks of each ioctl.

Objects and validation only, as drivers/gpu/drm/xe/xe_bo.c and xe_gem.c hold them: where a
buffer object lives and who is evicted is decided in :mod:`dmemfs.device.ttm`, which this
module calls (never the other way round). docs/kernel-model.md, "xe", lists the rules.
"""

from __future__ import annotations

import enum
import itertools
import logging

from dmemfs.device import ttm
from dmemfs.device.config import SYSTEM_PAGE, VRAM_PAGE, DeviceConfig
from dmemfs.engine.cgroup import CgroupTree
from dmemfs.engine.dmem import DmemCss
from dmemfs.errors import InvalidArgument, NoMemory, NotFound

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
    """A GEM buffer object of one client (``struct xe_bo``)."""

    __slots__ = ("client", "flags", "handle", "vm_id")

    def __init__(self, client: Client, handle: int, size: int, places: tuple[ttm.Place, ...],
                 flags: frozenset[Flag], vm_id: int) -> None:
        super().__init__(client.device, size, places)
        self.client = client
        self.handle = handle
        self.flags = flags
        self.vm_id = vm_id

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
        self.vms: set[int] = set()
        self._handles = itertools.count(1)
        self._vm_ids = itertools.count(1)

    def new_handle(self) -> int:
        return next(self._handles)

    def new_vm(self) -> int:
        vm = next(self._vm_ids)
        self.vms.add(vm)
        return vm


class Device(ttm.TtmDevice):
    """One simulated xe device at a PCI address (``struct xe_device``)."""

    def __init__(self, config: DeviceConfig, minor: int, tree: CgroupTree, *,
                 fast_path: int | None = ttm.FAST_PATH) -> None:
        super().__init__(tree.dmem, tree.profile, config.system, fast_path=fast_path)
        self.config = config
        self.pci = config.pci
        self.minor = minor
        self.tree = tree
        for i, (name, size) in enumerate(zip(config.region_names(), config.vram, strict=True)):
            self.add_vram(f"vram{i}", size, name)
        self.clients: list[Client] = []

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
        """The file was closed: every BO the client owns is freed (kill -9 included)."""
        for bo in list(client.bos.values()):
            self.free(bo)
        self.clients.remove(client)

    def all_bos(self) -> list[XeBo]:
        return [bo for c in self.clients for bo in c.bos.values()]

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
        bo = client.bos.get(handle)
        if bo is None:
            raise InvalidArgument(f"no handle {handle}")
        self.free(bo)

    def free(self, bo: XeBo) -> None:
        bo.client.bos.pop(bo.handle, None)
        self.release(bo)

    # -- EXEC ------------------------------------------------------------------------------

    def exec(self, client: Client, css: DmemCss, bos: list[XeBo]) -> tuple[int, int]:
        """A GPU job that needs these BOs: each is validated into its places (charging
        ``css``), the job's other BOs reserved; resident ones become most recently used.

        Returns (bytes moved into VRAM, bytes evicted). A BO that may live in system memory
        comes back to VRAM only when that needs no forced eviction (TTM keeps a BO in a
        compatible FALLBACK place); a VRAM-only one evicts others.
        """
        ctx = ttm.OperationCtx(css, client.pid, busy=frozenset(bos), ticket=True)
        migrated = evicted = 0
        for bo in bos:
            if bo.in_vram:
                self.touch(bo)
                continue
            evicted += self._validate_retrying(bo, ctx)
            if bo.in_vram:
                migrated += bo.size
        return migrated, evicted
