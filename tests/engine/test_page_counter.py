"""mm/page_counter.c with the RFC's ``pinned`` counter (docs/kernel-model.md §6-7, §9)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmemfs.engine import page_counter as pc
from dmemfs.engine.page_counter import PageCounter
from dmemfs.profile import PAGE_COUNTER_MAX, U64_MASK

GiB = 1 << 30
STATE = tuple(PageCounter.__slots__)


def snapshot(*counters: PageCounter) -> list[dict[str, object]]:
    """Every field of every counter (parents by identity), to prove nothing changed."""
    return [
        {k: (id(getattr(c, k)) if k == "parent" else getattr(c, k)) for k in STATE}
        for c in counters
    ]


def chain(depth: int) -> list[PageCounter]:
    """root, child, grandchild, ... (root first)."""
    counters = [PageCounter()]
    for _ in range(depth - 1):
        counters.append(PageCounter(counters[-1]))
    return counters


# -- basics ---------------------------------------------------------------------------------


def test_new_counter_defaults() -> None:
    c = PageCounter()
    assert (c.usage, c.pinned, c.min, c.low, c.max, c.watermark) == (0, 0, 0, 0,
                                                                     PAGE_COUNTER_MAX, 0)
    assert (c.emin, c.elow, c.min_usage, c.low_usage) == (0, 0, 0, 0)
    assert (c.children_min_usage, c.children_low_usage) == (0, 0)
    assert c.parent is None


def test_ancestors_leaf_first() -> None:
    root, a, b = chain(3)
    assert b.ancestors() == [b, a, root]
    assert root.ancestors() == [root]


# -- charge / try_charge (docs/kernel-model.md §6) ------------------------------------------------


def test_charge_is_hierarchical_and_unchecked() -> None:
    root, a, b = chain(3)
    a.max = 5
    pc.charge(b, 10)  # no limit check
    assert (root.usage, a.usage, b.usage) == (10, 10, 10)
    assert (root.watermark, a.watermark, b.watermark) == (10, 10, 10)


def test_try_charge_success_charges_every_level_and_watermarks() -> None:
    root, a, b = chain(3)
    assert pc.try_charge(b, 7) is None
    assert pc.try_charge(a, 3) is None
    assert (root.usage, a.usage, b.usage) == (10, 10, 7)
    assert (root.watermark, a.watermark, b.watermark) == (10, 10, 7)
    pc.uncharge(b, 7)
    assert (root.usage, a.usage, b.usage) == (3, 3, 0)
    # The watermark is a peak: never lowered by uncharges.
    assert (root.watermark, a.watermark, b.watermark) == (10, 10, 7)


def test_try_charge_usage_equal_to_max_is_allowed() -> None:
    _root, a = chain(2)
    a.max = 10
    assert pc.try_charge(a, 10) is None
    assert a.usage == 10
    before = snapshot(*a.ancestors())
    assert pc.try_charge(a, 1) is a  # strictly greater fails
    assert snapshot(*a.ancestors()) == before


def test_try_charge_over_max_fails_at_that_level() -> None:
    root, a = chain(2)
    a.max = 4
    before = snapshot(root, a)
    assert pc.try_charge(a, 5) is a
    assert snapshot(root, a) == before


def test_try_charge_failing_level_is_the_lowest_over_max() -> None:
    # Both b's parent a and the grandparent g are over their max; the reported level is the
    # one closest to the leaf, and the levels above it are never touched.
    root, g, a, b = chain(4)
    g.max = 5
    a.max = 5
    pc.charge(b, 3)
    before = snapshot(root, g, a, b)
    assert pc.try_charge(b, 3) is a
    after = snapshot(root, g, a, b)
    assert after[:3] == before[:3]
    # Only b's peak moved (the watermark quirk, see the next test).
    assert after[3] == {**before[3], "watermark": 6}


def test_try_charge_rolls_back_lower_levels_exactly_and_leaves_upper_untouched() -> None:
    root, g, a, b = chain(4)
    g.max = 10
    for c in (b, a):  # min/low change only through the setters (they keep c.protection)
        pc.set_min(c, 100)
        pc.set_low(c, 100)
    pc.try_charge(b, 8)
    pc.charge(root, 1)  # usage that exists only at the root
    assert (root.usage, g.usage, a.usage, b.usage) == (9, 8, 8, 8)
    wm_before = (root.watermark, g.watermark, a.watermark, b.watermark)
    before = snapshot(root, g)
    cmu_before = (a.children_min_usage, g.children_min_usage, a.children_low_usage,
                  g.children_low_usage)

    assert pc.try_charge(b, 3) is g

    # The failing level and everything above: bit-for-bit unchanged.
    assert snapshot(root, g) == before
    # The levels below it: usage and protected usage restored exactly.
    assert (a.usage, b.usage) == (8, 8)
    assert (b.min_usage, a.min_usage, b.low_usage, a.low_usage) == (8, 8, 8, 8)
    assert (a.children_min_usage, g.children_min_usage, a.children_low_usage,
            g.children_low_usage) == cmu_before
    # Kernel quirk: page_counter_try_charge raises each level's watermark before looking at
    # the next one and the rollback only cancels usage, so the levels below the failing one
    # keep the transient peak (dmem.peak shows it); the failing level and above do not.
    assert (root.watermark, g.watermark) == wm_before[:2]
    assert (a.watermark, b.watermark) == (11, 11)


def test_try_charge_failure_at_leaf_changes_nothing_at_all() -> None:
    root, a, b = chain(3)
    b.max = 2
    pc.charge(b, 1)
    before = snapshot(root, a, b)
    assert pc.try_charge(b, 2) is b
    assert snapshot(root, a, b) == before


# -- uncharge -----------------------------------------------------------------------------


def test_uncharge_clamps_at_zero_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    root, a = chain(2)
    pc.charge(a, 5)
    pc.charge(root, 3)  # root 8, a 5
    with caplog.at_level(logging.WARNING, logger="dmemfs.engine.page_counter"):
        pc.uncharge(a, 7)
    assert a.usage == 0  # clamped, not -2
    assert root.usage == 1  # 8 - 7, no clamping needed there
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "underflow" in warnings[0].getMessage()
    assert "-2" in warnings[0].getMessage()


def test_uncharge_without_underflow_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    _root, a = chain(2)
    pc.charge(a, 5)
    with caplog.at_level(logging.WARNING):
        pc.uncharge(a, 5)
    assert a.usage == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_uncharge_updates_protected_usage() -> None:
    root, a = chain(2)
    pc.set_min(a, 10)
    pc.set_low(a, 4)
    pc.charge(a, 6)
    assert (root.children_min_usage, root.children_low_usage) == (6, 4)
    pc.uncharge(a, 3)
    assert (root.children_min_usage, root.children_low_usage) == (3, 3)
    pc.uncharge(a, 3)
    assert (root.children_min_usage, root.children_low_usage) == (0, 0)


# -- set_max / set_min / set_low (docs/kernel-model.md §6) ----------------------------------------


def test_set_max_refuses_below_usage() -> None:
    root, a = chain(2)
    pc.charge(a, 10)
    before = snapshot(root, a)
    assert pc.set_max(a, 9) is False
    assert snapshot(root, a) == before
    assert pc.set_max(a, 10) is True  # == usage is fine
    assert a.max == 10
    assert pc.set_max(a, PAGE_COUNTER_MAX) is True
    assert a.max == PAGE_COUNTER_MAX


def test_set_max_on_empty_counter_accepts_zero() -> None:
    _root, a = chain(2)
    assert pc.set_max(a, 0) is True
    assert a.max == 0
    assert pc.try_charge(a, 1) is a
    assert pc.try_charge(a, 0) is None  # charging nothing never exceeds max


def test_set_min_propagates_children_min_usage_up_the_chain() -> None:
    root, g, a, b = chain(4)
    pc.charge(b, 10)
    pc.set_min(b, 4)
    assert b.min_usage == 4
    assert a.children_min_usage == 4
    # a's own min is 0, so nothing more reaches g or the root.
    assert (g.children_min_usage, root.children_min_usage) == (0, 0)
    pc.set_min(g, 7)
    assert root.children_min_usage == 7  # min(usage 10, min 7)
    pc.set_min(g, 100)
    assert root.children_min_usage == 10  # capped by usage
    pc.set_min(b, 0)
    assert (a.children_min_usage, b.min_usage) == (0, 0)
    # low is independent.
    assert (a.children_low_usage, g.children_low_usage, root.children_low_usage) == (0, 0, 0)


def test_set_low_propagates_children_low_usage_up_the_chain() -> None:
    root, a, b = chain(3)
    pc.charge(b, 6)
    pc.set_low(b, 9)
    pc.set_low(a, 2)
    assert (b.low_usage, a.children_low_usage) == (6, 6)
    assert (a.low_usage, root.children_low_usage) == (2, 2)
    assert (a.children_min_usage, root.children_min_usage) == (0, 0)
    pc.set_low(b, 1)
    assert a.children_low_usage == 1


def test_children_usage_sums_over_siblings() -> None:
    root = PageCounter()
    p = PageCounter(root)
    kids = [PageCounter(p) for _ in range(3)]
    for k, usage in zip(kids, (4, 3, 2), strict=True):
        pc.set_min(k, 5)
        pc.charge(k, usage)
    assert p.children_min_usage == 4 + 3 + 2
    pc.charge(kids[2], 10)
    assert p.children_min_usage == 4 + 3 + 5


def test_set_min_and_low_accept_anything() -> None:
    # No validation against the parent, usage or capacity (docs/kernel-model.md §5).
    root, a = chain(2)
    pc.set_min(a, PAGE_COUNTER_MAX)
    pc.set_low(a, U64_MASK)
    assert (a.min, a.low) == (PAGE_COUNTER_MAX, U64_MASK)
    assert root.children_min_usage == 0  # usage 0


# -- try_pin / unpin (docs/kernel-model.md §9) ----------------------------------------------------


def test_try_pin_up_to_raw_min_of_every_level() -> None:
    root, a, b = chain(3)
    pc.set_min(a, 8)
    pc.set_min(b, 5)
    assert pc.try_pin(b, 5) is None
    assert (root.pinned, a.pinned, b.pinned) == (5, 5, 5)  # counted on the root too
    before = snapshot(root, a, b)
    assert pc.try_pin(b, 1) is b  # 6 > b.min 5
    assert snapshot(root, a, b) == before
    assert pc.try_pin(a, 3) is None  # a: 8 <= 8
    assert (root.pinned, a.pinned, b.pinned) == (8, 8, 5)


def test_try_pin_fails_at_a_middle_level_and_rolls_back() -> None:
    root, g, a, b = chain(4)
    pc.set_min(g, 10)
    pc.set_min(a, 3)
    pc.set_min(b, 5)
    before = snapshot(root, g, a, b)
    assert pc.try_pin(b, 4) is a  # b ok (4 <= 5), a 4 > 3
    assert snapshot(root, g, a, b) == before


def test_try_pin_checks_raw_min_not_emin() -> None:
    root, p, a = chain(3)
    pc.set_min(p, 1)  # the effective min of a is at most 1 ...
    pc.set_min(a, 100)
    pc.charge(a, 50)
    pc.calculate_protection(root, p)
    pc.calculate_protection(root, a)
    assert a.emin == 1
    assert pc.try_pin(a, 50) is p  # ... but the pin fails at p's raw min of 1
    pc.set_min(p, 50)
    assert pc.try_pin(a, 50) is None  # and a's raw min of 100 is what counts for a


def test_try_pin_root_skipped_by_default_checked_with_check_root() -> None:
    root, a = chain(2)
    pc.set_min(a, 10)
    before = snapshot(root, a)
    # The RFC as posted: the root's min is always 0, so every non-zero pin fails there.
    assert pc.try_pin(a, 1, check_root=True) is root
    assert snapshot(root, a) == before
    assert pc.try_pin(root, 1, check_root=True) is root
    assert pc.try_pin(a, 0, check_root=True) is None  # pinning nothing never fails
    assert snapshot(root, a) == before
    assert pc.try_pin(a, 10) is None
    assert (root.pinned, a.pinned) == (10, 10)


def test_try_pin_on_root_itself_is_unchecked_by_default() -> None:
    root = PageCounter()
    assert pc.try_pin(root, 123) is None
    assert root.pinned == 123


def test_unpin_is_hierarchical_and_clamps(caplog: pytest.LogCaptureFixture) -> None:
    root, a, b = chain(3)
    pc.set_min(a, 10)
    pc.set_min(b, 10)
    assert pc.try_pin(b, 4) is None
    assert pc.try_pin(a, 2) is None
    pc.unpin(b, 4)
    assert (root.pinned, a.pinned, b.pinned) == (2, 2, 0)
    with caplog.at_level(logging.WARNING, logger="dmemfs.engine.page_counter"):
        pc.unpin(b, 1)
    assert (root.pinned, a.pinned, b.pinned) == (1, 1, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pinned underflow" in warnings[0].getMessage()


def test_pin_then_lower_min_is_allowed() -> None:
    # set_min never looks at pinned; pinned > min is then possible.
    _root, a = chain(2)
    pc.set_min(a, 10)
    assert pc.try_pin(a, 8) is None
    pc.set_min(a, 2)
    assert (a.min, a.pinned) == (2, 8)
    assert pc.try_pin(a, 1) is a


# -- effective_protection (docs/kernel-model.md §7) -----------------------------------------------


def test_effective_protection_proportional_share() -> None:
    # siblings_protected > parent_effective -> protected * parent_eff / siblings_protected
    assert pc.effective_protection(4, 9, 5, 6, 9) == 4 * 6 // 9 == 2
    assert pc.effective_protection(3, 9, 5, 6, 9) == 2
    assert pc.effective_protection(2, 9, 5, 6, 9) == 1
    # protected is min(usage, setting)
    assert pc.effective_protection(10, 20, 5, 6, 12) == 5 * 6 // 12


def test_effective_protection_plain_and_non_recursive() -> None:
    # siblings_protected <= parent_effective: the own protected amount...
    assert pc.effective_protection(4, 10, 3, 10, 3, recursive=False) == 3
    # ... plus, recursively, a share of the unclaimed parent protection:
    # 3 + (10 - 3) * (4 - 3) / (10 - 3) = 4
    assert pc.effective_protection(4, 10, 3, 10, 3) == 4


def test_effective_protection_recursive_conditions() -> None:
    # No unclaimed share when usage == protected.
    assert pc.effective_protection(3, 10, 5, 10, 3) == 3
    # No unclaimed share when parent_eff == siblings_protected.
    assert pc.effective_protection(8, 10, 3, 3, 3) == 3
    # No unclaimed share when parent_usage <= siblings_protected.
    assert pc.effective_protection(8, 3, 3, 10, 3) == 3
    # A child without its own min gets a share of its parent's (docs/kernel-model.md §7): 0 + (6 -
    # 0) * (4 - 0) / (6 - 0) = 4
    assert pc.effective_protection(4, 6, 0, 6, 0) == 4
    assert pc.effective_protection(2, 6, 0, 6, 0) == 2


def _worked_example_1() -> tuple[PageCounter, PageCounter, list[PageCounter]]:
    root = PageCounter()
    p = PageCounter(root)
    pc.set_min(p, 6)
    kids = []
    for usage in (4, 3, 2):
        k = PageCounter(p)
        pc.set_min(k, 5)
        pc.charge(k, usage)
        kids.append(k)
    return root, p, kids


def test_calculate_protection_example_proportional() -> None:
    # docs/kernel-model.md §8: P min 6 under the root; X,Y,Z min 5 with usages 4,3,2.
    root, p, (x, y, z) = _worked_example_1()
    assert p.usage == 9 and p.children_min_usage == 9
    for c in (p, x, y, z):
        pc.calculate_protection(root, c)
    assert p.emin == 6
    assert (x.emin, y.emin, z.emin) == (2, 2, 1)
    assert x.usage > x.emin  # X is evictable w.r.t. min


def test_calculate_protection_example_recursive() -> None:
    # docs/kernel-model.md §8: P min 6, X,Y min 0 with usages 4,2: X.emin = (6-0)*(4-0)/(6-0) = 4.
    root = PageCounter()
    p = PageCounter(root)
    pc.set_min(p, 6)
    x, y = PageCounter(p), PageCounter(p)
    pc.charge(x, 4)
    pc.charge(y, 2)
    for c in (p, x, y):
        pc.calculate_protection(root, c)
    assert (p.emin, x.emin, y.emin) == (6, 4, 2)
    assert x.usage <= x.emin  # X is not evictable


def test_calculate_protection_non_recursive() -> None:
    root = PageCounter()
    p = PageCounter(root)
    pc.set_min(p, 6)
    x = PageCounter(p)
    pc.charge(x, 4)
    pc.calculate_protection(root, p)
    pc.calculate_protection(root, x, recursive=False)
    assert x.emin == 0


def test_effective_protection_u64_overflow(caplog: pytest.LogCaptureFixture) -> None:
    # 5 GiB protected, 6 GiB parent effective, 15 GiB siblings: 5 GiB * 6 GiB = 30 * 2^60
    # does not fit in 64 bits. The kernel computes (30 * 2^60 mod 2^64) / 15 GiB.
    a, b, d = 5 * GiB, 6 * GiB, 15 * GiB
    exact = a * b // d
    wrapped = ((a * b) & U64_MASK) // d
    assert exact == 2 * GiB
    assert wrapped == (14 << 60) // d == 1002159035  # the literal kernel result
    with caplog.at_level(logging.WARNING, logger="dmemfs.engine.page_counter"):
        got = pc.effective_protection(a, 15 * GiB, a, b, d, wrap=True)
    assert got == wrapped
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1
    for number in (a, b, d, exact, wrapped):
        assert str(number) in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dmemfs.engine.page_counter"):
        got = pc.effective_protection(a, 15 * GiB, a, b, d, wrap=False)
    assert got == exact
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "exact" in msgs[0]


def test_effective_protection_u64_overflow_in_unclaimed_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (parent_eff - siblings) * (usage - protected) overflows: 8 GiB * 4 GiB = 2^65.
    usage, parent_usage, setting, parent_eff, sib = 4 * GiB, 8 * GiB, 0, 8 * GiB, 0
    exact = (parent_eff - sib) * (usage - setting) // (parent_usage - sib)
    assert exact == 4 * GiB
    with caplog.at_level(logging.WARNING, logger="dmemfs.engine.page_counter"):
        assert pc.effective_protection(usage, parent_usage, setting, parent_eff, sib) == 0
        assert pc.effective_protection(
            usage, parent_usage, setting, parent_eff, sib, wrap=False
        ) == exact
    assert len([r for r in caplog.records if "unclaimed share" in r.getMessage()]) == 2


def test_effective_protection_no_overflow_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert pc.effective_protection(GiB, 3 * GiB, GiB, 2 * GiB, 3 * GiB) == 2 * GiB // 3
    assert not caplog.records


# -- calculate_protection (docs/kernel-model.md §7) -----------------------------------------------


def test_calculate_protection_root_and_zero_usage_leave_values_stale() -> None:
    root, p, (x, _y, _z) = _worked_example_1()
    root.emin = root.elow = 77  # whatever was there stays
    pc.calculate_protection(root, root)
    assert (root.emin, root.elow) == (77, 77)
    for c in (p, x):
        pc.calculate_protection(root, c)
    assert x.emin == 2
    pc.uncharge(x, 4)
    assert x.usage == 0
    pc.set_min(x, 0)
    pc.calculate_protection(root, x)
    assert x.emin == 2  # stale: usage 0 -> no change, like the kernel


def test_calculate_protection_first_level_uses_raw_settings() -> None:
    root = PageCounter()
    a = PageCounter(root)
    pc.set_min(a, 100)
    pc.set_low(a, 200)
    pc.charge(a, 10)
    root.emin = 1  # ignored: the root's values play no part
    pc.calculate_protection(root, a)
    assert (a.emin, a.elow) == (100, 200)  # not capped by usage


def test_calculate_protection_relative_to_an_inner_limit() -> None:
    # With a non-root "root" argument, its direct children get their raw settings.
    _root, p, (x, _y, _z) = _worked_example_1()
    pc.calculate_protection(p, x)
    assert x.emin == 5


def test_calculate_protection_low_uses_low_fields() -> None:
    root = PageCounter()
    p = PageCounter(root)
    pc.set_low(p, 6)
    x, y = PageCounter(p), PageCounter(p)
    pc.set_low(x, 5)
    pc.set_low(y, 5)
    pc.charge(x, 6)
    pc.charge(y, 6)
    for c in (p, x, y):
        pc.calculate_protection(root, c)
    assert (p.elow, x.elow, y.elow) == (6, 3, 3)
    assert (p.emin, x.emin, y.emin) == (0, 0, 0)


# -- the RFC's pinned adjustment (docs/kernel-model.md §9, as coded) ------------------------------


def test_pinned_setting() -> None:
    assert pc.pinned_setting(5, 0) == 5
    assert pc.pinned_setting(5, 5) == 5
    assert pc.pinned_setting(5, 6) == 0
    assert pc.pinned_setting(0, 1) == 0


def test_calculate_protection_min_counts_as_zero_when_pinned_exceeds_it() -> None:
    root = PageCounter()
    a = PageCounter(root)
    pc.set_min(a, 10)
    pc.set_low(a, 20)
    pc.charge(a, 30)
    assert pc.try_pin(a, 8) is None
    pc.calculate_protection(root, a)
    assert (a.emin, a.elow) == (10, 20)  # pinned 8 <= min: no subtraction (as coded)
    pc.set_min(a, 5)  # now pinned 8 > min 5
    pc.calculate_protection(root, a)
    assert (a.emin, a.elow) == (0, 20)  # min counts as 0, low (20 >= 8) unaffected
    pc.set_low(a, 7)
    pc.calculate_protection(root, a)
    assert (a.emin, a.elow) == (0, 0)


def test_pinned_adjustment_in_the_recursive_formula() -> None:
    root = PageCounter()
    p = PageCounter(root)
    pc.set_min(p, 6)
    x, y = PageCounter(p), PageCounter(p)
    for k in (x, y):
        pc.set_min(k, 5)
        pc.charge(k, 5)
    assert pc.try_pin(x, 3) is None
    pc.set_min(x, 2)  # pinned 3 > min 2 -> x's setting counts as 0
    for c in (p, x, y):
        pc.calculate_protection(root, c)
    # children_min_usage is still built from the raw settings: 2 + 5 = 7 > 6.
    assert p.children_min_usage == 7
    assert x.emin == 0 * 6 // 7 == 0
    assert y.emin == 5 * 6 // 7 == 4


# -- a small property check of the invariants (the big model test lives elsewhere) --------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["charge", "uncharge", "max", "pin", "unpin", "min"]),
        st.integers(0, 3),
        st.integers(0, 12),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_hierarchy_invariants(ops: list[tuple[str, int, int]]) -> None:
    root = PageCounter()
    a = PageCounter(root)
    b = PageCounter(a)
    c = PageCounter(root)
    nodes = [root, a, b, c]
    own = {id(n): 0 for n in nodes}  # bytes charged directly at each level
    pins = {id(n): 0 for n in nodes}
    for op, i, n in ops:
        node = nodes[i]
        before = snapshot(*nodes)
        if op == "charge":
            if pc.try_charge(node, n) is None:
                own[id(node)] += n
            else:
                after = snapshot(*nodes)
                for s0, s1 in zip(before, after, strict=True):
                    s0.pop("watermark")
                    s1.pop("watermark")
                assert after == before
        elif op == "uncharge":
            n = min(n, own[id(node)])
            pc.uncharge(node, n)
            own[id(node)] -= n
        elif op == "max" and node is not root:
            pc.set_max(node, n)
        elif op == "min" and node is not root:
            pc.set_min(node, n)
        elif op == "pin":
            if pc.try_pin(node, n) is None:
                pins[id(node)] += n
            else:
                assert snapshot(*nodes) == before
        elif op == "unpin":
            n = min(n, pins[id(node)])
            pc.unpin(node, n)
            pins[id(node)] -= n
        # Hierarchy: every level's usage is its own charges plus its children's usage.
        assert b.usage == own[id(b)]
        assert a.usage == own[id(a)] + b.usage
        assert c.usage == own[id(c)]
        assert root.usage == own[id(root)] + a.usage + c.usage
        assert b.pinned == pins[id(b)]
        assert a.pinned == pins[id(a)] + b.pinned
        assert root.pinned == pins[id(root)] + a.pinned + c.pinned
        for x in nodes:
            assert x.usage >= 0 and x.pinned >= 0
            assert x.watermark >= x.usage
        # Limits hold for everything charged through try_charge.
        for x in (a, b, c):
            assert x.usage <= x.max
        assert a.children_min_usage == min(b.usage, b.min)
        assert root.children_min_usage == min(a.usage, a.min) + min(c.usage, c.min)
