"""Through the kernel VFS: layout, formats, modes and the kernfs write rules."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from dmemfs.testing import Mounted, is_mounted
from tests.conftest import REGION


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_layout(mnt: Mounted) -> None:
    assert sorted(os.listdir(mnt.path)) == ["cgroup", "debug", "dev"]
    assert os.path.isdir(mnt.dri)
    root_files = set(os.listdir(mnt.cgroup))
    assert {"cgroup.procs", "cgroup.controllers", "dmem.capacity", "dmem.current",
            "dmem.pinned"} <= root_files
    assert not root_files & {"dmem.max", "dmem.min", "dmem.low", "dmem.peak", "cgroup.events",
                             "cgroup.freeze", "cgroup.kill", "cgroup.type"}


def test_root_formats(mnt: Mounted) -> None:
    assert mnt.read("cgroup.controllers") == "dmem\n"
    assert mnt.read("cgroup.subtree_control") == ""
    assert mnt.read("dmem.capacity") == f"{REGION} {16 << 30}\n"
    assert mnt.read("dmem.current") == f"{REGION} 0\n"
    assert mnt.read("cgroup.max.depth") == "max\n"
    assert mnt.read("cgroup.stat") == (
        "nr_descendants 0\nnr_subsys_dmem 1\nnr_dying_descendants 0\nnr_dying_subsys_dmem 0\n"
    )


def test_files_have_cgroupfs_modes_and_one_page_sizes(mnt: Mounted, dmem_child: str) -> None:
    modes = {n: stat.S_IMODE(os.stat(os.path.join(dmem_child, n)).st_mode)
             for n in os.listdir(dmem_child)}
    assert modes["cgroup.procs"] == 0o644
    assert modes["cgroup.events"] == 0o444
    assert modes["cgroup.kill"] == 0o200
    assert modes["dmem.max"] == 0o644
    assert modes["dmem.current"] == 0o444
    # cgroupfs reports 0; a readable file reports one page so that sendfile/splice readers
    # get its content on kernels that splice direct-I/O files from the page cache.
    sizes = {n: os.stat(os.path.join(dmem_child, n)).st_size for n in modes}
    assert sizes == {n: 0 if n == "cgroup.kill" else 4096 for n in modes}


def test_child_gets_dmem_files_only_with_plus_dmem(mnt: Mounted) -> None:
    os.mkdir(os.path.join(mnt.cgroup, "x"))
    assert not any(n.startswith("dmem.") for n in os.listdir(os.path.join(mnt.cgroup, "x")))
    mnt.write("cgroup.subtree_control", "+dmem")
    files = os.listdir(os.path.join(mnt.cgroup, "x"))
    assert {"dmem.current", "dmem.min", "dmem.low", "dmem.max", "dmem.peak",
            "dmem.pinned"} <= set(files)
    assert mnt.read("x/cgroup.controllers") == "dmem\n"
    mnt.write("cgroup.subtree_control", "-dmem")
    assert not os.path.exists(os.path.join(mnt.cgroup, "x", "dmem.max"))


def test_limit_write_read_back(mnt: Mounted, dmem_child: str) -> None:
    assert mnt.write("a/dmem.max", f"{REGION} 1G\n") == len(f"{REGION} 1G\n")
    assert mnt.read("a/dmem.max") == f"{REGION} 1073741824\n"
    mnt.write("a/dmem.max", f"{REGION} max")
    assert mnt.read("a/dmem.max") == f"{REGION} max\n"
    mnt.write("a/dmem.min", f"{REGION} 0x10")
    assert mnt.read("a/dmem.min") == f"{REGION} 16\n"
    mnt.write("a/dmem.low", f"{REGION} 010")
    assert mnt.read("a/dmem.low") == f"{REGION} 8\n"


@pytest.mark.parametrize("data", [
    f"{REGION} 1GB", f"{REGION}  1", "bogus 1", f"{REGION} -1", f"{REGION}",
    f"{REGION} 1\n{REGION} 2",
])
def test_bad_limit_writes_are_einval(mnt: Mounted, dmem_child: str, data: str) -> None:
    assert _errno(mnt.write, "a/dmem.max", data) == errno.EINVAL
    assert mnt.read("a/dmem.max") == f"{REGION} max\n"


def test_e2big_and_empty_write(mnt: Mounted, dmem_child: str) -> None:
    assert _errno(mnt.write, "a/dmem.max", " " * 4097) == errno.E2BIG
    assert mnt.write("a/dmem.max", f"{REGION} 5" + " " * (4096 - len(REGION) - 2)) == 4096
    assert mnt.read("a/dmem.max") == f"{REGION} 5\n"
    assert mnt.write("a/dmem.max", b"") == 0
    assert mnt.read("a/dmem.max") == f"{REGION} 5\n"


def test_shell_echo_shows_kernel_message(mnt: Mounted, dmem_child: str) -> None:
    res = subprocess.run(["bash", "-c", f"echo 'nope 1' > {dmem_child}/dmem.max"],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "Invalid argument" in res.stderr
    res = subprocess.run(["bash", "-c", f"echo '{REGION} 2M' > {dmem_child}/dmem.max && "
                          f"cat {dmem_child}/dmem.max"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{REGION} 2097152\n"


def test_open_flags_of_existing_files(mnt: Mounted, dmem_child: str) -> None:
    path = os.path.join(dmem_child, "dmem.max")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{REGION} 4096".encode())
    finally:
        os.close(fd)
    assert mnt.read("a/dmem.max") == f"{REGION} 4096\n"
    # No ->create in a kernfs directory: EACCES, for root too.
    new = os.path.join(dmem_child, "new")
    assert _errno(os.open, new, os.O_WRONLY | os.O_CREAT) == errno.EACCES
    assert _errno(os.mknod, os.path.join(dmem_child, "node"), 0o644) == errno.EACCES
    assert _errno(os.mkfifo, os.path.join(dmem_child, "fifo")) == errno.EPERM
    os.truncate(path, 0)  # a setattr(size=0) is accepted


def test_root_opens_any_file_for_any_access(mnt: Mounted, dmem_child: str) -> None:
    """cgroupfs has none of sysfs's extra open checks: root passes the permission check, and
    the read or write the file has no handler for fails with EINVAL (an empty write is 0)."""
    events = os.path.join(dmem_child, "cgroup.events")
    fd = os.open(events, os.O_RDWR)
    try:
        assert _errno(os.write, fd, b"1") == errno.EINVAL
        assert os.write(fd, b"") == 0
        assert os.pread(fd, 100, 0) == b"populated 0\nfrozen 0\n"
    finally:
        os.close(fd)
    fd = os.open(os.path.join(dmem_child, "cgroup.kill"), os.O_RDONLY)
    try:
        assert _errno(os.read, fd, 100) == errno.EINVAL
    finally:
        os.close(fd)
    os.chmod(events, 0)
    os.close(os.open(events, os.O_RDWR))  # still, after a chmod


def test_rename_unlink_mkdir_rmdir_errnos(mnt: Mounted, dmem_child: str) -> None:
    assert _errno(os.rename, dmem_child, dmem_child + "2") == errno.EPERM
    assert _errno(os.unlink, os.path.join(dmem_child, "dmem.max")) == errno.EPERM
    assert _errno(os.mkdir, dmem_child) == errno.EEXIST
    assert _errno(os.mkdir, os.path.join(mnt.cgroup, "bad\nname")) == errno.EINVAL
    assert _errno(os.rmdir, mnt.cgroup) == errno.EBUSY
    os.mkdir(os.path.join(dmem_child, "b"))
    assert _errno(os.rmdir, dmem_child) == errno.EBUSY
    os.rmdir(os.path.join(dmem_child, "b"))
    os.rmdir(dmem_child)
    assert not os.path.exists(dmem_child)


def test_open_handle_of_removed_cgroup(mnt: Mounted, dmem_child: str) -> None:
    fd = os.open(os.path.join(dmem_child, "dmem.max"), os.O_RDWR)
    try:
        os.rmdir(dmem_child)
        assert _errno(os.pread, fd, 100, 0) == errno.ENODEV
        assert _errno(os.write, fd, f"{REGION} 1".encode()) == errno.ENODEV
    finally:
        os.close(fd)


def test_reread_at_offset_zero_renders_fresh(mnt: Mounted, dmem_child: str) -> None:
    fd = os.open(os.path.join(dmem_child, "dmem.max"), os.O_RDWR)
    try:
        assert os.pread(fd, 100, 0) == f"{REGION} max\n".encode()
        os.write(fd, f"{REGION} 8192".encode())
        assert os.pread(fd, 100, 0) == f"{REGION} 8192\n".encode()
        assert os.pread(fd, 4, 7) == f"{REGION} 8192\n".encode()[7:11]
    finally:
        os.close(fd)


def test_sigterm_unmounts(mnt: Mounted) -> None:
    mnt.proc.terminate()
    assert mnt.proc.wait(timeout=20) == 0
    assert not is_mounted(mnt.path)
