"""No input crashes the daemon: random writes to every writable file get an errno, never EIO.

The mnt fixture fails the test if the daemon logged an error (the EIO boundary logs every
unexpected exception), so a handler bug anywhere shows up here.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from dmemfs.testing import Mounted
from tests.conftest import REGION

TOKENS = [b"+dmem", b"-dmem", b"max", b"0", b"1", b"-1", b"0x10", b"010", b"1G", b"K",
          REGION.encode(), b"GEM_CREATE", b"GEM_CLOSE", b"EXEC", b"QUERY", b"BO_INFO",
          b"VM_CREATE", b"VM_DESTROY", b"PRIME_EXPORT", b"PRIME_IMPORT", b"dmabuf=1",
          b"fd=0", b"importer=pin", b"size=64K", b"placement=vram0", b"placement=system",
          b"flags=PINNED", b"handle=1", b"handles=1,1", b"vm_id=1", b"what=mem_regions",
          b"threaded", b"stat", b"read", b"list", b"dmem.max", b"\n", b" ", b"\t", b"=", b",",
          b"\x00", b"\xff\xfe", b"99999999999999999999999"]


VERBS = [b"GEM_CREATE", b"GEM_CLOSE", b"EXEC", b"QUERY", b"BO_INFO", b"VM_CREATE",
         b"VM_DESTROY", b"PRIME_EXPORT", b"PRIME_IMPORT", b"stat", b"read", b"list"]
KEYS = [b"size", b"placement", b"flags", b"cpu_caching", b"vm_id", b"handle", b"handles",
        b"what", b"dmabuf", b"fd", b"importer", b""]
VALUES = [b"", b"x", b"-1", b"0", b"1", b"64K", b"1,", b",", b"0x", b"1e3", b"\xff", b"vram0",
          b"vram0,system", b"vram1", b"system", b"PINNED", b"PINNED,SCANOUT", b"wb", b"wc",
          b"mem_regions", b"1,1,2", b"4294967296", b"99999999999999999999999", b"dynamic",
          b"static"]


def payloads(rng: random.Random, n: int) -> list[bytes]:
    out = [b"", b" " * 4097, b"\x00" * 4096]
    for _ in range(n):
        roll = rng.random()
        if roll < 0.2:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
        elif roll < 0.6:  # a request with random key=value arguments
            args = [rng.choice(KEYS) + b"=" + rng.choice(VALUES)
                    for _ in range(rng.randrange(0, 5))]
            out.append(b" ".join([rng.choice(VERBS), *args]))
        else:
            out.append(b" ".join(rng.choice(TOKENS) for _ in range(rng.randrange(1, 6))))
    return out


@pytest.mark.dmemfs_args("--selftest")
def test_random_writes_everywhere(mnt: Mounted) -> None:
    rng = random.Random(1234)
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "a"))
    targets = [os.path.join(mnt.cgroup, "a", name) for name in os.listdir(
        os.path.join(mnt.cgroup, "a")) if name not in ("cgroup.kill", "cgroup.procs",
                                                       "cgroup.threads")]
    targets += [os.path.join(mnt.cgroup, name) for name in ("cgroup.subtree_control",
                                                           "cgroup.max.depth")]
    targets += [os.path.join(mnt.dri, "renderD128"), os.path.join(mnt.debug, "inspect"),
                os.path.join(mnt.debug, "pid-cgroup"),
                os.path.join(mnt.debug, "dmem_selftest", "charge"),
                os.path.join(mnt.debug, "dmem_selftest", "uncharge")]
    seen_errnos: set[int] = set()
    for path in targets:
        try:
            fd = os.open(path, os.O_RDWR)
        except PermissionError:
            try:
                fd = os.open(path, os.O_WRONLY)
            except PermissionError:
                continue  # read-only interface file (kernfs refuses the open too)
        try:
            # Every verb with every single argument, for the files that parse requests.
            systematic = [b" ".join([v, k + b"=" + x]) for v in VERBS for k in KEYS
                          for x in VALUES] if path.startswith(mnt.path + "/d") else []
            for data in payloads(rng, 150) + systematic:
                try:
                    os.write(fd, data)
                    try:
                        os.pread(fd, 65536, 0)
                    except OSError as e:
                        assert e.errno != errno.EIO, (path, data)
                except OSError as e:
                    assert e.errno != errno.EIO, (path, data)
                    seen_errnos.add(e.errno)
        finally:
            os.close(fd)
    assert {errno.EINVAL, errno.E2BIG} <= seen_errnos
    # Still serving, state consistent.
    assert mnt.read("cgroup.controllers") == "dmem\n"
    assert os.path.isdir(os.path.join(mnt.cgroup, "a"))
