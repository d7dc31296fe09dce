"""The interface files of a cgroup directory: one declarative row each (``struct cftype``).

Each row names the file, its mode, where it exists, and how it is shown and written; the core
rows follow ``cgroup_base_files`` and ``cgroup_psi_files`` of kernel/cgroup/cgroup.c.
:func:`read_file` and :func:`write_file` apply the kernfs rules every file shares (E2BIG over
one page, empty write is a no-op, ENODEV once the cgroup is removed, EINVAL for a read or a
write the file has no handler for).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dmemfs.engine import parse
from dmemfs.engine.cgroup import CAP_SYS_RESOURCE, Cgroup, CgroupTree, Creds
from dmemfs.engine.psi import PsiTrigger, parse_trigger, zero_pressure
from dmemfs.errors import (
    Busy,
    InvalidArgument,
    NoDevice,
    NoProcess,
    NotSupported,
    OutOfRange,
    TooBig,
)
from dmemfs.profile import CONTROLLERS, MAX_WRITE, Profile


class WriteContext(Protocol):
    """Who writes: the process that opened the file (FUSE gives no context to ``write``)."""

    @property
    def pid(self) -> int:
        """Thread-group id of the opener (``0`` in cgroup.procs means this process)."""
        ...

    @property
    def creds(self) -> Creds: ...

    @property
    def nonblock(self) -> bool:
        """Whether the open file has ``O_NONBLOCK`` at the time of this write."""
        ...

    #: The trigger written to this open pressure file, if any (one per open file).
    psi_trigger: PsiTrigger | None

    def resolve_pid(self, pid: int) -> int:
        """Map a written process or thread id to its thread group, registering where the process
        lives if the engine does not know it yet; raises NoProcess (ESRCH) if it does not exist."""
        ...

    def zombie(self, pid: int) -> int | None:
        """The thread group id if ``pid`` is an exited, not yet reaped process (its task still
        exists for the kernel), else None."""
        ...

    def migratable(self, pid: int) -> bool:
        """False for a task the kernel never moves (a kernel thread bound to its CPUs)."""
        ...

    def kill(self, pids: list[int]) -> None:
        """Send SIGKILL to these processes (``cgroup.kill``)."""
        ...


class Where(enum.Enum):
    ALL = "all"
    ROOT_ONLY = "root only"
    NOT_ON_ROOT = "not on root"


Show = Callable[[CgroupTree, Cgroup], str]
Write = Callable[[CgroupTree, Cgroup, str, WriteContext], None]


@dataclass(frozen=True, slots=True)
class CgroupFile:
    name: str
    mode: int
    where: Where
    show: Show | None = None
    write: Write | None = None
    controller: str | None = None
    #: Whether the emulated kernel version has this file.
    exists_in: Callable[[Profile], bool] = lambda profile: True
    #: The PSI resource of a ``<resource>.pressure`` file (hidden by ``cgroup.pressure``).
    psi: str | None = None
    #: Exists only on kernels with pressure stall information (``CFTYPE_PRESSURE``).
    needs_psi: bool = False

    def exists(self, tree: CgroupTree, cgroup: Cgroup, *, hidden_too: bool = False) -> bool:
        """The file is in ``cgroup`` now (``hidden_too``: or only hidden by cgroup.pressure,
        which keeps its kernfs node)."""
        if self.where is Where.ROOT_ONLY and not cgroup.is_root:
            return False
        if self.where is Where.NOT_ON_ROOT and cgroup.is_root:
            return False
        if self.controller is not None and not cgroup.is_root and cgroup.dmem_css is None:
            return False
        if self.needs_psi and not tree.psi:
            return False
        if self.psi is not None:
            if self.psi == "irq" and not tree.irq_pressure:
                return False
            if not cgroup.psi_enabled and not hidden_too:
                return False
        return self.exists_in(tree.profile)


# -- core files -------------------------------------------------------------------------------


def _mask(names: frozenset[str]) -> str:
    listed = [n for n in CONTROLLERS if n in names]
    return " ".join(listed) + "\n" if listed else ""


def _show_procs(tree: CgroupTree, cg: Cgroup) -> str:
    return "".join(f"{p}\n" for p in tree.procs_of(cg))


def _show_threads(tree: CgroupTree, cg: Cgroup) -> str:
    return "".join(f"{t}\n" for p in tree.procs_of(cg) for t in tree.host.threads(p))


def _find_task(tree: CgroupTree, text: str, ctx: WriteContext) -> tuple[int, Cgroup, bool]:
    """``cgroup_procs_write_start()``: the written id's process, its cgroup, and whether it is
    a zombie (found, but already exiting: nothing of it moves)."""
    pid = parse.parse_pid(text)
    if pid == 0:
        return ctx.pid, tree.cgroup_of(ctx.pid), False
    src = tree.cgroup_of(pid)  # a zombie keeps its cgroup; look before it is forgotten
    try:
        tgid = ctx.resolve_pid(pid)
    except NoProcess:
        zombie = ctx.zombie(pid)
        if zombie is None:
            raise
        return zombie, src, True
    if not ctx.migratable(tgid):
        raise InvalidArgument(f"process {tgid} cannot be moved (PF_NO_SETAFFINITY)")
    return tgid, tree.cgroup_of(tgid), False


def _write_procs(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
    pid, src, zombie = _find_task(tree, text, ctx)
    tree.check_migrate_permission(pid, cg, ctx.creds, src)
    tree.vet_dst(cg)
    if not zombie:
        tree.migrate(pid, cg)


def _write_threads(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
    pid, src, _ = _find_task(tree, text, ctx)
    tree.check_migrate_permission(pid, cg, ctx.creds, src)
    tree.vet_dst(cg)
    if src is not cg:
        # Every cgroup here is a domain: a single thread cannot leave its process's domain.
        raise NotSupported("threads cannot move across domain cgroups")


def _write_subtree_control(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
    tree.write_subtree_control(cg, text, ctx.creds)


def _write_type(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
    if parse.strstrip(text) != "threaded":
        raise InvalidArgument("only 'threaded' can be written to cgroup.type")
    raise NotSupported("threaded cgroups are not emulated by dmemfs")


def _show_events(tree: CgroupTree, cg: Cgroup) -> str:
    return f"populated {int(cg.populated)}\nfrozen {int(tree.is_frozen(cg))}\n"


def _show_stat(tree: CgroupTree, cg: Cgroup) -> str:
    css = cg.dmem_css
    return (
        f"nr_descendants {cg.nr_descendants}\n"
        f"nr_subsys_dmem {css.nr_descendants + 1 if css is not None else 0}\n"
        f"nr_dying_descendants {cg.nr_dying_descendants}\n"
        f"nr_dying_subsys_dmem {cg.nr_dying_subsys}\n"
    )


def _write_freeze(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
    tree.set_freeze(cg, parse.parse_bool01(text))


def _show_stat_local(tree: CgroupTree, cg: Cgroup) -> str:
    return f"frozen_usec {tree.frozen_usec(cg)}\n"


def _show_cgroup_pressure(tree: CgroupTree, cg: Cgroup) -> str:
    return f"{int(cg.psi_enabled)}\n"


def _write_cgroup_pressure(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
    """``cgroup_pressure_write()``: 0 hides the pressure files, 1 shows them again."""
    enabled = bool(parse.parse_bool01(text))
    if enabled != cg.psi_enabled:
        cg.psi_enabled = enabled
        if not enabled:
            cg.psi_gen += 1


def _show_pressure(resource: str) -> Show:
    def show(tree: CgroupTree, cg: Cgroup) -> str:
        if cg.is_root:  # the root cgroup's group is the system's (psi_system)
            return tree.pressure(resource) or zero_pressure(resource)
        return zero_pressure(resource)

    return show


def _write_pressure(resource: str) -> Write:
    def write(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
        if ctx.psi_trigger is not None:
            raise Busy("this open file already has a trigger")
        ctx.psi_trigger = parse_trigger(text, resource, ctx.creds.capable(CAP_SYS_RESOURCE))

    return write


def _write_kill(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
    value = parse.kstrtoint(parse.strstrip(text), 0)
    if value != 1:
        raise OutOfRange("only 1 can be written to cgroup.kill")
    ctx.kill(tree.subtree_pids(cg))


# -- dmem files -----------------------------------------------------------------------------


def _dmem_show(attr: str) -> Show:
    def show(tree: CgroupTree, cg: Cgroup) -> str:
        css = cg.dmem_css
        assert css is not None
        return tree.dmem.show(css, attr)

    return show


def _dmem_write(attr: str) -> Write:
    def write(tree: CgroupTree, cg: Cgroup, text: str, ctx: WriteContext) -> None:
        css = cg.dmem_css
        assert css is not None
        # The writer's pid is looked up (in /proc) only if the write reclaims.
        tree.dmem.write_limit(css, attr, text, nonblock=ctx.nonblock, task=ctx)

    return write


def _has_peak(profile: Profile) -> bool:
    return profile.has_peak


def _has_pinning(profile: Profile) -> bool:
    return profile.has_pinning


FILES: tuple[CgroupFile, ...] = (
    CgroupFile("cgroup.controllers", 0o444, Where.ALL, lambda t, c: _mask(c.controllers())),
    CgroupFile("cgroup.events", 0o444, Where.NOT_ON_ROOT, _show_events),
    CgroupFile("cgroup.freeze", 0o644, Where.NOT_ON_ROOT, lambda t, c: f"{c.freeze}\n",
               _write_freeze),
    CgroupFile("cgroup.kill", 0o200, Where.NOT_ON_ROOT, None, _write_kill),
    CgroupFile("cgroup.max.depth", 0o644, Where.ALL,
               lambda t, c: parse.format_max_int(c.max_depth),
               lambda t, c, s, x: t.set_max_depth(c, parse.parse_max_int(s))),
    CgroupFile("cgroup.max.descendants", 0o644, Where.ALL,
               lambda t, c: parse.format_max_int(c.max_descendants),
               lambda t, c, s, x: t.set_max_descendants(c, parse.parse_max_int(s))),
    CgroupFile("cgroup.procs", 0o644, Where.ALL, _show_procs, _write_procs),
    CgroupFile("cgroup.stat", 0o444, Where.ALL, _show_stat),
    CgroupFile("cgroup.subtree_control", 0o644, Where.ALL,
               lambda t, c: _mask(c.subtree_control), _write_subtree_control),
    CgroupFile("cgroup.threads", 0o644, Where.ALL, _show_threads, _write_threads),
    CgroupFile("cgroup.type", 0o644, Where.NOT_ON_ROOT, lambda t, c: "domain\n", _write_type),
    CgroupFile("cgroup.stat.local", 0o444, Where.NOT_ON_ROOT, _show_stat_local),
    CgroupFile("cpu.stat", 0o444, Where.ALL, lambda t, c: t.cpu_stat(c)),
    # Its lines come from the cpu controller, which dmemfs does not have.
    CgroupFile("cpu.stat.local", 0o444, Where.ALL, lambda t, c: ""),
    CgroupFile("cgroup.pressure", 0o644, Where.ALL, _show_cgroup_pressure,
               _write_cgroup_pressure, needs_psi=True),
    *(CgroupFile(f"{res}.pressure", 0o644, Where.ALL, _show_pressure(res),
                 _write_pressure(res), psi=res, needs_psi=True)
      for res in ("io", "memory", "cpu", "irq")),
    CgroupFile("dmem.capacity", 0o444, Where.ROOT_ONLY, lambda t, c: t.dmem.show_capacity(),
               controller="dmem"),
    CgroupFile("dmem.current", 0o444, Where.ALL, _dmem_show("usage"), controller="dmem"),
    CgroupFile("dmem.low", 0o644, Where.NOT_ON_ROOT, _dmem_show("low"), _dmem_write("low"),
               controller="dmem"),
    CgroupFile("dmem.max", 0o644, Where.NOT_ON_ROOT, _dmem_show("max"), _dmem_write("max"),
               controller="dmem"),
    CgroupFile("dmem.min", 0o644, Where.NOT_ON_ROOT, _dmem_show("min"), _dmem_write("min"),
               controller="dmem"),
    CgroupFile("dmem.peak", 0o444, Where.NOT_ON_ROOT, _dmem_show("watermark"),
               controller="dmem", exists_in=_has_peak),
    CgroupFile("dmem.pinned", 0o444, Where.ALL, _dmem_show("pinned"), controller="dmem",
               exists_in=_has_pinning),
)

FILES_BY_NAME: dict[str, CgroupFile] = {f.name: f for f in FILES}
FILE_NAMES = frozenset(FILES_BY_NAME)
PRESSURE_FILES = tuple(f for f in FILES if f.psi is not None)


def files_of(tree: CgroupTree, cgroup: Cgroup) -> list[CgroupFile]:
    """The interface files that exist in ``cgroup`` now, in table order."""
    return [f for f in FILES if f.exists(tree, cgroup)]


def files_shape(cgroup: Cgroup) -> tuple[bool, bool, bool]:
    """What :meth:`CgroupFile.exists` depends on besides the tree: cgroups of one shape have
    the same files (for caching listings)."""
    return cgroup.is_root, cgroup.dmem_css is not None, cgroup.psi_enabled


def lookup_file(tree: CgroupTree, cgroup: Cgroup, name: str) -> CgroupFile | None:
    row = FILES_BY_NAME.get(name)
    if row is None or not row.exists(tree, cgroup):
        return None
    return row


def file_exists(tree: CgroupTree, cgroup: Cgroup, name: str, *, hidden_too: bool = False
                ) -> bool:
    row = FILES_BY_NAME.get(name)
    return row is not None and row.exists(tree, cgroup, hidden_too=hidden_too)


def read_file(tree: CgroupTree, cgroup: Cgroup, row: CgroupFile) -> bytes:
    """Render the whole content of an interface file (a seq_file snapshot)."""
    if cgroup.dying or not row.exists(tree, cgroup):
        raise NoDevice(f"{cgroup.path}/{row.name} is gone")
    if row.show is None:
        raise InvalidArgument(f"{row.name} is write-only")
    return row.show(tree, cgroup).encode("latin-1")


def write_file(
    tree: CgroupTree, cgroup: Cgroup, row: CgroupFile, data: bytes, ctx: WriteContext
) -> int:
    """One ``write()`` is one command: returns ``len(data)`` or raises with the kernel's errno."""
    if len(data) > MAX_WRITE:
        raise TooBig(f"a single write is limited to {MAX_WRITE} bytes")
    if not data:
        return 0
    if cgroup.dying or not row.exists(tree, cgroup):
        raise NoDevice(f"{cgroup.path}/{row.name} is gone")
    if row.write is None:
        raise InvalidArgument(f"{row.name} is read-only")
    # kernfs hands the handler a NUL-terminated copy; every parser stops at the first NUL.
    row.write(tree, cgroup, data.split(b"\0", 1)[0].decode("latin-1"), ctx)
    return len(data)
