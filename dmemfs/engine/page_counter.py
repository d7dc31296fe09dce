"""mm/page_counter.c as dmem uses it, with the pinning RFC's ``pinned`` counter.

Units are whatever the caller charges; dmem charges bytes. Every operation is synchronous and
either completes or changes nothing, so the callers need no locks.
"""

from __future__ import annotations

import logging

from dmemfs.profile import PAGE_COUNTER_MAX, U64_MASK

log = logging.getLogger(__name__)


class PageCounter:
    """One level of a hierarchical counter (``struct page_counter``)."""

    __slots__ = (
        "children_low_usage",
        "children_min_usage",
        "elow",
        "emin",
        "low",
        "low_usage",
        "max",
        "min",
        "min_usage",
        "parent",
        "pinned",
        "protection",
        "usage",
        "watermark",
    )

    def __init__(self, parent: PageCounter | None = None) -> None:
        self.parent = parent
        self.usage = 0
        self.pinned = 0
        self.min = 0
        self.low = 0
        self.max = PAGE_COUNTER_MAX
        self.watermark = 0
        self.emin = 0
        self.elow = 0
        self.min_usage = 0
        self.low_usage = 0
        self.children_min_usage = 0
        self.children_low_usage = 0
        #: Whether this level takes part in protected-usage propagation: it has a parent and
        #: a min/low setting or a reported protected usage. Kept by propagate_protected_usage,
        #: set_min and set_low (change min/low only through them), and lets the charge paths
        #: skip levels that have nothing to propagate, as the kernel's own checks do.
        self.protection = False

    def __repr__(self) -> str:
        return (
            f"PageCounter(usage={self.usage}, pinned={self.pinned}, min={self.min}, "
            f"low={self.low}, max={self.max})"
        )

    def ancestors(self) -> list[PageCounter]:
        """This counter and every ancestor, leaf first."""
        chain = []
        c: PageCounter | None = self
        while c is not None:
            chain.append(c)
            c = c.parent
        return chain


def propagate_protected_usage(c: PageCounter, usage: int) -> None:
    """Report ``min(usage, setting)`` of ``c`` to its parent's ``children_*_usage`` sums."""
    parent = c.parent
    if parent is None:
        return
    protected = usage if usage < c.min else c.min
    if protected != c.min_usage:
        parent.children_min_usage += protected - c.min_usage
        c.min_usage = protected
    protected = usage if usage < c.low else c.low
    if protected != c.low_usage:
        parent.children_low_usage += protected - c.low_usage
        c.low_usage = protected
    c.protection = bool(c.min or c.low or c.min_usage or c.low_usage)


def charge(counter: PageCounter, n: int) -> None:
    """Charge ``n`` at every level without checking limits (``page_counter_charge``)."""
    c: PageCounter | None = counter
    while c is not None:
        new = c.usage + n
        c.usage = new
        if c.protection:
            propagate_protected_usage(c, new)
        if new > c.watermark:
            c.watermark = new
        c = c.parent


def try_charge(counter: PageCounter, n: int) -> PageCounter | None:
    """Charge ``n`` at every level unless one would go over its max.

    Returns ``None`` on success, or the lowest (closest to the leaf) counter whose max would be
    exceeded; in that case every level charged below it is rolled back and the levels above it
    were never touched. (The rolled-back levels keep a raised watermark, as in the kernel.)
    """
    c: PageCounter | None = counter
    while c is not None:
        new = c.usage + n
        if new > c.max:
            _cancel_until(counter, c, n)
            return c
        c.usage = new
        if c.protection:
            propagate_protected_usage(c, new)
        if new > c.watermark:
            c.watermark = new
        c = c.parent
    return None


def _cancel_until(counter: PageCounter, stop: PageCounter | None, n: int) -> None:
    """``page_counter_cancel`` at every level from ``counter`` up to (not including) ``stop``."""
    c: PageCounter | None = counter
    while c is not stop:
        assert c is not None
        new = c.usage - n
        if new < 0:
            log.warning("page_counter underflow: %d nr_pages=%d", new, n)
            new = 0
        c.usage = new
        if c.protection:
            propagate_protected_usage(c, new)
        c = c.parent


def uncharge(counter: PageCounter, n: int) -> None:
    """Uncharge ``n`` at every level; a level that would go negative is clamped to 0."""
    c: PageCounter | None = counter
    while c is not None:  # _cancel_until(counter, None, n), inlined: the hot path
        new = c.usage - n
        if new < 0:
            log.warning("page_counter underflow: %d nr_pages=%d", new, n)
            new = 0
        c.usage = new
        if c.protection:
            propagate_protected_usage(c, new)
        c = c.parent


def set_max(counter: PageCounter, value: int) -> bool:
    """Store a new max; refuse (return False, nothing changed) when usage is above it."""
    if counter.usage > value:
        return False
    counter.max = value
    return True


def set_min(counter: PageCounter, value: int) -> None:
    counter.min = value
    for c in counter.ancestors():
        propagate_protected_usage(c, c.usage)


def set_low(counter: PageCounter, value: int) -> None:
    counter.low = value
    for c in counter.ancestors():
        propagate_protected_usage(c, c.usage)


def try_pin(counter: PageCounter, n: int, *, check_root: bool = False) -> PageCounter | None:
    """Pin ``n`` at every level unless a level's pinned amount would exceed its raw ``min``.

    The RFC as posted checks every level including the root, whose min is always 0, so every
    non-zero pin fails there; ``check_root=False`` (the default) skips the root's check but
    still counts the pin on it. Returns ``None`` on success or the failing counter, in which
    case nothing changed.
    """
    c: PageCounter | None = counter
    while c is not None:
        new = c.pinned + n
        if new > c.min and (check_root or c.parent is not None):
            stop = c
            c2: PageCounter | None = counter
            while c2 is not None and c2 is not stop:
                _unpin_one(c2, n)
                c2 = c2.parent
            return stop
        c.pinned = new
        c = c.parent
    return None


def _unpin_one(c: PageCounter, n: int) -> None:
    new = c.pinned - n
    if new < 0:
        log.warning("page_counter pinned underflow: %d nr_pages=%d", new, n)
        new = 0
    c.pinned = new


def unpin(counter: PageCounter, n: int) -> None:
    c: PageCounter | None = counter
    while c is not None:
        _unpin_one(c, n)
        c = c.parent


def _mul_div(a: int, b: int, d: int, wrap: bool, what: str) -> int:
    """``a * b / d`` in unsigned 64-bit like the kernel (``wrap``) or exactly."""
    exact = a * b // d
    wrapped = ((a * b) & U64_MASK) // d
    if wrapped != exact:
        log.warning(
            "effective_protection: u64 overflow in %s: %d * %d / %d = %d, kernel computes %d%s",
            what, a, b, d, exact, wrapped, "" if wrap else " (using the exact value)",
        )
    return wrapped if wrap else exact


def effective_protection(
    usage: int,
    parent_usage: int,
    setting: int,
    parent_effective: int,
    siblings_protected: int,
    recursive: bool = True,
    *,
    wrap: bool = True,
) -> int:
    """The kernel's ``effective_protection()`` (mm/page_counter.c), u64 arithmetic by default."""
    protected = usage if usage < setting else setting
    if siblings_protected > parent_effective:
        return _mul_div(protected, parent_effective, siblings_protected, wrap, "proportional share")
    ep = protected
    if not recursive:
        return ep
    if parent_effective > siblings_protected and parent_usage > siblings_protected and (
        usage > protected
    ):
        ep += _mul_div(
            parent_effective - siblings_protected,
            usage - protected,
            parent_usage - siblings_protected,
            wrap,
            "unclaimed share",
        )
        if wrap:
            ep &= U64_MASK
    return ep


def pinned_setting(setting: int, pinned: int) -> int:
    """The RFC as coded: a min/low setting counts as 0 once the level's pinned amount exceeds it."""
    return 0 if pinned > setting else setting


def calculate_protection(
    root: PageCounter, counter: PageCounter, recursive: bool = True, *, wrap: bool = True
) -> None:
    """``page_counter_calculate_protection()`` with the RFC's pinned adjustment.

    Stateful: ``counter.parent`` must have been computed first (top-down). Leaves ``emin`` and
    ``elow`` stale when ``counter`` is ``root`` or has no usage, exactly like the kernel.
    """
    if counter is root:
        return
    usage = counter.usage
    if not usage:
        return
    cmin = pinned_setting(counter.min, counter.pinned)
    clow = pinned_setting(counter.low, counter.pinned)
    parent = counter.parent
    if parent is root or parent is None:
        counter.emin = cmin
        counter.elow = clow
        return
    parent_usage = parent.usage
    counter.emin = effective_protection(
        usage, parent_usage, cmin, parent.emin, parent.children_min_usage, recursive, wrap=wrap
    )
    counter.elow = effective_protection(
        usage, parent_usage, clow, parent.elow, parent.children_low_usage, recursive, wrap=wrap
    )
