"""readdir called directly, with pyfuse3.readdir_reply replaced by a recorder: which entries
it lists, and which lookup references it counts (the kernel takes none for "." and "..",
see fuse_direntplus_link in fs/fuse/readdir.c)."""

from __future__ import annotations

from typing import Any

import pyfuse3
import pytest

from dmemfs.fs.operations import Operations
from dmemfs.mount import MountOptions, build
from tests.ops.test_operations import CTX, _mkdir


@pytest.fixture
def ops() -> Operations:
    return build(MountOptions(mountpoint="/nonexistent"))


async def _list(ops: Operations, ino: int, monkeypatch: pytest.MonkeyPatch,
                room: int = 1000) -> list[tuple[str, int, int]]:
    """(name, inode, next offset) of each entry readdir replies with, until ``room`` ends."""
    replies: list[tuple[str, int, int]] = []

    def reply(token: Any, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(replies) >= room:
            return False
        replies.append((name.decode(), attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(ino, CTX)
    try:
        await ops.readdir(fh, 0, None)
    finally:
        await ops.releasedir(fh)
    return replies


async def test_dots_come_first_and_count_no_lookup(ops: Operations,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root_cg = ops.cgroup_root.ino
    job = await _mkdir(ops, root_cg, "job")
    node = ops.inodes.get(job)
    parent = ops.inodes.get(root_cg)
    assert node is not None and parent is not None
    before = (node.lookups, parent.lookups)
    entries = await _list(ops, job, monkeypatch)
    assert entries[0] == (".", job, 1) and entries[1] == ("..", root_cg, 2)
    assert [e[2] for e in entries] == list(range(1, len(entries) + 1))
    assert (node.lookups, parent.lookups) == before
    files = [ops.inodes.get(ino) for _, ino, _ in entries[2:]]
    assert files and all(f is not None and f.lookups == 1 for f in files)
    # The mount's root is its own parent.
    assert (await _list(ops, pyfuse3.ROOT_INODE, monkeypatch))[:2] == [
        (".", pyfuse3.ROOT_INODE, 1), ("..", pyfuse3.ROOT_INODE, 2)]


async def test_a_full_buffer_counts_only_what_was_replied(
        ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    job = await _mkdir(ops, ops.cgroup_root.ino, "job")
    node = ops.inodes.get(job)
    assert node is not None
    before = node.lookups
    assert [e[0] for e in await _list(ops, job, monkeypatch, room=1)] == ["."]
    assert node.lookups == before
