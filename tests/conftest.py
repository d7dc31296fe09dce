"""Fixtures shared by the mount tier: a real dmemfs daemon per test, always unmounted."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from dmemfs.testing import Mounted, fuse_available, mounted

REGION = "drm/0000:03:00.0/vram0"

#: Lines of the daemon log that fail a test unless it is marked ``daemon_log_ok``.
_BAD_LOG = re.compile(r"Traceback|\b(ERROR|CRITICAL|WARNING)\b")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "dmemfs_args(*args): extra `dmemfs mount` arguments for the mnt fixture"
    )
    config.addinivalue_line(
        "markers", "daemon_log_ok: the test expects warnings in the daemon log"
    )


def _require_fuse() -> None:
    reason = fuse_available()
    if reason:
        if os.environ.get("DMEMFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"FUSE is required here but unavailable: {reason}")
        pytest.skip(f"FUSE unavailable: {reason}")


@pytest.fixture
def mnt(request: pytest.FixtureRequest) -> Iterator[Mounted]:
    """A fresh dmemfs mount (default device unless ``dmemfs_args`` says otherwise)."""
    _require_fuse()
    marker = request.node.get_closest_marker("dmemfs_args")
    args = [str(a) for a in marker.args] if marker else []
    with mounted(args) as m:
        yield m
        bad = [line for line in m.log().splitlines() if _BAD_LOG.search(line)]
        if bad and request.node.get_closest_marker("daemon_log_ok") is None:
            pytest.fail("daemon log has warnings or errors:\n" + "\n".join(bad[:20]))


@pytest.fixture
def dmem_child(mnt: Mounted) -> str:
    """``cgroup/a`` with dmem enabled by the root; returns its path."""
    mnt.write("cgroup.subtree_control", "+dmem")
    path = os.path.join(mnt.cgroup, "a")
    os.mkdir(path)
    return path
