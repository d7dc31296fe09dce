"""The 6.14 profile (docs/kernel-model.md §3, §4): no ``dmem.peak``, multi-line limit writes
applied in order up to the first bad line; the latest profile takes one region per write. Region
order follows the ``--device`` order (README "Command line")."""

from __future__ import annotations

import errno
import os

import pytest

from dmemfs.testing import Mounted

GiB = 1 << 30
MiB = 1 << 20
PCI = "0000:03:00.0"
TWO_REGIONS = f"xe,pci={PCI},vram0=8G,vram1=8G"
R0 = f"drm/{PCI}/vram0"
R1 = f"drm/{PCI}/vram1"
LIMIT_FILES = ("dmem.min", "dmem.low", "dmem.max")
DEFAULTS = {"dmem.min": "0", "dmem.low": "0", "dmem.max": "max"}

pytest_614 = pytest.mark.dmemfs_args("--profile", "6.14", "--device", TWO_REGIONS)


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def _child(mnt: Mounted) -> str:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    return os.path.join(mnt.cgroup, "a")


@pytest.mark.dmemfs_args("--profile", "6.14")
def test_614_has_no_peak(mnt: Mounted) -> None:
    child = _child(mnt)
    files = set(os.listdir(child))
    assert {"dmem.current", "dmem.min", "dmem.low", "dmem.max", "dmem.pinned"} <= files
    assert "dmem.peak" not in files
    assert _errno(os.open, os.path.join(child, "dmem.peak"), os.O_RDONLY) == errno.ENOENT
    assert "dmem.peak" not in os.listdir(mnt.cgroup)
    assert mnt.read("a/dmem.current") == f"drm/{PCI}/vram0 0\n"


def test_latest_has_peak(mnt: Mounted) -> None:
    child = _child(mnt)
    assert "dmem.peak" in os.listdir(child)
    assert mnt.read("a/dmem.peak") == f"drm/{PCI}/vram0 0\n"


@pytest_614
def test_614_multi_line_writes_apply_in_order(mnt: Mounted) -> None:
    _child(mnt)
    assert mnt.read("dmem.capacity") == f"{R0} {8 * GiB}\n{R1} {8 * GiB}\n"
    for name in LIMIT_FILES:
        data = f"{R0} 1G\n{R1} 2G\n"
        assert mnt.write(f"a/{name}", data) == len(data)
        assert mnt.read(f"a/{name}") == f"{R0} {GiB}\n{R1} {2 * GiB}\n", name
        # Same region twice: the later line wins; blank lines and white space are skipped.
        data = f"\n  {R1} 4M \n\n{R1} 0x100000\n{R0}\tmax\n"
        assert mnt.write(f"a/{name}", data) == len(data)
        assert mnt.read(f"a/{name}") == f"{R0} max\n{R1} {MiB}\n", name


@pytest_614
@pytest.mark.parametrize("bad_line", ["bogus 7", f"{R1} 1GB", f"{R1}", f"{R1}  5", f"{R1} -1"])
def test_614_first_bad_line_fails_after_earlier_lines(mnt: Mounted, bad_line: str) -> None:
    _child(mnt)
    for name in LIMIT_FILES:
        data = f"{R0} 3M\n{bad_line}\n{R1} 5M\n"
        assert _errno(mnt.write, f"a/{name}", data) == errno.EINVAL, name
        # The line before the bad one is applied, the one after it is not.
        assert mnt.read(f"a/{name}") == f"{R0} {3 * MiB}\n{R1} {DEFAULTS[name]}\n", name


@pytest.mark.dmemfs_args("--device", TWO_REGIONS)
def test_latest_rejects_multi_line_writes_with_nothing_applied(mnt: Mounted) -> None:
    _child(mnt)
    for name in LIMIT_FILES:
        untouched = f"{R0} {DEFAULTS[name]}\n{R1} {DEFAULTS[name]}\n"
        for data in (f"{R0} 1G\n{R1} 2G\n", f"{R0} 3M\nbogus 7\n{R1} 5M\n", f"{R0} 1G\n\n1"):
            assert _errno(mnt.write, f"a/{name}", data) == errno.EINVAL, (name, data)
            assert mnt.read(f"a/{name}") == untouched, (name, data)
        # One line with trailing white space is fine.
        data = f"{R1} 2G\n\n"
        assert mnt.write(f"a/{name}", data) == len(data)
        assert mnt.read(f"a/{name}") == f"{R0} {DEFAULTS[name]}\n{R1} {2 * GiB}\n"


@pytest.mark.dmemfs_args("--device", "xe,pci=0000:0a:00.0,vram0=4G",
                         "--device", "xe,pci=0000:03:00.0,vram0=8G,vram1=2G")
def test_two_devices_list_regions_in_device_order(mnt: Mounted) -> None:
    regions = ["drm/0000:0a:00.0/vram0", "drm/0000:03:00.0/vram0", "drm/0000:03:00.0/vram1"]
    sizes = [4 * GiB, 8 * GiB, 2 * GiB]
    assert mnt.read("dmem.capacity") == "".join(
        f"{r} {s}\n" for r, s in zip(regions, sizes, strict=True))
    assert mnt.read("dmem.current") == "".join(f"{r} 0\n" for r in regions)
    _child(mnt)
    assert mnt.read("a/dmem.max") == "".join(f"{r} max\n" for r in regions)
    mnt.write("a/dmem.min", f"{regions[2]} 64K")
    assert mnt.read("a/dmem.min") == f"{regions[0]} 0\n{regions[1]} 0\n{regions[2]} 65536\n"
