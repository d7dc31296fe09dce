"""kernel/cgroup/dmem.c: regions, per-(css, region) pools, charging, pinning, protection.

A :class:`DmemCss` is the dmem controller's state for one cgroup (``struct dmemcg_state``). It
exists while the controller is enabled for the cgroup and afterwards, "dying", for as long as
charges made to it are outstanding. Pools are created lazily, always together with their
ancestors' pools.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from dmemfs.engine import page_counter as pc
from dmemfs.engine.page_counter import PageCounter
from dmemfs.engine.parse import format_counter, parse_limit, split_region_value, strstrip
from dmemfs.errors import ChargeLimited, InvalidArgument, NoDevice, TryAgain
from dmemfs.profile import PAGE_COUNTER_MAX, U64_MASK, Profile

if TYPE_CHECKING:
    from dmemfs.engine.cgroup import Cgroup

log = logging.getLogger(__name__)


#: ``struct dmem_cgroup_ops.reclaim``: evict about ``target`` bytes charged to ``pool``'s
#: subtree on behalf of ``task`` (the writer of ``dmem.max``). Returns 0 after any progress,
#: ``-ENOSPC`` when nothing could be freed, another negative errno to stop the caller's loop.
Reclaim = Callable[["Pool", int, object], int]

#: ``DMEM_MAX_RECLAIM_RETRIES``: reclaim calls without progress before a write gives up.
MAX_RECLAIM_RETRIES = 16


class Region:
    """A registered device-memory region (``struct dmem_cgroup_region``)."""

    __slots__ = ("name", "reclaim", "size", "unregistered")

    def __init__(self, name: str, size: int, reclaim: Reclaim | None = None) -> None:
        self.name = name
        self.size = size
        #: The driver's reclaim callback (Linux 7.3; TTM's ttm_resource_manager_dmem_reclaim).
        self.reclaim = reclaim
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

    def register_region(
        self, name: str, size: int, reclaim: Reclaim | None = None
    ) -> Region | None:
        """``dmem_cgroup_register_region``: appended to the list; size 0 registers nothing."""
        if size == 0:
            return None
        region = Region(name, size, reclaim)
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
        for pool in css.pools.values():  # reset_all_resource_limits()
            pc.set_min(pool.counter, 0)
            pc.set_low(pool.counter, 0)
            pool.counter.max = PAGE_COUNTER_MAX
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

    def root_pool_of(self, pool: Pool) -> Pool:
        while pool.parent is not None:
            pool = pool.parent
        return pool

    def evict_valuable(
        self, limit: Pool | None, test: Pool | None, ignore_low: bool
    ) -> tuple[bool, bool]:
        """``dmem_cgroup_state_evict_valuable``: may a buffer charged to ``test`` be evicted?

        Returns ``(evictable, hit_low)``; ``hit_low`` is True when only low protection (not
        min) saved it. ``limit`` None means a full device: protection is evaluated against
        the root. With the pinning RFC the thresholds are ``emin + pinned`` and
        ``elow + pinned`` of the tested pool. (``test`` None, an uncharged buffer, is
        evictable when ``limit`` is None too, as ``limit == test`` in the kernel.)
        """
        if limit is test:
            return True, False
        if limit is not None:
            if limit.css.parent is None:
                return True, False
            if test is None or not test.is_descendant_of(limit):
                return False, False
        elif test is None:
            return True, False
        else:
            limit = self.root_pool_of(test)
        self.calculate_protection(limit, test)
        return _verdict(test.counter, ignore_low)

    def below_min(self, root: Pool | None, test: Pool | None) -> bool:
        """``dmem_cgroup_below_min`` (Linux 7.3): usage within effective min (no RFC term)."""
        if root is test or test is None or test.parent is None:
            return False
        if root is None:
            root = self.root_pool_of(test)
        self.calculate_protection(root, test)
        return test.counter.usage <= test.counter.emin

    def below_low(self, root: Pool | None, test: Pool | None) -> bool:
        """``dmem_cgroup_below_low`` (Linux 7.3): usage within effective low."""
        if root is test or test is None or test.parent is None:
            return False
        if root is None:
            root = self.root_pool_of(test)
        self.calculate_protection(root, test)
        return test.counter.usage <= test.counter.elow

    def common_ancestor(self, a: Pool | None, b: Pool | None) -> Pool | None:
        """``dmem_get_common_ancestor`` (Linux 7.3): the pool, in ``a``'s region, of the
        nearest cgroup that is an ancestor-or-self of both (created if missing)."""
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

    def eviction_scan(
        self,
        limit: Pool | None,
        region: Region,
        ignore_low: bool,
        own: Mapping[Pool, int],
        subtree: Mapping[Pool, int],
        *,
        skip: Pool | None = None,
        exclude: Pool | None = None,
    ) -> tuple[list[Pool], list[Pool]]:
        """:meth:`evict_valuable` for every pool under ``limit`` at once, skipping subtrees
        that cannot hold a victim.

        Considers the pools of ``limit``'s subtree (of the region's root pool when ``limit``
        is None) that have buffers, ``own[pool] > 0``, visiting only subtrees with
        ``subtree[pool] > 0``, leaving out ``exclude``'s subtree and ``skip`` itself. Returns
        ``(evictable, spared_by_low)``: the pools :meth:`evict_valuable` would answer
        ``(True, _)`` and ``(False, True)`` for, in the same state.

        A pool whose usage is within its effective min is skipped with its whole subtree:
        its children's effective min then covers their usage too (``effective_protection``
        hands a fully protected parent's surplus down in proportion), so nothing below it is
        evictable — unless the u64 products of that computation could wrap, in which case
        the subtree is visited.
        """
        if limit is not None and limit.css.parent is None:
            return self._unprotected_scan(limit, own, subtree, skip, exclude), []
        top = limit if limit is not None else self.root_css.pools.get(region)
        if top is None:
            return [], []
        wrap = self.profile.wrap_u64
        evictable: list[Pool] = []
        spared_by_low: list[Pool] = []
        stack = [top]
        while stack:
            pool = stack.pop()
            c = pool.counter
            if pool is not top:
                pc.calculate_protection(top.counter, c, True, wrap=wrap)
                usage = c.usage
                if usage <= c.emin and not (wrap and c.emin * usage > U64_MASK):
                    continue
            if own.get(pool) and pool is not skip:
                if pool is limit:
                    evictable.append(pool)
                else:
                    ok, low = _verdict(c, ignore_low)
                    if ok:
                        evictable.append(pool)
                    elif low:
                        spared_by_low.append(pool)
            for child_css in pool.css.children:
                child = child_css.pools.get(pool.region)
                if child is not None and child is not exclude and subtree.get(child):
                    stack.append(child)
        return evictable, spared_by_low

    def _unprotected_scan(
        self, top: Pool, own: Mapping[Pool, int], subtree: Mapping[Pool, int],
        skip: Pool | None, exclude: Pool | None,
    ) -> list[Pool]:
        """Every pool with buffers under ``top`` (a limit pool of the root cgroup: no
        protection is evaluated)."""
        out = []
        stack = [top]
        while stack:
            pool = stack.pop()
            if own.get(pool) and pool is not skip:
                out.append(pool)
            for child_css in pool.css.children:
                child = child_css.pools.get(pool.region)
                if child is not None and child is not exclude and subtree.get(child):
                    stack.append(child)
        return out

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

    def write_limit(
        self, css: DmemCss, attr: str, text: str, *, nonblock: bool = False,
        task: object = None,
    ) -> None:
        """A write to ``dmem.min``/``dmem.low``/``dmem.max`` (``attr`` = min/low/max).

        ``nonblock`` is whether the open file has ``O_NONBLOCK`` at the time of the write and
        ``task`` who writes (a pid, or an object whose ``pid`` is looked up only if reclaim
        runs); both matter only to reclaim (Linux 7.3).
        """
        if self.profile.single_region_write:
            self._apply_limit_line(css, attr, strstrip(text), nonblock, task)
            return
        for line in text.split("\n"):
            line = strstrip(line)
            if line:
                self._apply_limit_line(css, attr, line, nonblock, task)

    def _apply_limit_line(
        self, css: DmemCss, attr: str, line: str, nonblock: bool, task: object
    ) -> None:
        name, value_text = split_region_value(line)
        region = self.region_by_name(name)
        if region is None:
            raise InvalidArgument(f"no region named {name!r}")
        value = parse_limit(value_text)
        pool = self.get_pool(css, region)
        if attr == "max":
            self.set_resource_max(pool, value, nonblock=nonblock, task=task)
        elif attr == "min":
            pc.set_min(pool.counter, value)
        elif attr == "low":
            pc.set_low(pool.counter, value)
        else:
            raise ValueError(attr)

    def set_resource_max(
        self, pool: Pool, value: int, *, nonblock: bool = False, task: object = None
    ) -> None:
        """``set_resource_max``: what writing ``dmem.max`` does.

        Up to Linux 7.2 it is ``page_counter_set_max()`` with its -EBUSY ignored: a value
        below the usage leaves the limit unchanged and the write still succeeds. From 7.3 the
        value is stored at once, and unless the file is ``O_NONBLOCK`` the region's reclaim
        callback is called while the pool's hierarchical usage is above it: progress loops
        again, -ENOSPC (no progress) uses up one of 16 retries, any other error stops. The
        write succeeds whatever happened.
        """
        counter = pool.counter
        if not self.profile.reclaim_on_max:
            if not pc.set_max(counter, value):
                log.info(
                    "dmem.max of %s for %s not lowered below usage %d (kernel: silent no-op)",
                    pool.css.cgroup.path, pool.region.name, counter.usage,
                )
            return
        counter.max = value
        region = pool.region
        if nonblock or region.unregistered or region.reclaim is None:
            return
        retries = MAX_RECLAIM_RETRIES
        while True:
            usage = counter.usage
            if usage <= value:
                break
            ret = region.reclaim(pool, usage - value, task)
            if ret:
                if ret != -errno.ENOSPC or retries == 0:
                    break
                retries -= 1


def _verdict(c: PageCounter, ignore_low: bool) -> tuple[bool, bool]:
    """The thresholds of ``dmem_cgroup_state_evict_valuable`` on computed emin/elow."""
    used = c.usage
    if used <= c.emin + c.pinned:
        return False, False
    if not ignore_low and used <= c.elow + c.pinned:
        return False, True
    return True, False
