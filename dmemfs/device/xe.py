"""The simulated xe GPU: devices, VRAM regions, clients (``drm_file``) and buffer objects.

The uAPI checks of ``xe_gem_create_ioctl`` (KB §4.2) and the pinning RFC (KB §3.4) live here;
where a BO lives and who gets evicted is decided in :mod:`dmemfs.device.ttm`.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from dmemfs.device.config import SYSTEM_PAGE, VRAM_PAGE, DeviceConfig
from dmemfs.engine.cgroup import CgroupTree
from dmemfs.engine.dmem import DmemCss, Pool, Region
from dmemfs.errors import (
    InvalidArgument,
    NoSpace,
    NotFound,
    NotImplementedByKernel,
    TryAgain,
)

log = logging.getLogger(__name__)


class Flag(enum.Enum):
    DEFER_BACKING = "DEFER_BACKING"
    SCANOUT = "SCANOUT"
    NEEDS_VISIBLE_VRAM = "NEEDS_VISIBLE_VRAM"
    PINNED = "PINNED"


class Caching(enum.Enum):
    WB = "wb"
    WC = "wc"


SYSTEM = "system"
#: Eviction log entries kept per device.
EVICTION_LOG = 1000


class VramRegion:
    """One VRAM TTM manager, registered as a dmem region ``drm/<pci>/vramN``."""

    def __init__(self, device: Device, index: int, size: int, region: Region | None) -> None:
        self.device = device
        self.index = index
        self.name = f"vram{index}"
        self.size = size
        self.used = 0
        self.pinned = 0
        self.dmem_region = region
        #: Resident, evictable BOs, least recently used first.
        self.lru: OrderedDict[BufferObject, None] = OrderedDict()

    @property
    def instance(self) -> int:
        """Placement bit / query instance: 0 is system memory, VRAM regions follow."""
        return self.index + 1


class BufferObject:
    __slots__ = (
        "client", "device", "evictions", "flags", "handle", "in_system", "pinned", "places",
        "pool", "region", "size",
    )

    def __init__(
        self,
        client: Client,
        handle: int,
        size: int,
        places: tuple[str, ...],
        flags: frozenset[Flag],
    ) -> None:
        self.client = client
        self.device = client.device
        self.handle = handle
        self.size = size
        #: Allowed placements, VRAM first, system last (xe's placement order).
        self.places = places
        self.flags = flags
        #: The VRAM region it is resident in, or None when it lives in system memory.
        self.region: VramRegion | None = None
        #: The dmem pool its VRAM is charged to (while resident in VRAM).
        self.pool: Pool | None = None
        #: Whether it holds system memory (evicted, fallen back, or deferred backing).
        self.in_system = False
        self.pinned = False
        self.evictions = 0

    @property
    def placement(self) -> str:
        return self.region.name if self.region is not None else SYSTEM

    def __repr__(self) -> str:
        return f"BO({self.client.pid}:{self.handle}, {self.size}, {self.placement})"


@dataclass(frozen=True, slots=True)
class Eviction:
    time: float
    victim_pid: int
    victim_handle: int
    victim_cgroup: str
    size: int
    region: str
    reason: str
    evictor_pid: int
    evictor_cgroup: str


class Client:
    """One open of the device file (``struct drm_file``): its handles and VMs."""

    def __init__(self, device: Device, pid: int) -> None:
        self.device = device
        self.pid = pid
        self.bos: dict[int, BufferObject] = {}
        self.vms: set[int] = set()
        self._handles = itertools.count(1)
        self._vm_ids = itertools.count(1)

    def new_handle(self) -> int:
        return next(self._handles)

    def new_vm(self) -> int:
        vm = next(self._vm_ids)
        self.vms.add(vm)
        return vm


class Device:
    """One simulated xe device at a PCI address with its VRAM regions and system memory."""

    def __init__(self, config: DeviceConfig, minor: int, tree: CgroupTree) -> None:
        self.config = config
        self.pci = config.pci
        self.minor = minor
        self.tree = tree
        self.regions = [
            VramRegion(self, i, size, tree.dmem.register_region(name, size))
            for i, (name, size) in enumerate(zip(config.region_names(), config.vram, strict=True))
        ]
        self.system_size = config.system
        self.system_used = 0
        self.clients: dict[int, Client] = {}
        self.evictions: deque[Eviction] = deque(maxlen=EVICTION_LOG)
        #: Evictions per victim cgroup path (for ``dmemfs status``).
        self.evictions_by_cgroup: dict[str, int] = {}
        self._client_ids = itertools.count(1)

    @property
    def node_name(self) -> str:
        return f"renderD{128 + self.minor}"

    def region(self, name: str) -> VramRegion:
        for r in self.regions:
            if r.name == name:
                return r
        raise InvalidArgument(f"{self.pci} has no region {name!r}")

    # -- clients ---------------------------------------------------------------------------

    def open(self, pid: int) -> Client:
        client = Client(self, pid)
        self.clients[next(self._client_ids)] = client
        return client

    def close(self, client: Client) -> None:
        """The file was closed: every BO the client owns is freed (kill -9 included)."""
        for bo in list(client.bos.values()):
            self.free(bo)
        for key, c in list(self.clients.items()):
            if c is client:
                del self.clients[key]

    def all_bos(self) -> list[BufferObject]:
        return [bo for c in self.clients.values() for bo in c.bos.values()]

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
    ) -> BufferObject:
        """``DRM_IOCTL_XE_GEM_CREATE``: validate (KB §4.2, §3.4), create, place, maybe pin."""
        from dmemfs.device import ttm

        places = self._validate(client, size, placement, flags, cpu_caching, vm_id)
        bo = BufferObject(client, client.new_handle(), size, places, flags)
        if Flag.DEFER_BACKING in flags:
            ttm.place_system(bo)  # VRAM (and its dmem charge) only on first use
        else:
            ttm.validate(bo, css, client.pid)
        if Flag.PINNED in flags:
            try:
                self._pin(bo)
            except BaseException:
                ttm.release(bo)
                raise
        client.bos[bo.handle] = bo
        return bo

    def _validate(
        self,
        client: Client,
        size: int,
        placement: tuple[str, ...],
        flags: frozenset[Flag],
        cpu_caching: Caching | None,
        vm_id: int,
    ) -> tuple[str, ...]:
        if not placement:
            raise InvalidArgument("placement is empty")
        if len(set(placement)) != len(placement):
            raise InvalidArgument("placement lists a region twice")
        vram = [self.region(p).name for p in placement if p != SYSTEM]
        if Flag.PINNED in flags:
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
        # xe's order: VRAM placements first, system memory last.
        return tuple(vram) + ((SYSTEM,) if SYSTEM in placement else ())

    def _pin(self, bo: BufferObject) -> None:
        """The RFC: pin against dmem.min up the hierarchy; -EAGAIN reaches userspace as ENOSPC."""
        if bo.region is None:
            raise NotImplementedByKernel("pinning system memory is not implemented (RFC: TODO)")
        assert bo.pool is not None
        try:
            self.tree.dmem.try_pin(bo.pool, bo.size)
        except TryAgain:
            raise NoSpace(f"pinning {bo.size} bytes would exceed dmem.min") from None
        bo.pinned = True
        bo.region.pinned += bo.size
        bo.region.lru.pop(bo, None)

    # -- GEM_CLOSE -------------------------------------------------------------------------

    def gem_close(self, client: Client, handle: int) -> None:
        bo = client.bos.get(handle)
        if bo is None:
            raise InvalidArgument(f"no handle {handle}")
        self.free(bo)

    def free(self, bo: BufferObject) -> None:
        from dmemfs.device import ttm

        bo.client.bos.pop(bo.handle, None)
        ttm.release(bo)

    # -- eviction bookkeeping -------------------------------------------------------------

    def record_eviction(self, bo: BufferObject, region: VramRegion, reason: str,
                        evictor_pid: int, evictor_cgroup: str, victim_cgroup: str) -> None:
        bo.evictions += 1
        self.evictions.append(Eviction(
            time.time(), bo.client.pid, bo.handle, victim_cgroup, bo.size, region.name, reason,
            evictor_pid, evictor_cgroup,
        ))
        by_cgroup = self.evictions_by_cgroup
        by_cgroup[victim_cgroup] = by_cgroup.get(victim_cgroup, 0) + 1
