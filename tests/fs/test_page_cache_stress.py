"""--page-cache under concurrent readers and writers: no deadlock, nothing stale afterwards.

Readers (open+read+close, held descriptors re-read with pread, stat) and writers (limit
writes that change the content and its length, mkdir/rmdir) run in separate processes at
once. A daemon that waits on a page lock from its request loop while a reader holds that
lock waiting for the loop never finishes; the test then aborts the FUSE connection (so
nothing stays blocked) and fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from dmemfs.testing import Mounted
from tests.conftest import REGION

pytestmark = pytest.mark.dmemfs_args("--page-cache")

SECONDS = 4.0
#: A worker still running this long after its deadline is stuck in the kernel.
GRACE = 25.0

WORKER = r"""
import os, sys, time
role, cg, seconds, region = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
files = [os.path.join(cg, "a", n) for n in ("dmem.max", "dmem.current", "dmem.min")]
files += [os.path.join(cg, n) for n in ("cgroup.stat", "cgroup.subtree_control")]
end = time.monotonic() + seconds
n = 0
held = [os.open(f, os.O_RDONLY) for f in files] if role == "held" else []
while time.monotonic() < end:
    f = files[n % len(files)]
    if role == "reader":
        fd = os.open(f, os.O_RDONLY)
        while os.read(fd, 65536):
            pass
        os.close(fd)
    elif role == "held":
        os.pread(held[n % len(held)], 65536, 0)
    elif role == "stat":
        os.stat(f)
    elif role == "writer":
        value = ("1G", "4096", "max", "123456789")[n % 4]
        fd = os.open(os.path.join(cg, "a", "dmem.max"), os.O_WRONLY)
        os.write(fd, f"{region} {value}".encode())
        os.close(fd)
    elif role == "mkdir":
        d = os.path.join(cg, f"s{os.getpid()}")
        os.mkdir(d)
        os.rmdir(d)
    n += 1
print(n)
"""

ROLES = ["reader", "reader", "held", "held", "stat", "writer", "writer", "mkdir"]


def _connection(mnt: Mounted) -> int:
    """The FUSE connection number of the mount (its device minor)."""
    return os.minor(os.stat(mnt.path).st_dev)


@contextlib.contextmanager
def _fusectl() -> Iterator[str]:
    """The fusectl directory, mounted on a scratch directory when the system has none."""
    system = "/sys/fs/fuse/connections"
    if os.path.isdir(system) and os.listdir(system):
        yield system
        return
    tmp = tempfile.mkdtemp(prefix="dmemfs-fusectl-")
    subprocess.run(["mount", "-t", "fusectl", "none", tmp], check=True)
    try:
        yield tmp
    finally:
        subprocess.run(["umount", tmp], check=False)
        os.rmdir(tmp)


def _abort(connection: int) -> None:
    with _fusectl() as ctl, open(os.path.join(ctl, str(connection), "abort"), "w") as f:
        f.write("1")


def test_concurrent_readers_and_writers_never_deadlock(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    connection = _connection(mnt)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, role, mnt.cgroup, str(SECONDS),
                               REGION], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for role in ROLES]
    deadline = time.monotonic() + SECONDS + GRACE
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    stuck = [role for role, p in zip(ROLES, procs, strict=True) if p.poll() is None]
    if stuck:
        _abort(connection)
        for p in procs:
            p.kill()
            p.communicate()
        pytest.fail(f"deadlock: {stuck} still blocked {GRACE} s after the deadline")
    counts = {}
    for role, p in zip(ROLES, procs, strict=True):
        out, err = p.communicate()
        assert p.returncode == 0, f"{role}: {err}"
        counts[role] = counts.get(role, 0) + int(out)
    assert all(n > 0 for n in counts.values()), counts
    # Afterwards every read, through a new open and through a held one, is current.
    held = os.open(os.path.join(mnt.cgroup, "a", "dmem.max"), os.O_RDONLY)
    try:
        for value, shown in (("2G", "2147483648"), ("max", "max"), ("64K", "65536")):
            mnt.write("a/dmem.max", f"{REGION} {value}")
            assert mnt.read("a/dmem.max") == f"{REGION} {shown}\n"
            assert os.pread(held, 4096, 0).decode() == f"{REGION} {shown}\n"
    finally:
        os.close(held)
