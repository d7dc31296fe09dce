"""Tier 2: the pyfuse3 handlers called directly, without a mount (README "Development").

A fake request context stands in for the kernel's; errnos are asserted on ``FUSEError``.
``readdir`` needs a real kernel token and is covered by the mount tier.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from dmemfs.errors import Busy
from dmemfs.fs.operations import Operations
from dmemfs.mount import MountOptions, build

REGION = "drm/0000:03:00.0/vram0"
ROOT = pyfuse3.ROOT_INODE


@dataclass(frozen=True)
class Ctx:
    """Stands in for ``pyfuse3.RequestContext``."""

    uid: int = 0
    gid: int = 0
    pid: int = field(default_factory=os.getpid)
    umask: int = 0o022


CTX = Ctx()


@pytest.fixture
def ops() -> Operations:
    return build(MountOptions(mountpoint="/nonexistent"))


async def _errno(call: Awaitable[Any]) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await call
    return info.value.errno


async def _ino(ops: Operations, parent: int, name: str) -> int:
    return (await ops.lookup(parent, name.encode(), CTX)).st_ino


async def _mkdir(ops: Operations, parent: int, name: str, mode: int = 0o755) -> int:
    return (await ops.mkdir(parent, name.encode(), mode, CTX)).st_ino


async def _read(ops: Operations, parent: int, name: str) -> bytes:
    fh = (await ops.open(await _ino(ops, parent, name), os.O_RDONLY, CTX)).fh
    try:
        return await ops.read(fh, 0, 65536)
    finally:
        await ops.release(fh)


async def _write(ops: Operations, parent: int, name: str, data: bytes) -> int:
    fh = (await ops.open(await _ino(ops, parent, name), os.O_WRONLY, CTX)).fh
    try:
        return await ops.write(fh, 0, data)
    finally:
        await ops.release(fh)


def _fields(**kw: bool) -> Any:
    """Stands in for ``pyfuse3.SetattrFields`` (its attributes cannot be set from Python)."""
    names = ("update_uid", "update_gid", "update_mode", "update_size", "update_atime",
             "update_mtime", "update_ctime")
    return SimpleNamespace(**{n: kw.get(n, False) for n in names})


# -- lookup ------------------------------------------------------------------------------


async def test_lookup(ops: Operations) -> None:
    cg = await _ino(ops, ROOT, "cgroup")
    assert cg == ops.cgroup_root.ino
    assert await _ino(ops, cg, ".") == cg
    assert await _ino(ops, cg, "..") == ROOT
    assert await _ino(ops, ROOT, "..") == ROOT
    assert await _ino(ops, await _ino(ops, ROOT, "dev"), "dri") > ROOT
    assert await _errno(ops.lookup(ROOT, b"nope", CTX)) == errno.ENOENT
    assert await _errno(ops.lookup(cg, b"nope", CTX)) == errno.ENOENT
    # The root has no dmem.max and no cgroup.events (docs/kernel-model.md §3, §14).
    assert await _errno(ops.lookup(cg, b"dmem.max", CTX)) == errno.ENOENT
    assert await _errno(ops.lookup(cg, b"cgroup.events", CTX)) == errno.ENOENT
    procs = await _ino(ops, cg, "cgroup.procs")
    assert await _errno(ops.lookup(procs, b"x", CTX)) == errno.ENOTDIR
    assert await _errno(ops.lookup(987654, b"x", CTX)) == errno.ENOENT
    assert await _errno(ops.getattr(987654, CTX)) == errno.ENOENT
    attr = await ops.getattr(procs, CTX)
    assert stat.S_ISREG(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o644
    assert attr.st_size == 4096  # one page, so splice readers get the content (fs/splice.py)


# -- namespace operations -------------------------------------------------------------------


async def test_mkdir_reply_and_errnos(ops: Operations) -> None:
    cg = ops.cgroup_root.ino
    attr = await ops.mkdir(cg, b"a", 0o777, Ctx(uid=1000, gid=1001, umask=0o027))
    assert stat.S_ISDIR(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o750
    assert (attr.st_uid, attr.st_gid) == (1000, 1001)
    assert ops.inodes.get(attr.st_ino).lookups == 1
    assert await _ino(ops, cg, "a") == attr.st_ino
    procs = await ops.getattr(await _ino(ops, attr.st_ino, "cgroup.procs"), CTX)
    assert (procs.st_uid, procs.st_gid) == (1000, 1001)
    assert await _errno(ops.mkdir(cg, b"a", 0o755, CTX)) == errno.EEXIST
    assert await _errno(ops.mkdir(cg, b"cgroup.procs", 0o755, CTX)) == errno.EEXIST
    assert await _errno(ops.mkdir(cg, b"bad\nname", 0o755, CTX)) == errno.EINVAL
    assert await _errno(ops.mkdir(ROOT, b"x", 0o755, CTX)) == errno.EPERM
    proc_ino = await _ino(ops, cg, "cgroup.procs")
    assert await _errno(ops.mkdir(proc_ino, b"x", 0o755, CTX)) == errno.ENOTDIR
    assert await _errno(ops.mkdir(987654, b"x", 0o755, CTX)) == errno.ENOENT
    assert await _write(ops, attr.st_ino, "cgroup.max.depth", b"0") == 1
    assert await _errno(ops.mkdir(attr.st_ino, b"b", 0o755, CTX)) == errno.EAGAIN
    assert list(ops.tree.root.children) == ["a"]
    assert not ops.tree.lookup("/a").children


async def test_rmdir_errnos(ops: Operations) -> None:
    cg = ops.cgroup_root.ino
    a = await _mkdir(ops, cg, "a")
    await _mkdir(ops, a, "b")
    assert await _errno(ops.rmdir(cg, b"nope", CTX)) == errno.ENOENT
    assert await _errno(ops.rmdir(cg, b"cgroup.procs", CTX)) == errno.ENOTDIR
    assert await _errno(ops.rmdir(cg, b"a", CTX)) == errno.EBUSY
    assert await _errno(ops.rmdir(ROOT, b"cgroup", CTX)) == errno.EBUSY
    assert await _errno(ops.rmdir(ROOT, b"dev", CTX)) == errno.EPERM
    assert await _errno(ops.rmdir(ROOT, b"nope", CTX)) == errno.ENOENT
    await ops.rmdir(a, b"b", CTX)
    await ops.rmdir(cg, b"a", CTX)
    assert await _errno(ops.lookup(cg, b"a", CTX)) == errno.ENOENT
    # The kernel may still hold the removed directory's inode: it is dead, not reusable.
    assert ops.inodes.get(a) is not None
    assert await _errno(ops.mkdir(a, b"c", 0o755, CTX)) == errno.ENOENT
    assert await _errno(ops.rmdir(a, b"c", CTX)) == errno.ENOENT
    assert await _errno(ops.lookup(a, b"cgroup.procs", CTX)) == errno.ENOENT
    assert not ops.tree.root.children


async def test_rmdir_of_a_populated_cgroup_is_ebusy(ops: Operations) -> None:
    cg = ops.cgroup_root.ino
    a = await _mkdir(ops, cg, "a")
    # "0" moves the opener, this process (only inside this engine: nothing is mounted).
    assert await _write(ops, a, "cgroup.procs", b"0") == 1
    assert await _read(ops, a, "cgroup.procs") == f"{os.getpid()}\n".encode()
    assert await _read(ops, a, "cgroup.events") == b"populated 1\nfrozen 0\n"
    assert await _errno(ops.rmdir(cg, b"a", CTX)) == errno.EBUSY
    await _write(ops, cg, "cgroup.procs", str(os.getpid()).encode())
    assert await _read(ops, a, "cgroup.procs") == b""
    await ops.rmdir(cg, b"a", CTX)


async def test_other_namespace_operations_are_refused(ops: Operations) -> None:
    cg = ops.cgroup_root.ino
    a = await _mkdir(ops, cg, "a")
    assert await _errno(ops.rename(cg, b"a", cg, b"b", 0, CTX)) == errno.EPERM
    assert await _errno(ops.rename(a, b"cgroup.procs", a, b"x", 0, CTX)) == errno.EPERM
    assert await _errno(ops.unlink(a, b"cgroup.procs", CTX)) == errno.EPERM
    assert await _errno(ops.unlink(a, b"nope", CTX)) == errno.ENOENT
    # No ->create in kernfs: EACCES; other node types go through ->mknod: EPERM.
    assert await _errno(ops.create(a, b"new", 0o644, os.O_WRONLY | os.O_CREAT, CTX)) == errno.EACCES
    assert await _errno(ops.mknod(a, b"node", stat.S_IFREG | 0o644, 0, CTX)) == errno.EACCES
    assert await _errno(ops.mknod(a, b"fifo", stat.S_IFIFO | 0o644, 0, CTX)) == errno.EPERM
    assert await _errno(ops.symlink(a, b"link", b"cgroup.procs", CTX)) == errno.EPERM
    procs = await _ino(ops, a, "cgroup.procs")
    assert await _errno(ops.link(procs, a, b"hard", CTX)) == errno.EPERM
    assert list(ops.tree.root.children) == ["a"]
    assert await _errno(ops.lookup(a, b"new", CTX)) == errno.ENOENT


# -- open, read, write -----------------------------------------------------------------------


async def test_open_access_rules(ops: Operations) -> None:
    cg = ops.cgroup_root.ino
    await _write(ops, cg, "cgroup.subtree_control", b"+dmem")
    a = await _mkdir(ops, cg, "a")
    events = await _ino(ops, a, "cgroup.events")
    kill = await _ino(ops, a, "cgroup.kill")
    capacity = await _ino(ops, cg, "dmem.capacity")
    # The kernel checked the mode bits (default_permissions); cgroupfs adds no check of its
    # own: any access opens, the missing handler fails the read or write with EINVAL.
    for ino, flags in ((events, os.O_WRONLY), (events, os.O_RDWR), (kill, os.O_RDONLY),
                       (kill, os.O_RDWR), (capacity, os.O_WRONLY), (events, os.O_RDONLY),
                       (kill, os.O_WRONLY), (capacity, os.O_RDONLY)):
        info = await ops.open(ino, flags, CTX)
        assert info.direct_io and not info.keep_cache
        await ops.release(info.fh)
    fh = (await ops.open(kill, os.O_RDWR, CTX)).fh
    assert await _errno(ops.read(fh, 0, 100)) == errno.EINVAL
    await ops.release(fh)
    fh = (await ops.open(events, os.O_RDWR, CTX)).fh
    assert await _errno(ops.write(fh, 0, b"1")) == errno.EINVAL
    await ops.release(fh)
    assert await _errno(ops.open(a, os.O_RDONLY, CTX)) == errno.EISDIR
    assert await _errno(ops.open(987654, os.O_RDONLY, CTX)) == errno.ENOENT
    # chmod changes the mode the kernel checks; the handlers stay.
    dmem_max = await _ino(ops, a, "dmem.max")
    entry = pyfuse3.EntryAttributes()
    entry.st_mode = stat.S_IFREG | 0o200
    attr = await ops.setattr(dmem_max, entry, _fields(update_mode=True), None, CTX)
    assert stat.S_IMODE(attr.st_mode) == 0o200
    fh = (await ops.open(dmem_max, os.O_RDONLY, CTX)).fh
    assert await ops.read(fh, 0, 100) == f"{REGION} max\n".encode()
    await ops.release(fh)
    # The file of a removed cgroup that the kernel still holds: ENODEV.
    await ops.rmdir(cg, b"a", CTX)
    assert await _errno(ops.open(events, os.O_RDONLY, CTX)) == errno.ENODEV


async def test_setattr_chown_persists(ops: Operations) -> None:
    a = await _mkdir(ops, ops.cgroup_root.ino, "a")
    procs = await _ino(ops, a, "cgroup.procs")
    entry = pyfuse3.EntryAttributes()
    entry.st_uid, entry.st_gid = 1000, 1001
    await ops.setattr(procs, entry, _fields(update_uid=True, update_gid=True), None, CTX)
    attr = await ops.getattr(await _ino(ops, a, "cgroup.procs"), CTX)
    assert (attr.st_uid, attr.st_gid, stat.S_IMODE(attr.st_mode)) == (1000, 1001, 0o644)
    entry.st_uid, entry.st_mode = 7, stat.S_IFDIR | 0o700
    await ops.setattr(a, entry, _fields(update_uid=True, update_mode=True), None, CTX)
    attr = await ops.getattr(a, CTX)
    assert (attr.st_uid, attr.st_gid, stat.S_IMODE(attr.st_mode)) == (7, 0, 0o700)
    threads = await ops.getattr(await _ino(ops, a, "cgroup.threads"), CTX)
    assert (threads.st_uid, threads.st_gid) == (0, 0)


async def test_read_and_write_through_handles(ops: Operations) -> None:
    cg = ops.cgroup_root.ino
    assert await _write(ops, cg, "cgroup.subtree_control", b"+dmem") == 5
    a = await _mkdir(ops, cg, "a")
    fh = (await ops.open(await _ino(ops, a, "dmem.max"), os.O_RDWR, CTX)).fh
    assert await ops.read(fh, 0, 4096) == f"{REGION} max\n".encode()
    data = f"{REGION} 1G\n".encode()
    assert await ops.write(fh, 0, data) == len(data)
    assert await ops.read(fh, 0, 4096) == f"{REGION} 1073741824\n".encode()
    assert await ops.read(fh, 4, 4) == f"{REGION} 1073741824\n".encode()[4:8]
    assert await _errno(ops.write(fh, 0, b"bogus 1")) == errno.EINVAL
    assert await _errno(ops.write(fh, 0, f"{REGION} 1G\n{REGION} 2G".encode())) == errno.EINVAL
    assert await _errno(ops.write(fh, 0, b" " * 4097)) == errno.E2BIG
    assert await ops.write(fh, 0, b"") == 0
    assert await ops.read(fh, 0, 4096) == f"{REGION} 1073741824\n".encode()
    await ops.release(fh)
    assert await _errno(ops.read(fh, 0, 4096)) == errno.EBADF
    assert await _errno(ops.write(fh, 0, b"x")) == errno.EBADF
    assert await _read(ops, a, "cgroup.type") == b"domain\n"
    assert await _read(ops, cg, "cgroup.subtree_control") == b"dmem\n"


# -- lookup counts --------------------------------------------------------------------------


async def test_forget_drops_nodes_at_exactly_zero_lookups(ops: Operations) -> None:
    cg = ops.cgroup_root.ino
    a = await _mkdir(ops, cg, "a")  # mkdir counts as one lookup
    procs = await _ino(ops, a, "cgroup.procs")
    assert await _ino(ops, a, "cgroup.procs") == procs
    await ops.forget([(procs, 1)])
    assert ops.inodes.get(procs) is not None
    await ops.forget([(procs, 1)])
    assert ops.inodes.get(procs) is None
    assert await _errno(ops.getattr(procs, CTX)) == errno.ENOENT
    assert await _ino(ops, a, "cgroup.procs") != procs  # a new node
    # A removed cgroup's node lives until the kernel forgets it.
    await ops.rmdir(cg, b"a", CTX)
    assert ops.inodes.get(a) is not None
    await ops.forget([(a, 1)])
    assert ops.inodes.get(a) is None
    # Nodes of the fixed layout are never dropped.
    await ops.forget([(cg, 100), (ROOT, 100)])
    assert ops.inodes.get(cg) is ops.cgroup_root
    assert ops.inodes.get(ROOT) is ops.root
    await ops.forget([(987654, 1)])  # unknown inodes are ignored


# -- xattrs --------------------------------------------------------------------------------


async def test_xattrs(ops: Operations) -> None:
    a = await _mkdir(ops, ops.cgroup_root.ino, "a")
    procs = await _ino(ops, a, "cgroup.procs")
    await ops.setxattr(a, b"user.k", b"v", CTX)
    assert await ops.getxattr(a, b"user.k", CTX) == b"v"
    assert await ops.listxattr(a, CTX) == [b"user.k"]
    assert await _errno(ops.getxattr(a, b"user.missing", CTX)) == errno.ENODATA
    await ops.setxattr(a, b"trusted.k", b"t", CTX)
    await ops.setxattr(procs, b"user.k", b"p", CTX)
    await ops.setxattr(procs, b"security.k", b"s", CTX)
    assert await ops.getxattr(procs, b"user.k", CTX) == b"p"
    assert await ops.listxattr(procs, CTX) == [b"user.k", b"security.k"]
    assert await ops.listxattr(a, CTX) == [b"user.k", b"trusted.k"]
    assert await _errno(ops.setxattr(a, b"system.k", b"v", CTX)) == errno.EOPNOTSUPP
    assert await _errno(ops.setxattr(a, b"user.", b"v", CTX)) == errno.EINVAL
    assert await _errno(ops.setxattr(ROOT, b"user.k", b"v", CTX)) == errno.EOPNOTSUPP
    for i in range(127):
        await ops.setxattr(a, f"user.n{i}".encode(), b"", CTX)
    assert await _errno(ops.setxattr(a, b"user.more", b"", CTX)) == errno.ENOSPC
    await ops.setxattr(a, b"trusted.more", b"", CTX)  # only user.* is limited
    await ops.removexattr(a, b"user.k", CTX)
    assert await _errno(ops.removexattr(a, b"user.k", CTX)) == errno.ENODATA
    assert len(await ops.listxattr(a, CTX)) == 129


# -- the error boundary (README "Robustness") -----------------------------------------------------


@pytest.mark.daemon_log_ok
async def test_unexpected_exception_is_logged_and_eio(
    ops: Operations, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ops.tree, "mkdir", boom)
    with caplog.at_level(logging.ERROR, logger="dmemfs.fs.operations"):
        assert await _errno(ops.mkdir(ops.cgroup_root.ino, b"a", 0o755, CTX)) == errno.EIO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "dmemfs.fs.operations"
    assert "mkdir" in errors[0].getMessage()
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], RuntimeError)
    assert not ops.tree.root.children
    monkeypatch.undo()
    await _mkdir(ops, ops.cgroup_root.ino, "a")  # the filesystem goes on working
    assert list(ops.tree.root.children) == ["a"]


async def test_dmem_errors_map_to_their_errno_without_logging_errors(
    ops: Operations, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def busy(*args: object, **kwargs: object) -> None:
        raise Busy("busy")

    monkeypatch.setattr(ops.tree, "rmdir", busy)
    await _mkdir(ops, ops.cgroup_root.ino, "a")
    with caplog.at_level(logging.DEBUG, logger="dmemfs"):
        assert await _errno(ops.rmdir(ops.cgroup_root.ino, b"a", CTX)) == errno.EBUSY
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
