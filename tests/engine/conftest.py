"""Shared fixtures for the engine unit tests (pure Python: no trio, no FUSE, no host processes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from dmemfs.engine.cgroup import ROOT_CREDS, Cgroup, CgroupTree, Creds
from dmemfs.engine.dmem import Region
from dmemfs.engine.files import CgroupFile, lookup_file, read_file, write_file
from dmemfs.errors import NoProcess
from dmemfs.profile import LATEST, Profile

REGION = "drm/0000:03:00.0/vram0"
GiB = 1 << 30
REGION_SIZE = 16 * GiB


@dataclass
class FakeContext:
    """A :class:`dmemfs.engine.files.WriteContext`: the opener of a file and the host it sees.

    ``processes`` maps every existing thread or process id to its thread-group id; ids missing
    from it do not exist (``resolve_pid`` raises ESRCH). ``killed`` records each ``kill`` call.
    """

    tree: CgroupTree
    pid: int = 4242
    creds: Creds = ROOT_CREDS
    nonblock: bool = False
    processes: dict[int, int] = field(default_factory=dict)
    killed: list[list[int]] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    #: Exited, not yet reaped processes: id → thread group.
    zombies: dict[int, int] = field(default_factory=dict)
    #: Processes the kernel refuses to move (bound kernel threads).
    pinned: set[int] = field(default_factory=set)
    psi_trigger: Any = None

    def zombie(self, pid: int) -> int | None:
        return self.zombies.get(pid)

    def migratable(self, pid: int) -> bool:
        return pid not in self.pinned

    def resolve_pid(self, pid: int) -> int:
        self.resolved.append(pid)
        tgid = self.processes.get(pid)
        if tgid is None:
            raise NoProcess(f"no process {pid}")
        # A process the engine has not seen yet lives in the root cgroup.
        self.tree.adopt(tgid, self.tree.root)
        return tgid

    def kill(self, pids: list[int]) -> None:
        self.killed.append(list(pids))


class FileIO:
    """Read and write interface files of one tree the way the FUSE layer will."""

    def __init__(self, tree: CgroupTree) -> None:
        self.tree = tree
        self.ctx = FakeContext(tree)

    def row(self, cg: Cgroup, name: str) -> CgroupFile:
        row = lookup_file(self.tree, cg, name)
        assert row is not None, f"{cg.path}/{name} does not exist"
        return row

    def read(self, cg: Cgroup, name: str) -> str:
        return read_file(self.tree, cg, self.row(cg, name)).decode("latin-1")

    def stat(self, cg: Cgroup) -> dict[str, int]:
        """``cgroup.stat`` as a dict."""
        lines = self.read(cg, "cgroup.stat").splitlines()
        return {key: int(value) for key, value in (line.split(" ") for line in lines)}

    def write(
        self, cg: Cgroup, name: str, data: str | bytes, ctx: FakeContext | None = None
    ) -> int:
        raw = data.encode("latin-1") if isinstance(data, str) else data
        return write_file(self.tree, cg, self.row(cg, name), raw, ctx or self.ctx)


def build_tree(
    profile: Profile = LATEST, regions: tuple[tuple[str, int], ...] = ((REGION, REGION_SIZE),)
) -> CgroupTree:
    tree = CgroupTree(profile)
    for name, size in regions:
        tree.dmem.register_region(name, size)
    return tree


@pytest.fixture
def make_tree() -> Callable[..., CgroupTree]:
    return build_tree


@pytest.fixture
def tree() -> CgroupTree:
    """The latest profile with one 16 GiB region ``drm/0000:03:00.0/vram0``."""
    return build_tree()


@pytest.fixture
def region(tree: CgroupTree) -> Region:
    return tree.dmem.regions[0]


@pytest.fixture
def io(tree: CgroupTree) -> FileIO:
    return FileIO(tree)


@pytest.fixture
def make_io() -> Callable[[CgroupTree], FileIO]:
    return FileIO


@pytest.fixture
def make_ctx() -> type[FakeContext]:
    return FakeContext
