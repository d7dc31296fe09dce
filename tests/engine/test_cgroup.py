"""The cgroup v2 core: hierarchy, subtree_control, membership, permissions (docs/kernel-model.md
§14)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from dmemfs.engine.cgroup import ROOT_CREDS, Attr, CgroupTree, Creds, common_ancestor
from dmemfs.engine.dmem import Region
from dmemfs.engine.files import FILES, FILES_BY_NAME, files_of
from dmemfs.errors import (
    AccessDenied,
    Busy,
    Exists,
    InvalidArgument,
    NoDevice,
    NotFound,
    TryAgain,
)
from dmemfs.profile import INT_MAX

REGION = "drm/0000:03:00.0/vram0"
ALICE = Creds(1000, 1000)
BOB = Creds(2000, 2000)


def shape(tree: CgroupTree) -> list[tuple[str, int, int, int]]:
    """Every live cgroup with its counters, to prove a failed operation changed nothing."""
    return [
        (c.path, c.nr_descendants, c.nr_dying_descendants, c.nr_populated)
        for c in tree.root.walk()
    ]


# -- lookup --------------------------------------------------------------------------------


def test_lookup(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    assert tree.lookup("/") is tree.root
    assert tree.lookup("") is tree.root
    assert tree.lookup("/a/b") is b
    assert tree.lookup("a/b/") is b
    assert b.path == "/a/b" and tree.root.path == "/"
    assert (tree.root.level, a.level, b.level) == (0, 1, 2)
    with pytest.raises(NotFound) as exc:
        tree.lookup("/a/x")
    assert exc.value.errno == errno.ENOENT


# -- mkdir (docs/kernel-model.md §14) -------------------------------------------------------------


def test_mkdir_sets_owner_mode_and_counts(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a", ALICE, 0o40750)
    assert a.attr == Attr(1000, 1000, 0o750)
    assert a.files_owner == (1000, 1000)
    b = tree.mkdir(a, "b")
    assert b.attr == Attr(0, 0, 0o755)
    assert (tree.root.nr_descendants, a.nr_descendants, b.nr_descendants) == (2, 1, 0)
    assert list(tree.root.children) == ["a"] and a.children == {"b": b}
    assert b.parent is a and b.is_descendant_of(tree.root) and not a.is_descendant_of(b)


@pytest.mark.parametrize("name", ["a", "cgroup.procs", "cgroup.controllers", "dmem.capacity"])
def test_mkdir_existing_name_is_eexist(tree: CgroupTree, name: str) -> None:
    tree.mkdir(tree.root, "a")
    before = shape(tree)
    with pytest.raises(Exists) as exc:
        tree.mkdir(tree.root, name)
    assert exc.value.errno == errno.EEXIST
    assert shape(tree) == before


def test_mkdir_refuses_names_of_files_that_exist_here(tree: CgroupTree) -> None:
    # kernfs refuses a directory only where a file of that name exists (shown or hidden).
    for name in ("cgroup.procs", "cpu.stat", "cgroup.pressure", "dmem.current", "dmem.capacity"):
        with pytest.raises(Exists):
            tree.mkdir(tree.root, name)
    a = tree.mkdir(tree.root, "a")
    a.psi_enabled = False  # cgroup.pressure 0 hides the pressure files: their nodes stay
    for name in ("cgroup.kill", "cgroup.stat.local", "cpu.pressure", "io.pressure"):
        with pytest.raises(Exists):
            tree.mkdir(a, name)
    assert a.children == {} and tree.root.nr_descendants == 1


def test_mkdir_allows_names_of_files_absent_here(tree: CgroupTree) -> None:
    # Files of another controller, the root's only files in a child, files not on the root,
    # irq.pressure on a kernel without it, dmem files of a cgroup whose parent lacks dmem.
    for name in ("cgroup.kill", "cgroup.events", "dmem.max", "dmem.peak", "memory.max",
                 "irq.pressure"):
        tree.mkdir(tree.root, name)
    a = tree.mkdir(tree.root, "a")
    for name in ("dmem.capacity", "dmem.max", "cpu.max"):
        tree.mkdir(a, name)
    assert tree.root.nr_descendants == 10


def test_enabling_a_controller_over_a_cgroup_of_its_file_name_is_eexist(
    tree: CgroupTree,
) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    tree.mkdir(b, "dmem.low")
    with pytest.raises(Exists) as exc:
        tree.write_subtree_control(a, "+dmem")
    assert exc.value.errno == errno.EEXIST
    assert a.subtree_control == frozenset() and b.dmem_css is None  # nothing changed
    tree.rmdir(b.children["dmem.low"])
    tree.write_subtree_control(a, "+dmem")
    assert b.dmem_css is not None
    with pytest.raises(Exists):
        tree.mkdir(b, "dmem.low")


@pytest.mark.parametrize("name", ["a\nb", "\n", "a\n"])
def test_mkdir_newline_is_einval(tree: CgroupTree, name: str) -> None:
    before = shape(tree)
    with pytest.raises(InvalidArgument) as exc:
        tree.mkdir(tree.root, name)
    assert exc.value.errno == errno.EINVAL
    assert shape(tree) == before


def test_mkdir_in_dying_parent_is_enodev(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.rmdir(a)
    before = shape(tree)
    with pytest.raises(NoDevice) as exc:
        tree.mkdir(a, "x")
    assert exc.value.errno == errno.ENODEV
    assert a.children == {} and shape(tree) == before


def test_max_depth_zero_forbids_children(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.set_max_depth(a, 0)
    before = shape(tree)
    with pytest.raises(TryAgain) as exc:
        tree.mkdir(a, "b")
    assert exc.value.errno == errno.EAGAIN
    assert shape(tree) == before
    tree.mkdir(tree.root, "sibling")  # unaffected


def test_max_depth_one_allows_exactly_one_level(tree: CgroupTree) -> None:
    tree.set_max_depth(tree.root, 1)
    a = tree.mkdir(tree.root, "a")
    tree.mkdir(tree.root, "a2")
    with pytest.raises(TryAgain):
        tree.mkdir(a, "b")
    # An inner cgroup's limit counts from that cgroup (parent = level 0).
    tree.set_max_depth(tree.root, INT_MAX)
    tree.set_max_depth(a, 2)
    b = tree.mkdir(a, "b")
    c = tree.mkdir(b, "c")
    with pytest.raises(TryAgain):
        tree.mkdir(c, "d")
    assert c.children == {}


def test_max_descendants_counts_every_level(tree: CgroupTree) -> None:
    tree.set_max_descendants(tree.root, 2)
    a = tree.mkdir(tree.root, "a")
    tree.mkdir(a, "b")
    before = shape(tree)
    for parent in (tree.root, a):
        with pytest.raises(TryAgain) as exc:
            tree.mkdir(parent, "c")
        assert exc.value.errno == errno.EAGAIN
    assert shape(tree) == before


def test_max_descendants_zero_and_inner_limit(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.set_max_descendants(a, 0)
    with pytest.raises(TryAgain):
        tree.mkdir(a, "b")
    tree.set_max_descendants(a, 1)
    b = tree.mkdir(a, "b")
    with pytest.raises(TryAgain):
        tree.mkdir(b, "c")  # a's count includes grandchildren
    tree.mkdir(tree.root, "x")  # the root is unlimited


def test_max_descendants_counts_live_cgroups_only(tree: CgroupTree, region: Region) -> None:
    # A dying cgroup (kept alive by a dmem charge) no longer counts.
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    assert a.dmem_css is not None
    tree.dmem.try_charge(a.dmem_css, region, 1)
    tree.set_max_descendants(tree.root, 1)
    with pytest.raises(TryAgain):
        tree.mkdir(tree.root, "b")
    tree.rmdir(a)
    assert a.dying and tree.root.nr_dying_descendants == 1
    assert tree.root.nr_descendants == 0
    tree.mkdir(tree.root, "b")


def test_mkdir_after_rmdir_reuses_the_name(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.rmdir(a)
    a2 = tree.mkdir(tree.root, "a")
    assert a2 is not a and not a2.dying and tree.lookup("/a") is a2


# -- rmdir (docs/kernel-model.md §14) -------------------------------------------------------------


def test_rmdir_root_is_ebusy(tree: CgroupTree) -> None:
    with pytest.raises(Busy) as exc:
        tree.rmdir(tree.root)
    assert exc.value.errno == errno.EBUSY


def test_rmdir_with_children_is_ebusy(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.mkdir(a, "b")
    before = shape(tree)
    with pytest.raises(Busy) as exc:
        tree.rmdir(a)
    assert exc.value.errno == errno.EBUSY
    assert shape(tree) == before and not a.dying


def test_rmdir_populated_is_ebusy(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.migrate(10, a)
    before = shape(tree)
    with pytest.raises(Busy) as exc:
        tree.rmdir(a)
    assert exc.value.errno == errno.EBUSY
    assert shape(tree) == before and not a.dying
    tree.forget(10)  # the process exits
    tree.rmdir(a)
    assert a.dying


def test_rmdir_counts(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    tree.rmdir(b)
    assert b.dying and a.children == {}
    assert (tree.root.nr_descendants, a.nr_descendants) == (1, 0)
    # Without a dmem css nothing keeps it: released at once.
    assert (tree.root.nr_dying_descendants, a.nr_dying_descendants) == (0, 0)
    assert a.nr_dying_children == 0
    with pytest.raises(NotFound) as exc:
        tree.rmdir(b)  # already removed
    assert exc.value.errno == errno.ENOENT


# -- cgroup.subtree_control (docs/kernel-model.md §14) --------------------------------------------


def test_enable_needs_the_parent_to_offer_it(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    assert a.controllers() == frozenset()
    with pytest.raises(NotFound) as exc:
        tree.write_subtree_control(a, "+dmem")
    assert exc.value.errno == errno.ENOENT
    assert a.subtree_control == frozenset()
    tree.write_subtree_control(tree.root, "+dmem")
    assert a.controllers() == frozenset({"dmem"})
    tree.write_subtree_control(a, "+dmem")
    assert a.subtree_control == frozenset({"dmem"})


def test_disable_while_a_child_enables_is_ebusy(tree: CgroupTree) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    tree.write_subtree_control(a, "+dmem")
    b = tree.mkdir(a, "b")
    css_a, css_b = a.dmem_css, b.dmem_css
    with pytest.raises(Busy) as exc:
        tree.write_subtree_control(tree.root, "-dmem")
    assert exc.value.errno == errno.EBUSY
    assert tree.root.subtree_control == frozenset({"dmem"})
    assert a.dmem_css is css_a and b.dmem_css is css_b
    assert css_a is not None and css_a.online
    tree.write_subtree_control(a, "-dmem")
    tree.write_subtree_control(tree.root, "-dmem")
    assert a.dmem_css is None and tree.root.subtree_control == frozenset()


def test_enable_on_non_root_with_processes_is_ebusy(tree: CgroupTree) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    tree.migrate(10, a)
    with pytest.raises(Busy) as exc:
        tree.write_subtree_control(a, "+dmem")
    assert exc.value.errno == errno.EBUSY
    assert a.subtree_control == frozenset() and b.dmem_css is None
    # Processes only in a child are fine; "-dmem" (a no-op) is fine with processes.
    tree.write_subtree_control(a, "-dmem")
    tree.migrate(10, b)
    tree.write_subtree_control(a, "+dmem")
    assert b.dmem_css is not None


def test_root_with_processes_may_enable(tree: CgroupTree) -> None:
    tree.adopt(1, tree.root)
    tree.migrate(2, tree.root)
    assert tree.procs_of(tree.root) == [1, 2]
    tree.write_subtree_control(tree.root, "+dmem")
    assert tree.root.subtree_control == frozenset({"dmem"})


def test_later_token_wins(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.write_subtree_control(tree.root, "+dmem -dmem")
    assert tree.root.subtree_control == frozenset() and a.dmem_css is None
    tree.write_subtree_control(tree.root, "-dmem +dmem")
    assert tree.root.subtree_control == frozenset({"dmem"}) and a.dmem_css is not None
    tree.write_subtree_control(tree.root, "+dmem -dmem")
    assert tree.root.subtree_control == frozenset() and a.dmem_css is None


def test_already_enabled_or_disabled_is_ignored(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.write_subtree_control(tree.root, "-dmem")  # not enabled: ignored
    assert a.dmem_css is None
    tree.write_subtree_control(tree.root, "+dmem")
    css = a.dmem_css
    tree.write_subtree_control(tree.root, "+dmem", ALICE)  # already enabled: ignored
    assert a.dmem_css is css
    assert a.dmem_owner == (0, 0)
    assert a.nr_csses == 1


def test_subtree_control_parse_error_changes_nothing(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    for text in ("+dmem +memory", "dmem", "+dmem\t-dmem"):
        with pytest.raises(InvalidArgument):
            tree.write_subtree_control(tree.root, text)
    assert tree.root.subtree_control == frozenset() and a.dmem_css is None


def test_subtree_control_on_dying_cgroup_is_enodev(tree: CgroupTree) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    tree.write_subtree_control(tree.root, "-dmem")  # keep the rmdir free of dmem csses
    tree.rmdir(a)
    with pytest.raises(NoDevice) as exc:
        tree.write_subtree_control(a, "-dmem")
    assert exc.value.errno == errno.ENODEV


def test_enabling_creates_dmem_files_owned_by_the_writer(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a", ALICE)
    assert not [f for f in files_of(tree, a) if f.controller]
    tree.write_subtree_control(tree.root, "+dmem", BOB)
    names = {f.name for f in files_of(tree, a) if f.controller == "dmem"}
    assert names == {"dmem.current", "dmem.min", "dmem.low", "dmem.max", "dmem.peak",
                     "dmem.pinned"}
    for name in names:
        attr = tree.file_attr(a, name)
        assert (attr.uid, attr.gid) == (2000, 2000)
        assert attr.mode == FILES_BY_NAME[name].mode
    # Core files stay with the creator of the directory.
    assert (tree.file_attr(a, "cgroup.procs").uid, tree.file_attr(a, "cgroup.procs").gid) == (
        1000, 1000)
    # A child made later gets dmem files owned by its creator.
    b = tree.mkdir(tree.root, "b", ALICE)
    assert tree.file_attr(b, "dmem.max") == Attr(1000, 1000, 0o644)


def test_delegatee_enabling_owns_the_new_files(tree: CgroupTree) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    for name in ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        tree.set_file_attr(a, name, uid=1000, gid=1000)
    tree.set_dir_attr(a, uid=1000, gid=1000)
    b = tree.mkdir(a, "b", ALICE)
    tree.write_subtree_control(a, "+dmem", ALICE)
    assert tree.file_attr(b, "dmem.max") == Attr(1000, 1000, 0o644)
    # a's own resource files stay with the delegator.
    assert tree.file_attr(a, "dmem.max") == Attr(0, 0, 0o644)


def test_disabling_removes_files_and_offlines_the_css(tree: CgroupTree, region: Region,
                                                      io: Any) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    css = a.dmem_css
    assert css is not None
    io.write(a, "dmem.max", f"{REGION} 1G")
    io.write(a, "dmem.min", f"{REGION} 1M")
    pool = tree.dmem.try_charge(css, region, 4096)
    tree.write_subtree_control(tree.root, "-dmem")
    assert a.dmem_css is None and not css.online
    assert not [f for f in files_of(tree, a) if f.controller]
    assert (pool.counter.min, pool.counter.max) == (0, 2251799813685247)
    # The charge (now of a dying css) still counts at the root.
    assert io.read(tree.root, "dmem.current") == f"{REGION} 4096\n"
    assert io.stat(a)["nr_dying_subsys_dmem"] == 1
    assert io.stat(tree.root)["nr_dying_subsys_dmem"] == 1
    assert io.stat(tree.root)["nr_subsys_dmem"] == 1
    # New charges from /a go to the root's css.
    assert tree.dmem_css_of(a) is tree.dmem.root_css
    # Re-enabling makes a fresh css; the dying one lives on until uncharged.
    tree.write_subtree_control(tree.root, "+dmem")
    assert a.dmem_css is not None and a.dmem_css is not css and a.nr_csses == 2
    assert io.read(a, "dmem.current") == f"{REGION} 0\n"
    assert io.read(a, "dmem.max") == f"{REGION} max\n"
    tree.dmem.uncharge(pool, 4096)
    assert a.nr_csses == 1
    assert io.stat(a)["nr_dying_subsys_dmem"] == 0
    assert io.stat(tree.root)["nr_dying_subsys_dmem"] == 0


def test_rmdir_after_disable_waits_for_the_dying_css(tree: CgroupTree, region: Region,
                                                     io: Any) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    assert a.dmem_css is not None
    pool = tree.dmem.try_charge(a.dmem_css, region, 1)
    tree.write_subtree_control(tree.root, "-dmem")
    tree.rmdir(a)
    assert io.stat(tree.root)["nr_dying_descendants"] == 1
    tree.dmem.uncharge(pool, 1)
    s = io.stat(tree.root)
    assert (s["nr_dying_descendants"], s["nr_dying_subsys_dmem"]) == (0, 0)


def test_chowned_dmem_file_reset_when_files_are_recreated(tree: CgroupTree) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    tree.set_file_attr(a, "dmem.max", uid=1000)
    tree.set_file_attr(a, "cgroup.procs", uid=1000)
    tree.write_subtree_control(tree.root, "-dmem")
    tree.write_subtree_control(tree.root, "+dmem", BOB)
    assert tree.file_attr(a, "dmem.max") == Attr(2000, 2000, 0o644)
    assert tree.file_attr(a, "cgroup.procs").uid == 1000  # core file untouched


# -- processes (docs/kernel-model.md §14) ---------------------------------------------------------


def test_no_internal_process_rule_on_migrate(tree: CgroupTree) -> None:
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    tree.write_subtree_control(a, "+dmem")
    tree.adopt(10, tree.root)
    before = shape(tree)
    with pytest.raises(Busy) as exc:
        tree.migrate(10, a)
    assert exc.value.errno == errno.EBUSY
    assert tree.cgroup_of(10) is tree.root and shape(tree) == before
    tree.migrate(10, b)
    assert tree.cgroup_of(10) is b
    tree.migrate(10, tree.root)  # the root is exempt although it has controllers enabled
    assert tree.cgroup_of(10) is tree.root


def test_migrate_to_dying_cgroup_is_enodev(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.rmdir(a)
    with pytest.raises(NoDevice):
        tree.migrate(10, a)
    assert not tree.knows(10)


def test_populated_counts_through_the_hierarchy(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    c = tree.mkdir(b, "c")
    x = tree.mkdir(tree.root, "x")
    tree.migrate(1, c)
    tree.migrate(2, b)
    assert (a.nr_populated, b.nr_populated, c.nr_populated, x.nr_populated) == (2, 2, 1, 0)
    assert a.populated and c.populated and not x.populated
    tree.migrate(1, x)
    assert (a.nr_populated, b.nr_populated, c.nr_populated, x.nr_populated) == (1, 1, 0, 1)
    assert not c.populated
    tree.migrate(1, x)  # to where it is: nothing changes
    assert x.nr_populated == 1
    tree.forget(2)
    assert not a.populated and not b.populated
    tree.forget(2)  # unknown: harmless
    tree.migrate(1, tree.root)
    assert not x.populated
    assert tree.procs_of(tree.root) == [1]


def test_adopt_only_places_unknown_processes(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(tree.root, "b")
    tree.adopt(5, a)
    tree.adopt(5, b)
    assert tree.cgroup_of(5) is a and a.nr_populated == 1 and b.nr_populated == 0
    assert tree.cgroup_of(6) is tree.root and not tree.knows(6)


def test_procs_and_subtree_pids(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    tree.adopt(1, tree.root)
    tree.migrate(2, a)
    tree.migrate(3, b)
    tree.migrate(4, b)
    assert tree.procs_of(tree.root) == [1]
    assert tree.procs_of(a) == [2]
    assert tree.procs_of(b) == [3, 4]
    assert sorted(tree.subtree_pids(a)) == [2, 3, 4]
    assert sorted(tree.subtree_pids(tree.root)) == [1, 2, 3, 4]


def test_migration_permission(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    x = tree.mkdir(a, "x")
    y = tree.mkdir(a, "y")
    tree.migrate(10, x)
    tree.adopt(11, tree.root)
    # Root creds may always write.
    tree.check_migrate_permission(10, y, ROOT_CREDS)
    # Common ancestor /a: its cgroup.procs is root's, mode 0644 -> EACCES for alice.
    with pytest.raises(AccessDenied) as exc:
        tree.check_migrate_permission(10, y, ALICE)
    assert exc.value.errno == errno.EACCES
    # Delegation: chown /a and /a/cgroup.procs to alice.
    tree.set_dir_attr(a, uid=1000, gid=1000)
    tree.set_file_attr(a, "cgroup.procs", uid=1000, gid=1000)
    tree.check_migrate_permission(10, y, ALICE)
    with pytest.raises(AccessDenied):
        tree.check_migrate_permission(10, y, BOB)
    # From the root into the delegated subtree: the common ancestor is the root -> EACCES.
    with pytest.raises(AccessDenied):
        tree.check_migrate_permission(11, y, ALICE)
    # Group write on the root's cgroup.procs lets a group member in.
    tree.set_file_attr(tree.root, "cgroup.procs", gid=50, mode=0o664)
    tree.check_migrate_permission(11, y, Creds(3000, 3000, frozenset({50})))
    tree.check_migrate_permission(11, y, Creds(3000, 50))
    with pytest.raises(AccessDenied):
        tree.check_migrate_permission(11, y, ALICE)


def test_common_ancestor(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    x = tree.mkdir(a, "x")
    y = tree.mkdir(a, "y")
    z = tree.mkdir(tree.root, "z")
    assert common_ancestor(x, y) is a
    assert common_ancestor(x, a) is a
    assert common_ancestor(a, x) is a
    assert common_ancestor(x, z) is tree.root
    assert common_ancestor(x, x) is x


def test_attr_allows() -> None:
    attr = Attr(1000, 100, 0o640)
    owner, member, other = Creds(1000, 1), Creds(5, 100), Creds(6, 6)
    assert attr.allows(owner, 4) and attr.allows(owner, 2) and not attr.allows(owner, 1)
    assert attr.allows(member, 4) and not attr.allows(member, 2)
    assert not attr.allows(other, 4) and not attr.allows(other, 2)
    assert attr.allows(Creds(6, 6, frozenset({100})), 4)
    # uid 0 reads and writes anything but needs an x bit to execute.
    assert attr.allows(ROOT_CREDS, 4) and attr.allows(ROOT_CREDS, 2)
    assert not attr.allows(ROOT_CREDS, 1)
    # The owner class is used even when the group or others would allow more.
    assert not Attr(1000, 100, 0o077).allows(Creds(1000, 100), 4)


# -- freeze / kill ---------------------------------------------------------------------------


def test_freeze_is_inherited_in_frozen(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    x = tree.mkdir(tree.root, "x")
    tree.set_freeze(a, 1)
    assert tree.is_frozen(a) and tree.is_frozen(b) and not tree.is_frozen(x)
    assert io.read(b, "cgroup.freeze") == "0\n"  # its own setting
    assert io.read(b, "cgroup.events") == "populated 0\nfrozen 1\n"
    assert io.read(a, "cgroup.freeze") == "1\n"
    tree.set_freeze(b, 1)
    tree.set_freeze(a, 0)
    assert tree.is_frozen(b) and not tree.is_frozen(a)
    tree.set_freeze(b, 0)
    assert not tree.is_frozen(b)


def test_dying_cgroup_refuses_freeze_and_limits(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    tree.rmdir(a)
    for call in (lambda: tree.set_freeze(a, 1), lambda: tree.set_max_depth(a, 1),
                 lambda: tree.set_max_descendants(a, 1)):
        with pytest.raises(NoDevice):
            call()
    assert (a.freeze, a.max_depth, a.max_descendants) == (0, INT_MAX, INT_MAX)


def test_kill_targets_the_whole_subtree(tree: CgroupTree, io: Any) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    c = tree.mkdir(b, "c")
    x = tree.mkdir(tree.root, "x")
    tree.adopt(1, tree.root)
    for pid, cg in ((2, a), (3, b), (4, c), (5, c), (6, x)):
        tree.migrate(pid, cg)
    assert io.write(a, "cgroup.kill", "1") == 1
    assert len(io.ctx.killed) == 1
    assert sorted(io.ctx.killed[0]) == [2, 3, 4, 5]
    io.write(c, "cgroup.kill", "1\n")
    assert sorted(io.ctx.killed[1]) == [4, 5]
    # Killing only signals; the processes leave when the host reports them dead.
    assert tree.cgroup_of(2) is a


# -- owners and modes (docs/kernel-model.md §3, §14) ----------------------------------------------


EXPECTED_MODES = {
    "cgroup.controllers": 0o444, "cgroup.events": 0o444, "cgroup.freeze": 0o644,
    "cgroup.kill": 0o200, "cgroup.max.depth": 0o644, "cgroup.max.descendants": 0o644,
    "cgroup.procs": 0o644, "cgroup.stat": 0o444, "cgroup.subtree_control": 0o644,
    "cgroup.threads": 0o644, "cgroup.type": 0o644, "dmem.capacity": 0o444,
    "dmem.current": 0o444, "dmem.low": 0o644, "dmem.max": 0o644, "dmem.min": 0o644,
    "dmem.peak": 0o444, "dmem.pinned": 0o444, "cgroup.stat.local": 0o444, "cpu.stat": 0o444,
    "cpu.stat.local": 0o444, "cgroup.pressure": 0o644, "io.pressure": 0o644,
    "memory.pressure": 0o644, "cpu.pressure": 0o644, "irq.pressure": 0o644,
}


def test_file_modes_and_owners(tree: CgroupTree) -> None:
    assert {f.name: f.mode for f in FILES} == EXPECTED_MODES
    for f in FILES:
        assert not f.mode & 0o022  # nothing group- or world-writable
    tree.write_subtree_control(tree.root, "+dmem", BOB)
    a = tree.mkdir(tree.root, "a", ALICE)
    for f in files_of(tree, a):
        assert tree.file_attr(a, f.name) == Attr(1000, 1000, EXPECTED_MODES[f.name])
    for f in files_of(tree, tree.root):
        assert tree.file_attr(tree.root, f.name) == Attr(0, 0, EXPECTED_MODES[f.name])


def test_set_file_attr(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a")
    new = tree.set_file_attr(a, "cgroup.procs", uid=1000)
    assert new == Attr(1000, 0, 0o644) == tree.file_attr(a, "cgroup.procs")
    assert tree.set_file_attr(a, "cgroup.procs", gid=7) == Attr(1000, 7, 0o644)
    assert tree.set_file_attr(a, "cgroup.procs", mode=0o100660) == Attr(1000, 7, 0o660)
    assert tree.file_attr(a, "cgroup.threads") == Attr(0, 0, 0o644)  # other files untouched
    assert tree.file_attr(tree.root, "cgroup.procs") == Attr(0, 0, 0o644)


def test_set_dir_attr(tree: CgroupTree) -> None:
    a = tree.mkdir(tree.root, "a", mode=0o700)
    assert tree.set_dir_attr(a, uid=1000) == Attr(1000, 0, 0o700)
    assert tree.set_dir_attr(a, gid=5, mode=0o41777) == Attr(1000, 5, 0o1777)
    assert a.attr == Attr(1000, 5, 0o1777)
    assert tree.file_attr(a, "cgroup.procs") == Attr(0, 0, 0o644)  # files are separate


# -- cgroup.stat (docs/kernel-model.md §14) -------------------------------------------------------


def test_cgroup_stat_content(tree: CgroupTree, io: Any) -> None:
    assert io.read(tree.root, "cgroup.stat") == (
        "nr_descendants 0\nnr_subsys_dmem 1\nnr_dying_descendants 0\nnr_dying_subsys_dmem 0\n"
    )
    a = tree.mkdir(tree.root, "a")
    tree.mkdir(a, "b")
    assert io.read(tree.root, "cgroup.stat") == (
        "nr_descendants 2\nnr_subsys_dmem 1\nnr_dying_descendants 0\nnr_dying_subsys_dmem 0\n"
    )
    assert io.read(a, "cgroup.stat") == (  # no dmem css in /a
        "nr_descendants 1\nnr_subsys_dmem 0\nnr_dying_descendants 0\nnr_dying_subsys_dmem 0\n"
    )
    tree.write_subtree_control(tree.root, "+dmem")
    tree.write_subtree_control(a, "+dmem")
    tree.mkdir(tree.root, "c")
    assert io.stat(tree.root) == {"nr_descendants": 3, "nr_subsys_dmem": 4,
                                   "nr_dying_descendants": 0, "nr_dying_subsys_dmem": 0}
    assert io.stat(a)["nr_subsys_dmem"] == 2
