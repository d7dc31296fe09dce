#!/usr/bin/env python3
"""Micro-benchmark of the pure-Python dmem engine; prints one JSON object on stdout.

Measured (each the median of 5 timed runs, ``time.perf_counter``):

* ``charge_uncharge``: ``Dmem.try_charge`` + ``Dmem.uncharge`` pairs per second on the leaf of
  a chain of ``depth`` nested cgroups below the root, dmem enabled everywhere, default limits
  (so the page counter chain has ``depth + 1`` levels, the root included);
* ``pin_unpin``: ``Dmem.try_pin`` + ``Dmem.unpin`` pairs per second on such a leaf at depth 4
  (every level's ``dmem.min`` large enough that each pin succeeds);
* ``protection_walk``: seconds per ``Dmem.protection_walk`` from the root pool over a tree of
  1,000 and 10,000 charged cgroups with min/low set;
* ``floor``: a bare Python loop adding and then subtracting an int along the same 5-object
  parent chain (``__slots__`` objects with an int attribute and a parent pointer), inlined in
  the timing loop: the least any charge+uncharge pair at depth 4 can cost in CPython.

``ratio_engine_depth4_to_floor`` = engine seconds per pair at depth 4 / floor seconds per
pair. The project's target is a ratio of at most 3.
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dmemfs.engine.cgroup import Cgroup, CgroupTree
from dmemfs.engine.dmem import DmemCss, Region
from dmemfs.profile import LATEST

REPEATS = 5
SIZE = 1 << 20  # bytes per charge
PAIRS = 100_000
FLOOR_PAIRS = 300_000
PIN_DEPTH = 4


def median_time(fn: Callable[[], None], repeats: int = REPEATS) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (GC off while timing, as timeit)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        finally:
            if gc_was_enabled:
                gc.enable()
    return statistics.median(times)


def new_tree() -> tuple[CgroupTree, Region]:
    tree = CgroupTree(LATEST)
    region = tree.dmem.register_region("drm/0000:03:00.0/vram0", 16 << 30)
    assert region is not None
    tree.write_subtree_control(tree.root, "+dmem")
    return tree, region


def chain(depth: int) -> tuple[CgroupTree, Region, list[Cgroup]]:
    """Root plus ``depth`` nested cgroups, dmem enabled at every level; returns them leaf last."""
    tree, region = new_tree()
    cgs = [tree.root]
    for i in range(depth):
        cg = tree.mkdir(cgs[-1], f"l{i}")
        if i < depth - 1:
            tree.write_subtree_control(cg, "+dmem")
        cgs.append(cg)
    return tree, region, cgs


def leaf_css(tree: CgroupTree, cg: Cgroup) -> DmemCss:
    css = tree.dmem_css_of(cg)
    assert css.cgroup is cg, "the leaf must have its own dmem css"
    return css


def bench_charge_uncharge(depth: int) -> float:
    """Seconds per try_charge + uncharge pair at ``depth``."""
    tree, region, cgs = chain(depth)
    dmem = tree.dmem
    css = leaf_css(tree, cgs[-1])
    try_charge, uncharge = dmem.try_charge, dmem.uncharge

    def run() -> None:
        for _ in range(PAIRS):
            pool = try_charge(css, region, SIZE)
            uncharge(pool, SIZE)

    per_pair = median_time(run) / PAIRS
    root_pool = dmem.get_pool(dmem.root_css, region)
    assert root_pool.counter.usage == 0 and css.nr_charges == 0
    return per_pair


def bench_pin_unpin(depth: int) -> float:
    """Seconds per try_pin + unpin pair on a charge of the leaf at ``depth``."""
    tree, region, cgs = chain(depth)
    dmem = tree.dmem
    for cg in cgs[1:]:
        dmem.write_limit(leaf_css(tree, cg), "min", f"{region.name} {SIZE}")
    pool = dmem.try_charge(leaf_css(tree, cgs[-1]), region, SIZE)
    try_pin, unpin = dmem.try_pin, dmem.unpin

    def run() -> None:
        for _ in range(PAIRS):
            try_pin(pool, SIZE)
            unpin(pool, SIZE)

    per_pair = median_time(run) / PAIRS
    assert pool.counter.pinned == 0 and pool.counter.usage == SIZE
    return per_pair


def protection_tree(n: int, fanout: int = 10) -> tuple[CgroupTree, Region]:
    """``n`` cgroups below the root in breadth-first order, ``fanout`` children each, dmem
    enabled everywhere, min/low set and one charge per cgroup (so every pool has usage and
    every level's effective protection is computed)."""
    tree, region = new_tree()
    dmem = tree.dmem
    cgs = [tree.root]
    for i in range(n):
        parent = cgs[i // fanout]
        if not parent.subtree_control:
            tree.write_subtree_control(parent, "+dmem")
        cg = tree.mkdir(parent, f"c{i}")
        css = leaf_css(tree, cg)
        dmem.write_limit(css, "min", f"{region.name} {(i % 7) * SIZE}")
        dmem.write_limit(css, "low", f"{region.name} {(i % 5) * 2 * SIZE}")
        dmem.try_charge(css, region, (1 + i % 3) * SIZE)
        cgs.append(cg)
    return tree, region


def bench_protection_walk(n: int) -> float:
    """Seconds per full protection walk from the root pool over ``n`` cgroups."""
    tree, region = protection_tree(n)
    dmem = tree.dmem
    root_pool = dmem.get_pool(dmem.root_css, region)
    pools = sum(1 for css in dmem.root_css.walk_pre() if region in css.pools)
    assert pools == n + 1
    return median_time(lambda: dmem.protection_walk(root_pool))


class Node:
    __slots__ = ("parent", "usage")

    def __init__(self, parent: Node | None) -> None:
        self.parent = parent
        self.usage = 0


def bench_floor(depth: int) -> float:
    """Seconds per add-then-subtract pass along a ``depth + 1`` object parent chain."""
    node = None
    for _ in range(depth + 1):
        node = Node(node)
    leaf = node
    assert leaf is not None
    n = SIZE

    def run() -> None:
        for _ in range(FLOOR_PAIRS):
            c = leaf
            while c is not None:
                c.usage += n
                c = c.parent
            c = leaf
            while c is not None:
                c.usage -= n
                c = c.parent

    per_pair = median_time(run) / FLOOR_PAIRS
    assert leaf.usage == 0
    return per_pair


def main() -> None:
    t_start = time.perf_counter()
    charge = {d: bench_charge_uncharge(d) for d in (1, 4, 16)}
    floor = bench_floor(4)
    pin = bench_pin_unpin(PIN_DEPTH)
    walk = {n: bench_protection_walk(n) for n in (1_000, 10_000)}
    ratio = charge[4] / floor
    result = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "repeats": REPEATS,
        "statistic": "median",
        "depth_meaning": "nested cgroups below the root; page counter levels = depth + 1",
        "charge_uncharge_pairs_per_s": {f"depth{d}": round(1 / t) for d, t in charge.items()},
        "charge_uncharge_ns_per_pair": {f"depth{d}": round(t * 1e9) for d, t in charge.items()},
        "pin_unpin_pairs_per_s": {f"depth{PIN_DEPTH}": round(1 / pin)},
        "pin_unpin_ns_per_pair": {f"depth{PIN_DEPTH}": round(pin * 1e9)},
        "protection_walk_s_per_walk": {f"cgroups{n}": round(t, 6) for n, t in walk.items()},
        "floor_depth4_pairs_per_s": round(1 / floor),
        "floor_depth4_ns_per_pair": round(floor * 1e9),
        "ratio_engine_depth4_to_floor": round(ratio, 2),
        "target_ratio_max": 3,
        "meets_target": ratio <= 3,
        "total_runtime_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
