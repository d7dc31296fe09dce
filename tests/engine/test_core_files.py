"""The core files beyond cgroup.*: cpu.stat (rstat + cputime_adjust), cgroup.stat.local,
the pressure files, and the kernfs rules every node follows (listing order, times, xattrs)."""

from __future__ import annotations

import errno

import pytest

from dmemfs.engine.cgroup import CAP_SYS_RESOURCE, CgroupTree, Creds
from dmemfs.engine.cputime import CpuTimes, PrevCputime, cputime_adjust
from dmemfs.engine.files import files_of, lookup_file, read_file
from dmemfs.engine.kernfs import Stamp, listing_order, name_hash, set_xattr
from dmemfs.engine.psi import PsiTrigger, parse_trigger, zero_pressure
from dmemfs.errors import (
    Busy,
    Exists,
    InvalidArgument,
    NoDevice,
    NoProcess,
    NoSpace,
    NotSupported,
    OutOfRange,
)
from dmemfs.profile import LATEST
from tests.engine.conftest import FakeContext, FileIO

MS = 1_000_000


class FakeCpu:
    """A CpuSource whose process times the test sets."""

    def __init__(self) -> None:
        self.times: dict[int, CpuTimes] = {}
        self.watched: set[int] = set()
        self.machine = CpuTimes()

    def sample(self, pid: int) -> CpuTimes | None:
        return self.times.get(pid)

    def watch(self, pid: int) -> None:
        self.watched.add(pid)

    def release(self, pid: int) -> None:
        self.watched.discard(pid)

    def system(self) -> CpuTimes:
        return self.machine

    def flush(self) -> None:
        pass

    def run(self, pid: int, user_ms: int, system_ms: int = 0) -> None:
        old = self.times.get(pid, CpuTimes())
        du, ds = user_ms * MS, system_ms * MS
        self.times[pid] = CpuTimes(old.rtime + du + ds, old.utime + du, old.stime + ds)


def cpu_stat(io: FileIO, cg: object) -> dict[str, int]:
    text = io.read(cg, "cpu.stat")  # type: ignore[arg-type]
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


@pytest.fixture
def cpu(tree: CgroupTree) -> FakeCpu:
    fake = FakeCpu()
    tree.cpu = fake
    return fake


# -- cpu.stat --------------------------------------------------------------------------------


def test_cpu_stat_counts_time_spent_inside_only(tree: CgroupTree, io: FileIO,
                                                 cpu: FakeCpu) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    cpu.run(10, 500)  # before it joins: stays with the root
    tree.migrate(10, b)
    assert 10 in cpu.watched
    assert cpu_stat(io, b)["usage_usec"] == 0
    cpu.run(10, 30, 10)
    assert cpu_stat(io, b) == {"usage_usec": 40_000, "user_usec": 30_000,
                               "system_usec": 10_000, "nice_usec": 0}
    assert cpu_stat(io, a)["usage_usec"] == 40_000  # hierarchical
    tree.migrate(10, a)  # what it used in b stays in b
    cpu.run(10, 20)
    assert cpu_stat(io, b)["usage_usec"] == 40_000
    assert cpu_stat(io, a)["usage_usec"] == 60_000
    cpu.run(10, 5)
    tree.forget(10)  # it exited: its last figures count
    assert 10 not in cpu.watched
    cpu.run(10, 1000)  # a later process with the same id is not a member
    assert cpu_stat(io, a)["usage_usec"] == 65_000


def test_cpu_stat_forked_members_count_from_birth_and_removed_children_fold(
    tree: CgroupTree, io: FileIO, cpu: FakeCpu,
) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    cpu.run(20, 70)
    tree.adopt(20, b)  # found through its parent: it was forked there
    assert cpu_stat(io, b)["usage_usec"] == 70_000
    tree.forget(20)
    tree.rmdir(b)
    assert cpu_stat(io, a)["usage_usec"] == 70_000  # rstat flushed b into a
    tree.charge_cputime(a, CpuTimes(5 * MS, 5 * MS, 0))  # a process dmemfs never saw
    assert cpu_stat(io, a)["usage_usec"] == 75_000
    tree.charge_cputime(tree.root, CpuTimes(5 * MS))  # the root shows the machine instead
    cpu.machine = CpuTimes(9 * MS, 6 * MS, 3 * MS, 1 * MS)
    assert cpu_stat(io, tree.root) == {"usage_usec": 9000, "user_usec": 6000,
                                       "system_usec": 3000, "nice_usec": 1000}


def test_cputime_adjust_scales_to_runtime_and_never_goes_back() -> None:
    prev = PrevCputime()
    # Ticks saw 3:1 user:system; the exact runtime is 100.
    assert cputime_adjust(CpuTimes(100, 30, 10), prev) == (75, 25)
    assert cputime_adjust(CpuTimes(100, 30, 10), prev) == (75, 25)  # rtime did not move
    assert cputime_adjust(CpuTimes(90, 30, 10), prev) == (75, 25)  # never backwards
    # Now mostly system: stime may not shrink, utime takes the rest but not less than before.
    assert cputime_adjust(CpuTimes(120, 30, 90), prev) == (75, 45)
    assert cputime_adjust(CpuTimes(10, 0, 0), PrevCputime()) == (10, 0)  # no ticks: all user
    assert cputime_adjust(CpuTimes(10, 0, 4), PrevCputime()) == (0, 10)


# -- cgroup.stat.local -----------------------------------------------------------------------


def test_frozen_usec_counts_freezing_by_self_or_ancestor() -> None:
    now = [0]
    tree = CgroupTree(LATEST, monotonic=lambda: now[0])
    io = FileIO(tree)
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    assert io.read(b, "cgroup.stat.local") == "frozen_usec 0\n"
    now[0] = 1_000_000
    io.write(a, "cgroup.freeze", "1")
    now[0] = 4_000_000
    assert io.read(b, "cgroup.stat.local") == "frozen_usec 3000\n"  # still freezing
    c = tree.mkdir(a, "c")  # born into a frozen parent: freezing from its birth
    now[0] = 5_000_000
    io.write(b, "cgroup.freeze", "1")  # already frozen through a: nothing restarts
    io.write(a, "cgroup.freeze", "0")
    now[0] = 9_000_000
    assert io.read(a, "cgroup.stat.local") == "frozen_usec 4000\n"
    assert io.read(b, "cgroup.stat.local") == "frozen_usec 8000\n"  # itself still frozen
    assert io.read(c, "cgroup.stat.local") == "frozen_usec 1000\n"
    assert lookup_file(tree, tree.root, "cgroup.stat.local") is None  # not on the root


def test_freeze_changes_cgroup_events_of_the_subtree(tree: CgroupTree, io: FileIO) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    seq = (a.events_seq, b.events_seq)
    io.write(a, "cgroup.freeze", "1")
    assert (a.events_seq, b.events_seq) == (seq[0] + 1, seq[1] + 1)
    io.write(b, "cgroup.freeze", "1")  # b's frozen state does not change
    assert b.events_seq == seq[1] + 1
    tree.migrate(7, b)  # populated changes on both levels
    assert (a.events_seq, b.events_seq) == (seq[0] + 2, seq[1] + 2)


# -- pressure files --------------------------------------------------------------------------


def test_cgroup_pressure_hides_and_shows_the_pressure_files(tree: CgroupTree, io: FileIO) -> None:
    a = tree.mkdir(tree.root, "a")
    names = {"io.pressure", "memory.pressure", "cpu.pressure"}
    assert names <= {f.name for f in files_of(tree, a)}
    assert io.read(a, "cgroup.pressure") == "1\n"
    assert io.read(a, "cpu.pressure") == zero_pressure("cpu")
    for bad, err in (("2", OutOfRange), ("-1", OutOfRange), ("x", InvalidArgument)):
        with pytest.raises(err):
            io.write(a, "cgroup.pressure", bad)
    gen = a.psi_gen
    io.write(a, "cgroup.pressure", "0\n")
    assert io.read(a, "cgroup.pressure") == "0\n"
    assert all(lookup_file(tree, a, n) is None for n in names)
    assert a.psi_gen == gen + 1
    with pytest.raises(Exists):  # the hidden nodes still take their names
        tree.mkdir(a, "cpu.pressure")
    io.write(a, "cgroup.pressure", "0")  # no change: nothing happens
    assert a.psi_gen == gen + 1
    io.write(a, "cgroup.pressure", " 1 ")
    assert lookup_file(tree, a, "io.pressure") is not None
    assert tree.mkdir(tree.root, "b").psi_enabled  # new cgroups start with pressure on


def test_root_pressure_comes_from_the_host(tree: CgroupTree, io: FileIO) -> None:
    host = "some avg10=1.00 avg60=0.50 avg300=0.10 total=12345\nfull avg10=0.00 avg60=0.00 " \
           "avg300=0.00 total=0\n"
    tree.pressure = lambda res: host if res == "memory" else None
    assert io.read(tree.root, "memory.pressure") == host
    assert io.read(tree.root, "io.pressure") == zero_pressure("io")  # no figures: zeros
    a = tree.mkdir(tree.root, "a")
    assert io.read(a, "memory.pressure") == zero_pressure("memory")


def test_irq_pressure_only_where_the_kernel_has_it(tree: CgroupTree) -> None:
    assert lookup_file(tree, tree.root, "irq.pressure") is None
    tree.mkdir(tree.root, "irq.pressure")  # a free name then
    with_irq = CgroupTree(LATEST, irq_pressure=True)
    assert lookup_file(with_irq, with_irq.root, "irq.pressure") is not None
    assert zero_pressure("irq") == "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def test_no_pressure_files_on_a_kernel_without_psi() -> None:
    tree = CgroupTree(LATEST, psi=False, irq_pressure=True)
    a = tree.mkdir(tree.root, "a")
    for cg in (tree.root, a):
        assert not [f.name for f in files_of(tree, cg) if "pressure" in f.name]
    tree.mkdir(a, "cgroup.pressure")  # free names then


TRIGGERS = [
    ("some 150000 2000000", PsiTrigger("cpu", False, 150000, 2000000)),
    ("full 1 2000000", PsiTrigger("cpu", True, 1, 2000000)),
    ("some  1\t2000000\n", PsiTrigger("cpu", False, 1, 2000000)),  # any white space
    ("some1 2000000", PsiTrigger("cpu", False, 1, 2000000)),  # or none
    ("some 1 2000000 junk", PsiTrigger("cpu", False, 1, 2000000)),  # sscanf ignores the rest
    ("some 1 4296967296", PsiTrigger("cpu", False, 1, 2000000)),  # %u keeps 32 bits
    ("some 1 2000000\0x", PsiTrigger("cpu", False, 1, 2000000)),
    ("some 1 1000000", None), ("some 1 10000000", PsiTrigger("cpu", False, 1, 10000000)),
    ("some 1 10000001", None), ("some 0 2000000", None), ("some 2000001 2000000", None),
    ("some 1 0", None), (" some 1 2000000", None), ("SOME 1 2000000", None),
    ("some -1 2000000", None), ("some +1 2000000", None), ("some 1", None), ("1", None),
    ("some 1 0x1E8480", None),
]


@pytest.mark.parametrize(("text", "want"), TRIGGERS)
def test_trigger_parsing(text: str, want: PsiTrigger | None) -> None:
    if want is None:
        with pytest.raises(InvalidArgument):
            parse_trigger(text, "cpu", privileged=False)
    else:
        assert parse_trigger(text, "cpu", privileged=False) == want


def test_privileged_triggers_and_irq() -> None:
    assert parse_trigger("some 1 500000", "io", privileged=True).window_us == 500000
    assert parse_trigger("full 1 2000000", "irq", privileged=False).full
    with pytest.raises(InvalidArgument):
        parse_trigger("some 1 2000000", "irq", privileged=False)


def test_one_trigger_per_open_file(tree: CgroupTree, io: FileIO) -> None:
    a = tree.mkdir(tree.root, "a")
    ctx = FakeContext(tree, creds=Creds(1000, 1000, caps=0))
    with pytest.raises(InvalidArgument):  # without CAP_SYS_RESOURCE: 2 s windows
        io.write(a, "io.pressure", "some 1 1000000", ctx)
    assert ctx.psi_trigger is None
    io.write(a, "io.pressure", "some 1 2000000", ctx)
    assert ctx.psi_trigger == PsiTrigger("io", False, 1, 2000000)
    with pytest.raises(Busy):
        io.write(a, "io.pressure", "garbage", ctx)  # EBUSY comes first
    root = FakeContext(tree, creds=Creds(0, 0, caps=1 << CAP_SYS_RESOURCE))
    io.write(a, "memory.pressure", "some 1 1000000", root)


# -- processes: zombies, bound kernel threads, threads ------------------------------------


def test_zombie_pid_write_succeeds_without_moving_it(tree: CgroupTree, io: FileIO) -> None:
    a = tree.mkdir(tree.root, "a")
    ctx = FakeContext(tree, zombies={77: 77})
    assert io.write(a, "cgroup.procs", "77", ctx) == 2
    assert not tree.knows(77) and a.procs == {}
    with pytest.raises(NotSupported):  # a thread leaving its domain
        io.write(a, "cgroup.threads", "77", ctx)
    tree.write_subtree_control(tree.root, "+dmem")
    tree.write_subtree_control(a, "+dmem")
    with pytest.raises(Busy):  # the destination is vetted all the same
        io.write(a, "cgroup.procs", "77", ctx)
    with pytest.raises(NoProcess):
        io.write(a, "cgroup.procs", "78", ctx)


def test_bound_kernel_threads_cannot_move(tree: CgroupTree, io: FileIO) -> None:
    a = tree.mkdir(tree.root, "a")
    ctx = FakeContext(tree, processes={14: 14}, pinned={14})
    with pytest.raises(InvalidArgument):
        io.write(a, "cgroup.procs", "14", ctx)
    assert tree.cgroup_of(14) is tree.root


def test_threads_vet_the_destination_before_the_domain(tree: CgroupTree, io: FileIO) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    tree.mkdir(a, "b")
    io.write(a, "cgroup.subtree_control", "+dmem")
    ctx = FakeContext(tree, processes={5: 5})
    with pytest.raises(Busy):
        io.write(a, "cgroup.threads", "5", ctx)


def test_writes_stop_at_the_first_nul(tree: CgroupTree, io: FileIO) -> None:
    a = tree.mkdir(tree.root, "a")
    assert io.write(a, "cgroup.max.depth", b"3\0garbage") == 9
    assert io.read(a, "cgroup.max.depth") == "3\n"


# -- kernfs: order, times, xattrs ----------------------------------------------------------


def test_listing_order_is_kernfs_hash_order() -> None:
    # As os.listdir() returned them from a real cgroup2 directory (kernel 6.18).
    seen = ["cgroup.events", "io.pressure", "cgroup.procs", "cgroup.x",
            "cgroup.max.descendants", "cgroup.stat.local", "cpu.stat", "a", "memory.pressure",
            "cpu.pressure", "cgroup.type", "cgroup.stat", "cpu.stat.local", "cgroup.threads",
            "cgroup.kill", "zz", "cgroup.freeze", "cgroup.controllers", "b",
            "cgroup.subtree_control", "cgroup.max.depth", "cgroup.pressure"]
    assert listing_order(sorted(seen)) == seen
    assert 2 <= name_hash("é") < (1 << 31) - 1  # bytes >= 0x80 are sign-extended chars


def test_times_once_set_and_parent_touched() -> None:
    now = [100]
    tree = CgroupTree(LATEST, clock=lambda: now[0])
    a = tree.mkdir(tree.root, "a")
    tree.mkdir(a, "x")
    assert tree.stamp(a, "") is None  # no times of its own: the inode's show
    now[0] = 200
    assert tree.set_times(a, "", atime=5, mtime=6) == Stamp(5, 6, 200)
    now[0] = 300
    tree.mkdir(a, "y")
    assert tree.stamp(a, "") == Stamp(5, 300, 300)
    now[0] = 400
    assert tree.set_times(a, "cgroup.procs") == Stamp(400, 400, 400)  # chmod/chown: all now
    owned = tree.mkdir(tree.root, "owned", Creds(1000, 1000))
    assert tree.stamp(owned, "") == Stamp(400, 400, 400)  # cgroup_kn_set_ugid()


def test_xattr_rules() -> None:
    x = set_xattr({}, "user.a", b"1")
    x = set_xattr(x, "trusted.b", b"2")
    x = set_xattr(x, "security.c", b"3")
    assert list(x) == ["user.a", "trusted.b", "security.c"]
    for name, err in (("system.a", NotSupported), ("other.a", NotSupported),
                      ("user.", InvalidArgument), ("trusted.", InvalidArgument)):
        with pytest.raises(err):
            set_xattr(x, name, b"")
    full = {f"user.{i}": b"" for i in range(128)}
    with pytest.raises(NoSpace):
        set_xattr(full, "user.0", b"")  # counted before the old value goes
    assert set_xattr(full, "trusted.0", b"")
    big = {"user.a": b"x" * 65536, "user.b": b"x" * 65536}
    with pytest.raises(NoSpace) as exc:
        set_xattr(big, "user.a", b"y")
    assert exc.value.errno == errno.ENOSPC


def test_file_xattrs_times_and_modes_go_with_dmem_files(tree: CgroupTree) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    tree.set_xattrs(a, "dmem.max", {"user.k": b"v"})
    tree.set_xattrs(a, "cgroup.procs", {"user.k": b"p"})
    tree.set_times(a, "dmem.max", atime=1, mtime=2)
    tree.write_subtree_control(tree.root, "-dmem")
    tree.write_subtree_control(tree.root, "+dmem")
    assert tree.xattrs_of(a, "dmem.max") == {}
    assert tree.stamp(a, "dmem.max") is None
    assert tree.xattrs_of(a, "cgroup.procs") == {"user.k": b"p"}


def test_removed_cgroup_files_are_enodev(tree: CgroupTree, io: FileIO) -> None:
    a = tree.mkdir(tree.root, "a")
    row = io.row(a, "cpu.stat")
    tree.rmdir(a)
    with pytest.raises(NoDevice):
        read_file(tree, a, row)
