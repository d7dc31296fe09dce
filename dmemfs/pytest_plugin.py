"""pytest plugin: a ``dmemfs`` fixture that mounts a fresh dmemfs for a test.

Installed with the package (entry point ``pytest11``), so any project that has dmemfs
installed can write::

    def test_limit(dmemfs):
        dmemfs.root.write("cgroup.subtree_control", "+dmem")
        job = dmemfs.root.child("job")
        job.write("dmem.max", "drm/0000:03:00.0/vram0 1G")

Configure the mount with a marker, ``@pytest.mark.dmemfs(devices=[...], profile="6.14",
pinning="posted", args=[...])``, or with indirect parametrization,
``@pytest.mark.parametrize("dmemfs", [{"devices": [...]}], indirect=True)``. Tests using the
fixture are skipped with the reason when FUSE is not usable here (set
``DMEMFS_REQUIRE_FUSE=1`` to make that an error instead).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dmemfs.client import CgroupDir, XeDevice
from dmemfs.testing import Mounted, fuse_available, mounted


@dataclass
class DmemfsMount:
    """What the ``dmemfs`` fixture yields."""

    mounted: Mounted

    @property
    def path(self) -> str:
        """The mountpoint."""
        return self.mounted.path

    @property
    def cgroup_root(self) -> str:
        """``MOUNT/cgroup``: the cgroup2 root."""
        return self.mounted.cgroup

    @property
    def root(self) -> CgroupDir:
        return CgroupDir(self.mounted.cgroup)

    def device_path(self, index: int = 0) -> str:
        return os.path.join(self.mounted.dri, f"renderD{128 + index}")

    def device(self, index: int = 0) -> XeDevice:
        """A new DRM client of device ``index`` (close it, or use it in a ``with``)."""
        return XeDevice(self.device_path(index))

    def log(self) -> str:
        """The daemon's log so far."""
        return self.mounted.log()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dmemfs(devices=None, profile=None, pinning=None, args=None): configure the dmemfs "
        "fixture's mount",
    )


def _mount_args(options: dict[str, Any]) -> list[str]:
    unknown = set(options) - {"devices", "profile", "pinning", "args"}
    if unknown:
        raise pytest.UsageError(f"dmemfs fixture: unknown option(s) {sorted(unknown)}")
    args: list[str] = []
    for spec in options.get("devices") or []:
        args += ["--device", spec]
    if options.get("profile"):
        args += ["--profile", options["profile"]]
    if options.get("pinning"):
        args += ["--pinning", options["pinning"]]
    args += list(options.get("args") or [])
    return args


@pytest.fixture
def dmemfs(request: pytest.FixtureRequest) -> Iterator[DmemfsMount]:
    """A freshly mounted dmemfs, unmounted after the test whatever happens."""
    reason = fuse_available()
    if reason:
        if os.environ.get("DMEMFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"dmemfs: FUSE is required but unavailable: {reason}")
        pytest.skip(f"dmemfs: FUSE unavailable: {reason}")
    options: dict[str, Any] = {}
    marker = request.node.get_closest_marker("dmemfs")
    if marker is not None:
        options.update(marker.kwargs)
    if hasattr(request, "param"):
        options.update(request.param)
    with mounted(_mount_args(options)) as m:
        yield DmemfsMount(m)
