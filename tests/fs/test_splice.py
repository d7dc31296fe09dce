"""sendfile(2) and splice(2) readers get exact, fresh content (dmemfs/fs/splice.py).

On kernels that serve splice reads of direct-I/O files from the page cache (this host's
6.18 among them) these go through the page-cache path; on fixed kernels through read().
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmemfs.client import XeDevice
from dmemfs.fs.handles import LIVE_FILES
from dmemfs.testing import Mounted
from tests.conftest import REGION
from tests.interop.tools import require_tool


def sendfile_all(fd: int, offset: int | None = None) -> bytes:
    """Everything sendfile(2) gives from ``fd`` (from ``offset``, else the file position)."""
    r, w = os.pipe()
    out = b""
    try:
        while True:
            n = os.sendfile(w, fd, offset, 65536)
            if not n:
                return out
            out += os.read(r, n)
            if offset is not None:
                offset += n
    finally:
        os.close(r)
        os.close(w)


def splice_all(fd: int) -> bytes:
    r, w = os.pipe()
    out = b""
    try:
        while n := os.splice(fd, w, 65536):
            out += os.read(r, n)
        return out
    finally:
        os.close(r)
        os.close(w)


def spliced(path: str) -> tuple[bytes, bytes]:
    """(what sendfile gives on a fresh open, what read() gives right after on it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sendfile_all(fd), os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)


def readable_files(*dirs: str) -> list[str]:
    return [os.path.join(d, n) for d in dirs for n in sorted(os.listdir(d))
            if os.path.isfile(os.path.join(d, n))
            and os.stat(os.path.join(d, n)).st_mode & 0o444]


def test_every_readable_file_splices_exactly(mnt: Mounted, dmem_child: str) -> None:
    with open(os.path.join(dmem_child, "dmem.max"), "w") as f:
        f.write(f"{REGION} 1G")
    files = readable_files(mnt.cgroup, dmem_child, mnt.debug)
    assert len(files) > 20
    non_empty = 0
    for path in files:
        if path.endswith(("/requests", "/inspect", "/pid-cgroup")):
            continue  # change with every request, or answer writes
        got, expected = spliced(path)
        if os.path.basename(path) in LIVE_FILES:
            # Follow host processes and clocks: two reads may differ; both have content.
            assert bool(got) == bool(expected), path
        else:
            assert got == expected, path
        non_empty += bool(got)
    assert non_empty >= 20
    # Through splice(2) itself too, and when the file was opened for writing as well.
    fd = os.open(os.path.join(dmem_child, "dmem.max"), os.O_RDWR)
    try:
        assert splice_all(fd) == f"{REGION} 1073741824\n".encode()
    finally:
        os.close(fd)


def test_sendfile_is_never_stale(mnt: Mounted, dmem_child: str) -> None:
    path = os.path.join(dmem_child, "dmem.max")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sendfile_all(fd, 0) == f"{REGION} max\n".encode()
        for value, shown in (("1G", "1073741824"), ("4096", "4096"), ("max", "max"),
                             ("123456789", "123456789")):
            with open(path, "w") as f:  # O_TRUNC: the kernel sets the size to 0
                f.write(f"{REGION} {value}")
            # The same descriptor, at once: a change through the mount drops what the
            # previous sendfile left in the page cache before the write returns.
            assert sendfile_all(fd, 0) == f"{REGION} {shown}\n".encode()
            assert spliced(path)[0] == f"{REGION} {shown}\n".encode()
    finally:
        os.close(fd)


def test_cgroup_procs_follows_processes(mnt: Mounted, dmem_child: str) -> None:
    procs = os.path.join(dmem_child, "cgroup.procs")
    fd = os.open(procs, os.O_RDONLY)
    sleepers = []
    try:
        assert sendfile_all(fd, 0) == b""
        for _ in range(3):
            p = subprocess.Popen(["sleep", "60"])
            sleepers.append(p)
            with open(procs, "w") as f:
                f.write(str(p.pid))
            expected = "".join(f"{q.pid}\n" for q in sorted(sleepers, key=lambda q: q.pid))
            assert spliced(procs)[0] == expected.encode()  # grows: never cut to the old size
            assert sendfile_all(fd, 0) == expected.encode()
        sleepers[0].kill()
        sleepers[0].wait()
        expected = "".join(f"{q.pid}\n" for q in sorted(sleepers[1:], key=lambda q: q.pid))
        assert spliced(procs)[0] == expected.encode()
        time.sleep(0.2)  # a process exit is no change through the mount: the pages go soon
        assert sendfile_all(fd, 0) == expected.encode()
    finally:
        os.close(fd)
        for p in sleepers:
            p.kill()
            p.wait()


def _check_procs(procs: str, members: list[subprocess.Popen[bytes]]) -> None:
    expected = "".join(f"{p.pid}\n" for p in sorted(members, key=lambda p: p.pid))
    got, read = spliced(procs)
    assert read.decode() == expected, (len(read), len(expected))
    assert got.decode() == expected, (len(got), len(expected),
                                      set(expected.split()) ^ set(got.decode().split()))


def test_content_longer_than_a_page(mnt: Mounted) -> None:
    big = os.path.join(mnt.cgroup, "big")
    os.mkdir(big)
    procs = os.path.join(big, "cgroup.procs")
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        while len(Path(procs).read_bytes()) <= 4096 + 100:  # into a second page
            for _ in range(100):
                sleepers.append(subprocess.Popen(["sleep", "60"]))
                Path(procs).write_text(str(sleepers[-1].pid))
        _check_procs(procs, sleepers)
        for p in sleepers[100:]:
            p.kill()
            p.wait()
        _check_procs(procs, sleepers[:100])
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def test_device_replies_via_sendfile_and_splice(mnt: Mounted) -> None:
    fd = os.open(os.path.join(mnt.dri, "renderD128"), os.O_RDWR)
    try:
        for n in range(1, 4):
            os.write(fd, b"GEM_CREATE size=64M placement=vram0,system\n")
            assert sendfile_all(fd) == f"handle={n} size=67108864 placement=vram0 " \
                                       "pinned=0\n".encode()
        os.write(fd, b"BO_INFO handle=2\n")
        assert splice_all(fd) == b"handle=2 size=67108864 placement=vram0 pinned=0 " \
                                 b"cgroup=/ evictions=0 exported=0 imported=0 importers=0 " \
                                 b"p2p=0 stalls=0\n"
        os.write(fd, b"GEM_CLOSE handle=2\n")
        assert sendfile_all(fd) == b""  # no reply
        with pytest.raises(OSError):
            os.write(fd, b"GEM_CLOSE handle=2\n")  # a failure leaves its reason
        assert sendfile_all(fd).startswith(b"error=EINVAL reason=")
        os.write(fd, b"BO_INFO handle=1\n")
        assert os.read(fd, 4096).startswith(b"handle=1 ")  # read() still works in between
    finally:
        os.close(fd)


def test_shutil_copyfile(mnt: Mounted, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with XeDevice(os.path.join(mnt.dri, "renderD128")) as gpu:
        gpu.gem_create(1 << 20)
        shutil.copyfile(os.path.join(mnt.cgroup, "dmem.current"), tmp_path / "current")
        assert (tmp_path / "current").read_text() == f"{REGION} 1048576\n"
    shutil.copyfile(os.path.join(mnt.cgroup, "dmem.current"), tmp_path / "current")
    assert (tmp_path / "current").read_text() == f"{REGION} 0\n"


def test_busybox_cat(mnt: Mounted, dmem_child: str) -> None:
    busybox = require_tool("busybox", "busybox-static")

    def cat(*paths: str) -> str:
        res = subprocess.run([busybox, "cat", *paths], capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert cat(os.path.join(mnt.cgroup, "dmem.capacity")) == f"{REGION} 17179869184\n"
    subprocess.run(["sh", "-c", f'echo "{REGION} 2G" > {dmem_child}/dmem.max'], check=True)
    assert cat(os.path.join(dmem_child, "dmem.max")) == f"{REGION} 2147483648\n"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open(os.path.join(dmem_child, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        assert cat(os.path.join(dmem_child, "cgroup.procs")) == f"{sleeper.pid}\n"
    finally:
        sleeper.kill()
        sleeper.wait()
    # A device reply, read by busybox from the descriptor it shares with the writer.
    script = ("exec 3<>$0; for i in 1 2 3; do echo 'GEM_CREATE size=64M placement=vram0' >&3;"
              " $1 cat <&3; done")
    res = subprocess.run(["sh", "-c", script, os.path.join(mnt.dri, "renderD128"), busybox],
                         capture_output=True, text=True, timeout=30)
    assert res.stdout.splitlines() == [f"handle={n} size=67108864 placement=vram0 pinned=0"
                                       for n in (1, 2, 3)], res.stderr


@pytest.mark.dmemfs_args("--page-cache")
def test_page_cache_mode_process_files(mnt: Mounted) -> None:
    got, expected = spliced(os.path.join(mnt.cgroup, "cgroup.procs"))
    assert got == expected and f"{os.getpid()}\n".encode() in got
    got, expected = spliced(os.path.join(mnt.cgroup, "dmem.capacity"))
    assert got == expected == f"{REGION} 17179869184\n".encode()


def test_python_reads_are_unchanged(mnt: Mounted) -> None:
    """A one-page size changes nothing for read() users (Python sizes its buffer by it)."""
    code = f"print(open({os.path.join(mnt.cgroup, 'dmem.capacity')!r}).read(), end='')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout == f"{REGION} 17179869184\n"
    res = subprocess.run(["tail", "-n", "1", os.path.join(mnt.cgroup, "dmem.capacity")],
                         capture_output=True, text=True)
    assert res.stdout == f"{REGION} 17179869184\n"
