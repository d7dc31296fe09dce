"""The interface file table and the kernfs read/write rules (docs/kernel-model.md §3-4, §14)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from dmemfs.engine.cgroup import Cgroup, CgroupTree, Creds
from dmemfs.engine.dmem import Region
from dmemfs.engine.files import FILES_BY_NAME, files_of, lookup_file, read_file, write_file
from dmemfs.errors import (
    AccessDenied,
    Busy,
    DmemError,
    InvalidArgument,
    NoDevice,
    NoProcess,
    NotFound,
    NotSupported,
    OutOfRange,
    TooBig,
)
from dmemfs.profile import LATEST, MAX_WRITE, V6_14, Profile

REGION = "drm/0000:03:00.0/vram0"
GiB = 1 << 30
PROFILES = pytest.mark.parametrize("profile", [LATEST, V6_14], ids=["latest", "6.14"])

PSI_FILES = ["cgroup.pressure", "io.pressure", "memory.pressure", "cpu.pressure"]
ROOT_FILES = [
    "cgroup.controllers", "cgroup.max.depth", "cgroup.max.descendants", "cgroup.procs",
    "cgroup.stat", "cgroup.subtree_control", "cgroup.threads", "cpu.stat", "cpu.stat.local",
    *PSI_FILES, "dmem.capacity", "dmem.current", "dmem.pinned",
]
CHILD_CORE = [
    "cgroup.controllers", "cgroup.events", "cgroup.freeze", "cgroup.kill", "cgroup.max.depth",
    "cgroup.max.descendants", "cgroup.procs", "cgroup.stat", "cgroup.subtree_control",
    "cgroup.threads", "cgroup.type", "cgroup.stat.local", "cpu.stat", "cpu.stat.local",
    *PSI_FILES,
]
CHILD_DMEM_LATEST = ["dmem.current", "dmem.low", "dmem.max", "dmem.min", "dmem.peak",
                     "dmem.pinned"]
CHILD_DMEM_614 = ["dmem.current", "dmem.low", "dmem.max", "dmem.min", "dmem.pinned"]


def names(tree: CgroupTree, cg: Cgroup) -> list[str]:
    return [f.name for f in files_of(tree, cg)]


# -- which files exist --------------------------------------------------------------------


@PROFILES
def test_file_table(make_tree: Callable[..., CgroupTree], profile: Profile) -> None:
    tree = make_tree(profile=profile)
    a = tree.mkdir(tree.root, "a")
    assert names(tree, tree.root) == ROOT_FILES  # dmem files on the root need no +dmem
    assert names(tree, a) == CHILD_CORE
    tree.write_subtree_control(tree.root, "+dmem")
    b = tree.mkdir(a, "b")
    dmem = CHILD_DMEM_LATEST if profile.has_peak else CHILD_DMEM_614
    assert names(tree, tree.root) == ROOT_FILES
    assert names(tree, a) == CHILD_CORE + dmem
    assert names(tree, b) == CHILD_CORE  # /a does not enable dmem for /a/b
    tree.write_subtree_control(a, "+dmem")
    assert names(tree, b) == CHILD_CORE + dmem
    assert lookup_file(tree, a, "dmem.capacity") is None
    assert lookup_file(tree, tree.root, "dmem.max") is None
    assert lookup_file(tree, tree.root, "cgroup.kill") is None
    assert lookup_file(tree, a, "memory.max") is None
    assert (lookup_file(tree, a, "dmem.peak") is not None) is profile.has_peak


def test_every_row_has_a_handler() -> None:
    for row in FILES_BY_NAME.values():
        assert row.show is not None or row.write is not None
        assert (row.write is not None) == bool(row.mode & 0o200), row.name
        assert (row.show is not None) == bool(row.mode & 0o444), row.name


# -- read formats -------------------------------------------------------------------------


def test_cgroup_controllers(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    assert io.read(tree.root, "cgroup.controllers") == "dmem\n"
    row = io.row(a, "cgroup.controllers")
    assert read_file(tree, a, row) == b""  # empty, not even a newline
    assert io.read(tree.root, "cgroup.subtree_control") == ""
    tree.write_subtree_control(tree.root, "+dmem")
    assert io.read(a, "cgroup.controllers") == "dmem\n"
    assert io.read(tree.root, "cgroup.subtree_control") == "dmem\n"
    assert io.read(a, "cgroup.subtree_control") == ""


def test_core_file_formats(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    assert io.read(a, "cgroup.events") == "populated 0\nfrozen 0\n"
    assert io.read(a, "cgroup.type") == "domain\n"
    assert io.read(a, "cgroup.freeze") == "0\n"
    for cg in (tree.root, a):
        assert io.read(cg, "cgroup.max.depth") == "max\n"
        assert io.read(cg, "cgroup.max.descendants") == "max\n"
        assert io.read(cg, "cgroup.procs") == ""
        assert io.read(cg, "cgroup.threads") == ""
    tree.migrate(7, a)
    tree.migrate(3, a)
    tree.adopt(1, tree.root)
    assert io.read(a, "cgroup.events") == "populated 1\nfrozen 0\n"
    assert io.read(a, "cgroup.procs") == "7\n3\n"
    assert io.read(a, "cgroup.threads") == "7\n3\n"
    assert io.read(tree.root, "cgroup.procs") == "1\n"


def test_dmem_file_formats(tree: CgroupTree, region: Region, io: Any) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    assert io.read(tree.root, "dmem.capacity") == f"{REGION} {16 * GiB}\n"
    assert a.dmem_css is not None
    pool = tree.dmem.try_charge(a.dmem_css, region, 12345)
    io.write(a, "dmem.min", f"{REGION} 12345")
    tree.dmem.try_pin(pool, 4096)
    io.write(a, "dmem.max", f"{REGION} 1G")
    io.write(a, "dmem.low", f"{REGION} 0x10")
    assert io.read(tree.root, "dmem.current") == f"{REGION} 12345\n"
    assert io.read(tree.root, "dmem.pinned") == f"{REGION} 4096\n"
    expected = {"dmem.current": "12345", "dmem.peak": "12345", "dmem.min": "12345",
                "dmem.low": "16", "dmem.max": str(GiB), "dmem.pinned": "4096"}
    for name, value in expected.items():
        assert io.read(a, name) == f"{REGION} {value}\n"


def test_no_region_means_empty_dmem_files(make_tree: Callable[..., CgroupTree],
                                          make_io: Any) -> None:
    tree = make_tree(regions=())
    io = make_io(tree)
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    for cg, name in ((tree.root, "dmem.capacity"), (tree.root, "dmem.current"), (a, "dmem.max"),
                     (a, "dmem.peak"), (a, "dmem.pinned")):
        assert read_file(tree, cg, io.row(cg, name)) == b""


# -- write_file: kernfs rules --------------------------------------------------------------


def test_write_size_limit(tree: CgroupTree, io: Any) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    line = f"{REGION} 5\n"
    ok = line.encode() + b"\n" * (MAX_WRITE - len(line))
    assert len(ok) == 4096
    assert io.write(a, "dmem.max", ok) == 4096
    assert io.read(a, "dmem.max") == f"{REGION} 5\n"
    too_big = f"{REGION} 7\n".encode() + b"\n" * (MAX_WRITE - len(line) + 1)
    assert len(too_big) == 4097
    with pytest.raises(TooBig) as exc:
        io.write(a, "dmem.max", too_big)
    assert exc.value.errno == errno.E2BIG
    assert io.read(a, "dmem.max") == f"{REGION} 5\n"
    # E2BIG comes first, even for a read-only file.
    with pytest.raises(TooBig):
        io.write(a, "cgroup.stat", b"x" * 4097)


def test_empty_write_is_a_noop(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    for name in ("cgroup.procs", "cgroup.freeze", "cgroup.kill", "cgroup.subtree_control",
                 "cgroup.max.depth", "cgroup.type"):
        assert io.write(a, name, b"") == 0
    assert io.write(tree.root, "cgroup.subtree_control", b"") == 0
    assert io.ctx.resolved == [] and io.ctx.killed == [] and not tree.knows(io.ctx.pid)
    assert a.freeze == 0 and tree.root.subtree_control == frozenset()


def test_dying_cgroup_is_enodev(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    rows = {name: io.row(a, name) for name in ("cgroup.freeze", "cgroup.procs", "cgroup.events",
                                               "cgroup.max.depth")}
    tree.rmdir(a)
    for row in rows.values():
        with pytest.raises(NoDevice) as exc:
            write_file(tree, a, row, b"1", io.ctx)
        assert exc.value.errno == errno.ENODEV
        if row.show is not None:
            with pytest.raises(NoDevice):
                read_file(tree, a, row)
    assert a.freeze == 0


def test_file_missing_from_this_cgroup_is_enodev(tree: CgroupTree, io: Any) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    row = io.row(a, "dmem.max")
    tree.write_subtree_control(tree.root, "-dmem")  # the file vanished under an open handle
    with pytest.raises(NoDevice):
        write_file(tree, a, row, f"{REGION} 1".encode(), io.ctx)
    with pytest.raises(NoDevice):
        read_file(tree, a, row)
    with pytest.raises(NoDevice):
        write_file(tree, tree.root, FILES_BY_NAME["cgroup.freeze"], b"1", io.ctx)


@pytest.mark.parametrize("name", ["cgroup.controllers", "cgroup.events", "cgroup.stat",
                                  "dmem.current", "dmem.peak", "dmem.pinned"])
def test_read_only_files_are_einval_on_write(tree: CgroupTree, io: Any, name: str) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    before = io.read(a, name)
    with pytest.raises(InvalidArgument) as exc:
        io.write(a, name, f"{REGION} 1\n")
    assert exc.value.errno == errno.EINVAL
    assert io.read(a, name) == before


def test_dmem_capacity_is_read_only(tree: CgroupTree, io: Any) -> None:
    with pytest.raises(InvalidArgument):
        io.write(tree.root, "dmem.capacity", f"{REGION} 1\n")
    assert io.read(tree.root, "dmem.capacity") == f"{REGION} {16 * GiB}\n"


def test_write_only_file_cannot_be_read(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    with pytest.raises(DmemError):
        read_file(tree, a, io.row(a, "cgroup.kill"))


# -- cgroup.procs / cgroup.threads (docs/kernel-model.md §14) -------------------------------------


def test_procs_write_zero_is_the_opener(tree: CgroupTree, io: Any,
                                        make_ctx: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    ctx = make_ctx(tree, pid=321)
    assert io.write(a, "cgroup.procs", "0\n", ctx) == 2
    assert tree.cgroup_of(321) is a
    assert ctx.resolved == []  # 0 needs no lookup


def test_procs_write_resolves_threads_to_their_process(tree: CgroupTree, io: Any,
                                                       make_ctx: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    ctx = make_ctx(tree, processes={500: 500, 501: 500})
    assert io.write(a, "cgroup.procs", "501", ctx) == 3
    assert ctx.resolved == [501]
    assert tree.cgroup_of(500) is a and not tree.knows(501)
    assert io.read(a, "cgroup.procs") == "500\n"


def test_procs_write_unknown_pid_is_esrch(tree: CgroupTree, io: Any, make_ctx: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    ctx = make_ctx(tree, processes={})
    with pytest.raises(NoProcess) as exc:
        io.write(a, "cgroup.procs", "999", ctx)
    assert exc.value.errno == errno.ESRCH
    assert not tree.knows(999) and a.nr_populated == 0


@pytest.mark.parametrize("text", ["-1", "abc", "1 2", "1\n2", "2147483648", "0x", " ", "-0x1"])
@pytest.mark.parametrize("name", ["cgroup.procs", "cgroup.threads"])
def test_procs_write_garbage_is_einval(tree: CgroupTree, io: Any, make_ctx: Any, text: str,
                                       name: str) -> None:
    a = tree.mkdir(tree.root, "a")
    ctx = make_ctx(tree, processes={1: 1})
    with pytest.raises(InvalidArgument) as exc:
        io.write(a, name, text, ctx)
    assert exc.value.errno == errno.EINVAL
    assert ctx.resolved == [] and a.nr_populated == 0


def test_procs_write_permission_and_rules(tree: CgroupTree, io: Any, make_ctx: Any) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    x = tree.mkdir(a, "x")
    y = tree.mkdir(a, "y")
    tree.migrate(10, x)
    alice = make_ctx(tree, creds=Creds(1000, 1000), processes={10: 10})
    with pytest.raises(AccessDenied) as exc:
        io.write(y, "cgroup.procs", "10", alice)
    assert exc.value.errno == errno.EACCES
    assert tree.cgroup_of(10) is x
    tree.set_file_attr(a, "cgroup.procs", uid=1000)
    io.write(y, "cgroup.procs", "10", alice)
    assert tree.cgroup_of(10) is y
    # No internal processes: /a enables dmem for its children.
    tree.write_subtree_control(a, "+dmem")
    with pytest.raises(Busy) as exc:
        io.write(a, "cgroup.procs", "10", alice)
    assert exc.value.errno == errno.EBUSY
    assert tree.cgroup_of(10) is y


def test_threads_write(tree: CgroupTree, io: Any, make_ctx: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(tree.root, "b")
    tree.migrate(20, a)
    ctx = make_ctx(tree, processes={20: 20, 21: 20})
    assert io.write(a, "cgroup.threads", "21", ctx) == 2  # already there: fine
    with pytest.raises(NotSupported) as exc:
        io.write(b, "cgroup.threads", "21", ctx)  # across domains
    assert exc.value.errno == errno.EOPNOTSUPP
    assert tree.cgroup_of(20) is a
    with pytest.raises(NoProcess):
        io.write(a, "cgroup.threads", "22", ctx)


# -- cgroup.kill / freeze / max.* / type / subtree_control through files ------------------


@pytest.mark.parametrize(("text", "exc_type"), [
    ("0", OutOfRange), ("2", OutOfRange), ("-1", OutOfRange), ("0x2", OutOfRange),
    ("x", InvalidArgument), ("1 1", InvalidArgument), ("yes", InvalidArgument),
    ("99999999999", OutOfRange),
])
def test_kill_accepts_only_one(tree: CgroupTree, io: Any, text: str,
                               exc_type: type[DmemError]) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.migrate(5, a)
    with pytest.raises(exc_type) as exc:
        io.write(a, "cgroup.kill", text)
    assert exc.value.errno == exc_type.errno
    assert io.ctx.killed == []
    assert io.write(a, "cgroup.kill", "0x1") == 3
    assert io.ctx.killed == [[5]]


def test_freeze_write(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    assert io.write(a, "cgroup.freeze", "1\n") == 2
    assert io.read(a, "cgroup.freeze") == "1\n"
    assert io.read(a, "cgroup.events") == "populated 0\nfrozen 1\n"
    for text, exc_type in (("2", OutOfRange), ("-1", OutOfRange), ("x", InvalidArgument)):
        with pytest.raises(exc_type):
            io.write(a, "cgroup.freeze", text)
        assert a.freeze == 1
    io.write(a, "cgroup.freeze", "0")
    assert io.read(a, "cgroup.events") == "populated 0\nfrozen 0\n"


@pytest.mark.parametrize("name", ["cgroup.max.depth", "cgroup.max.descendants"])
def test_max_files(tree: CgroupTree, io: Any, name: str) -> None:
    a = tree.mkdir(tree.root, "a")
    for cg in (tree.root, a):
        assert io.write(cg, name, "5\n") == 2
        assert io.read(cg, name) == "5\n"
        io.write(cg, name, "0")
        assert io.read(cg, name) == "0\n"
        for text, exc_type in (("-1", OutOfRange), ("abc", InvalidArgument),
                               ("MAX", InvalidArgument), ("2147483648", OutOfRange)):
            with pytest.raises(exc_type) as exc:
                io.write(cg, name, text)
            assert exc.value.errno == exc_type.errno
            assert io.read(cg, name) == "0\n"
        io.write(cg, name, "max\n")
        assert io.read(cg, name) == "max\n"
        io.write(cg, name, "2147483647")
        assert io.read(cg, name) == "max\n"


def test_max_depth_file_drives_mkdir(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    io.write(a, "cgroup.max.depth", "0")
    with pytest.raises(DmemError) as exc:
        tree.mkdir(a, "b")
    assert exc.value.errno == errno.EAGAIN


@pytest.mark.parametrize(("text", "exc_type"), [
    ("threaded", NotSupported), ("threaded\n", NotSupported), (" threaded ", NotSupported),
    ("domain", InvalidArgument), ("domain threaded", InvalidArgument),
    ("Threaded", InvalidArgument), ("x", InvalidArgument), ("\n", InvalidArgument),
])
def test_cgroup_type_write(tree: CgroupTree, io: Any, text: str,
                           exc_type: type[DmemError]) -> None:
    a = tree.mkdir(tree.root, "a")
    with pytest.raises(exc_type) as exc:
        io.write(a, "cgroup.type", text)
    assert exc.value.errno == exc_type.errno
    assert io.read(a, "cgroup.type") == "domain\n"


def test_subtree_control_file(tree: CgroupTree, io: Any, make_ctx: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    bob = make_ctx(tree, creds=Creds(2000, 2000))
    assert io.write(tree.root, "cgroup.subtree_control", "+dmem\n", bob) == 6
    assert io.read(tree.root, "cgroup.subtree_control") == "dmem\n"
    assert tree.file_attr(a, "dmem.max").uid == 2000  # owned by the writer
    with pytest.raises(InvalidArgument):
        io.write(tree.root, "cgroup.subtree_control", "+dmem\t-dmem")
    assert io.read(tree.root, "cgroup.subtree_control") == "dmem\n"
    b = tree.mkdir(a, "b")
    with pytest.raises(NotFound) as exc:  # /a/b's parent /a does not enable dmem
        io.write(b, "cgroup.subtree_control", "+dmem")
    assert exc.value.errno == errno.ENOENT


# -- the profiles and the errno table --------------------------------------------------------


def test_pinning_off_has_no_pinned_file(make_tree: Callable[..., CgroupTree]) -> None:
    tree = make_tree(profile=LATEST.with_options(pinning="off"))
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    assert "dmem.pinned" not in names(tree, tree.root)
    assert "dmem.pinned" not in names(tree, a)
    assert lookup_file(tree, a, "dmem.pinned") is None
    assert "dmem.min" in names(tree, a)


def test_profiles() -> None:
    from dmemfs.profile import PROFILES, get_profile

    assert get_profile("latest") is LATEST and get_profile("6.14") is V6_14
    assert get_profile("7.3") is LATEST and LATEST.name == "7.3"
    assert set(PROFILES) == {"latest", "7.3", "6.14"}
    assert (LATEST.single_region_write, LATEST.has_peak, LATEST.reclaim_on_max,
            LATEST.protection_aware_eviction) == (True, True, True, True)
    assert (V6_14.single_region_write, V6_14.has_peak, V6_14.reclaim_on_max,
            V6_14.protection_aware_eviction) == (False, False, False, False)
    with pytest.raises(ValueError, match=r"latest, 7\.3, 6\.14"):
        get_profile("7.2")
    assert (LATEST.pinning, LATEST.wrap_u64) == ("intended", True)
    posted = V6_14.with_options(pinning="posted")
    assert (posted.name, posted.pinning, posted.wrap_u64, posted.has_peak) == (
        "6.14", "posted", True, False)
    assert posted.with_options(wrap_u64=False).pinning == "posted"
    assert V6_14.pinning == "intended"  # frozen: with_options copies
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("6.15")


def test_errno_table() -> None:
    import dmemfs.errors as e

    expected = {
        e.InvalidArgument: errno.EINVAL, e.OutOfRange: errno.ERANGE, e.TooBig: errno.E2BIG,
        e.Busy: errno.EBUSY, e.NotFound: errno.ENOENT, e.Exists: errno.EEXIST,
        e.TryAgain: errno.EAGAIN, e.NoSpace: errno.ENOSPC, e.NoDevice: errno.ENODEV,
        e.NoMemory: errno.ENOMEM, e.NotSupported: errno.EOPNOTSUPP,
        e.NotPermitted: errno.EPERM, e.AccessDenied: errno.EACCES, e.NoProcess: errno.ESRCH,
        e.NotImplementedByKernel: errno.ENOSYS, e.ChargeLimited: errno.EAGAIN,
    }
    for cls, code in expected.items():
        assert issubclass(cls, e.DmemError)
        assert cls.errno == code
    assert str(e.Busy()) == "EBUSY"
    assert str(e.Busy("it is busy")) == "it is busy"
    limited = e.ChargeLimited("pool")
    assert limited.limit_pool == "pool" and isinstance(limited, e.TryAgain)
