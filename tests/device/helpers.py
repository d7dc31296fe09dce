"""Helpers for the device tests that drive a real mount (one device at 0000:03:00.0)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dmemfs.client import XeDevice
from dmemfs.testing import Mounted

PCI = "0000:03:00.0"
REGION = f"drm/{PCI}/vram0"

#: The BO_INFO fields of a BO that is not shared through a dma-buf.
UNSHARED = {"exported": "0", "imported": "0", "importers": "0", "p2p": "0", "stalls": "0"}


def dev(mnt: Mounted) -> str:
    return os.path.join(mnt.dri, "renderD128")


def value(mnt: Mounted, rel: str, name: str = "dmem.current", region: str = REGION) -> int:
    """One region's line of a dmem file of cgroup ``rel`` ("" is the root)."""
    text = mnt.read(os.path.join(rel, name))
    values = dict(line.split() for line in text.splitlines())
    return int(values[region]) if values[region] != "max" else -1


def set_limit(mnt: Mounted, rel: str, name: str, limit: str, region: str = REGION) -> None:
    mnt.write(f"{rel}/{name}", f"{region} {limit}")


def cgroups(mnt: Mounted, *paths: str) -> None:
    """mkdir each path, enabling dmem in every parent first."""
    for path in paths:
        parent = os.path.dirname(path)
        controls = mnt.read(os.path.join(parent, "cgroup.subtree_control"))
        if "dmem" not in controls:
            mnt.write(os.path.join(parent, "cgroup.subtree_control"), "+dmem")
        os.mkdir(os.path.join(mnt.cgroup, path))


def join(mnt: Mounted, rel: str) -> None:
    """Move this test process into cgroup ``rel`` ("" = the root)."""
    mnt.write(os.path.join(rel, "cgroup.procs"), str(os.getpid()))


@contextlib.contextmanager
def inside(mnt: Mounted, rel: str) -> Iterator[None]:
    """Run the body with this process in cgroup ``rel``; always back to the root afterwards."""
    join(mnt, rel)
    try:
        yield
    finally:
        join(mnt, "")


@pytest.fixture
def gpu(mnt: Mounted) -> Iterator[XeDevice]:
    """A client opened by this process (in the root cgroup); the process ends in the root."""
    device = XeDevice(dev(mnt))
    try:
        yield device
    finally:
        device.close()
        join(mnt, "")


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno is not None
    return info.value.errno


def placement(gpu: XeDevice, handle: int) -> str:
    return gpu.bo_info(handle)["placement"]


def view(mnt: Mounted, name: str) -> str:
    with open(os.path.join(mnt.debug, "dri", PCI, name)) as f:
        return f.read()


def bos(mnt: Mounted) -> list[dict[str, str]]:
    lines = view(mnt, "bos").splitlines()
    keys = lines[0].split()
    assert keys == ["pid", "handle", "size", "placement", "pinned", "evictions", "cgroup"]
    return [dict(zip(keys, line.split(), strict=True)) for line in lines[1:]]


def evictions(mnt: Mounted) -> list[tuple[str, str, str]]:
    """(handle, victim cgroup, reason) of each logged eviction, oldest first."""
    out = []
    for line in view(mnt, "evictions").splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        out.append((fields["handle"], line.split(" cgroup=")[1].split()[0],
                    line[line.index("(") + 1 : -1]))
    return out


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
