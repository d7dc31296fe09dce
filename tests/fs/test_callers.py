"""Who makes a write: the process the FUSE request names, not the one that opened the file.

The kernel's cgroup and device code act on ``current``: ``0`` written to cgroup.procs moves
the writing task, and a GPU allocation is charged to the cgroup of the task that makes the
ioctl. FUSE hands pyfuse3's ``write()`` neither; dmemfs reads both from the request header
(dmemfs/fs/request.py). These tests share one open file between a parent and a child.
"""

from __future__ import annotations

import os

import pytest

from dmemfs.client import XeDevice
from dmemfs.testing import Mounted

REGION = "drm/0000:03:00.0/vram0"
MiB = 1 << 20


def _cgroup_of(mnt: Mounted, pid: int) -> str:
    fd = os.open(os.path.join(mnt.debug, "pid-cgroup"), os.O_RDWR)
    try:
        os.write(fd, str(pid).encode())
        return os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)


def _in_child(fn: object) -> int:
    """Run ``fn()`` in a forked child; its exit status (0 when fn returned normally)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()  # type: ignore[operator]
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_daemon_reads_callers_from_requests(mnt: Mounted) -> None:
    with open(os.path.join(mnt.debug, "daemon")) as f:
        assert "callers request\n" in f.read()


def test_zero_in_cgroup_procs_moves_the_writer_not_the_opener(mnt: Mounted) -> None:
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    fd = os.open(os.path.join(mnt.cgroup, "a", "cgroup.procs"), os.O_WRONLY)
    done_r, done_w = os.pipe()  # child -> parent: "I have written"
    go_r, go_w = os.pipe()  # parent -> child: "you may exit"
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(fd, b"0")
                os.write(done_w, b"x")
                os.read(go_r, 1)
            finally:
                os._exit(0)
        assert os.read(done_r, 1) == b"x"
        assert _cgroup_of(mnt, pid) == "0::/a"
        assert _cgroup_of(mnt, os.getpid()) == "0::/"  # the opener stayed where it was
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
    finally:
        for f in (fd, done_r, done_w, go_r, go_w):
            os.close(f)


@pytest.mark.dmemfs_args("--device", "xe,pci=0000:03:00.0,vram0=64M")
def test_a_shared_device_file_charges_the_calling_process(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "b"))
    gpu = XeDevice(os.path.join(mnt.dri, "renderD128"))
    try:
        def child() -> None:
            mnt.write("b/cgroup.procs", "0")
            bo = gpu.gem_create(MiB, ("vram0",))
            assert gpu.bo_info(bo.handle)["cgroup"] == "/b"

        assert _in_child(child) == 0
        assert mnt.read("b/dmem.current") == f"{REGION} {MiB}\n"
        bo = gpu.gem_create(2 * MiB, ("vram0",))  # the opener, in the root cgroup
        assert gpu.bo_info(bo.handle)["cgroup"] == "/"
        assert mnt.read("b/dmem.current") == f"{REGION} {MiB}\n"
    finally:
        gpu.close()
