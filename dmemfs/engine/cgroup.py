"""The cgroup v2 core (kernel/cgroup/cgroup.c) as far as dmemfs needs it.

Cgroups, their hierarchy limits, the ``subtree_control`` rules, process membership with the
no-internal-process rule, ``populated``, freeze/kill state, dying cgroups, CPU time and
pressure-file state, and the owners, modes, times and xattrs of every directory and file.
Processes are abstract integers here; the filesystem layer maps host processes onto them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from dmemfs.engine.cputime import (
    ZERO,
    CpuSource,
    CpuTimes,
    NoCpuSource,
    PrevCputime,
    cputime_adjust,
    format_cpu_stat,
)
from dmemfs.engine.dmem import Dmem, DmemCss
from dmemfs.engine.kernfs import Stamp
from dmemfs.engine.parse import parse_subtree_control
from dmemfs.errors import AccessDenied, Busy, Exists, InvalidArgument, NoDevice, NotFound, TryAgain
from dmemfs.profile import CONTROLLERS, INT_MAX, Profile

log = logging.getLogger(__name__)


#: Capability bits (include/uapi/linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24


@dataclass(frozen=True, slots=True)
class Creds:
    """Who acts: fsuid, fsgid, supplementary groups and effective capabilities (None: not
    known, uid 0 counts as having them all)."""

    uid: int = 0
    gid: int = 0
    groups: frozenset[int] = field(default_factory=frozenset)
    caps: int | None = None

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def capable(self, cap: int) -> bool:
        if self.caps is None:
            return self.uid == 0
        return bool(self.caps >> cap & 1)


ROOT_CREDS = Creds()


@dataclass(frozen=True, slots=True)
class Attr:
    """Owner and permission bits of a directory or an interface file."""

    uid: int
    gid: int
    mode: int

    def allows(self, creds: Creds, bit: int) -> bool:
        """``bit`` is 4 (read), 2 (write) or 1 (exec); uid 0 may always read and write."""
        if creds.uid == 0 and bit != 1:
            return True
        if creds.uid == self.uid:
            return bool(self.mode & (bit << 6))
        if creds.in_group(self.gid):
            return bool(self.mode & (bit << 3))
        return bool(self.mode & bit)


class Host(Protocol):
    """What the engine needs to know about processes it cannot see itself."""

    def all_pids(self) -> list[int]:
        """Every live process id (for the root cgroup's implicit members)."""
        ...

    def threads(self, pid: int) -> list[int]:
        """Thread ids of a process (its own id first)."""
        ...


class AbstractHost:
    """Processes are plain integers: each has one thread, and only known ones exist."""

    def __init__(self, tree: CgroupTree) -> None:
        self._tree = tree

    def all_pids(self) -> list[int]:
        return list(self._tree.members)

    def threads(self, pid: int) -> list[int]:
        return [pid]


class Cgroup:
    """One cgroup directory."""

    __slots__ = (
        "attr",
        "children",
        "cpu_acc",
        "cpu_prev",
        "dmem_css",
        "dmem_owner",
        "dying",
        "events_seq",
        "file_attrs",
        "file_xattrs",
        "files_owner",
        "freeze",
        "freeze_start",
        "frozen_ns",
        "level",
        "max_depth",
        "max_descendants",
        "name",
        "nr_csses",
        "nr_descendants",
        "nr_dying_children",
        "nr_dying_descendants",
        "nr_dying_subsys",
        "nr_populated",
        "parent",
        "procs",
        "psi_enabled",
        "psi_gen",
        "released",
        "stamps",
        "subtree_control",
        "xattrs",
    )

    def __init__(self, name: str, parent: Cgroup | None, attr: Attr) -> None:
        self.name = name
        self.parent = parent
        self.level: int = 0 if parent is None else parent.level + 1
        self.children: dict[str, Cgroup] = {}
        self.attr = attr
        #: Owner (uid, gid) of the core interface files: the creator.
        self.files_owner = (attr.uid, attr.gid)
        #: Owner of the dmem files: whoever caused them to appear.
        self.dmem_owner = (attr.uid, attr.gid)
        #: Interface files whose owner or mode was changed (chown/chmod), by name.
        self.file_attrs: dict[str, Attr] | None = None
        #: ``user.*`` extended attributes of the directory; its others, and those of the
        #: interface files, by file name ("" for the directory).
        self.xattrs: dict[str, bytes] | None = None
        self.file_xattrs: dict[str, dict[str, bytes]] | None = None
        #: Times set on the directory ("") or a file (kernfs ``iattr``), by name.
        self.stamps: dict[str, Stamp] | None = None
        self.subtree_control: frozenset[str] = frozenset()
        self.max_depth = INT_MAX
        self.max_descendants = INT_MAX
        self.nr_descendants = 0
        self.nr_dying_descendants = 0
        self.nr_dying_children = 0
        self.nr_dying_subsys = 0
        self.procs: dict[int, None] = {}
        #: Member processes in this cgroup and all descendants.
        self.nr_populated = 0
        self.freeze = 0
        #: When the cgroup last started freezing (itself or an ancestor), while it is.
        self.freeze_start: int | None = None
        #: Nanoseconds spent freezing before ``freeze_start`` (``cgroup.stat.local``).
        self.frozen_ns = 0
        #: ``cgroup.pressure``: the pressure files are shown; ``psi_gen`` counts the times
        #: they were hidden (files opened before stay dead).
        self.psi_enabled = True
        self.psi_gen = 0
        #: Counts the changes of ``cgroup.events`` (``cgroup_file_notify()``): pollers of the
        #: file see POLLPRI until they read it again.
        self.events_seq = 0
        #: CPU time of former members and removed children, and the user/system split shown.
        self.cpu_acc = ZERO
        self.cpu_prev = PrevCputime()
        self.dying = False
        #: Dying and no longer referenced: gone from ``cgroup.stat`` counts.
        self.released = False
        #: The online dmem css, when the parent enables dmem (always on the root).
        self.dmem_css: DmemCss | None = None
        #: dmem csses of this cgroup still alive (online or dying).
        self.nr_csses = 0

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}{', dying' if self.dying else ''})"

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def path(self) -> str:
        if self.parent is None:
            return "/"
        parts = []
        c: Cgroup | None = self
        while c is not None and c.parent is not None:
            parts.append(c.name)
            c = c.parent
        return "/" + "/".join(reversed(parts))

    @property
    def populated(self) -> bool:
        return self.nr_populated > 0

    def ancestors(self) -> Iterator[Cgroup]:
        """This cgroup and every ancestor, up to the root."""
        c: Cgroup | None = self
        while c is not None:
            yield c
            c = c.parent

    def is_descendant_of(self, other: Cgroup) -> bool:
        return any(c is other for c in self.ancestors())

    def controllers(self) -> frozenset[str]:
        """``cgroup.controllers``: all on the root, else the parent's ``subtree_control``."""
        if self.parent is None:
            return frozenset(CONTROLLERS)
        return self.parent.subtree_control

    def walk(self) -> Iterator[Cgroup]:
        """This cgroup and every live descendant, pre-order."""
        stack = [self]
        while stack:
            c = stack.pop()
            yield c
            stack.extend(reversed(c.children.values()))


def common_ancestor(a: Cgroup, b: Cgroup) -> Cgroup:
    seen = {id(c) for c in a.ancestors()}
    for c in b.ancestors():
        if id(c) in seen:
            return c
    raise AssertionError("cgroups of different hierarchies")


class CgroupTree:
    """The hierarchy: the root cgroup, the dmem controller and process membership."""

    def __init__(
        self, profile: Profile, *, root_attr: Attr | None = None,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns, psi: bool = True,
        irq_pressure: bool = False,
    ) -> None:
        self.profile = profile
        #: The root of a cgroup2 mount is read-only for everyone but root (kernfs makes it
        #: S_IFDIR | 0555).
        self.root = Cgroup("", None, root_attr or Attr(0, 0, 0o555))
        #: Wall clock (file times) and monotonic clock (``frozen_usec``), in nanoseconds.
        self.clock = clock
        self.monotonic = monotonic
        #: The emulated kernel has the pressure files (CONFIG_PSI, not disabled at boot), and
        #: ``irq.pressure`` among them (CONFIG_IRQ_TIME_ACCOUNTING).
        self.psi = psi
        self.irq_pressure = psi and irq_pressure
        #: CPU times of processes, and the whole machine's pressure files by resource.
        self.cpu: CpuSource = NoCpuSource()
        self.pressure: Callable[[str], str | None] = lambda resource: None
        #: CPU times of members of non-root cgroups when they joined.
        self._cpu_base: dict[int, CpuTimes] = {}
        self.dmem = Dmem(profile, self.root)
        self.dmem.on_release = self._css_released
        self.root.dmem_css = self.dmem.root_css
        self.root.nr_csses = 1
        #: Known processes and their cgroup (the root's members only once they are known).
        self.members: dict[int, Cgroup] = {}
        self.host: Host = AbstractHost(self)
        #: Called after a process moved (pid, destination); the host layer records history.
        self.on_migrate: Callable[[int, Cgroup], None] = lambda pid, cgroup: None

    # -- lookup ------------------------------------------------------------------------------

    def lookup(self, path: str) -> Cgroup:
        """The live cgroup at ``path`` ("/", "/a/b" or "a/b"); ENOENT when missing."""
        c = self.root
        for part in path.split("/"):
            if not part:
                continue
            child = c.children.get(part)
            if child is None:
                raise NotFound(f"no cgroup {path!r}")
            c = child
        return c

    # -- mkdir / rmdir -----------------------------------------------------------------------

    def mkdir(
        self, parent: Cgroup, name: str, creds: Creds = ROOT_CREDS, mode: int = 0o755
    ) -> Cgroup:
        if name in parent.children or self.name_taken(parent, name):
            raise Exists(f"{name!r} exists in {parent.path}")
        if "\n" in name:
            raise InvalidArgument("cgroup names cannot contain a newline")
        if not name or "/" in name or name in (".", ".."):
            raise InvalidArgument(f"invalid cgroup name {name!r}")
        if parent.dying:
            raise NoDevice(f"{parent.path} is being removed")
        for level, a in enumerate(parent.ancestors()):
            if a.nr_descendants >= a.max_descendants or level >= a.max_depth:
                raise TryAgain(f"hierarchy limit of {a.path} reached")
        child = Cgroup(name, parent, Attr(creds.uid, creds.gid, mode & 0o7777))
        if (creds.uid, creds.gid) != (0, 0):
            # cgroup_kn_set_ugid() sets the owner through kernfs_setattr(): times of its own.
            now = self.clock()
            child.stamps = {"": Stamp(now, now, now)}
        parent.children[name] = child
        for a in parent.ancestors():
            a.nr_descendants += 1
        if self.is_frozen(parent):
            child.freeze_start = self.monotonic()
        self._touch_dir(parent)
        if "dmem" in parent.subtree_control:
            self._dmem_online(child, creds)
        return child

    def name_taken(self, cgroup: Cgroup, name: str) -> bool:
        """An interface file of that name exists in ``cgroup`` (shown or hidden): kernfs
        refuses a directory of the same name (EEXIST). Names of files this cgroup does not
        have (another controller's, a root-only file in a child) are free."""
        from dmemfs.engine.files import file_exists

        return file_exists(self, cgroup, name, hidden_too=True)

    def _touch_dir(self, cgroup: Cgroup) -> None:
        """A child came or went: kernfs updates the directory's mtime and ctime, if it has
        times of its own."""
        stamp = (cgroup.stamps or {}).get("")
        if stamp is not None:
            now = self.clock()
            assert cgroup.stamps is not None
            cgroup.stamps[""] = Stamp(stamp.atime, now, now)

    def rmdir(self, cgroup: Cgroup) -> None:
        if cgroup.parent is None:
            raise Busy("the root cgroup cannot be removed")
        if cgroup.dying:
            raise NotFound(f"{cgroup.path} is already removed")
        if cgroup.populated:
            raise Busy(f"{cgroup.path} has processes")
        if cgroup.children:
            raise Busy(f"{cgroup.path} has child cgroups")
        parent = cgroup.parent
        del parent.children[cgroup.name]
        cgroup.dying = True
        parent.cpu_acc = parent.cpu_acc + cgroup.cpu_acc
        self._touch_dir(parent)
        for a in parent.ancestors():
            a.nr_descendants -= 1
            a.nr_dying_descendants += 1
        parent.nr_dying_children += 1
        if cgroup.dmem_css is not None:
            self._dmem_offline(cgroup)
        self._maybe_release_cgroup(cgroup)

    def _maybe_release_cgroup(self, cgroup: Cgroup | None) -> None:
        while (
            cgroup is not None
            and cgroup.dying
            and not cgroup.released
            and cgroup.nr_csses == 0
            and cgroup.nr_dying_children == 0
        ):
            cgroup.released = True
            parent = cgroup.parent
            assert parent is not None
            for a in parent.ancestors():
                a.nr_dying_descendants -= 1
            parent.nr_dying_children -= 1
            cgroup = parent

    # -- the dmem css of each cgroup ------------------------------------------------------

    def _dmem_online(self, cgroup: Cgroup, creds: Creds) -> None:
        assert cgroup.parent is not None and cgroup.parent.dmem_css is not None
        cgroup.dmem_css = self.dmem.css_online(cgroup, cgroup.parent.dmem_css)
        cgroup.nr_csses += 1
        cgroup.dmem_owner = (creds.uid, creds.gid)
        # New kernfs nodes: no mode, owner, times or xattrs set on earlier ones survive.
        for table in (cgroup.file_attrs, cgroup.file_xattrs, cgroup.stamps):
            if table:
                for name in [n for n in table if n.startswith("dmem.")]:
                    del table[name]
        self._touch_dir(cgroup)

    def _dmem_offline(self, cgroup: Cgroup) -> None:
        css = cgroup.dmem_css
        assert css is not None
        cgroup.dmem_css = None
        self._touch_dir(cgroup)
        c: DmemCss | None = css
        while c is not None:
            c.cgroup.nr_dying_subsys += 1
            c = c.parent
        self.dmem.css_offline(css)

    def _css_released(self, css: DmemCss) -> None:
        c: DmemCss | None = css
        while c is not None:
            c.cgroup.nr_dying_subsys -= 1
            c = c.parent
        css.cgroup.nr_csses -= 1
        self._maybe_release_cgroup(css.cgroup)

    def dmem_css_of(self, cgroup: Cgroup) -> DmemCss:
        """The effective dmem css: of the nearest ancestor (or self) with dmem enabled."""
        for c in cgroup.ancestors():
            if c.dmem_css is not None:
                return c.dmem_css
        raise AssertionError("the root always has a dmem css")

    # -- cgroup.subtree_control ----------------------------------------------------------

    def write_subtree_control(self, cgroup: Cgroup, text: str, creds: Creds = ROOT_CREDS) -> None:
        enable, disable = parse_subtree_control(text, CONTROLLERS)
        if cgroup.dying:
            raise NoDevice(f"{cgroup.path} is being removed")
        available = cgroup.controllers()
        for name in CONTROLLERS:
            if name in enable:
                if name in cgroup.subtree_control:
                    enable.discard(name)
                elif name not in available:
                    raise NotFound(f"controller {name} is not available in {cgroup.path}")
            elif name in disable:
                if name not in cgroup.subtree_control:
                    disable.discard(name)
                elif any(name in ch.subtree_control for ch in cgroup.children.values()):
                    raise Busy(f"a child of {cgroup.path} still enables {name}")
        if not enable and not disable:
            return
        if enable and cgroup.parent is not None and cgroup.procs:
            raise Busy(f"{cgroup.path} has processes (no internal processes)")
        for name in enable:
            self._check_no_clash(cgroup, name)
        cgroup.subtree_control = (cgroup.subtree_control | enable) - disable
        if "dmem" in enable:
            for child in cgroup.children.values():
                self._dmem_online(child, creds)
        if "dmem" in disable:
            for child in cgroup.children.values():
                self._dmem_offline(child)

    def _check_no_clash(self, cgroup: Cgroup, controller: str) -> None:
        """Enabling a controller creates its files in every child; kernfs refuses a file whose
        name a child cgroup of that child already has (EEXIST), and the write changes
        nothing."""
        from dmemfs.engine.files import FILES, Where

        names = [f.name for f in FILES if f.controller == controller
                 and f.exists_in(self.profile) and f.where is not Where.ROOT_ONLY]
        for child in cgroup.children.values():
            for name in names:
                if name in child.children:
                    raise Exists(f"{child.path}/{name} is a cgroup: {controller} cannot "
                                 "create its file")

    # -- hierarchy limits ------------------------------------------------------------------

    def set_max_depth(self, cgroup: Cgroup, value: int) -> None:
        self._check_live(cgroup)
        cgroup.max_depth = value

    def set_max_descendants(self, cgroup: Cgroup, value: int) -> None:
        self._check_live(cgroup)
        cgroup.max_descendants = value

    def _check_live(self, cgroup: Cgroup) -> None:
        if cgroup.dying:
            raise NoDevice(f"{cgroup.path} is removed")

    # -- processes ---------------------------------------------------------------------------

    def cgroup_of(self, pid: int) -> Cgroup:
        """The cgroup of a process; never-placed processes are in the root."""
        return self.members.get(pid, self.root)

    def knows(self, pid: int) -> bool:
        return pid in self.members

    def adopt(self, pid: int, cgroup: Cgroup) -> None:
        """Record where a process the engine did not know yet lives (e.g. a forked child):
        it has been there since it was forked, so all its CPU time counts there."""
        if pid in self.members:
            return
        self._place(pid, cgroup, forked=True)

    def vet_dst(self, dst: Cgroup) -> None:
        """``cgroup_migrate_vet_dst()``: a non-root cgroup with a (domain) controller enabled
        for its children cannot take processes (EBUSY)."""
        if dst.dying:
            raise NoDevice(f"{dst.path} is removed")
        if dst.parent is not None and dst.subtree_control:
            raise Busy(f"{dst.path} has controllers enabled (no internal processes)")

    def migrate(self, pid: int, dst: Cgroup) -> None:
        """Move a process: the destination's rules only, no permission check."""
        self.vet_dst(dst)
        src = self.members.get(pid)
        if src is dst:
            return
        if src is not None:
            self._unplace(pid, src)
        self._place(pid, dst)
        self.on_migrate(pid, dst)

    def check_migrate_permission(
        self, pid: int, dst: Cgroup, creds: Creds, src: Cgroup | None = None
    ) -> None:
        """The opener must be able to write the common ancestor's ``cgroup.procs`` (EACCES)."""
        com = common_ancestor(src or self.cgroup_of(pid), dst)
        if not self.file_attr(com, "cgroup.procs").allows(creds, 2):
            raise AccessDenied(f"no write access to {com.path}/cgroup.procs")

    def forget(self, pid: int) -> None:
        """A process exited: it leaves its cgroup."""
        src = self.members.get(pid)
        if src is not None:
            self._unplace(pid, src)

    def _place(self, pid: int, cgroup: Cgroup, *, forked: bool = False) -> None:
        self.members[pid] = cgroup
        cgroup.procs[pid] = None
        if cgroup.parent is not None:
            for a in cgroup.ancestors():
                a.nr_populated += 1
                if a.nr_populated == 1:
                    a.events_seq += 1
            self._cpu_base[pid] = ZERO if forked else (self.cpu.sample(pid) or ZERO)
            self.cpu.watch(pid)

    def _unplace(self, pid: int, cgroup: Cgroup) -> None:
        del self.members[pid]
        del cgroup.procs[pid]
        if cgroup.parent is not None:
            for a in cgroup.ancestors():
                a.nr_populated -= 1
                if a.nr_populated == 0:
                    a.events_seq += 1
        base = self._cpu_base.pop(pid, None)
        if base is not None:
            cgroup.cpu_acc = cgroup.cpu_acc + (self.cpu.sample(pid) or base).since(base)
            self.cpu.release(pid)

    def procs_of(self, cgroup: Cgroup) -> list[int]:
        if cgroup.parent is None:
            elsewhere = {p for p, c in self.members.items() if c is not self.root}
            return [p for p in self.host.all_pids() if p not in elsewhere]
        return list(cgroup.procs)

    def subtree_pids(self, cgroup: Cgroup) -> list[int]:
        if cgroup.parent is None:
            return self.procs_of(cgroup) + [
                p for c in cgroup.walk() if c is not cgroup for p in c.procs
            ]
        return [p for c in cgroup.walk() for p in c.procs]

    # -- freeze ------------------------------------------------------------------------------

    def set_freeze(self, cgroup: Cgroup, value: int) -> None:
        """``cgroup_freeze()``: every descendant whose effective state changes starts or stops
        its freezing time at the same instant."""
        self._check_live(cgroup)
        before = {c: self.is_frozen(c) for c in cgroup.walk()}
        cgroup.freeze = value
        now = self.monotonic()
        for c, was in before.items():
            frozen = self.is_frozen(c)
            if frozen != was:
                c.events_seq += 1
            if frozen and not was:
                c.freeze_start = now
            elif was and not frozen and c.freeze_start is not None:
                c.frozen_ns += now - c.freeze_start
                c.freeze_start = None

    def frozen_usec(self, cgroup: Cgroup) -> int:
        """``cgroup.stat.local``: time spent between freezing and thawing, by itself or an
        ancestor, including a freeze still in effect."""
        ns = cgroup.frozen_ns
        if cgroup.freeze_start is not None:
            ns += max(0, self.monotonic() - cgroup.freeze_start)
        return ns // 1000

    # -- CPU time ----------------------------------------------------------------------------

    def cpu_stat(self, cgroup: Cgroup) -> str:
        """``cpu.stat`` (its base lines): the subtree's CPU time, or the machine's on the root."""
        if cgroup.parent is None:
            t = self.cpu.system()
            return format_cpu_stat(t.rtime, t.utime, t.stime, t.ntime)
        self.cpu.flush()
        total = ZERO
        for c in cgroup.walk():
            total = total + c.cpu_acc
            for pid in c.procs:
                base = self._cpu_base.get(pid, ZERO)
                total = total + (self.cpu.sample(pid) or base).since(base)
        utime, stime = cputime_adjust(total, cgroup.cpu_prev)
        return format_cpu_stat(total.rtime, utime, stime, total.ntime)

    def charge_cputime(self, cgroup: Cgroup, used: CpuTimes) -> None:
        """A process dmemfs never tracked ran (and exited) in ``cgroup``."""
        if cgroup.parent is not None and not cgroup.dying:
            cgroup.cpu_acc = cgroup.cpu_acc + used

    def is_frozen(self, cgroup: Cgroup) -> bool:
        """``frozen`` in cgroup.events: the cgroup or an ancestor asked to freeze."""
        return any(c.freeze for c in cgroup.ancestors())

    # -- owners and modes ------------------------------------------------------------------

    def file_attr(self, cgroup: Cgroup, name: str) -> Attr:
        from dmemfs.engine.files import FILES_BY_NAME

        if cgroup.file_attrs and name in cgroup.file_attrs:
            return cgroup.file_attrs[name]
        row = FILES_BY_NAME[name]
        uid, gid = cgroup.dmem_owner if row.controller == "dmem" else cgroup.files_owner
        return Attr(uid, gid, row.mode)

    def set_file_attr(
        self, cgroup: Cgroup, name: str, *, uid: int | None = None, gid: int | None = None,
        mode: int | None = None,
    ) -> Attr:
        old = self.file_attr(cgroup, name)
        new = Attr(
            old.uid if uid is None else uid,
            old.gid if gid is None else gid,
            old.mode if mode is None else mode & 0o7777,
        )
        if cgroup.file_attrs is None:
            cgroup.file_attrs = {}
        cgroup.file_attrs[name] = new
        return new

    def set_dir_attr(
        self, cgroup: Cgroup, *, uid: int | None = None, gid: int | None = None,
        mode: int | None = None,
    ) -> Attr:
        old = cgroup.attr
        cgroup.attr = Attr(
            old.uid if uid is None else uid,
            old.gid if gid is None else gid,
            old.mode if mode is None else mode & 0o7777,
        )
        return cgroup.attr

    def stamp(self, cgroup: Cgroup, name: str) -> Stamp | None:
        """Times of the directory (``name`` "") or a file, once set."""
        return (cgroup.stamps or {}).get(name)

    def set_times(
        self, cgroup: Cgroup, name: str, *, atime: int | None = None, mtime: int | None = None,
    ) -> Stamp:
        """``kernfs_setattr()``: the first change gives the node times of its own (all "now"),
        then the given ones are stored; every change sets ctime to now."""
        now = self.clock()
        old = self.stamp(cgroup, name) or Stamp(now, now, now)
        new = Stamp(old.atime if atime is None else atime,
                    old.mtime if mtime is None else mtime, now)
        if cgroup.stamps is None:
            cgroup.stamps = {}
        cgroup.stamps[name] = new
        return new

    def xattrs_of(self, cgroup: Cgroup, name: str) -> dict[str, bytes]:
        """Extended attributes of the directory (``name`` "") or one of its files.

        A directory keeps its ``user.*`` attributes in ``xattrs`` (the configuration --state
        saves) and the others with the files' under "".
        """
        own = (cgroup.file_xattrs or {}).get(name, {})
        if not name and cgroup.xattrs:
            return {**cgroup.xattrs, **own}
        return own

    def set_xattrs(self, cgroup: Cgroup, name: str, xattrs: dict[str, bytes]) -> None:
        if not name:
            cgroup.xattrs = {n: v for n, v in xattrs.items() if n.startswith("user.")} or None
            xattrs = {n: v for n, v in xattrs.items() if not n.startswith("user.")}
        if cgroup.file_xattrs is None:
            cgroup.file_xattrs = {}
        if xattrs:
            cgroup.file_xattrs[name] = xattrs
        else:
            cgroup.file_xattrs.pop(name, None)
