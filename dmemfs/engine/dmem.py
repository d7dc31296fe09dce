"""kernel/cgroup/dmem.c: regions, per-(css, region) pools, charging, pinning, protection.

A :class:`DmemCss` is the dmem controller's state for one cgroup (``struct dmemcg_state``). It
exists while the controller is enabled for the cgroup and afterwards, "dying", for as long as
charges made to it are outstanding. Pools are created lazily, always together with their
ancestors' pools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dmemfs.engine import page_counter as pc
from dmemfs.engine.page_counter import PageCounter
from dmemfs.engine.parse import format_counter, parse_limit, split_region_value, strstrip
from dmemfs.errors import ChargeLimited, InvalidArgument, NoDevice, TryAgain
from dmemfs.profile import PAGE_COUNTER_MAX, Profile

if TYPE_CHECKING:
    from dmemfs.engine.cgroup import Cgroup

log = logging.getLogger(__name__)


class Region:
    """A registered device-memory region (``struct dmem_cgroup_region``)."""

    __slots__ = ("name", "size", "unregistered")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.unregistered = False

    def __repr__(self) -> str:
        return f"Region({self.name!r}, {self.size})"


class Pool:
    """The page counter of one css in one region (``struct dmem_cgroup_pool_state``)."""

    __slots__ = ("counter", "css", "parent", "region")

    def __init__(self, css: DmemCss, region: Region, parent: Pool | None) -> None:
        self.css = css
        self.region = region
        self.parent = parent
        self.counter: PageCounter = PageCounter(parent.counter if parent is not None else None)

    def __repr__(self) -> str:
        return f"Pool({self.css.cgroup.path!r}, {self.region.name!r}, {self.counter!r})"

    def is_descendant_of(self, other: Pool) -> bool:
        p: Pool | None = self
        while p is not None:
            if p is other:
                return True
            p = p.parent
        return False


class DmemCss:
    """The dmem controller's state for one cgroup (``struct dmemcg_state``)."""

    __slots__ = ("cgroup", "children", "nr_charges", "nr_descendants", "online", "parent", "pools")

    def __init__(self, cgroup: Cgroup, parent: DmemCss | None) -> None:
        self.cgroup = cgroup
        self.parent = parent
        self.children: dict[DmemCss, None] = {}
        self.pools: dict[Region, Pool] = {}
        self.online = True
        #: Outstanding charges; each holds a reference that keeps a dying css alive.
        self.nr_charges = 0
        #: Online descendant csses (``css->nr_descendants``), shown in ``cgroup.stat``.
        self.nr_descendants = 0

    def __repr__(self) -> str:
        return f"DmemCss({self.cgroup.path!r}, online={self.online})"

    def walk_pre(self) -> Iterator[DmemCss]:
        """Pre-order walk of this css and every descendant, dying ones included."""
        stack = [self]
        while stack:
            css = stack.pop()
            yield css
            stack.extend(reversed(css.children))


#: Values a cgroup shows for a region it has no pool in yet.
_DEFAULT_COUNTER = PageCounter()


class Dmem:
    """The dmem controller: the region list and every css."""

    def __init__(self, profile: Profile, root_cgroup: Cgroup) -> None:
        self.profile = profile
        self.regions: list[Region] = []
        self.root_css = DmemCss(root_cgroup, None)
        #: Called with a css that is released (dying and no longer referenced).
        self.on_release: Callable[[DmemCss], None] = lambda css: None

    # -- regions -------------------------------------------------------------------------

    def register_region(self, name: str, size: int) -> Region | None:
        """Register a region (appended to the list); size 0 registers nothing."""
        if size == 0:
            return None
        region = Region(name, size)
        self.regions.append(region)
        return region

    def unregister_region(self, region: Region) -> None:
        """Driver unbind: the region vanishes from every file; existing charges stay valid."""
        if region.unregistered:
            return
        region.unregistered = True
        self.regions.remove(region)
        for css in self.root_css.walk_pre():
            css.pools.pop(region, None)

    def region_by_name(self, name: str) -> Region | None:
        for region in self.regions:
            if region.name == name:
                return region
        return None

    # -- css lifetime ----------------------------------------------------------------------

    def css_online(self, cgroup: Cgroup, parent: DmemCss) -> DmemCss:
        css = DmemCss(cgroup, parent)
        parent.children[css] = None
        p: DmemCss | None = parent
        while p is not None:
            p.nr_descendants += 1
            p = p.parent
        return css

    def css_offline(self, css: DmemCss) -> None:
        """Controller disabled or cgroup removed: reset limits; the css lives on while charged."""
        if not css.online:
            return
        css.online = False
        p = css.parent
        while p is not None:
            p.nr_descendants -= 1
            p = p.parent
        for pool in css.pools.values():
            pc.set_min(pool.counter, 0)
            pc.set_low(pool.counter, 0)
            pc.set_max(pool.counter, PAGE_COUNTER_MAX)
        self._maybe_release(css)

    def _maybe_release(self, css: DmemCss | None) -> None:
        while (
            css is not None
            and not css.online
            and css.nr_charges == 0
            and not css.children
            and css.parent is not None
        ):
            parent = css.parent
            del parent.children[css]
            self.on_release(css)
            css = parent

    # -- pools -----------------------------------------------------------------------------

    def get_pool(self, css: DmemCss, region: Region) -> Pool:
        """The pool of ``css`` in ``region``, created together with any missing ancestors."""
        pool = css.pools.get(region)
        if pool is not None:
            return pool
        if region.unregistered:
            raise NoDevice(f"region {region.name} is unregistered")
        missing = []
        c: DmemCss | None = css
        while c is not None and region not in c.pools:
            missing.append(c)
            c = c.parent
        parent = c.pools[region] if c is not None else None
        for c in reversed(missing):
            parent = c.pools[region] = Pool(c, region, parent)
        assert parent is not None
        return parent

    def find_pool(self, css: DmemCss, region: Region) -> Pool | None:
        return css.pools.get(region)

    # -- charging and pinning -------------------------------------------------------------

    def try_charge(self, css: DmemCss, region: Region, size: int) -> Pool:
        """``dmem_cgroup_try_charge``: charge ``css`` (a task's effective dmem css).

        Raises :class:`ChargeLimited` (EAGAIN) carrying the lowest pool over its max, or
        :class:`NoDevice` for an unregistered region. Nothing changes on failure.
        """
        if region.unregistered:
            raise NoDevice(f"region {region.name} is unregistered")
        pool = css.pools.get(region) or self.get_pool(css, region)
        fail = pc.try_charge(pool.counter, size)
        if fail is not None:
            limit = pool
            while limit.counter is not fail:
                assert limit.parent is not None
                limit = limit.parent
            raise ChargeLimited(limit, f"{region.name}: limit of {limit.css.cgroup.path} reached")
        css.nr_charges += 1
        return pool

    def uncharge(self, pool: Pool, size: int) -> None:
        """``dmem_cgroup_uncharge``: drop one charge of ``size`` bytes made to ``pool``."""
        pc.uncharge(pool.counter, size)
        css = pool.css
        if css.nr_charges > 0:
            css.nr_charges -= 1
        else:
            log.warning("dmem uncharge of %s without an outstanding charge", pool)
        if not css.online:
            self._maybe_release(css)

    def try_pin(self, pool: Pool, size: int) -> None:
        """``dmem_cgroup_try_pin``: EAGAIN when a level's pinned amount would exceed its min."""
        fail = pc.try_pin(pool.counter, size, check_root=self.profile.pinning == "posted")
        if fail is not None:
            raise TryAgain(f"{pool.region.name}: pinning {size} bytes exceeds dmem.min")

    def unpin(self, pool: Pool, size: int) -> None:
        pc.unpin(pool.counter, size)

    # -- protection and eviction ----------------------------------------------------------

    def calculate_protection(self, limit: Pool, test: Pool) -> None:
        """``dmem_cgroup_calculate_protection``: effective min/low of ``test`` under ``limit``.

        The kernel walks the whole subtree of ``limit`` in pre-order and stops after ``test``;
        only ``test``'s ancestors influence its values, so walking that path top-down gives
        the same result (the cached values of other pools are recomputed before any use).
        """
        path = []
        p: Pool | None = test
        while p is not None and p is not limit:
            path.append(p)
            p = p.parent
        wrap = self.profile.wrap_u64
        for q in reversed(path):
            pc.calculate_protection(limit.counter, q.counter, True, wrap=wrap)

    def protection_walk(self, limit: Pool) -> None:
        """The full pre-order walk over ``limit``'s subtree (every pool's emin/elow)."""
        region = limit.region
        wrap = self.profile.wrap_u64
        for css in limit.css.walk_pre():
            pool = css.pools.get(region)
            if pool is not None:
                pc.calculate_protection(limit.counter, pool.counter, True, wrap=wrap)

    def root_pool_of(self, pool: Pool) -> Pool:
        while pool.parent is not None:
            pool = pool.parent
        return pool

    def evict_valuable(
        self, limit: Pool | None, test: Pool, ignore_low: bool, *, walk: bool = True
    ) -> tuple[bool, bool]:
        """``dmem_cgroup_state_evict_valuable``: may a buffer charged to ``test`` be evicted?

        Returns ``(evictable, hit_low)``; ``hit_low`` is True when only low protection (not
        min) saved it. ``walk=False`` trusts emin/elow computed by an earlier
        :meth:`protection_walk` of the same limit pool (one walk per eviction pass).
        """
        if limit is test:
            return True, False
        if limit is not None:
            if limit.css.parent is None:
                return True, False
            if not test.is_descendant_of(limit):
                return False, False
        else:
            limit = self.root_pool_of(test)
        if walk:
            self.calculate_protection(limit, test)
        c = test.counter
        used = c.usage
        if used <= c.emin + c.pinned:
            return False, False
        if not ignore_low:
            if used > c.elow + c.pinned:
                return True, False
            return False, True
        return True, False

    def below_min(self, root: Pool | None, test: Pool) -> bool:
        if root is test or test.parent is None:
            return False
        if root is None:
            root = self.root_pool_of(test)
        self.calculate_protection(root, test)
        return test.counter.usage <= test.counter.emin

    def below_low(self, root: Pool | None, test: Pool) -> bool:
        if root is test or test.parent is None:
            return False
        if root is None:
            root = self.root_pool_of(test)
        self.calculate_protection(root, test)
        return test.counter.usage <= test.counter.elow

    def common_ancestor(self, a: Pool | None, b: Pool | None) -> Pool | None:
        """``dmem_cgroup_get_common_ancestor``: pool in ``a``'s region of the nearest common
        ancestor of the two pools' cgroups."""
        if a is None or b is None:
            return None
        ancestors = set()
        c: DmemCss | None = a.css
        while c is not None:
            ancestors.add(c)
            c = c.parent
        c = b.css
        while c is not None and c not in ancestors:
            c = c.parent
        if c is None:
            return None
        return self.get_pool(c, a.region)

    # -- interface files ------------------------------------------------------------------

    def show_capacity(self) -> str:
        return "".join(f"{r.name} {r.size}\n" for r in self.regions)

    def show(self, css: DmemCss, attr: str) -> str:
        """One ``<region> <value>`` line per registered region for counter attribute ``attr``."""
        lines = []
        for region in self.regions:
            pool = css.pools.get(region)
            counter = pool.counter if pool is not None else _DEFAULT_COUNTER
            lines.append(f"{region.name} {format_counter(getattr(counter, attr))}\n")
        return "".join(lines)

    def write_limit(self, css: DmemCss, attr: str, text: str) -> None:
        """A write to ``dmem.min``/``dmem.low``/``dmem.max`` (``attr`` = min/low/max)."""
        if self.profile.single_region_write:
            self._apply_limit_line(css, attr, strstrip(text))
            return
        for line in text.split("\n"):
            line = strstrip(line)
            if line:
                self._apply_limit_line(css, attr, line)

    def _apply_limit_line(self, css: DmemCss, attr: str, line: str) -> None:
        name, value_text = split_region_value(line)
        region = self.region_by_name(name)
        if region is None:
            raise InvalidArgument(f"no region named {name!r}")
        value = parse_limit(value_text)
        pool = self.get_pool(css, region)
        if attr == "max":
            if not pc.set_max(pool.counter, value):
                # The kernel ignores page_counter_set_max()'s -EBUSY: the write succeeds and
                # the limit stays unchanged.
                log.info(
                    "dmem.max of %s for %s not lowered below usage %d (kernel: silent no-op)",
                    css.cgroup.path, region.name, pool.counter.usage,
                )
        elif attr == "min":
            pc.set_min(pool.counter, value)
        elif attr == "low":
            pc.set_low(pool.counter, value)
        else:
            raise ValueError(attr)
