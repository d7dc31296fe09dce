"""The configuration of a cgroup tree as plain data, and back (``dmemfs mount --state``).

What is saved is what an administrator set: the cgroups, their owners and modes (of the
directories and of the files), ``subtree_control``, hierarchy limits, ``cgroup.freeze``,
``user.*`` xattrs and the dmem min/low/max per region name. Processes, charges and buffer
objects are runtime state and are not saved.
"""

from __future__ import annotations

import logging
from typing import Any

from dmemfs.engine import page_counter as pc
from dmemfs.engine.cgroup import Attr, Cgroup, CgroupTree, Creds
from dmemfs.profile import INT_MAX, PAGE_COUNTER_MAX

log = logging.getLogger(__name__)

VERSION = 1


def _attr(a: Attr) -> list[int]:
    return [a.uid, a.gid, a.mode]


def _cgroup(tree: CgroupTree, cg: Cgroup) -> dict[str, Any]:
    out: dict[str, Any] = {"attr": _attr(cg.attr), "files_owner": list(cg.files_owner),
                           "dmem_owner": list(cg.dmem_owner)}
    if cg.file_attrs:
        out["file_attrs"] = {name: _attr(a) for name, a in cg.file_attrs.items()}
    if cg.subtree_control:
        out["subtree_control"] = sorted(cg.subtree_control)
    if cg.max_depth != INT_MAX:
        out["max_depth"] = cg.max_depth
    if cg.max_descendants != INT_MAX:
        out["max_descendants"] = cg.max_descendants
    if cg.freeze:
        out["freeze"] = cg.freeze
    if cg.xattrs:
        out["xattrs"] = {name: value.hex() for name, value in cg.xattrs.items()}
    if cg.dmem_css is not None and cg.parent is not None:
        limits = {}
        for region, pool in cg.dmem_css.pools.items():
            c = pool.counter
            if (c.min, c.low, c.max) != (0, 0, PAGE_COUNTER_MAX):
                limits[region.name] = {"min": c.min, "low": c.low, "max": c.max}
        if limits:
            out["dmem"] = limits
    if cg.children:
        out["children"] = {name: _cgroup(tree, c) for name, c in cg.children.items()}
    return out


def snapshot(tree: CgroupTree) -> dict[str, Any]:
    return {"version": VERSION, "root": _cgroup(tree, tree.root)}


def restore(tree: CgroupTree, data: dict[str, Any]) -> None:
    """Rebuild a saved configuration into a fresh tree (same regions registered).

    Raises ValueError for data that is not a saved state; limits naming regions that are not
    registered now are skipped with a warning.
    """
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError("not a dmemfs state (unknown version)")
    _apply(tree, tree.root, data["root"])


def _apply(tree: CgroupTree, cg: Cgroup, d: dict[str, Any]) -> None:
    uid, gid, mode = d["attr"]
    tree.set_dir_attr(cg, uid=uid, gid=gid, mode=mode)
    cg.files_owner = (int(d["files_owner"][0]), int(d["files_owner"][1]))
    cg.freeze = int(d.get("freeze", 0))
    if "xattrs" in d:
        cg.xattrs = {name: bytes.fromhex(value) for name, value in d["xattrs"].items()}
    if cg.dmem_css is not None:
        cg.dmem_owner = (int(d["dmem_owner"][0]), int(d["dmem_owner"][1]))
        for name, limits in d.get("dmem", {}).items():
            region = tree.dmem.region_by_name(name)
            if region is None:
                log.warning("state: no region %s any more; its limits in %s are dropped",
                            name, cg.path)
                continue
            pool = tree.dmem.get_pool(cg.dmem_css, region)
            pc.set_min(pool.counter, int(limits["min"]))
            pc.set_low(pool.counter, int(limits["low"]))
            pc.set_max(pool.counter, int(limits["max"]))
    for name, (fuid, fgid, fmode) in d.get("file_attrs", {}).items():
        tree.set_file_attr(cg, name, uid=fuid, gid=fgid, mode=fmode)
    owner = Creds(*cg.dmem_owner)
    if d.get("subtree_control"):
        tree.write_subtree_control(cg, " ".join(f"+{n}" for n in d["subtree_control"]), owner)
    for name, child_data in d.get("children", {}).items():
        child_creator = Creds(*child_data["files_owner"])
        child = tree.mkdir(cg, name, child_creator, int(child_data["attr"][2]))
        _apply(tree, child, child_data)
    # Limits last: they may be below the number of cgroups they already hold (allowed).
    cg.max_depth = int(d.get("max_depth", INT_MAX))
    cg.max_descendants = int(d.get("max_descendants", INT_MAX))
