"""Model-based test of the device layer and the engine together (no mount).

A hypothesis state machine drives a :class:`CgroupTree` with one or two simulated xe devices:
cgroups come and go with random dmem.min/low/max, DRM clients create (maybe pinned), close and
execute BOs and are closed. After every step the BOs must account exactly for every dmem
counter (own charge and own pinned amount of every pool, dying ones included), every region's
used/pinned bytes and the system memory, each BO must live in exactly one place, and a BO that
was ever pinned must never have been evicted.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dmemfs.device import ttm
from dmemfs.device.config import DeviceConfig
from dmemfs.device.xe import SYSTEM, BufferObject, Caching, Client, Device, Flag
from dmemfs.engine.cgroup import Cgroup, CgroupTree
from dmemfs.engine.dmem import DmemCss, Pool
from dmemfs.errors import (
    InvalidArgument,
    NoMemory,
    NoSpace,
    NotImplementedByKernel,
)
from dmemfs.profile import LATEST

KiB = 1 << 10
MiB = 1 << 20
PAGE64K = 64 * KiB
PCIS = ("0000:03:00.0", "0000:04:00.0")
LIMITS = ("0", "64K", "256K", "512K", "512K", "1M", "1M", "2M", "2M", "3M", "max")
PLACEMENTS = st.sampled_from([
    *[("vram0",)] * 6, *[("vram0", SYSTEM)] * 4, (SYSTEM, "vram0"), ("vram1",), ("vram1",),
    ("vram1", SYSTEM), (SYSTEM,), ("vram0", "vram1"), ("vram0", "vram1", SYSTEM),
    ("vram0", "vram0"),
])
FLAG_SETS = st.sampled_from([
    frozenset(), frozenset(), frozenset(), frozenset({Flag.PINNED}), frozenset({Flag.PINNED}),
    frozenset({Flag.PINNED}), frozenset({Flag.DEFER_BACKING}), frozenset({Flag.SCANOUT}),
    frozenset({Flag.NEEDS_VISIBLE_VRAM}), frozenset({Flag.PINNED, Flag.NEEDS_VISIBLE_VRAM}),
    frozenset({Flag.PINNED, Flag.DEFER_BACKING}), frozenset({Flag.SCANOUT, Flag.DEFER_BACKING}),
])
CACHING = st.sampled_from([None] * 6 + [Caching.WB, Caching.WC])
MAX_CGROUPS = 5
MAX_BOS = 24


class DeviceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tree: CgroupTree
        self.devices: list[Device] = []
        self.live: list[Cgroup] = []
        self.pids = itertools.count(1000)
        self.names = itertools.count()
        #: Every BO that was pinned at creation, with the region it was pinned in.
        self.pinned: dict[BufferObject, str] = {}
        #: (pid, handle) of every pinned BO ever (pids are never reused here).
        self.pinned_keys: set[tuple[int, int]] = set()
        self.open: list[Client] = []

    # -- setup ------------------------------------------------------------------------------

    @initialize(
        vram=st.lists(st.lists(st.integers(8, 48), min_size=1, max_size=2), min_size=1,
                      max_size=2),
        system=st.sampled_from([MiB, 4 * MiB, 64 * MiB]),
        posted=st.sampled_from([False, False, False, True]),
    )
    def setup(self, vram: list[list[int]], system: int, posted: bool) -> None:
        profile = LATEST.with_options(pinning="posted" if posted else "intended")
        self.tree = CgroupTree(profile)
        for minor, sizes in enumerate(vram):
            config = DeviceConfig(pci=PCIS[minor], vram=tuple(s * PAGE64K for s in sizes),
                                  system=system)
            self.devices.append(Device(config, minor, self.tree))
        self.tree.write_subtree_control(self.tree.root, "+dmem")
        self.live = [self.tree.root]
        for device in self.devices:
            self.open.append(device.open(next(self.pids)))

    # -- cgroups -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.live) < MAX_CGROUPS)
    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from([c for c in self.live if c.level < 3]))
        if "dmem" not in parent.subtree_control:
            self.tree.write_subtree_control(parent, "+dmem")
        child = self.tree.mkdir(parent, f"c{next(self.names)}")
        assert child.dmem_css is not None
        self.live.append(child)

    @precondition(lambda self: len(self.live) > 3)
    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        leaf = data.draw(st.sampled_from([c for c in self.live[1:] if not c.children]))
        self.tree.rmdir(leaf)  # outstanding charges and pins never block rmdir
        self.live.remove(leaf)

    @precondition(lambda self: len(self.live) > 1)
    @rule(data=st.data(), attr=st.sampled_from(["min", "min", "low", "max", "max"]),
          value=st.sampled_from(LIMITS))
    def set_limit(self, data: st.DataObject, attr: str, value: str) -> None:
        cg = data.draw(st.sampled_from(self.live[1:]))
        # Mostly the first device's vram0, where most BOs go.
        regions = self.tree.dmem.regions
        region = data.draw(st.sampled_from(regions[:1] * len(regions) + regions))
        assert cg.dmem_css is not None
        self.tree.dmem.write_limit(cg.dmem_css, attr, f"{region.name} {value}")

    # -- clients -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.open) < 4)
    @rule(minor=st.integers(0, 1))
    def open_client(self, minor: int) -> None:
        device = self.devices[minor % len(self.devices)]
        self.open.append(device.open(next(self.pids)))

    def _client(self, data: st.DataObject) -> Client:
        return data.draw(st.sampled_from(self.open))

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def close_client(self, data: st.DataObject) -> None:
        client = self._client(data)
        client.device.close(client)
        self.open.remove(client)
        assert not client.bos
        assert all(c is not client for c in client.device.clients.values())

    def _css(self, data: st.DataObject) -> DmemCss:
        """The caller's css: mostly a child cgroup, sometimes the root."""
        choices = self.live[1:] * 3 + self.live[:1]
        return self.tree.dmem_css_of(data.draw(st.sampled_from(choices)))

    def _expect_einval(self, device: Device, size: int, placement: tuple[str, ...],
                       flags: frozenset[Flag], caching: Caching | None) -> bool:
        names = {r.name for r in device.regions}
        vram = [p for p in placement if p != SYSTEM]
        effective = caching or (Caching.WC if vram else Caching.WB)
        return (
            len(set(placement)) != len(placement)
            or any(p not in names for p in vram)
            or (Flag.PINNED in flags and (len(placement) != 1 or Flag.DEFER_BACKING in flags))
            or (Flag.NEEDS_VISIBLE_VRAM in flags and not vram)
            or (bool(vram) and effective is not Caching.WC)
            or (Flag.SCANOUT in flags and effective is Caching.WB)
            or size % 4096 != 0
            or (bool(vram) and size % PAGE64K != 0)
        )

    def _pin_fits(self, css: DmemCss, device: Device, place: str, size: int) -> bool:
        """Whether try_pin would succeed on the pool ``css`` charges in ``place``."""
        region = device.region(place).dmem_region
        assert region is not None
        check_root = self.tree.profile.pinning == "posted"
        c: DmemCss | None = css
        while c is not None:
            pool = c.pools.get(region)
            pinned = pool.counter.pinned if pool is not None else 0
            limit = pool.counter.min if pool is not None else 0
            if (c.parent is not None or check_root) and pinned + size > limit:
                return False
            c = c.parent
        return True

    def _can_create(self) -> bool:
        return bool(self.open) and sum(len(c.bos) for c in self.open) < MAX_BOS

    CREATE_ARGS = {
        "data": st.data(), "pages": st.integers(1, 16),
        "extra_4k": st.sampled_from([0] * 9 + [1]), "placement": PLACEMENTS,
        "flags": FLAG_SETS, "caching": CACHING,
    }

    # Two identical rules: creating BOs is what drives everything else.
    @precondition(_can_create)
    @rule(**CREATE_ARGS)
    def gem_create(self, **kwargs: object) -> None:
        self._gem_create(**kwargs)  # type: ignore[arg-type]

    @precondition(_can_create)
    @rule(**CREATE_ARGS)
    def gem_create_more(self, **kwargs: object) -> None:
        self._gem_create(**kwargs)  # type: ignore[arg-type]

    def _gem_create(self, data: st.DataObject, pages: int, extra_4k: int,
                    placement: tuple[str, ...], flags: frozenset[Flag],
                    caching: Caching | None) -> None:
        client = self._client(data)
        device = client.device
        css = self._css(data)
        size = pages * PAGE64K + extra_4k * 4096
        einval = self._expect_einval(device, size, placement, flags, caching)
        pinned = Flag.PINNED in flags
        pin_fits = (pinned and not einval and placement != (SYSTEM,)
                    and self._pin_fits(css, device, placement[0], size))
        handles = set(client.bos)
        n_evictions = len(device.evictions)
        try:
            bo = device.gem_create(client, css, size, placement, flags, caching)
        except InvalidArgument:
            assert einval
            assert len(device.evictions) == n_evictions
        except NotImplementedByKernel:
            assert not einval and pinned and placement == (SYSTEM,)
        except NoSpace:
            assert not einval and pinned and not pin_fits
        except NoMemory:
            assert not einval
        else:
            assert not einval and (not pinned or (placement != (SYSTEM,) and pin_fits))
            assert client.bos[bo.handle] is bo and bo.handle not in handles
            assert bo.size == size and bo.pinned == pinned
            if Flag.DEFER_BACKING in flags:
                assert bo.placement == SYSTEM
            if bo.pool is not None:
                assert bo.pool.css is css  # charged to the caller's cgroup
                assert bo.placement in placement
            if pinned:
                self.pinned[bo] = bo.placement
                self.pinned_keys.add((client.pid, bo.handle))
            return
        assert set(client.bos) == handles
        self._check_new_evictions(device, n_evictions, css)

    def _check_new_evictions(self, device: Device, before: int, css: DmemCss) -> None:
        for e in list(device.evictions)[before:]:
            assert (e.victim_pid, e.victim_handle) not in self.pinned_keys
            assert e.evictor_cgroup == css.cgroup.path
            if e.reason.startswith("limit of "):
                limit = e.reason.removeprefix("limit of ")
                # Only BOs charged inside the limiting subtree are candidates.
                assert limit == "/" or e.victim_cgroup == limit \
                    or e.victim_cgroup.startswith(limit + "/")
                assert css.cgroup.path == limit or css.cgroup.path.startswith(
                    limit.rstrip("/") + "/")
            else:
                assert e.reason == "device full"

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def gem_close(self, data: st.DataObject) -> None:
        client = self._client(data)
        if not client.bos:
            return
        handle = data.draw(st.sampled_from(sorted(client.bos)))
        client.device.gem_close(client, handle)
        assert handle not in client.bos

    @precondition(lambda self: self.open)
    @rule(data=st.data(), handle=st.integers(0, 40))
    def gem_close_unknown(self, data: st.DataObject, handle: int) -> None:
        client = self._client(data)
        if handle in client.bos:
            return
        try:
            client.device.gem_close(client, handle)
        except InvalidArgument:
            pass
        else:
            raise AssertionError("GEM_CLOSE of an unknown handle must fail with EINVAL")

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def exec_bos(self, data: st.DataObject) -> None:
        client = self._client(data)
        if not client.bos:
            return
        handles = data.draw(st.lists(st.sampled_from(sorted(client.bos)), min_size=1,
                                     max_size=4, unique=True))
        bos = [client.bos[h] for h in handles]
        css = self._css(data)
        was_in_system = {bo for bo in bos if bo.region is None}
        evictions_before = {bo: bo.evictions for bo in bos}
        device = client.device
        n_evictions = len(device.evictions)
        try:
            migrated, evicted = ttm.exec_bos(bos, css, client.pid)
        except NoMemory:
            # Only a BO without a system placement can fail to find a home.
            assert any(SYSTEM not in bo.places for bo in was_in_system)
        else:
            # The job's BOs are reserved together: none of them is evicted by its own EXEC,
            # and only BOs that were out of VRAM migrate, once.
            assert all(bo.evictions == evictions_before[bo] for bo in bos)
            assert migrated == sum(bo.size for bo in was_in_system if bo.region is not None)
            assert evicted >= 0
            new = list(device.evictions)[n_evictions:]
            assert evicted == sum(e.size for e in new)
            for bo in was_in_system:
                if bo.region is not None:
                    assert bo.pool is not None and bo.pool.css is css
        self._check_new_evictions(device, n_evictions, css)

    # -- invariants --------------------------------------------------------------------------

    def _all_bos(self) -> list[BufferObject]:
        out = [bo for c in self.open for bo in c.bos.values()]
        assert len(out) == len(set(out))
        assert set(out) == {bo for d in self.devices for bo in d.all_bos()}
        return out

    @invariant()
    def bos_live_in_exactly_one_place(self) -> None:
        if not self.devices:
            return
        for bo in self._all_bos():
            assert (bo.region is not None) != bo.in_system, bo
            assert (bo.pool is None) == (bo.region is None), bo
            assert not bo.pinned or bo.region is not None, bo
            if bo.region is not None:
                assert bo.region.device is bo.device
                assert bo.region.name in bo.places
                assert bo.pool is not None and bo.pool.region is bo.region.dmem_region
                assert (bo in bo.region.lru) != bo.pinned, bo
            for d in self.devices:
                for r in d.regions:
                    assert r is bo.region or bo not in r.lru

    @invariant()
    def regions_and_system_memory_match_the_bos(self) -> None:
        if not self.devices:
            return
        bos = self._all_bos()
        for d in self.devices:
            mine = [bo for bo in bos if bo.device is d]
            for r in d.regions:
                resident = [bo for bo in mine if bo.region is r]
                assert r.used == sum(bo.size for bo in resident) <= r.size
                assert r.pinned == sum(bo.size for bo in resident if bo.pinned)
                assert set(r.lru) == {bo for bo in resident if not bo.pinned}
            in_system = sum(bo.size for bo in mine if bo.in_system)
            assert d.system_used == in_system <= d.system_size

    @invariant()
    def pools_match_the_bos(self) -> None:
        if not self.devices:
            return
        charged: dict[Pool, int] = {}
        pinned: dict[Pool, int] = {}
        for bo in self._all_bos():
            if bo.pool is not None:
                charged[bo.pool] = charged.get(bo.pool, 0) + bo.size
                if bo.pinned:
                    pinned[bo.pool] = pinned.get(bo.pool, 0) + bo.size
        seen: set[Pool] = set()
        for css in self.tree.dmem.root_css.walk_pre():
            for region in self.tree.dmem.regions:
                pool = css.pools.get(region)
                if pool is None:
                    continue
                seen.add(pool)
                c = pool.counter
                kids = [k.pools[region].counter for k in css.children if region in k.pools]
                own_usage = c.usage - sum(k.usage for k in kids)
                own_pinned = c.pinned - sum(k.pinned for k in kids)
                where = f"{css.cgroup.path} {region.name}"
                assert own_usage == charged.get(pool, 0), where
                assert own_pinned == pinned.get(pool, 0), where
                assert c.usage >= c.pinned >= 0, where
                assert c.usage <= c.watermark, where
            if css.parent is not None and not css.online:
                # A dying css lives on only while something is charged to it (or below it).
                assert css.nr_charges > 0 or css.children, css
        # Every charged pool is still reachable (dying pools included).
        assert set(charged) <= seen

    @invariant()
    def pinned_bos_were_never_evicted(self) -> None:
        alive = {bo for c in self.open for bo in c.bos.values()}
        for bo, place in self.pinned.items():
            if bo in alive:
                assert bo.pinned and bo.placement == place and bo.evictions == 0, bo
        for d in self.devices:
            victims = {(e.victim_pid, e.victim_handle) for e in d.evictions}
            assert not victims & self.pinned_keys

    @invariant()
    def dying_cgroups_are_not_used(self) -> None:
        for cg in self.live:
            assert not cg.dying


DeviceMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_device_model = DeviceMachine.TestCase
