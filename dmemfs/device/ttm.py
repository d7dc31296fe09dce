"""TTM-like placement and eviction with dmem charging (KB §5, the 6.14 baseline).

``validate`` walks a BO's placements twice: first without eviction (skipping the system
fallback), then forcing space: a dmem limit hit evicts inside the limiting pool's subtree, a
full region evicts across cgroups honouring effective min, then (only if low protection was
what stopped it) effective low. Victims are taken least recently used first; pinned BOs are
never on an LRU. The engine decides which pools may lose memory; it knows nothing of BOs.
"""

from __future__ import annotations

import logging

from dmemfs.device.xe import SYSTEM, BufferObject, VramRegion
from dmemfs.engine.dmem import DmemCss, Pool
from dmemfs.errors import ChargeLimited, NoMemory

log = logging.getLogger(__name__)


def _try_alloc(bo: BufferObject, region: VramRegion, css: DmemCss) -> Pool | None:
    """Charge, then take VRAM (``ttm_resource_alloc``). Raises ChargeLimited on a limit hit;
    returns None when the region is full (the charge is undone), else the charged pool."""
    assert region.dmem_region is not None
    dmem = bo.device.tree.dmem
    pool = dmem.try_charge(css, region.dmem_region, bo.size)
    if region.used + bo.size > region.size:
        dmem.uncharge(pool, bo.size)
        return None
    region.used += bo.size
    if bo.in_system:
        bo.device.system_used -= bo.size
        bo.in_system = False
    bo.region = region
    bo.pool = pool
    region.lru[bo] = None
    return pool


def _alloc_or_none(bo: BufferObject, region: VramRegion, css: DmemCss) -> bool:
    try:
        return _try_alloc(bo, region, css) is not None
    except ChargeLimited:
        return False


def place_system(bo: BufferObject) -> None:
    """Back ``bo`` with system memory (TT), which is not charged to dmem."""
    device = bo.device
    if not bo.in_system:
        if device.system_used + bo.size > device.system_size:
            raise NoMemory(f"{device.pci}: system memory exhausted")
        device.system_used += bo.size
        bo.in_system = True


def validate(
    bo: BufferObject,
    css: DmemCss,
    evictor_pid: int,
    busy: frozenset[BufferObject] = frozenset(),
) -> int:
    """Make ``bo`` resident in the best placement it can get; returns bytes evicted.

    ``busy`` BOs (the other BOs of the same job, reserved together) are never evicted.
    Raises NoMemory (ENOMEM, TTM's -ENOSPC as xe reports it) when no placement works.
    """
    evicted = [0]
    vram_places = [p for p in bo.places if p != SYSTEM]
    for force_space in (False, True):
        for place in bo.places:
            if place == SYSTEM:
                if vram_places and not force_space:
                    continue  # TTM_PL_FLAG_FALLBACK: only when forcing space
                if bo.in_system:
                    return evicted[0]  # already there (EXEC of an evicted BO)
                try:
                    place_system(bo)
                except NoMemory:
                    continue
                return evicted[0]
            region = bo.device.region(place)
            limit: Pool | None = None
            try:
                if _try_alloc(bo, region, css) is not None:
                    return evicted[0]
            except ChargeLimited as e:
                assert isinstance(e.limit_pool, Pool)
                limit = e.limit_pool
            if not force_space:
                continue
            if _evict_alloc(bo, region, css, limit, evictor_pid, evicted, busy):
                return evicted[0]
    raise NoMemory(f"no placement of {bo.size} bytes fits ({', '.join(bo.places)})")


def _evict_alloc(
    bo: BufferObject,
    region: VramRegion,
    css: DmemCss,
    limit: Pool | None,
    evictor_pid: int,
    evicted: list[int],
    busy: frozenset[BufferObject],
) -> bool:
    """``ttm_bo_evict_alloc``: evict LRU victims the limit allows until ``bo`` fits.

    BOs in ``busy`` are reserved by the caller (their locks are held), so the walk skips them.
    """
    dmem = bo.device.tree.dmem
    reason = (f"limit of {limit.css.cgroup.path}" if limit is not None else "device full")
    hit_low = False
    for try_low in (False, True):
        if try_low and not hit_low:
            break
        for victim in list(region.lru):
            if victim in busy:
                continue
            assert victim.pool is not None
            valuable, low = dmem.evict_valuable(limit, victim.pool, try_low)
            hit_low |= low
            if not valuable:
                continue
            if not _evict(victim, reason, evictor_pid, css):
                continue
            evicted[0] += victim.size
            if _alloc_or_none(bo, region, css):
                return True
    return False


def _evict(bo: BufferObject, reason: str, evictor_pid: int, evictor_css: DmemCss) -> bool:
    """Move a resident BO to system memory, uncharging its VRAM. False if that cannot be done."""
    region = bo.region
    assert region is not None and bo.pool is not None and not bo.pinned
    try:
        place_system(bo)
    except NoMemory:
        return False
    victim_cgroup = bo.pool.css.cgroup.path
    _free_vram(bo)
    bo.device.record_eviction(bo, region, reason, evictor_pid, evictor_css.cgroup.path,
                              victim_cgroup)
    log.debug("evicted %r (%s)", bo, reason)
    return True


def _free_vram(bo: BufferObject) -> None:
    region, pool = bo.region, bo.pool
    assert region is not None and pool is not None
    dmem = bo.device.tree.dmem
    if bo.pinned:
        dmem.unpin(pool, bo.size)
        region.pinned -= bo.size
        bo.pinned = False
    dmem.uncharge(pool, bo.size)
    region.used -= bo.size
    region.lru.pop(bo, None)
    bo.region = None
    bo.pool = None


def release(bo: BufferObject) -> None:
    """Free everything a BO holds: unpin, uncharge, VRAM and system memory."""
    if bo.region is not None:
        _free_vram(bo)
    if bo.in_system:
        bo.device.system_used -= bo.size
        bo.in_system = False


def exec_bos(bos: list[BufferObject], css: DmemCss, evictor_pid: int) -> tuple[int, int]:
    """A GPU job needs these BOs resident: bring evicted ones back, charging ``css``.

    Returns (migrated_bytes, evicted_bytes). BOs already in VRAM become most recently used.
    """
    migrated = evicted = 0
    job = frozenset(bos)
    for bo in bos:
        if bo.region is not None:
            if bo in bo.region.lru:
                bo.region.lru.move_to_end(bo)
            continue
        if not any(p != SYSTEM for p in bo.places):
            continue  # system-only BO: nothing to migrate
        evicted += validate(bo, css, evictor_pid, busy=job)
        if bo.region is not None:
            migrated += bo.size
    return migrated, evicted
