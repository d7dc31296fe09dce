"""kernel/cgroup/dmem.c: regions, pools, charging, pinning, protection, limit files, lifetime.

docs/kernel-model.md §2-5, §8, §9.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from dmemfs.engine import page_counter as pc
from dmemfs.engine.cgroup import Cgroup, CgroupTree
from dmemfs.engine.dmem import DmemCss, Pool, Region
from dmemfs.errors import ChargeLimited, InvalidArgument, NoDevice, TryAgain
from dmemfs.profile import LATEST, PAGE_COUNTER_MAX, V6_14

REGION = "drm/0000:03:00.0/vram0"
R1 = "drm/0000:03:00.0/vram1"
R2 = "drm/0000:04:00.0/vram0"
GiB = 1 << 30
MiB = 1 << 20


def enable(tree: CgroupTree, cg: Cgroup) -> None:
    tree.write_subtree_control(cg, "+dmem")


def css(cg: Cgroup) -> DmemCss:
    assert cg.dmem_css is not None
    return cg.dmem_css


def counters(*pools: Pool) -> list[tuple[int, ...]]:
    return [
        (p.counter.usage, p.counter.pinned, p.counter.min, p.counter.low, p.counter.max,
         p.counter.watermark)
        for p in pools
    ]


def up(pool: Pool) -> Pool:
    """The parent pool (which must exist)."""
    assert pool.parent is not None
    return pool.parent


@pytest.fixture
def abc(tree: CgroupTree) -> tuple[Cgroup, Cgroup, Cgroup]:
    """/a and /a/b with dmem enabled on the root and on /a, plus /c (sibling of /a)."""
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    enable(tree, a)
    b = tree.mkdir(a, "b")
    c = tree.mkdir(tree.root, "c")
    return a, b, c


# -- regions (docs/kernel-model.md §2) ------------------------------------------------------------


def test_regions_keep_registration_order(make_tree: Callable[..., CgroupTree]) -> None:
    tree = make_tree(regions=((R1, 2 * GiB), (REGION, GiB)))
    tree.dmem.register_region(R2, 3 * GiB)
    assert [r.name for r in tree.dmem.regions] == [R1, REGION, R2]
    assert tree.dmem.show_capacity() == f"{R1} {2 * GiB}\n{REGION} {GiB}\n{R2} {3 * GiB}\n"
    assert tree.dmem.show(tree.dmem.root_css, "usage") == f"{R1} 0\n{REGION} 0\n{R2} 0\n"


def test_capacity_is_printed_unconditionally(make_tree: Callable[..., CgroupTree]) -> None:
    tree = make_tree(regions=((REGION, PAGE_COUNTER_MAX + 5),))
    assert tree.dmem.show_capacity() == f"{REGION} {PAGE_COUNTER_MAX + 5}\n"  # never "max"


def test_size_zero_registers_nothing(tree: CgroupTree) -> None:
    before = tree.dmem.show_capacity()
    assert tree.dmem.register_region(R1, 0) is None
    assert [r.name for r in tree.dmem.regions] == [REGION]
    assert tree.dmem.show_capacity() == before
    assert tree.dmem.region_by_name(R1) is None


def test_no_region_means_empty_files(make_tree: Callable[..., CgroupTree]) -> None:
    tree = make_tree(regions=())
    assert tree.dmem.show_capacity() == ""
    assert tree.dmem.show(tree.dmem.root_css, "usage") == ""


def test_unregister_removes_region_everywhere(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    r1 = tree.dmem.register_region(R1, GiB)
    assert r1 is not None
    pool = tree.dmem.try_charge(css(b), region, MiB)
    old_a_pool = pool.parent
    assert old_a_pool is not None
    io.write(a, "dmem.max", f"{REGION} 1G")
    tree.dmem.unregister_region(region)
    assert region.unregistered
    assert tree.dmem.regions == [r1]
    assert tree.dmem.region_by_name(REGION) is None
    for cg in (tree.root, a, b):
        assert region not in css(cg).pools
    assert io.read(tree.root, "dmem.capacity") == f"{R1} {GiB}\n"
    for cg in (tree.root, a, b):
        assert io.read(cg, "dmem.current") == f"{R1} 0\n"
    for name in ("dmem.max", "dmem.min", "dmem.low", "dmem.peak", "dmem.pinned"):
        assert REGION not in io.read(b, name)
    # New charges: ENODEV; nothing is created.
    for cg in (tree.root, a, b):
        with pytest.raises(NoDevice) as exc:
            tree.dmem.try_charge(css(cg), region, 1)
        assert exc.value.errno == errno.ENODEV
        with pytest.raises(NoDevice):
            tree.dmem.get_pool(css(cg), region)
        assert region not in css(cg).pools
    # Writes naming it: EINVAL (not found).
    with pytest.raises(InvalidArgument):
        io.write(a, "dmem.max", f"{REGION} 2G")
    # The old charge can still be uncharged through its (unlinked) pool chain.
    assert css(b).nr_charges == 1
    tree.dmem.uncharge(pool, MiB)
    assert pool.counter.usage == 0
    assert old_a_pool.counter.usage == 0
    assert tree.dmem.root_pool_of(pool).counter.usage == 0
    assert css(b).nr_charges == 0
    # Unregistering twice is harmless.
    tree.dmem.unregister_region(region)
    assert tree.dmem.regions == [r1]


def test_reregister_appends_a_fresh_region(make_tree: Callable[..., CgroupTree]) -> None:
    tree = make_tree(regions=((REGION, GiB), (R1, GiB)))
    old = tree.dmem.regions[0]
    root = tree.dmem.root_css
    tree.dmem.try_charge(root, old, 5)
    tree.dmem.unregister_region(old)
    new = tree.dmem.register_region(REGION, 2 * GiB)
    assert new is not None and new is not old
    assert [r.name for r in tree.dmem.regions] == [R1, REGION]
    assert tree.dmem.show_capacity() == f"{R1} {GiB}\n{REGION} {2 * GiB}\n"
    assert tree.dmem.show(root, "usage") == f"{R1} 0\n{REGION} 0\n"  # the old charge is gone
    assert tree.dmem.try_charge(root, new, 7).counter.usage == 7


# -- pools (docs/kernel-model.md §2) --------------------------------------------------------------


def test_pools_are_created_lazily_with_ancestors(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup]
) -> None:
    a, b, c = abc
    for cg in (tree.root, a, b, c):
        assert tree.dmem.find_pool(css(cg), region) is None
    pool_b = tree.dmem.get_pool(css(b), region)
    pool_a = tree.dmem.find_pool(css(a), region)
    pool_root = tree.dmem.find_pool(css(tree.root), region)
    assert pool_a is not None and pool_root is not None
    assert tree.dmem.find_pool(css(c), region) is None  # siblings are not created
    assert pool_b.parent is pool_a and pool_a.parent is pool_root and pool_root.parent is None
    assert pool_b.counter.parent is pool_a.counter
    assert pool_a.counter.parent is pool_root.counter
    assert (pool_b.css, pool_b.region) == (css(b), region)
    assert tree.dmem.get_pool(css(b), region) is pool_b
    pool_c = tree.dmem.get_pool(css(c), region)
    assert pool_c.parent is pool_root  # reuses the existing ancestor
    assert pool_b.is_descendant_of(pool_root) and pool_b.is_descendant_of(pool_b)
    assert not pool_b.is_descendant_of(pool_c)
    assert tree.dmem.root_pool_of(pool_b) is pool_root


def test_show_defaults_without_a_pool(tree: CgroupTree, abc: tuple[Cgroup, Cgroup, Cgroup],
                                      io: Any) -> None:
    _a, b, _c = abc
    expected = {"dmem.current": "0", "dmem.peak": "0", "dmem.min": "0", "dmem.low": "0",
                "dmem.max": "max", "dmem.pinned": "0"}
    for name, value in expected.items():
        assert io.read(b, name) == f"{REGION} {value}\n"
    assert css(b).pools == {}  # reading created nothing


# -- try_charge / uncharge (docs/kernel-model.md §2) ----------------------------------------------


def test_try_charge_returns_the_pool_and_charges_hierarchically(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    pool = tree.dmem.try_charge(css(b), region, 3 * MiB)
    assert pool.css is css(b) and pool.region is region
    assert css(b).nr_charges == 1
    tree.dmem.try_charge(css(b), region, MiB)
    assert css(b).nr_charges == 2
    for cg in (tree.root, a, b):
        assert io.read(cg, "dmem.current") == f"{REGION} {4 * MiB}\n"
    assert io.read(b, "dmem.peak") == f"{REGION} {4 * MiB}\n"
    tree.dmem.uncharge(pool, 3 * MiB)
    assert io.read(a, "dmem.current") == f"{REGION} {MiB}\n"
    assert io.read(a, "dmem.peak") == f"{REGION} {4 * MiB}\n"  # never reset
    assert css(b).nr_charges == 1


def test_try_charge_limit_hit_raises_with_limit_pool(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    io.write(a, "dmem.max", f"{REGION} 10M")
    tree.dmem.try_charge(css(b), region, 8 * MiB)
    pool_b = tree.dmem.get_pool(css(b), region)
    pool_a = tree.dmem.get_pool(css(a), region)
    root_pool = tree.dmem.get_pool(css(tree.root), region)
    before = counters(root_pool, pool_a)
    with pytest.raises(ChargeLimited) as exc:
        tree.dmem.try_charge(css(b), region, 3 * MiB)
    assert exc.value.errno == errno.EAGAIN
    assert isinstance(exc.value, TryAgain)
    assert exc.value.limit_pool is pool_a
    assert counters(root_pool, pool_a) == before
    assert pool_b.counter.usage == 8 * MiB
    assert css(b).nr_charges == 1
    tree.dmem.try_charge(css(b), region, 2 * MiB)  # exactly up to max is fine
    assert pool_a.counter.usage == 10 * MiB


def test_limit_pool_is_the_lowest_one_over_max(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    io.write(a, "dmem.max", f"{REGION} 4")
    io.write(b, "dmem.max", f"{REGION} 4")
    with pytest.raises(ChargeLimited) as exc:
        tree.dmem.try_charge(css(b), region, 5)
    assert exc.value.limit_pool is tree.dmem.find_pool(css(b), region)
    with pytest.raises(ChargeLimited) as exc:
        tree.dmem.try_charge(css(a), region, 5)
    assert exc.value.limit_pool is tree.dmem.find_pool(css(a), region)
    assert tree.dmem.get_pool(css(tree.root), region).counter.usage == 0


def test_root_has_no_limit_and_capacity_is_not_a_limit(tree: CgroupTree, region: Region) -> None:
    pool = tree.dmem.try_charge(tree.dmem.root_css, region, 2 * region.size)
    assert pool.counter.usage == 2 * region.size


# -- evict_valuable (docs/kernel-model.md §8) -----------------------------------------------------


def test_evict_valuable_limit_equals_test(tree: CgroupTree, region: Region,
                                          abc: tuple[Cgroup, Cgroup, Cgroup], io: Any) -> None:
    _a, b, _c = abc
    io.write(b, "dmem.min", f"{REGION} max")
    pool = tree.dmem.try_charge(css(b), region, 10)
    assert tree.dmem.evict_valuable(pool, pool, False) == (True, False)
    assert tree.dmem.evict_valuable(pool, pool, True) == (True, False)
    # Protected as soon as the limit is any other pool above it.
    assert tree.dmem.evict_valuable(pool.parent, pool, False) == (False, False)


def test_evict_valuable_root_limit_disables_protection(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, _b, _c = abc
    io.write(a, "dmem.min", f"{REGION} max")
    pool = tree.dmem.try_charge(css(a), region, 10)
    root_pool = tree.dmem.root_pool_of(pool)
    assert tree.dmem.evict_valuable(root_pool, pool, False) == (True, False)
    # L = None evaluates protection against the root pool: protected.
    assert tree.dmem.evict_valuable(None, pool, False) == (False, False)
    assert tree.dmem.below_min(None, pool) is True


def test_evict_valuable_test_outside_limit(tree: CgroupTree, region: Region,
                                           abc: tuple[Cgroup, Cgroup, Cgroup]) -> None:
    _a, b, c = abc
    pool_b = tree.dmem.try_charge(css(b), region, 10)
    pool_c = tree.dmem.try_charge(css(c), region, 10)
    pool_a = pool_b.parent
    assert pool_a is not None
    assert tree.dmem.evict_valuable(pool_a, pool_c, False) == (False, False)
    assert tree.dmem.evict_valuable(pool_a, pool_c, True) == (False, False)
    assert tree.dmem.evict_valuable(pool_b, pool_a, False) == (False, False)  # ancestor
    assert tree.dmem.evict_valuable(pool_a, pool_b, False) == (True, False)  # inside


def test_evict_valuable_example_proportional(tree: CgroupTree, region: Region) -> None:
    # An example of effective protection (docs/kernel-model.md §7, §8), limit None (root
    # semantics): P min 6; X,Y,Z min 5, usage 4,3,2.
    enable(tree, tree.root)
    p = tree.mkdir(tree.root, "p")
    enable(tree, p)
    d = tree.dmem
    pp = d.get_pool(css(p), region)
    pc.set_min(pp.counter, 6)
    pools = []
    for name, usage in (("x", 4), ("y", 3), ("z", 2)):
        cg = tree.mkdir(p, name)
        pool = d.get_pool(css(cg), region)
        pc.set_min(pool.counter, 5)
        d.try_charge(css(cg), region, usage)
        pools.append(pool)
    x, y, z = pools
    assert d.evict_valuable(None, x, True) == (True, False)  # 4 > emin 2
    assert x.counter.emin == 2
    assert d.evict_valuable(None, y, True) == (True, False)  # 3 > 2
    assert d.evict_valuable(None, z, True) == (True, False)  # 2 > 1
    assert (y.counter.emin, z.counter.emin) == (2, 1)
    # The same test under the root pool as limit: protection is not evaluated at all.
    assert d.evict_valuable(d.root_pool_of(x), x, False) == (True, False)
    # Under P as limit, X is a direct child: raw min 5 >= usage 4 -> protected.
    assert d.evict_valuable(pp, x, False) == (False, False)


def test_evict_valuable_example_recursive(tree: CgroupTree, region: Region) -> None:
    # Protection handed down to a child without its own (docs/kernel-model.md §7): P min 6, X,Y min
    # 0, usage 4,2 -> X.emin = 4, not evictable.
    enable(tree, tree.root)
    p = tree.mkdir(tree.root, "p")
    enable(tree, p)
    d = tree.dmem
    pc.set_min(d.get_pool(css(p), region).counter, 6)
    x = d.try_charge(css(tree.mkdir(p, "x")), region, 4)
    y = d.try_charge(css(tree.mkdir(p, "y")), region, 2)
    assert d.evict_valuable(None, x, True) == (False, False)
    assert x.counter.emin == 4
    assert d.evict_valuable(None, y, True) == (False, False)
    assert y.counter.emin == 2
    assert d.below_min(None, x) is True


def test_evict_valuable_low_and_hit_low(tree: CgroupTree, region: Region,
                                        abc: tuple[Cgroup, Cgroup, Cgroup], io: Any) -> None:
    a, _b, _c = abc
    io.write(a, "dmem.min", f"{REGION} 4")
    io.write(a, "dmem.low", f"{REGION} 10")
    pool = tree.dmem.try_charge(css(a), region, 4)
    # used 4 <= emin 4: min protects, low is never looked at.
    assert tree.dmem.evict_valuable(None, pool, False) == (False, False)
    assert tree.dmem.evict_valuable(None, pool, True) == (False, False)
    tree.dmem.try_charge(css(a), region, 6)  # used 10: above emin, at elow
    assert tree.dmem.evict_valuable(None, pool, False) == (False, True)
    assert tree.dmem.evict_valuable(None, pool, True) == (True, False)  # ignore_low
    tree.dmem.try_charge(css(a), region, 1)  # used 11 > elow 10
    assert tree.dmem.evict_valuable(None, pool, False) == (True, False)
    assert tree.dmem.below_low(None, pool) is False


def test_evict_valuable_inner_limit_gives_children_raw_settings(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    _a, b, _c = abc
    io.write(b, "dmem.min", f"{REGION} 100")  # a's own min stays 0
    pool_b = tree.dmem.try_charge(css(b), region, 10)
    pool_a = pool_b.parent
    assert pool_a is not None
    # Relative to /a, b is a first-level child: emin = raw 100 >= 10 -> protected.
    assert tree.dmem.evict_valuable(pool_a, pool_b, False) == (False, False)
    assert pool_b.counter.emin == 100
    # Relative to the root, /a has no protection to hand down: 10 * 0 / 10 = 0.
    assert tree.dmem.evict_valuable(None, pool_b, False) == (True, False)
    assert pool_b.counter.emin == 0


def _scan(tree: CgroupTree, region: Region, limit: Pool | None, ignore_low: bool,
          **kw: Any) -> tuple[set[str], set[str]]:
    """eviction_scan with the pools' own charges as "buffers" (one per charged pool)."""
    own: dict[Pool, int] = {}
    subtree: dict[Pool, int] = {}
    for cs in tree.dmem.root_css.walk_pre():
        pool = cs.pools.get(region)
        if pool is None or pool.counter.usage == 0:
            continue
        children = sum(c.pools[region].counter.usage for c in cs.children if region in c.pools)
        if pool.counter.usage > children:
            own[pool] = 1
            p: Pool | None = pool
            while p is not None:
                subtree[p] = subtree.get(p, 0) + 1
                p = p.parent
    ev, low = tree.dmem.eviction_scan(limit, region, ignore_low, own, subtree, **kw)
    return {p.css.cgroup.path for p in ev}, {p.css.cgroup.path for p in low}


def test_eviction_scan_matches_evict_valuable(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, c = abc
    d = tree.mkdir(a, "d")
    io.write(a, "dmem.min", f"{REGION} 6")
    io.write(b, "dmem.min", f"{REGION} 6")
    io.write(d, "dmem.low", f"{REGION} 9")
    io.write(c, "dmem.low", f"{REGION} 3")
    for cg, n in ((a, 1), (b, 5), (d, 3), (c, 2), (tree.root, 4)):
        tree.dmem.try_charge(css(cg), region, n)
    # Against the root (6.14, device full): /a holds 9 > its min 6; /a/b gets 5 of it
    # (within its own 6), /a/d the 1 left over (below its usage 3; its low 9 is capped to
    # /a's elow 0 -> evictable); /c is within its low 3; the root's own charge has no
    # protection; /a's own charge is above its min.
    assert _scan(tree, region, None, False) == ({"/", "/a", "/a/d"}, {"/c"})
    assert _scan(tree, region, None, True) == ({"/", "/a", "/a/d", "/c"}, set())
    # Every pool agrees with evict_valuable, one by one.
    for cg in (tree.root, a, b, d, c):
        pool = css(cg).pools[region]
        ok, low = tree.dmem.evict_valuable(None, pool, False)
        ev, lows = _scan(tree, region, None, False)
        assert (cg.path in ev, cg.path in lows) == (ok, low)
    # A limit pool: its own buffers always, descendants judged against it, nothing outside.
    pool_a = css(a).pools[region]
    assert _scan(tree, region, pool_a, False) == ({"/a"}, {"/a/d"})
    # The root as limit pool evaluates no protection at all (Linux 7.3, common ancestor).
    root_pool = css(tree.root).pools[region]
    assert _scan(tree, region, root_pool, False) == ({"/", "/a", "/a/b", "/a/d", "/c"}, set())
    assert _scan(tree, region, root_pool, False, exclude=pool_a) == ({"/", "/c"}, set())
    assert _scan(tree, region, pool_a, True, skip=pool_a) == ({"/a/d"}, set())


def test_eviction_scan_skips_fully_protected_subtrees(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    io.write(a, "dmem.min", f"{REGION} 100")
    tree.dmem.try_charge(css(b), region, 10)
    visited = []
    calc = tree.dmem.calculate_protection
    own = {css(b).pools[region]: 1}
    subtree = {css(b).pools[region]: 1, css(a).pools[region]: 1, css(tree.root).pools[region]: 1}

    class Spy(dict):  # type: ignore[type-arg]
        def get(self, key: Any, default: Any = None) -> Any:
            visited.append(key.css.cgroup.path)
            return super().get(key, default)

    assert tree.dmem.eviction_scan(None, region, False, Spy(own), subtree) == ([], [])
    # /a (usage 10 within its min 100) was judged; /a/b below it never looked at.
    assert "/a/b" not in visited and "/" in visited
    del calc
    assert tree.dmem.evict_valuable(None, css(b).pools[region], False) == (False, False)


def test_eviction_scan_visits_subtrees_whose_protection_may_wrap(
    make_tree: Callable[..., CgroupTree],
) -> None:
    # /x: min 1 TiB, usage 8 GiB, so fully protected; its child /x/y (min 0) would get
    # 1 TiB * 8 GiB / 8 GiB of it, but the product wraps u64 to 0: y is evictable.
    TiB = 1 << 40
    tree = make_tree(profile=LATEST, regions=((REGION, 2 * TiB),))
    region = tree.dmem.regions[0]
    enable(tree, tree.root)
    x = tree.mkdir(tree.root, "x")
    enable(tree, x)
    y = tree.mkdir(x, "y")
    pc.set_min(tree.dmem.get_pool(css(x), region).counter, TiB)
    tree.dmem.try_charge(css(y), region, 8 * GiB)
    assert tree.dmem.evict_valuable(None, css(y).pools[region], False) == (True, False)
    assert _scan(tree, region, None, False) == ({"/x/y"}, set())
    exact = make_tree(profile=LATEST.with_options(wrap_u64=False), regions=((REGION, 2 * TiB),))
    region = exact.dmem.regions[0]
    enable(exact, exact.root)
    x = exact.mkdir(exact.root, "x")
    enable(exact, x)
    y = exact.mkdir(x, "y")
    pc.set_min(exact.dmem.get_pool(css(x), region).counter, TiB)
    exact.dmem.try_charge(css(y), region, 8 * GiB)
    assert _scan(exact, region, None, False) == (set(), set())


def test_evict_valuable_wrap_profile_option(make_tree: Callable[..., CgroupTree]) -> None:
    # The RFC example in GiB: 5 GiB * 6 GiB overflows u64 in effective_protection.
    results = {}
    for wrap in (True, False):
        tree = make_tree(profile=LATEST.with_options(wrap_u64=wrap))
        region = tree.dmem.regions[0]
        enable(tree, tree.root)
        x = tree.mkdir(tree.root, "x")
        enable(tree, x)
        pc.set_min(tree.dmem.get_pool(css(x), region).counter, 6 * GiB)
        pools = []
        for name in "abc":
            cg = tree.mkdir(x, name)
            pool = tree.dmem.get_pool(css(cg), region)
            pc.set_min(pool.counter, 5 * GiB)
            tree.dmem.try_charge(css(cg), region, 5 * GiB)
            pools.append(pool)
        tree.dmem.calculate_protection(tree.dmem.root_pool_of(pools[0]), pools[0])
        results[wrap] = pools[0].counter.emin
    assert results[False] == 2 * GiB
    assert results[True] == ((5 * GiB * 6 * GiB) % (1 << 64)) // (15 * GiB) == 1002159035


# -- pinning (docs/kernel-model.md §9) ------------------------------------------------------------


def test_pinned_thresholds_in_evict_valuable(tree: CgroupTree, region: Region,
                                             abc: tuple[Cgroup, Cgroup, Cgroup], io: Any) -> None:
    a, _b, _c = abc
    io.write(a, "dmem.min", f"{REGION} 10")
    pool = tree.dmem.try_charge(css(a), region, 20)
    assert tree.dmem.evict_valuable(None, pool, True) == (True, False)  # 20 > emin 10
    tree.dmem.try_pin(pool, 10)
    assert tree.dmem.evict_valuable(None, pool, True) == (False, False)  # 20 <= 10 + 10
    tree.dmem.try_charge(css(a), region, 1)
    assert tree.dmem.evict_valuable(None, pool, True) == (True, False)  # 21 > 20


def test_pinned_low_threshold(tree: CgroupTree, region: Region,
                              abc: tuple[Cgroup, Cgroup, Cgroup], io: Any) -> None:
    a, _b, _c = abc
    io.write(a, "dmem.min", f"{REGION} 4")
    io.write(a, "dmem.low", f"{REGION} 10")
    pool = tree.dmem.try_charge(css(a), region, 14)
    assert tree.dmem.evict_valuable(None, pool, False) == (True, False)  # 14 > elow 10
    tree.dmem.try_pin(pool, 4)
    # min threshold 4 + 4 = 8 < 14; low threshold 10 + 4 = 14 >= 14 -> saved by low only.
    assert tree.dmem.evict_valuable(None, pool, False) == (False, True)
    assert tree.dmem.evict_valuable(None, pool, True) == (True, False)


def test_rfc_author_example_as_emulated(tree: CgroupTree, region: Region) -> None:
    # docs/kernel-model.md §9: parent X min 6, children A, B, C min 5 (usage 5 each) -> effective 2
    # each. The author's reading after B pins 3: each child effective 1 and B's min 1 + 3 = 4. The
    # code as posted (and emulated, docs/kernel-model.md §9) only zeroes a setting once pinned
    # exceeds it; B's pinned 3 <= min 5 and X's pinned 3 <= min 6, so every emin stays 2, and B's
    # eviction threshold is emin + pinned = 2 + 3 = 5: B (usage 5) is not evictable while under the
    # author's numbers (threshold 4) it would be. A and C stay evictable above emin 2.
    enable(tree, tree.root)
    x = tree.mkdir(tree.root, "x")
    enable(tree, x)
    d = tree.dmem
    pc.set_min(d.get_pool(css(x), region).counter, 6)
    pools = {}
    for name in "abc":
        cg = tree.mkdir(x, name)
        pool = d.get_pool(css(cg), region)
        pc.set_min(pool.counter, 5)
        d.try_charge(css(cg), region, 5)
        pools[name] = pool
    for pool in pools.values():
        assert d.evict_valuable(None, pool, True) == (True, False)
        assert pool.counter.emin == 2
    d.try_pin(pools["b"], 3)
    assert d.root_pool_of(pools["b"]).counter.pinned == 3
    assert up(pools["b"]).counter.pinned == 3
    assert d.evict_valuable(None, pools["b"], True) == (False, False)
    assert pools["b"].counter.emin == 2  # not 1
    for name in "ac":
        assert d.evict_valuable(None, pools[name], True) == (True, False)
        assert pools[name].counter.emin == 2  # not 1


def test_pinning_posted_every_pin_fails(make_tree: Callable[..., CgroupTree]) -> None:
    tree = make_tree(profile=LATEST.with_options(pinning="posted"))
    region = tree.dmem.regions[0]
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    pool = tree.dmem.try_charge(css(a), region, GiB)
    pc.set_min(pool.counter, PAGE_COUNTER_MAX)
    root_pool = tree.dmem.root_pool_of(pool)
    before = counters(pool, root_pool)
    for n in (1, 4096, GiB):
        with pytest.raises(TryAgain) as exc:
            tree.dmem.try_pin(pool, n)
        assert exc.value.errno == errno.EAGAIN
    with pytest.raises(TryAgain):
        tree.dmem.try_pin(root_pool, 1)
    assert counters(pool, root_pool) == before


def test_pinning_intended_up_to_min(tree: CgroupTree, region: Region,
                                    abc: tuple[Cgroup, Cgroup, Cgroup], io: Any) -> None:
    a, b, _c = abc
    assert tree.profile.pinning == "intended"
    io.write(a, "dmem.min", f"{REGION} 8")
    io.write(b, "dmem.min", f"{REGION} 6")
    pool = tree.dmem.try_charge(css(b), region, 10)
    tree.dmem.try_pin(pool, 6)
    chain = [pool, up(pool), tree.dmem.root_pool_of(pool)]
    assert [p.counter.pinned for p in chain] == [6, 6, 6]
    before = counters(*chain)
    with pytest.raises(TryAgain) as exc:
        tree.dmem.try_pin(pool, 1)  # b: 7 > 6
    assert exc.value.errno == errno.EAGAIN
    assert counters(*chain) == before
    pool_a = pool.parent
    assert pool_a is not None
    tree.dmem.try_pin(pool_a, 2)  # a: 8 <= 8
    with pytest.raises(TryAgain):
        tree.dmem.try_pin(pool_a, 1)
    for cg, value in ((tree.root, 8), (a, 8), (b, 6)):
        assert io.read(cg, "dmem.pinned") == f"{REGION} {value}\n"
    tree.dmem.unpin(pool, 6)
    assert [p.counter.pinned for p in chain] == [0, 2, 2]


def test_pin_fails_with_default_min_zero(tree: CgroupTree, region: Region,
                                         abc: tuple[Cgroup, Cgroup, Cgroup]) -> None:
    _a, b, _c = abc
    pool = tree.dmem.try_charge(css(b), region, 10)
    with pytest.raises(TryAgain):
        tree.dmem.try_pin(pool, 1)
    assert pool.counter.pinned == 0


# -- below_min / below_low / common_ancestor (docs/kernel-model.md §2) ----------------------------


def test_below_min_and_low(tree: CgroupTree, region: Region,
                           abc: tuple[Cgroup, Cgroup, Cgroup], io: Any) -> None:
    a, b, _c = abc
    io.write(a, "dmem.min", f"{REGION} 5")
    io.write(a, "dmem.low", f"{REGION} 8")
    pool_a = tree.dmem.try_charge(css(a), region, 5)
    root_pool = tree.dmem.root_pool_of(pool_a)
    assert tree.dmem.below_min(None, pool_a) is True
    assert tree.dmem.below_low(None, pool_a) is True
    assert tree.dmem.below_min(root_pool, pool_a) is True
    assert tree.dmem.below_min(pool_a, pool_a) is False  # root == test
    assert tree.dmem.below_low(pool_a, pool_a) is False
    assert tree.dmem.below_min(None, root_pool) is False  # no parent
    assert tree.dmem.below_low(None, root_pool) is False
    tree.dmem.try_charge(css(a), region, 3)  # usage 8
    assert tree.dmem.below_min(None, pool_a) is False
    assert tree.dmem.below_low(None, pool_a) is True
    tree.dmem.try_charge(css(a), region, 1)
    assert tree.dmem.below_low(None, pool_a) is False
    # Relative to /a, /a/b gets its raw settings.
    io.write(b, "dmem.min", f"{REGION} 100")
    pool_b = tree.dmem.try_charge(css(b), region, 50)
    assert tree.dmem.below_min(pool_a, pool_b) is True
    assert tree.dmem.below_min(None, pool_b) is False  # 50 * 5 / 50 = 5 < 50


def test_common_ancestor(tree: CgroupTree, region: Region,
                         abc: tuple[Cgroup, Cgroup, Cgroup]) -> None:
    a, b, c = abc
    d = tree.dmem
    b2 = tree.mkdir(a, "b2")
    r1 = d.register_region(R1, GiB)
    assert r1 is not None
    pb = d.get_pool(css(b), region)
    pb2 = d.get_pool(css(b2), region)
    pcc = d.get_pool(css(c), region)
    pa = d.find_pool(css(a), region)
    assert d.common_ancestor(pb, pb2) is pa
    assert d.common_ancestor(pb, pcc) is d.root_pool_of(pb)
    assert d.common_ancestor(pb, pa) is pa
    assert d.common_ancestor(pa, pb) is pa
    assert d.common_ancestor(pb, pb) is pb
    assert d.common_ancestor(None, pb) is None
    assert d.common_ancestor(pb, None) is None
    # The result is in a's region, created lazily when missing.
    pb2_r1 = d.get_pool(css(b2), r1)
    got = d.common_ancestor(pb2_r1, pb)
    assert got is d.find_pool(css(a), r1)
    assert got is not None and got.region is r1
    assert d.common_ancestor(pb, pb2_r1) is pa


# -- limit writes (docs/kernel-model.md §4, §5) ---------------------------------------------------


def limits(tree: CgroupTree, cg: Cgroup, region: Region) -> tuple[int, int, int] | None:
    pool = tree.dmem.find_pool(css(cg), region)
    if pool is None:
        return None
    return pool.counter.min, pool.counter.low, pool.counter.max


@pytest.mark.parametrize(("text", "value"), [
    (f"{REGION} 1G", GiB),
    (f"{REGION} 1G\n", GiB),
    (f"  {REGION} 0x100\n\n", 256),
    (f"{REGION}\t010", 8),
    (f"{REGION} max", PAGE_COUNTER_MAX),
    (f"{REGION} K", 0),
    (f"{REGION} {PAGE_COUNTER_MAX + 1}", PAGE_COUNTER_MAX + 1),
])
@pytest.mark.parametrize("attr", ["min", "low", "max"])
@pytest.mark.parametrize("profile", [LATEST, V6_14], ids=["latest", "6.14"])
def test_limit_write_accepted(make_tree: Callable[..., CgroupTree], make_io: Any, attr: str,
                              text: str, value: int, profile: Any) -> None:
    tree = make_tree(profile=profile)
    io = make_io(tree)
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    data = text.encode()
    assert io.write(a, f"dmem.{attr}", data) == len(data)
    pool = tree.dmem.find_pool(css(a), tree.dmem.regions[0])
    assert pool is not None
    assert getattr(pool.counter, attr) == value
    shown = "max" if value >= PAGE_COUNTER_MAX else str(value)
    assert io.read(a, f"dmem.{attr}") == f"{REGION} {shown}\n"


@pytest.mark.parametrize("text", [
    f"{REGION} 1\n{REGION} 2",  # a second line
    f"{REGION} 1\n{R1} 2",
    f"{REGION}  1",  # two spaces
    f"{REGION} \t1",
    f"{REGION}\t\t1",
    f"{REGION} 1 2",
    f"{REGION} 1GB",
    f"{REGION} -1",
    f"{REGION} +1",
    f"{REGION} MAX",
    f"{REGION}",  # no value
    f"{REGION} ",
    "\n",  # nothing at all
    " ",
    "bogus 1",  # unknown region
    "bogus garbage",  # unknown region is found first: EINVAL either way
    f"{REGION.upper()} 1",  # exact match only
    f"{REGION}/ 1",
    f"{REGION}\xa01",
])
@pytest.mark.parametrize("attr", ["min", "low", "max"])
def test_limit_write_latest_rejects(make_tree: Callable[..., CgroupTree], make_io: Any,
                                    attr: str, text: str) -> None:
    tree = make_tree(regions=((REGION, GiB), (R1, GiB)))
    io = make_io(tree)
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    with pytest.raises(InvalidArgument) as exc:
        io.write(a, f"dmem.{attr}", text)
    assert exc.value.errno == errno.EINVAL
    # Nothing applied and no pool created by a refused write.
    assert css(a).pools == {}
    assert css(tree.root).pools == {}


def test_limit_write_latest_value_after_bad_region_is_not_parsed(
    tree: CgroupTree, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, _b, _c = abc
    # Both bad: the region lookup comes first (docs/kernel-model.md §4 step 3), so the error is
    # EINVAL anyway; the good region with a bad value is EINVAL too and creates no pool.
    for text in ("nope 1Q", f"{REGION} 1Q"):
        with pytest.raises(InvalidArgument):
            io.write(a, "dmem.max", text)
    assert css(a).pools == {}


def test_limit_write_614_multiline_applied_in_order(make_tree: Callable[..., CgroupTree],
                                                    make_io: Any) -> None:
    tree = make_tree(profile=V6_14, regions=((REGION, GiB), (R1, GiB)))
    io = make_io(tree)
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    r0, r1 = tree.dmem.regions
    data = f"{REGION} 1M\n\n  {R1}\t2M  \n{REGION} 3M\n"
    assert io.write(a, "dmem.max", data) == len(data)
    assert limits(tree, a, r0) == (0, 0, 3 * MiB)  # the later line wins
    assert limits(tree, a, r1) == (0, 0, 2 * MiB)
    assert io.read(a, "dmem.max") == f"{REGION} {3 * MiB}\n{R1} {2 * MiB}\n"


@pytest.mark.parametrize("bad", ["bogus 1", f"{R1} 1GB", f"{R1}", f"{R1}  1"])
def test_limit_write_614_stops_at_first_bad_line(make_tree: Callable[..., CgroupTree],
                                                 make_io: Any, bad: str) -> None:
    tree = make_tree(profile=V6_14, regions=((REGION, GiB), (R1, GiB)))
    io = make_io(tree)
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    r0, r1 = tree.dmem.regions
    with pytest.raises(InvalidArgument) as exc:
        io.write(a, "dmem.min", f"{REGION} 5\n{bad}\n{R1} 7\n")
    assert exc.value.errno == errno.EINVAL
    assert limits(tree, a, r0) == (5, 0, PAGE_COUNTER_MAX)  # earlier line stays applied
    assert limits(tree, a, r1) is None  # later line never reached


def test_limit_write_614_only_blank_lines_is_a_noop(make_tree: Callable[..., CgroupTree],
                                                    make_io: Any) -> None:
    tree = make_tree(profile=V6_14)
    io = make_io(tree)
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    assert io.write(a, "dmem.max", "\n \n\t\n") == 5
    assert css(a).pools == {}


def test_limit_write_latest_rejects_what_614_accepts(tree: CgroupTree,
                                                     abc: tuple[Cgroup, Cgroup, Cgroup],
                                                     io: Any) -> None:
    a, _b, _c = abc
    with pytest.raises(InvalidArgument):
        io.write(a, "dmem.max", "\n\n")


def test_dmem_max_below_usage_is_a_silent_noop_in_614(
    make_tree: Callable[..., CgroupTree]
) -> None:
    tree = make_tree(profile=V6_14)
    region = tree.dmem.regions[0]
    calls: list[int] = []
    region.reclaim = lambda pool, target, task: calls.append(target) or 0
    enable(tree, tree.root)
    a = tree.mkdir(tree.root, "a")
    enable(tree, a)
    b = tree.mkdir(a, "b")
    tree.dmem.try_charge(css(b), region, 10 * MiB)
    io = _io(tree)
    data = f"{REGION} 5M"
    assert io.write(a, "dmem.max", data) == len(data)  # success ...
    assert io.read(a, "dmem.max") == f"{REGION} max\n"  # ... but unchanged
    io.write(a, "dmem.max", f"{REGION} 20M")
    io.write(a, "dmem.max", f"{REGION} 9M")
    assert io.read(a, "dmem.max") == f"{REGION} {20 * MiB}\n"  # still the old value
    io.write(a, "dmem.max", f"{REGION} 10M")  # == usage is allowed
    assert io.read(a, "dmem.max") == f"{REGION} {10 * MiB}\n"
    io.write(a, "dmem.max", f"{REGION} 0")
    assert io.read(a, "dmem.max") == f"{REGION} {10 * MiB}\n"
    assert calls == []  # 6.14 never reclaims


def _io(tree: CgroupTree) -> Any:
    from conftest import FileIO

    return FileIO(tree)


class Reclaimer:
    """A region's reclaim callback that frees ``steps`` in turn (bytes, or a negative
    errno for no progress / an error) by uncharging what the test charged."""

    def __init__(self, tree: CgroupTree, region: Region, steps: list[int]) -> None:
        self.tree = tree
        self.steps = list(steps)
        self.calls: list[tuple[str, int, object]] = []
        self.charges: list[tuple[Pool, int]] = []
        region.reclaim = self

    def __call__(self, pool: Pool, target: int, task: object) -> int:
        # The writer's context: its pid is what a driver's reclaim looks at.
        self.calls.append((pool.css.cgroup.path, target, getattr(task, "pid", task)))
        step = self.steps.pop(0) if self.steps else -errno.ENOSPC
        if step < 0:
            return step
        while step > 0 and self.charges:
            p, n = self.charges.pop(0)
            self.tree.dmem.uncharge(p, n)
            step -= n
        return 0


def test_dmem_max_below_usage_reclaims_in_73(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    r = Reclaimer(tree, region, [2 * MiB, 2 * MiB, 2 * MiB])
    for _ in range(5):
        r.charges.append((tree.dmem.try_charge(css(b), region, 2 * MiB), 2 * MiB))
    io.ctx.pid = 777
    data = f"{REGION} 5M"
    assert io.write(a, "dmem.max", data) == len(data)
    # Stored at once, then reclaim asked for usage - max each round, until usage fits.
    assert io.read(a, "dmem.max") == f"{REGION} {5 * MiB}\n"
    assert r.calls == [("/a", 5 * MiB, 777), ("/a", 3 * MiB, 777), ("/a", 1 * MiB, 777)]
    assert css(a).pools[region].counter.usage == 4 * MiB


def test_reclaim_gives_up_after_16_retries_without_progress(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    r = Reclaimer(tree, region, [])  # never any progress
    tree.dmem.try_charge(css(b), region, 4 * MiB)
    assert io.write(a, "dmem.max", f"{REGION} 1M") == len(f"{REGION} 1M")
    assert len(r.calls) == 17  # 16 retries, then the 17th -ENOSPC stops
    assert io.read(a, "dmem.max") == f"{REGION} {MiB}\n"
    # Progress does not refill the budget: 17 calls without progress plus the one with.
    r2 = Reclaimer(tree, region, [-errno.ENOSPC] * 10 + [0] + [-errno.ENOSPC] * 10)
    io.write(a, "dmem.max", f"{REGION} 2M")
    assert len(r2.calls) == 18


def test_reclaim_stops_at_another_error_and_nonblock_skips_it(
    tree: CgroupTree, region: Region, abc: tuple[Cgroup, Cgroup, Cgroup], io: Any
) -> None:
    a, b, _c = abc
    r = Reclaimer(tree, region, [-errno.ENODEV])
    tree.dmem.try_charge(css(b), region, 4 * MiB)
    io.write(a, "dmem.max", f"{REGION} 1M")
    assert len(r.calls) == 1
    r.calls.clear()
    io.ctx.nonblock = True
    io.write(a, "dmem.max", f"{REGION} 512K")
    assert r.calls == [] and io.read(a, "dmem.max") == f"{REGION} {512 << 10}\n"
    io.ctx.nonblock = False
    # While usage stays above max, every charge in the subtree fails at /a.
    with pytest.raises(ChargeLimited) as e:
        tree.dmem.try_charge(css(b), region, 4096)
    assert e.value.limit_pool is css(a).pools[region]
    # min and low never reclaim, whatever they are set to.
    io.write(b, "dmem.min", f"{REGION} 0")
    io.write(b, "dmem.low", f"{REGION} 0")
    io.write(a, "dmem.low", f"{REGION} 0")
    assert r.calls == []


def test_whitespace_only_limit_write(make_tree: Callable[..., CgroupTree]) -> None:
    for profile, ok in ((LATEST, False), (V6_14, True)):
        tree = make_tree(profile=profile)
        enable(tree, tree.root)
        a = tree.mkdir(tree.root, "a")
        io = _io(tree)
        for data in ("\n", " ", " \t\n"):
            if ok:
                assert io.write(a, "dmem.max", data) == len(data)
            else:
                with pytest.raises(InvalidArgument):
                    io.write(a, "dmem.max", data)


def test_min_and_low_are_never_validated(tree: CgroupTree, abc: tuple[Cgroup, Cgroup, Cgroup],
                                         io: Any) -> None:
    a, b, _c = abc
    io.write(b, "dmem.min", f"{REGION} 64G")  # above capacity and above the parent's min
    io.write(b, "dmem.low", f"{REGION} 1E")
    assert io.read(b, "dmem.min") == f"{REGION} {64 * GiB}\n"
    assert io.read(b, "dmem.low") == f"{REGION} max\n"  # 2^60 >= PAGE_COUNTER_MAX
    assert tree.dmem.get_pool(css(b), tree.dmem.regions[0]).counter.low == 1 << 60
    assert io.read(a, "dmem.min") == f"{REGION} 0\n"


def test_write_limit_creates_pools_with_ancestors(tree: CgroupTree, region: Region,
                                                  abc: tuple[Cgroup, Cgroup, Cgroup],
                                                  io: Any) -> None:
    a, b, _c = abc
    io.write(b, "dmem.low", f"{REGION} 1")
    assert tree.dmem.find_pool(css(a), region) is not None
    assert tree.dmem.find_pool(css(tree.root), region) is not None


# -- lifetime: dying csses (docs/kernel-model.md §2) ----------------------------------------------


def test_rmdir_with_charges_leaves_a_dying_css(tree: CgroupTree, region: Region,
                                               abc: tuple[Cgroup, Cgroup, Cgroup],
                                               io: Any) -> None:
    a, b, _c = abc
    for attr, value in (("min", "1G"), ("low", "2G"), ("max", "3G")):
        io.write(b, f"dmem.{attr}", f"{REGION} {value}")
    old_css = css(b)
    pool = tree.dmem.try_charge(old_css, region, 5 * MiB)
    tree.rmdir(b)  # not blocked by charges
    assert b.dying and "b" not in a.children
    assert not old_css.online
    assert (pool.counter.min, pool.counter.low, pool.counter.max) == (0, 0, PAGE_COUNTER_MAX)
    assert io.read(a, "dmem.current") == f"{REGION} {5 * MiB}\n"
    assert io.read(tree.root, "dmem.current") == f"{REGION} {5 * MiB}\n"
    for cg in (tree.root, a):
        s = io.stat(cg)
        assert (s["nr_dying_descendants"], s["nr_dying_subsys_dmem"]) == (1, 1)
    assert io.stat(a)["nr_descendants"] == 0
    assert io.stat(a)["nr_subsys_dmem"] == 1
    assert old_css in css(a).children  # still linked (protection walks see it)
    tree.dmem.uncharge(pool, 5 * MiB)
    assert old_css not in css(a).children
    for cg in (tree.root, a):
        s = io.stat(cg)
        assert (s["nr_dying_descendants"], s["nr_dying_subsys_dmem"]) == (0, 0)
    assert io.read(a, "dmem.current") == f"{REGION} 0\n"


def test_rmdir_without_charges_releases_at_once(tree: CgroupTree,
                                                abc: tuple[Cgroup, Cgroup, Cgroup],
                                                io: Any) -> None:
    # Regression: the css is released inside rmdir (css_offline -> on_release releases the
    # cgroup) and rmdir must not release the cgroup a second time, which drove the ancestors'
    # nr_dying_descendants and nr_dying_children to -1 (docs/kernel-model.md §2, §14 cgroup.stat).
    a, b, _c = abc
    old_css = css(b)
    tree.rmdir(b)
    assert old_css not in css(a).children
    assert b.nr_csses == 0
    for cg in (tree.root, a):
        s = io.stat(cg)
        assert s["nr_dying_subsys_dmem"] == 0
        assert s["nr_dying_descendants"] == 0
    assert a.nr_dying_children == 0
    assert io.stat(tree.root)["nr_descendants"] == 2
    # The parent goes the same way, and a later dying cgroup is still counted once.
    tree.rmdir(a)
    assert io.stat(tree.root) == {"nr_descendants": 1, "nr_subsys_dmem": 2,
                                  "nr_dying_descendants": 0, "nr_dying_subsys_dmem": 0}
    assert tree.root.nr_dying_children == 0
    c = abc[2]
    assert c.dmem_css is not None
    pool = tree.dmem.try_charge(c.dmem_css, tree.dmem.regions[0], 1)
    tree.rmdir(c)
    assert io.stat(tree.root)["nr_dying_descendants"] == 1
    tree.dmem.uncharge(pool, 1)
    assert io.stat(tree.root)["nr_dying_descendants"] == 0
    assert tree.root.nr_dying_children == 0


def test_nested_dying_chain_releases_bottom_up(tree: CgroupTree, region: Region,
                                               abc: tuple[Cgroup, Cgroup, Cgroup],
                                               io: Any) -> None:
    a, b, _c = abc
    pool = tree.dmem.try_charge(css(b), region, 7)
    css_a = css(a)
    tree.rmdir(b)
    tree.rmdir(a)
    assert a.dying and not css_a.online
    s = io.stat(tree.root)
    assert (s["nr_descendants"], s["nr_dying_descendants"], s["nr_dying_subsys_dmem"]) == (1, 2, 2)
    assert s["nr_subsys_dmem"] == 2  # root + /c
    assert io.read(tree.root, "dmem.current") == f"{REGION} 7\n"
    tree.dmem.uncharge(pool, 7)
    s = io.stat(tree.root)
    assert (s["nr_dying_descendants"], s["nr_dying_subsys_dmem"]) == (0, 0)
    assert css_a not in css(tree.root).children
    assert io.read(tree.root, "dmem.current") == f"{REGION} 0\n"


def test_pins_survive_cgroup_removal(tree: CgroupTree, region: Region,
                                     abc: tuple[Cgroup, Cgroup, Cgroup], io: Any) -> None:
    a, b, _c = abc
    io.write(a, "dmem.min", f"{REGION} 10")
    io.write(b, "dmem.min", f"{REGION} 10")
    pool = tree.dmem.try_charge(css(b), region, 10)
    tree.dmem.try_pin(pool, 10)
    tree.rmdir(b)
    assert pool.counter.pinned == 10 and pool.counter.min == 0
    assert io.read(a, "dmem.pinned") == f"{REGION} 10\n"
    tree.dmem.unpin(pool, 10)
    tree.dmem.uncharge(pool, 10)
    assert io.read(a, "dmem.pinned") == f"{REGION} 0\n"
    assert io.stat(a)["nr_dying_subsys_dmem"] == 0


def test_css_offline_is_idempotent(tree: CgroupTree, region: Region,
                                   abc: tuple[Cgroup, Cgroup, Cgroup]) -> None:
    _a, b, _c = abc
    old = css(b)
    tree.dmem.try_charge(old, region, 1)
    parent = old.parent
    assert parent is not None
    n = parent.nr_descendants
    tree.dmem.css_offline(old)
    tree.dmem.css_offline(old)
    assert parent.nr_descendants == n - 1


def test_uncharge_without_outstanding_charge_warns(tree: CgroupTree, region: Region,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    pool = tree.dmem.get_pool(tree.dmem.root_css, region)
    with caplog.at_level("WARNING", logger="dmemfs.engine.dmem"):
        tree.dmem.uncharge(pool, 0)
    assert any("without an outstanding charge" in r.getMessage() for r in caplog.records)
    assert tree.dmem.root_css.nr_charges == 0
