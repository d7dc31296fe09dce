"""`dmemfs status`: text, --json, --depth and a cgroup filter, on trees wide and deep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dmemfs.testing import Mounted
from tests.cli.conftest import dmemfs, one_line_error
from tests.conftest import REGION


def _tree(mnt: Mounted) -> None:
    """/a (dmem.max 1G) → /a/b → /a/b/c, and /x; dmem enabled by / and /a."""
    mnt.write("cgroup.subtree_control", "+dmem")
    for path in ("a", "a/b", "a/b/c", "x"):
        os.mkdir(os.path.join(mnt.cgroup, path))
    mnt.write("a/cgroup.subtree_control", "+dmem")
    mnt.write("a/dmem.max", f"{REGION} 1G")
    mnt.write("a/b/dmem.low", f"{REGION} 64M")


def _status(mnt: Mounted, *args: str) -> dict:
    res = dmemfs("status", mnt.path, *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_status_json_holds_the_numbers(mnt: Mounted) -> None:
    _tree(mnt)
    # A client in /a/b holds a 2 MiB BO while the status is taken.
    holder = subprocess.Popen(
        [sys.executable, "-m", "dmemfs", "exec", os.path.join(mnt.cgroup, "a", "b"), "--",
         sys.executable, "-c", "import sys; from dmemfs.client import XeDevice\n"
         f"gpu = XeDevice({os.path.join(mnt.dri, 'renderD128')!r})\n"
         "gpu.gem_create(2 << 20); print('ok', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ok\n"
        data = _status(mnt)
    finally:
        holder.communicate(timeout=30)
    assert data["mountpoint"] == mnt.path
    daemon = data["daemon"]
    assert (daemon["pid"], daemon["profile"], daemon["pinning"]) == (
        mnt.proc.pid, "7.3", "intended")
    assert daemon["state"] is None  # no --state
    with open(os.path.join(mnt.debug, "daemon")) as f:
        assert f"lineage {daemon['lineage']}\n" in f.read()
    assert data["regions"] == [REGION]
    assert data["devices"] == [{"pci": "0000:03:00.0", "regions": [
        {"name": "system", "dmem_region": None, "size": 64 << 30, "used": 0, "pinned": 0},
        {"name": "vram0", "dmem_region": REGION, "size": 16 << 30, "used": 2 << 20,
         "pinned": 0}], "stalls": {}}]
    by_path = {c["path"]: c for c in data["cgroups"]}
    assert list(by_path) == ["/", "/a", "/a/b", "/a/b/c", "/x"]  # pre-order, sorted
    assert by_path["/"]["regions"] == {REGION: {"current": 2 << 20, "pinned": 0}}
    assert by_path["/a"]["regions"][REGION] == {
        "current": 2 << 20, "peak": 2 << 20, "pinned": 0, "min": 0, "low": 0, "max": 1 << 30}
    assert by_path["/a/b"]["regions"][REGION]["current"] == 2 << 20
    assert by_path["/a/b"]["regions"][REGION]["low"] == 64 << 20
    assert by_path["/a/b"]["regions"][REGION]["max"] == "max"
    assert by_path["/a/b/c"] == {"path": "/a/b/c", "dmem": False, "evictions": 0,
                                 "stalls": {}, "regions": {}}


def test_status_filter_and_depth(mnt: Mounted) -> None:
    _tree(mnt)
    paths = [c["path"] for c in _status(mnt, "/a")["cgroups"]]
    assert paths == ["/a", "/a/b", "/a/b/c"]
    assert [c["path"] for c in _status(mnt, "a/b")["cgroups"]] == ["/a/b", "/a/b/c"]
    assert [c["path"] for c in _status(mnt, "--depth", "1")["cgroups"]] == ["/", "/a", "/x"]
    assert [c["path"] for c in _status(mnt, "/a", "--depth", "0")["cgroups"]] == ["/a"]
    text = dmemfs("status", mnt.path, "/a", "--depth", "1").stdout
    tree = text.split("limits min/low/max):\n", 1)[1]
    assert tree == (f"/a\n  {REGION}: current 0 B, peak 0 B, pinned 0 B, min 0 B low 0 B "
                    f"max 1 GiB\n  /a/b\n    {REGION}: current 0 B, peak 0 B, pinned 0 B, "
                    "min 0 B low 64 MiB max max\n")
    err = one_line_error(dmemfs("status", mnt.path, "/nope"))
    assert err == f"dmemfs: no cgroup /nope in {mnt.path}\n"


def test_status_walks_a_chain_of_1100_nested_cgroups(mnt: Mounted) -> None:
    """Regression: status died with a RecursionError traceback past ~990 levels."""
    depth = 1100
    fd = os.open(mnt.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("c", dir_fd=fd)
            child = os.open("c", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    res = dmemfs("status", mnt.path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.split("limits min/low/max):\n", 1)[1].splitlines()
    assert len(lines) == 2 + depth  # the root (and its region line), then one per cgroup
    deepest = "/c" * depth
    assert lines[-1] == "  " * depth + f"{deepest}  (dmem not enabled by the parent)"
    data = _status(mnt)
    assert len(data["cgroups"]) == depth + 1 and data["cgroups"][-1]["path"] == deepest
    assert [c["path"] for c in _status(mnt, "/c/c", "--depth", "2")["cgroups"]] == [
        "/c/c", "/c/c/c", "/c/c/c/c"]
