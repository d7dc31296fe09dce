"""Directory listings hold "." and ".." first, as kernfs's (dir_emit_dots) do."""

from __future__ import annotations

import ctypes
import os
import subprocess

from dmemfs.testing import Mounted


def _dirents(path: str) -> list[tuple[str, int]]:
    """(name, d_ino) of every entry getdents64 returns, in order (os.listdir drops dots)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(65536)
    out = []
    try:
        while (n := libc.syscall(217, fd, buf, len(buf))) > 0:  # SYS_getdents64 on x86-64
            off = 0
            while off < n:
                ino = int.from_bytes(buf.raw[off:off + 8], "little")
                reclen = int.from_bytes(buf.raw[off + 16:off + 18], "little")
                name = buf.raw[off + 19:off + reclen].split(b"\0", 1)[0].decode()
                out.append((name, ino))
                off += reclen
        assert n == 0, ctypes.get_errno()
    finally:
        os.close(fd)
    return out


def test_dots_in_every_directory(mnt: Mounted) -> None:
    os.mkdir(os.path.join(mnt.cgroup, "job"))
    for rel, parent in [("", ""), ("cgroup", ""), ("cgroup/job", "cgroup"),
                        ("dev/dri", "dev"), ("debug", "")]:
        path = os.path.join(mnt.path, rel)
        entries = _dirents(path)
        assert [name for name, _ in entries[:2]] == [".", ".."], rel
        assert entries[0][1] == os.stat(path).st_ino
        if rel:  # the mount root's ".." is itself, as on a cgroup2 mount's root
            assert entries[1][1] == os.stat(os.path.join(mnt.path, parent)).st_ino
        else:
            assert entries[1][1] == os.stat(path).st_ino
        names = [name for name, _ in entries[2:]]
        assert sorted(names) == sorted(os.listdir(path))
    res = subprocess.run(["ls", "-a", mnt.cgroup + "/job"], capture_output=True, text=True)
    assert res.stdout.splitlines()[:2] == [".", ".."]
