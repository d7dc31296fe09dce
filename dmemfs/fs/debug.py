"""``MOUNT/debug/``: the daemon's own files (not the devices' views, see device/views.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

from dmemfs.engine.cgroup import Attr, CgroupTree
from dmemfs.engine.files import files_of, lookup_file, read_file
from dmemfs.errors import DmemError, InvalidArgument
from dmemfs.fs import request
from dmemfs.fs.bpf import add_bpf_files
from dmemfs.fs.handles import Opener, QueryHandle, TextHandle
from dmemfs.fs.inodes import SpecialFile
from dmemfs.fs.operations import REQUESTS, Operations
from dmemfs.procs import HostProcesses
from dmemfs.profile import Profile


def daemon_info(profile: Profile, mountpoint: str) -> str:
    # "callers request": each write is attributed to the process the FUSE request names;
    # "callers opener": the request could not be read, the opener stands in.
    callers = "request" if request.available() else "opener"
    return (f"pid {os.getpid()}\nprofile {profile.name}\npinning {profile.pinning}\n"
            f"mountpoint {os.path.abspath(mountpoint)}\ncallers {callers}\n")


def pid_cgroup(host: HostProcesses, text: str) -> str:
    """``/proc/PID/cgroup`` as dmemfs sees it: ``0::/path``."""
    try:
        pid = int(text.strip())
    except ValueError:
        raise InvalidArgument(f"not a pid: {text.strip()!r}") from None
    return f"0::{host.cgroup_of(pid).path}\n"


def inspect(tree: CgroupTree, text: str) -> str:
    """The engine's own answer for a cgroup path, bypassing every kernel cache:
    ``stat PATH`` (type, mode, owner), ``list PATH`` (entries), ``read PATH`` (content)."""
    verb, _, rel = text.strip().partition(" ")
    *dirs, last = ["", *[p for p in rel.split("/") if p]]
    try:
        parent = tree.lookup("/".join(dirs))
    except DmemError:
        return "missing\n"
    child = parent.children.get(last) if last else parent
    row = lookup_file(tree, parent, last) if last else None
    if verb == "stat":
        if child is not None:
            a = child.attr
            return f"dir mode={a.mode:o} uid={a.uid} gid={a.gid}\n"
        if row is not None:
            a = tree.file_attr(parent, last)
            return f"file mode={a.mode:o} uid={a.uid} gid={a.gid}\n"
        return "missing\n"
    if verb == "list" and child is not None:
        names = [r.name for r in files_of(tree, child)] + list(child.children)
        return "".join(f"{n}\n" for n in sorted(names))
    if verb == "read" and row is not None:
        return read_file(tree, parent, row).decode("latin-1")
    raise InvalidArgument(f"inspect: cannot {verb!r} {rel!r}")


def requests() -> str:
    return "".join(f"{name} {n}\n" for name, n in sorted(REQUESTS.items()))


def add_debug_files(ops: Operations, profile: Profile, mountpoint: str) -> None:
    def text(render: Callable[[], str]) -> SpecialFile:
        return SpecialFile(Attr(0, 0, 0o444), lambda o, f: TextHandle(o, render))

    def query(mode: int, answer: Callable[[Opener, str], str]) -> SpecialFile:
        return SpecialFile(Attr(0, 0, mode), lambda o, f: QueryHandle(o, answer))

    def daemon() -> str:
        state = ops.state_status() + "\n" if ops.state_status is not None else ""
        return daemon_info(profile, mountpoint) + f"lineage {ops.host.mode}\n" + state

    ops.add_file(ops.debug, "daemon", text(daemon))
    ops.add_file(ops.debug, "requests", text(requests))
    ops.add_file(ops.debug, "inspect", query(0o600, lambda o, t: inspect(ops.tree, t)))
    ops.add_file(ops.debug, "pid-cgroup", query(0o666, lambda o, t: pid_cgroup(ops.host, t)))
    add_bpf_files(ops)
