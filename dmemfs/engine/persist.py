"""The configuration of a cgroup tree as plain data, and back (``dmemfs mount --state``).

What is saved is what an administrator set: the cgroups, their owners and modes (of the
directories and of the files), ``subtree_control``, hierarchy limits, ``cgroup.freeze``,
``user.*`` xattrs and the dmem min/low/max per region name. Processes, charges and buffer
objects are runtime state and are not saved.

The data is flat: one *record* per cgroup, named by its path, in an order where a parent
comes before its children (creation order). Nothing nests, so no depth of the tree makes
saving or restoring recurse. Every field of a record read back is checked against what the
kernel itself would accept (:func:`check_record`) before anything is applied.
"""

from __future__ import annotations

import logging
from typing import Any

from dmemfs.engine import page_counter as pc
from dmemfs.engine.cgroup import Attr, Cgroup, CgroupTree, Creds
from dmemfs.engine.files import FILE_NAMES
from dmemfs.errors import DmemError
from dmemfs.profile import (
    CONTROLLERS,
    INT_MAX,
    MAX_XATTR_BYTES,
    MAX_XATTRS,
    PAGE_COUNTER_MAX,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
)

log = logging.getLogger(__name__)

Record = dict[str, Any]

#: The largest uid/gid a chown can set (``(uid_t)-1`` means "unchanged").
ID_MAX = (1 << 32) - 2
#: NAME_MAX: the longest cgroup (directory) name.
NAME_MAX = 255
#: The longest region name a record may carry (dmem region names are short).
REGION_NAME_MAX = 255

_KEYS = frozenset({"path", "attr", "files_owner", "dmem_owner", "file_attrs",
                   "subtree_control", "max_depth", "max_descendants", "freeze", "xattrs",
                   "dmem"})


def _attr(a: Attr) -> list[int]:
    return [a.uid, a.gid, a.mode]


def record(tree: CgroupTree, cg: Cgroup) -> Record:
    """The saved configuration of one cgroup (its children are records of their own)."""
    out: Record = {"path": cg.path, "attr": _attr(cg.attr), "files_owner": list(cg.files_owner),
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
    return out


def snapshot(tree: CgroupTree) -> list[Record]:
    """Every live cgroup's record, parents first (pre-order, children in creation order)."""
    return [record(tree, cg) for cg in tree.root.walk()]


# -- checking what is read back -----------------------------------------------------------------


def _int(value: object, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer from {lo} to {hi}, not {value!r}")
    return value


def _ids(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"{what} must be [uid, gid]")
    return [_int(v, 0, ID_MAX, what) for v in value]


def _mode_attr(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"{what} must be [uid, gid, mode]")
    return [*_ids(value[:2], what), _int(value[2], 0, 0o7777, f"{what} mode")]


def check_path(path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"a cgroup path must start with '/', not {path!r}")
    if path == "/":
        return path
    for name in path[1:].split("/"):
        if (not name or name in (".", "..") or "\n" in name or "\0" in name
                or len(name.encode("utf-8", "surrogateescape")) > NAME_MAX):
            raise ValueError(f"invalid cgroup path {path!r}")
    return path


def check_record(rec: object) -> Record:
    """``rec`` if every field is one the kernel would accept; ValueError naming the first
    that is not."""
    if not isinstance(rec, dict):
        raise ValueError("a cgroup record must be an object")
    unknown = set(rec) - _KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    path = check_path(rec.get("path"))
    where = f"cgroup {path}"
    _mode_attr(rec.get("attr"), f"{where}: attr")
    _ids(rec.get("files_owner"), f"{where}: files_owner")
    _ids(rec.get("dmem_owner"), f"{where}: dmem_owner")
    file_attrs = rec.get("file_attrs", {})
    if not isinstance(file_attrs, dict):
        raise ValueError(f"{where}: file_attrs must be an object")
    for name, a in file_attrs.items():
        if name not in FILE_NAMES:
            raise ValueError(f"{where}: no interface file {name!r}")
        _mode_attr(a, f"{where}: file_attrs {name}")
    controllers = rec.get("subtree_control", [])
    if not isinstance(controllers, list) or not set(controllers) <= set(CONTROLLERS):
        raise ValueError(f"{where}: subtree_control must list controllers of {CONTROLLERS}")
    _int(rec.get("max_depth", INT_MAX), 0, INT_MAX, f"{where}: max_depth")
    _int(rec.get("max_descendants", INT_MAX), 0, INT_MAX, f"{where}: max_descendants")
    _int(rec.get("freeze", 0), 0, 1, f"{where}: freeze")
    _check_xattrs(rec.get("xattrs", {}), where)
    _check_dmem(rec.get("dmem", {}), where)
    return rec


def _check_xattrs(xattrs: object, where: str) -> None:
    if not isinstance(xattrs, dict):
        raise ValueError(f"{where}: xattrs must be an object")
    if len(xattrs) > MAX_XATTRS:
        raise ValueError(f"{where}: more than {MAX_XATTRS} xattrs")
    total = 0
    for name, value in xattrs.items():
        if (not name.startswith("user.") or name == "user."
                or len(name.encode("utf-8", "surrogateescape")) > XATTR_NAME_MAX):
            raise ValueError(f"{where}: xattr {name!r} is not a user.* name")
        if not isinstance(value, str):
            raise ValueError(f"{where}: xattr {name} must be hex")
        try:
            size = len(bytes.fromhex(value))
        except ValueError:
            raise ValueError(f"{where}: xattr {name} must be hex") from None
        if size > XATTR_SIZE_MAX:
            raise ValueError(f"{where}: xattr {name} is larger than {XATTR_SIZE_MAX} bytes")
        total += size
    if total > MAX_XATTR_BYTES:
        raise ValueError(f"{where}: xattr values exceed {MAX_XATTR_BYTES} bytes")


def _check_dmem(dmem: object, where: str) -> None:
    if not isinstance(dmem, dict):
        raise ValueError(f"{where}: dmem must be an object")
    for region, limits in dmem.items():
        if not isinstance(region, str) or not 0 < len(region) <= REGION_NAME_MAX:
            raise ValueError(f"{where}: bad region name {region!r}")
        if not isinstance(limits, dict) or set(limits) != {"min", "low", "max"}:
            raise ValueError(f"{where}: dmem {region} must have min, low and max")
        for key, value in limits.items():
            _int(value, 0, PAGE_COUNTER_MAX, f"{where}: dmem.{key} of {region}")


# -- the first format: one nested object -----------------------------------------------------


def from_nested(data: object) -> list[Record]:
    """Records from the first state format (version 1: each cgroup object holding its
    children), walked with an explicit stack."""
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(
            data.get("root"), dict):
        raise ValueError("not a dmemfs state (unknown version)")
    out: list[Record] = []
    stack: list[tuple[str, Any]] = [("/", data["root"])]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, dict):
            raise ValueError(f"cgroup {path} must be an object")
        rec = {k: v for k, v in node.items() if k != "children"}
        rec["path"] = path
        out.append(rec)
        children = node.get("children", {})
        if not isinstance(children, dict):
            raise ValueError(f"cgroup {path}: children must be an object")
        prefix = path.rstrip("/") + "/"
        stack.extend((prefix + name, child) for name, child in reversed(children.items()))
    return out


# -- restoring -------------------------------------------------------------------------------


def restore(tree: CgroupTree, records: list[object]) -> None:
    """Rebuild a saved configuration into a fresh tree (same regions registered).

    Every record is checked first; ValueError (naming the record) for data that is not a
    saved state, whose parent is missing or that the tree refuses. Limits naming regions that
    are not registered now are skipped with a warning.
    """
    if not isinstance(records, list):
        raise ValueError("a state is a list of cgroup records")
    checked = [check_record(r) for r in records]
    if not checked or checked[0]["path"] != "/":
        raise ValueError("a state starts with the root cgroup's record")
    cgroups: dict[str, Cgroup] = {}
    for rec in checked:
        path = rec["path"]
        if path in cgroups:
            raise ValueError(f"cgroup {path} appears twice")
        try:
            cgroups[path] = _apply(tree, cgroups, rec)
        except DmemError as e:  # the tree's own refusal, named
            raise ValueError(f"cgroup {path}: {e}") from None
    # Limits last: they may be below the number of cgroups they already hold (allowed).
    for rec in checked:
        cg = cgroups[rec["path"]]
        cg.max_depth = rec.get("max_depth", INT_MAX)
        cg.max_descendants = rec.get("max_descendants", INT_MAX)


def _apply(tree: CgroupTree, cgroups: dict[str, Cgroup], rec: Record) -> Cgroup:
    path = rec["path"]
    uid, gid, mode = rec["attr"]
    if path == "/":
        cg = tree.root
    else:
        parent_path, _, name = path.rpartition("/")
        parent = cgroups.get(parent_path or "/")
        if parent is None:
            raise ValueError(f"cgroup {path} comes before its parent")
        cg = tree.mkdir(parent, name, Creds(*rec["files_owner"]), mode)
    tree.set_dir_attr(cg, uid=uid, gid=gid, mode=mode)
    cg.files_owner = (rec["files_owner"][0], rec["files_owner"][1])
    cg.freeze = rec.get("freeze", 0)
    if rec.get("xattrs"):
        cg.xattrs = {name: bytes.fromhex(value) for name, value in rec["xattrs"].items()}
    if rec.get("dmem") and (cg.dmem_css is None or cg.parent is None):
        raise ValueError(f"cgroup {path} has dmem limits but no dmem.max files")
    if cg.dmem_css is not None:
        cg.dmem_owner = (rec["dmem_owner"][0], rec["dmem_owner"][1])
        _apply_limits(tree, cg, rec.get("dmem", {}))
    for name, (fuid, fgid, fmode) in rec.get("file_attrs", {}).items():
        tree.set_file_attr(cg, name, uid=fuid, gid=fgid, mode=fmode)
    if rec.get("subtree_control"):
        owner = Creds(*cg.dmem_owner)
        tree.write_subtree_control(cg, " ".join(f"+{n}" for n in rec["subtree_control"]), owner)
    return cg


def _apply_limits(tree: CgroupTree, cg: Cgroup, dmem: dict[str, dict[str, int]]) -> None:
    assert cg.dmem_css is not None
    for name, limits in dmem.items():
        region = tree.dmem.region_by_name(name)
        if region is None:
            log.warning("state: no region %s any more; its limits in %s are dropped",
                        name, cg.path)
            continue
        pool = tree.dmem.get_pool(cg.dmem_css, region)
        pc.set_min(pool.counter, limits["min"])
        pc.set_low(pool.counter, limits["low"])
        pc.set_max(pool.counter, limits["max"])
