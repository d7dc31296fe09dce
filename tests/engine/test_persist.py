"""engine/persist.py: a saved configuration restores to an identical one."""

from __future__ import annotations

import json

import pytest

from dmemfs.engine import persist
from dmemfs.engine.cgroup import CgroupTree, Creds
from dmemfs.profile import LATEST

R0, R1 = "drm/0000:03:00.0/vram0", "drm/0000:03:00.0/vram1"


def make_tree(regions: tuple[str, ...] = (R0, R1)) -> CgroupTree:
    tree = CgroupTree(LATEST)
    for name in regions:
        tree.dmem.register_region(name, 1 << 30)
    return tree


def configured() -> CgroupTree:
    tree = make_tree()
    tree.write_subtree_control(tree.root, "+dmem")
    a = tree.mkdir(tree.root, "a", Creds(1000, 1000), 0o750)
    tree.write_subtree_control(a, "+dmem", Creds(1000, 1000))
    b = tree.mkdir(a, "b", Creds(1000, 1000))
    tree.mkdir(tree.root, "plain")
    assert a.dmem_css is not None and b.dmem_css is not None
    tree.dmem.write_limit(a.dmem_css, "max", f"{R0} 1G")
    tree.dmem.write_limit(a.dmem_css, "min", f"{R1} 4096")
    tree.dmem.write_limit(b.dmem_css, "low", f"{R0} 8192")
    tree.set_file_attr(a, "cgroup.procs", uid=2000)
    tree.set_file_attr(b, "dmem.max", mode=0o600)
    tree.set_max_descendants(a, 1)  # below what it holds: allowed, and restored last
    tree.set_freeze(b, 1)
    a.xattrs = {"user.x": b"\x00\xff"}
    return tree


def test_round_trip_is_identical() -> None:
    original = persist.snapshot(configured())
    data = json.loads(json.dumps(original))  # through JSON, as saved on disk
    restored = make_tree()
    persist.restore(restored, data)
    assert persist.snapshot(restored) == original
    b = restored.lookup("/a/b")
    assert restored.file_attr(b, "dmem.max").mode == 0o600
    assert b.attr.uid == 1000 and restored.is_frozen(b)


def test_missing_region_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = persist.snapshot(configured())
    restored = make_tree((R0,))
    persist.restore(restored, data)
    a = restored.lookup("/a")
    assert a.dmem_css is not None
    assert restored.dmem.show(a.dmem_css, "max") == f"{R0} 1073741824\n"
    assert "no region drm/0000:03:00.0/vram1 any more" in caplog.text


@pytest.mark.parametrize("bad", [None, {}, {"version": 99, "root": {}}, [1, 2], []])
def test_not_a_state(bad: object) -> None:
    with pytest.raises(ValueError):
        persist.restore(make_tree(), bad)  # type: ignore[arg-type]


def test_a_deep_chain_saves_and_restores_without_recursion() -> None:
    """Saving and restoring walk the tree iteratively (a recursive serialiser died at ~490
    levels, far below Python's default limit of 1000 frames)."""
    tree = make_tree()
    cg = tree.root
    for _ in range(5000):
        cg = tree.mkdir(cg, "c")
    records = json.loads(json.dumps(persist.snapshot(tree)))
    assert len(records) == 5001
    restored = make_tree()
    persist.restore(restored, records)
    assert restored.lookup("/c" * 5000).level == 5000


def test_the_first_format_is_read_iteratively() -> None:
    data: dict[str, object] = {"attr": [0, 0, 0o755], "files_owner": [0, 0],
                               "dmem_owner": [0, 0]}
    root = {"version": 1, "root": data}
    for _ in range(3000):
        child = {"attr": [0, 0, 0o755], "files_owner": [0, 0], "dmem_owner": [0, 0]}
        data["children"] = {"c": child}
        data = child
    restored = make_tree()
    persist.restore(restored, persist.from_nested(root))
    assert restored.lookup("/c" * 3000).level == 3000


def _root(**fields: object) -> dict[str, object]:
    return {"path": "/", "attr": [0, 0, 0o755], "files_owner": [0, 0], "dmem_owner": [0, 0],
            **fields}


def _child(**fields: object) -> dict[str, object]:
    return {**_root(), "path": "/a", **fields}


@pytest.mark.parametrize("records", [
    [_root(attr=[-1, 0, 0o755])],  # a negative uid
    [_root(attr=[1 << 40, 0, 0o755])],  # a uid beyond uid_t
    [_root(attr=[0, 0, 0o17777])],  # mode bits beyond 07777
    [_root(attr=[True, 0, 0o755])],  # not an integer
    [_root(files_owner=[0])],
    [_root(), _child(dmem_owner=[0, -5])],
    [_root(subtree_control=["dmem"]), _child(dmem={R0: {"min": -1, "low": 0, "max": 0}})],
    [_root(subtree_control=["dmem"]),
     _child(dmem={R0: {"min": 0, "low": 0, "max": 1 << 60}})],
    [_root(subtree_control=["dmem"]), _child(dmem={R0: {"min": 0, "low": 0}})],
    [_root(), _child(dmem={R0: {"min": 0, "low": 0, "max": 0}})],  # dmem not enabled
    [_root(dmem={R0: {"min": 0, "low": 0, "max": 0}})],  # the root has no limits
    [_root(), _child(max_depth=-5)],
    [_root(), _child(max_descendants=1 << 31)],
    [_root(), _child(freeze=7)],
    [_root(), _child(xattrs={"trusted.x": "00"})],
    [_root(), _child(xattrs={"user.x": "zz"})],
    [_root(), _child(xattrs={f"user.{i}": "00" for i in range(129)})],
    [_root(), _child(xattrs={"user.big": "00" * 65537})],
    [_root(), _child(file_attrs={"no.such.file": [0, 0, 0o644]})],
    [_root(), _child(subtree_control=["cpu"])],
    [_root(), _child(unknown=1)],
    [_root(), _child(path="/a/../b")],
    [_root(), _child(path="relative")],
    [_root(), _child(path="/x/a")],  # its parent is missing
    [_root(), _child(), _child()],  # twice
    [_child()],  # no root record first
    [_root(), _child(path="/cgroup.procs")],  # the tree refuses the name
])
def test_every_field_is_checked(records: list[object]) -> None:
    with pytest.raises(ValueError):
        persist.restore(make_tree(), json.loads(json.dumps(records)))


def test_limits_at_the_edges_are_accepted() -> None:
    records = [_root(subtree_control=["dmem"]),
               _child(attr=[(1 << 32) - 2, 0, 0o7777], max_depth=0,
                      xattrs={f"user.{i}": "" for i in range(128)},
                      dmem={R0: {"min": 0, "low": 0, "max": 2251799813685247}})]
    tree = make_tree()
    persist.restore(tree, records)
    assert tree.lookup("/a").attr.uid == (1 << 32) - 2
