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


@pytest.mark.parametrize("bad", [None, {}, {"version": 99, "root": {}}, [1, 2]])
def test_not_a_state(bad: object) -> None:
    with pytest.raises(ValueError):
        persist.restore(make_tree(), bad)  # type: ignore[arg-type]
