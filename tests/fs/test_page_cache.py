"""--page-cache: reads through the page cache, with fewer requests and nothing stale."""

from __future__ import annotations

import os
import subprocess

import pytest

from dmemfs.client import XeDevice
from dmemfs.testing import Mounted
from tests.conftest import REGION

pytestmark = pytest.mark.dmemfs_args("--page-cache")


def requests(mnt: Mounted) -> int:
    with open(os.path.join(mnt.debug, "requests")) as f:
        return sum(int(line.split()[1]) for line in f)


def cost(mnt: Mounted, fn) -> int:  # type: ignore[no-untyped-def]
    """Requests one call of ``fn`` costs (the counter read itself subtracted)."""
    fn()
    a = requests(mnt)
    b = requests(mnt)
    fn()
    return requests(mnt) - b - (b - a)


def test_request_counts(mnt: Mounted) -> None:
    path = os.path.join(mnt.cgroup, "dmem.current")

    def open_read_close() -> None:
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)

    assert cost(mnt, open_read_close) == 2  # OPEN, RELEASE: the data is in the page cache
    assert cost(mnt, lambda: subprocess.run(["cat", path], capture_output=True)) <= 3
    assert cost(mnt, lambda: os.stat(path)) == 0


def test_sizes_are_real_and_follow_the_content(mnt: Mounted) -> None:
    path = os.path.join(mnt.cgroup, "dmem.current")
    assert os.stat(path).st_size == len(f"{REGION} 0\n")
    with XeDevice(os.path.join(mnt.dri, "renderD128")) as gpu:
        gpu.gem_create(1 << 20)
        with open(path) as f:
            assert f.read() == f"{REGION} 1048576\n"
        assert os.stat(path).st_size == len(f"{REGION} 1048576\n")
    # Process files stay direct: one page, like every direct-I/O file (fs/splice.py).
    assert os.stat(os.path.join(mnt.cgroup, "cgroup.procs")).st_size == 4096


def test_held_descriptor_sees_every_change(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    fd_max = os.open(os.path.join(mnt.cgroup, "a", "dmem.max"), os.O_RDONLY)
    fd_stat = os.open(os.path.join(mnt.cgroup, "cgroup.stat"), os.O_RDONLY)
    try:
        assert os.pread(fd_max, 4096, 0) == f"{REGION} max\n".encode()
        for value in ("1G", "4096", "max", "0x10"):
            mnt.write("a/dmem.max", f"{REGION} {value}")
            assert os.pread(fd_max, 4096, 0).decode() == mnt.read("a/dmem.max")
        assert b"nr_descendants 1\n" in os.pread(fd_stat, 4096, 0)
        os.mkdir(os.path.join(mnt.cgroup, "b"))
        assert b"nr_descendants 2\n" in os.pread(fd_stat, 4096, 0)
        os.rmdir(os.path.join(mnt.cgroup, "b"))
        assert b"nr_descendants 1\n" in os.pread(fd_stat, 4096, 0)
    finally:
        os.close(fd_max)
        os.close(fd_stat)


def test_writes_still_one_command_each(mnt: Mounted, tmp_path) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    res = subprocess.run(["bash", "-c", f"echo '{REGION} 2M' > {mnt.cgroup}/a/dmem.max && "
                          f"cat {mnt.cgroup}/a/dmem.max"], capture_output=True, text=True)
    assert res.stdout == f"{REGION} 2097152\n", res.stderr
    res = subprocess.run(["bash", "-c", f"echo 'nope 1' > {mnt.cgroup}/a/dmem.max"],
                         capture_output=True, text=True)
    assert "Invalid argument" in res.stderr
    assert mnt.read("a/dmem.max") == f"{REGION} 2097152\n"
