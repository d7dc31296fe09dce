"""Model-based test of the device layer and the engine together (no mount).

A hypothesis state machine drives two identical worlds (a :class:`CgroupTree` with one or two
simulated xe devices) through the same steps: cgroups come and go with random dmem.min/low/max
(lowering dmem.max reclaims in Linux 7.3, unless O_NONBLOCK), DRM clients create (maybe
pinned), close and execute BOs and are closed. One world walks the LRU BO by BO, exactly like
the kernel's ``ttm_lru_walk_for_evict`` (``fast_path=None``); the other asks the dmem
controller which pools may lose memory at every step of every walk (``fast_path=0``). After
every step both worlds must be identical: every BO in the same place, charged to the same
cgroup, the same evictions in the same order, the same counters.

Invariants on top: the BOs account exactly for every dmem counter (own charge and own pinned
amount of every pool, dying ones included), every region's used/pinned bytes and the system
memory; each BO lives in exactly one place; a BO that was ever pinned is never evicted; after
a blocking dmem.max write (7.3), the cgroup's usage fits its max unless nothing more could be
evicted from its subtree.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dmemfs.device.config import DeviceConfig
from dmemfs.device.ttm import VramManager
from dmemfs.device.xe import SYSTEM, Caching, Client, Device, Flag, XeBo
from dmemfs.engine.cgroup import Cgroup, CgroupTree
from dmemfs.engine.dmem import Pool
from dmemfs.errors import DmemError
from dmemfs.profile import PINNING_MODES, V6_14, V7_3

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
MAX_CGROUPS = 6
MAX_BOS = 28


class World:
    """One tree with its devices and open clients."""

    def __init__(self, profile: Any, configs: list[DeviceConfig], fast_path: int | None
                 ) -> None:
        self.tree = CgroupTree(profile)
        self.devices = [Device(c, minor, self.tree, fast_path=fast_path)
                        for minor, c in enumerate(configs)]
        self.tree.write_subtree_control(self.tree.root, "+dmem")
        self.clients: list[Client] = []

    def cgroup(self, path: str) -> Cgroup:
        return self.tree.lookup(path)

    def css(self, path: str) -> Any:
        return self.tree.dmem_css_of(self.cgroup(path))

    def snapshot(self) -> dict[str, Any]:
        """Everything that must agree between the two worlds."""
        bos = {}
        for i, c in enumerate(self.clients):
            for h, bo in c.bos.items():
                bos[(i, h)] = (bo.placement, _path(bo.pool), bo.pin_count, bo.evictions,
                               bo.seq if bo.on_lru else None)
        evictions = []
        for d in self.devices:
            for e in d.log.entries:
                assert isinstance(e.victim, XeBo)
                evictions.append((d.pci, self.clients.index(e.victim.client)
                                  if e.victim.client in self.clients else -1,
                                  e.victim.handle, e.victim_cgroup, e.manager, e.reason,
                                  e.evictor_cgroup))
        pools = {}
        for css in self.tree.dmem.root_css.walk_pre():
            for region, pool in css.pools.items():
                c = pool.counter
                pools[(css.cgroup.path, css.online, region.name)] = (
                    c.usage, c.pinned, c.min, c.low, c.max, c.watermark)
        managers = [(m.name, m.used, m.pinned) for d in self.devices for m in d.vram]
        systems = [d.system.used for d in self.devices]
        return {"bos": bos, "evictions": evictions, "pools": pools, "managers": managers,
                "systems": systems}


def _path(pool: Pool | None) -> str | None:
    return pool.css.cgroup.path if pool is not None else None


class DeviceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.worlds: list[World] = []
        self.live: list[str] = []
        self.pids = itertools.count(1000)
        self.names = itertools.count()
        #: (client index, handle) of every BO ever pinned (clients are never reused here).
        self.pinned_keys: set[tuple[int, int]] = set()
        self.open: list[int] = []

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def a(self) -> World:
        return self.worlds[0]

    def both(self, fn: Any) -> Any:
        """Run ``fn(world)`` in both worlds: the same result or the same error type."""
        outcomes = []
        for w in self.worlds:
            try:
                outcomes.append(("ok", fn(w)))
            except DmemError as e:
                outcomes.append(("err", type(e)))
        if outcomes[0][0] == "err" or outcomes[1][0] == "err":
            assert outcomes[0] == outcomes[1], f"outcomes differ: {outcomes}"
        return outcomes[0]

    # -- setup ------------------------------------------------------------------------------

    @initialize(
        vram=st.lists(st.lists(st.integers(8, 48), min_size=1, max_size=2), min_size=1,
                      max_size=2),
        system=st.sampled_from([MiB, 4 * MiB, 64 * MiB]),
        pinning=st.sampled_from(["intended", "intended", "posted", "off"]),
        profile=st.sampled_from([V7_3, V7_3, V6_14]),
    )
    def setup(self, vram: list[list[int]], system: int, pinning: str, profile: Any) -> None:
        assert pinning in PINNING_MODES
        profile = profile.with_options(pinning=pinning)
        configs = [DeviceConfig(pci=PCIS[minor], vram=tuple(s * PAGE64K for s in sizes),
                                system=system)
                   for minor, sizes in enumerate(vram)]
        self.worlds = [World(profile, configs, None), World(profile, configs, 0)]
        self.live = ["/"]
        for minor in range(len(configs)):
            self._open(minor)

    def _open(self, minor: int) -> None:
        pid = next(self.pids)
        for w in self.worlds:
            w.clients.append(w.devices[minor % len(w.devices)].open(pid))
        self.open.append(len(self.a.clients) - 1)

    # -- cgroups -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.live) < MAX_CGROUPS)
    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from([p for p in self.live if p.count("/") < 3]))
        name = f"c{next(self.names)}"
        for w in self.worlds:
            cg = w.cgroup(parent)
            if "dmem" not in cg.subtree_control:
                w.tree.write_subtree_control(cg, "+dmem")
            w.tree.mkdir(cg, name)
        self.live.append(parent.rstrip("/") + "/" + name)

    @precondition(lambda self: len(self.live) > 3)
    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        leaves = [p for p in self.live[1:] if not any(q.startswith(p + "/") for q in self.live)]
        leaf = data.draw(st.sampled_from(leaves))
        for w in self.worlds:
            w.tree.rmdir(w.cgroup(leaf))  # outstanding charges and pins never block rmdir
        self.live.remove(leaf)

    @precondition(lambda self: len(self.live) > 1)
    @rule(data=st.data(), attr=st.sampled_from(["min", "min", "low", "max", "max", "max"]),
          value=st.sampled_from(LIMITS), nonblock=st.booleans())
    def set_limit(self, data: st.DataObject, attr: str, value: str, nonblock: bool) -> None:
        path = data.draw(st.sampled_from(self.live[1:]))
        regions = self.a.tree.dmem.regions
        # Mostly the first device's vram0, where most BOs go.
        index = data.draw(st.sampled_from([0] * len(regions) + list(range(len(regions)))))
        name = regions[index].name
        for w in self.worlds:
            cg = w.cgroup(path)
            assert cg.dmem_css is not None
            w.tree.dmem.write_limit(cg.dmem_css, attr, f"{name} {value}", nonblock=nonblock,
                                    task=1)
        if attr == "max" and not nonblock and self.a.tree.profile.reclaim_on_max:
            self._check_reclaimed(path, index)

    @precondition(lambda self: len(self.live) > 1)
    @rule(data=st.data(), fraction=st.sampled_from([0, 1, 2, 3]), nonblock=st.booleans())
    def lower_max(self, data: st.DataObject, fraction: int, nonblock: bool) -> None:
        """dmem.max at 0, 1/4, 2/4 or 3/4 of a cgroup's current usage in its busiest region."""
        path = data.draw(st.sampled_from(self.live[1:]))
        css = self.a.cgroup(path).dmem_css
        assert css is not None
        regions = self.a.tree.dmem.regions
        usage = [css.pools[r].counter.usage if r in css.pools else 0 for r in regions]
        index = max(range(len(regions)), key=lambda k: usage[k])
        value = usage[index] * fraction // 4
        for w in self.worlds:
            cg_css = w.cgroup(path).dmem_css
            assert cg_css is not None
            w.tree.dmem.write_limit(cg_css, "max", f"{regions[index].name} {value}",
                                    nonblock=nonblock, task=1)
        if not nonblock and self.a.tree.profile.reclaim_on_max:
            self._check_reclaimed(path, index)

    def _check_reclaimed(self, path: str, index: int) -> None:
        """After a blocking write below usage: usage fits, or nothing evictable is left."""
        w = self.a
        region = w.tree.dmem.regions[index]
        css = w.cgroup(path).dmem_css
        assert css is not None
        pool = css.pools[region]
        if pool.counter.usage <= pool.counter.max:
            return
        man = next(m for d in w.devices for m in d.vram if m.region is region)
        # Whatever is left in VRAM below the pool must be pinned, or protected by min
        # relative to the pool (its own BOs are never protected).
        for bo in man.lru():
            if bo.pool is not None and bo.pool.is_descendant_of(pool):
                ok, _ = w.tree.dmem.evict_valuable(pool, bo.pool, True)
                system = bo.device.system
                assert not ok or system.used + bo.size > system.size, bo

    # -- clients -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.open) < 4)
    @rule(minor=st.integers(0, 1))
    def open_client(self, minor: int) -> None:
        self._open(minor)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def close_client(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self.open))
        for w in self.worlds:
            client = w.clients[i]
            client.device.close(client)
            assert not client.bos and client not in client.device.clients
        self.open.remove(i)

    def _caller(self, data: st.DataObject) -> str:
        """The caller's cgroup: mostly a child cgroup, sometimes the root."""
        return data.draw(st.sampled_from(self.live[1:] * 3 + self.live[:1]))

    def _can_create(self) -> bool:
        return bool(self.open) and sum(len(self.a.clients[i].bos) for i in self.open) < MAX_BOS

    CREATE_ARGS = {
        "data": st.data(), "pages": st.integers(1, 16),
        "extra_4k": st.sampled_from([0] * 9 + [1]), "placement": PLACEMENTS,
        "flags": FLAG_SETS, "caching": CACHING,
    }

    # Two identical rules: creating BOs is what drives everything else.
    @precondition(_can_create)
    @rule(**CREATE_ARGS)
    def gem_create(self, **kwargs: Any) -> None:
        self._gem_create(**kwargs)

    @precondition(_can_create)
    @rule(**CREATE_ARGS)
    def gem_create_more(self, **kwargs: Any) -> None:
        self._gem_create(**kwargs)

    def _gem_create(self, data: st.DataObject, pages: int, extra_4k: int,
                    placement: tuple[str, ...], flags: frozenset[Flag],
                    caching: Caching | None) -> None:
        i = data.draw(st.sampled_from(self.open))
        path = self._caller(data)
        size = pages * PAGE64K + extra_4k * 4096

        def create(w: World) -> XeBo:
            client = w.clients[i]
            return client.device.gem_create(client, w.css(path), size, placement, flags,
                                            caching)

        kind, result = self.both(create)
        if kind == "ok":
            bo = result
            assert bo.size == size and bo.pinned == (Flag.PINNED in flags)
            if bo.pool is not None:
                assert bo.pool.css is self.a.css(path)  # charged to the caller's cgroup
            if bo.pinned:
                self.pinned_keys.add((i, bo.handle))
            if Flag.PINNED in flags:
                assert self.a.tree.profile.has_pinning

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def gem_close(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self.open))
        handles = sorted(self.a.clients[i].bos)
        if not handles:
            return
        handle = data.draw(st.sampled_from(handles))
        for w in self.worlds:
            w.clients[i].device.gem_close(w.clients[i], handle)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def exec_bos(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self.open))
        handles = sorted(self.a.clients[i].bos)
        if not handles:
            return
        job = data.draw(st.lists(st.sampled_from(handles), min_size=1, max_size=4, unique=True))
        path = self._caller(data)
        before = {h: self.a.clients[i].bos[h].evictions for h in job}

        def run(w: World) -> tuple[int, int]:
            client = w.clients[i]
            return client.device.exec(client, w.css(path), [client.bos[h] for h in job])

        self.both(run)
        # The job's BOs are reserved together: none of them is evicted by its own EXEC.
        for h in job:
            assert self.a.clients[i].bos[h].evictions == before[h]

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def worlds_agree(self) -> None:
        if self.worlds:
            a, b = (w.snapshot() for w in self.worlds)
            for key in a:
                assert a[key] == b[key], f"{key} differ between the BO-by-BO and scan walks"

    @invariant()
    def bos_live_in_exactly_one_place(self) -> None:
        if not self.worlds:
            return
        for d in self.a.devices:
            for bo in d.all_bos():
                assert bo.resource is not None, bo
                if isinstance(bo.resource, VramManager):
                    assert bo.resource in d.vram
                    assert any(p.manager is bo.resource for p in bo.places)
                    assert bo.pool is not None and bo.pool.region is bo.resource.region
                    assert bo.on_lru != bo.pinned, bo
                else:
                    assert bo.pool is None and not bo.on_lru and not bo.pinned, bo

    @invariant()
    def managers_and_system_memory_match_the_bos(self) -> None:
        if not self.worlds:
            return
        for d in self.a.devices:
            mine = d.all_bos()
            for m in d.vram:
                resident = [bo for bo in mine if bo.resource is m]
                assert m.used == sum(bo.size for bo in resident) <= m.size
                assert m.pinned == sum(bo.size for bo in resident if bo.pinned)
                assert list(m.lru()) == sorted((bo for bo in resident if not bo.pinned),
                                               key=lambda b: b.seq)
                counts: dict[Pool, int] = {}
                for bo in m.lru():
                    assert bo.pool is not None
                    counts[bo.pool] = counts.get(bo.pool, 0) + 1
                assert m.own == counts
            system = [bo for bo in mine if bo.resource is d.system]
            assert d.system.used == sum(bo.size for bo in system) <= d.system.size

    @invariant()
    def pools_match_the_bos(self) -> None:
        if not self.worlds:
            return
        tree = self.a.tree
        charged: dict[Pool, int] = {}
        pinned: dict[Pool, int] = {}
        for d in self.a.devices:
            for bo in d.all_bos():
                if bo.pool is not None:
                    charged[bo.pool] = charged.get(bo.pool, 0) + bo.size
                    if bo.pinned:
                        pinned[bo.pool] = pinned.get(bo.pool, 0) + bo.size
        seen: set[Pool] = set()
        for css in tree.dmem.root_css.walk_pre():
            for region in tree.dmem.regions:
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
        assert set(charged) <= seen

    @invariant()
    def pinned_bos_are_never_evicted(self) -> None:
        if not self.worlds:
            return
        for d in self.a.devices:
            for e in d.log.entries:
                assert isinstance(e.victim, XeBo)
                i = self.a.clients.index(e.victim.client)
                assert (i, e.victim.handle) not in self.pinned_keys


DeviceMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_device_model = DeviceMachine.TestCase
