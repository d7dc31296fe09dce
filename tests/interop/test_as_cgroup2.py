"""`dmemfs as-cgroup2` for tools that find cgroup2 by path or by statfs magic."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from dmemfs.testing import Mounted

CGROUP2_SUPER_MAGIC = "63677270"


def as_cgroup2(mnt: Mounted, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmemfs", "as-cgroup2", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_at_binds_the_cgroup_root_and_reports_it_in_mounts(mnt: Mounted) -> None:
    res = as_cgroup2(mnt, "--at", "/sys/fs/cgroup", mnt.path, "--", "sh", "-c",
                     "cat /proc/$$/mounts 2>/dev/null; cat /sys/fs/cgroup/cgroup.controllers")
    assert res.returncode == 0, res.stderr
    # Only the exec'd process sees the one-line mounts file; its children see the real one,
    # but all of them see the bind mount over /sys/fs/cgroup.
    assert res.stdout.endswith("dmem\n")
    res = as_cgroup2(mnt, "--at", "/sys/fs/cgroup", mnt.path, "--", "cat", "/proc/self/mounts")
    assert res.stdout == "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
    # Outside the private namespace nothing changed.
    assert not os.path.exists("/sys/fs/cgroup/dmem.capacity")


def test_statfs_shim_reports_cgroup2_magic_only_under_the_roots(mnt: Mounted) -> None:
    """--statfs: the LD_PRELOAD shim instead of the supervisor (dynamically linked C)."""
    def fstype(path: str, *extra: str) -> str:
        res = as_cgroup2(mnt, "--statfs", *extra, mnt.path, "--", "stat", "-f", "-c", "%t",
                         path)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    assert fstype(mnt.cgroup) == CGROUP2_SUPER_MAGIC
    assert fstype(os.path.join(mnt.cgroup, "cgroup.procs")) == CGROUP2_SUPER_MAGIC
    assert fstype("/sys/fs/cgroup", "--at", "/sys/fs/cgroup") == CGROUP2_SUPER_MAGIC
    assert fstype(mnt.path) != CGROUP2_SUPER_MAGIC  # MOUNT itself is not cgroup2
    assert fstype("/tmp") != CGROUP2_SUPER_MAGIC
    # The shim cannot help a program that makes the system call itself (static busybox).
    busybox = shutil.which("busybox")
    if busybox:
        res = as_cgroup2(mnt, "--statfs", mnt.path, "--", busybox, "stat", "-f", "-c", "%t",
                         mnt.cgroup)
        assert res.stdout.strip() != CGROUP2_SUPER_MAGIC


def test_statfs_shim_covers_fstatfs(mnt: Mounted) -> None:
    code = ("import ctypes, os\n"
            "buf = ctypes.create_string_buffer(256)\n"
            f"fd = os.open({mnt.cgroup!r}, os.O_RDONLY)\n"
            "assert ctypes.CDLL(None).fstatfs(fd, buf) == 0\n"
            "print(hex(int.from_bytes(buf.raw[:8], 'little')))\n")
    res = as_cgroup2(mnt, "--statfs", mnt.path, "--", sys.executable, "-c", code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0x" + CGROUP2_SUPER_MAGIC


def test_statfs_without_compiler_is_a_clear_error(mnt: Mounted, tmp_path) -> None:
    env = dict(os.environ, CC="/nonexistent/cc", PATH="/nonexistent",
               XDG_CACHE_HOME=str(tmp_path))
    res = as_cgroup2(mnt, "--statfs", mnt.path, "--", "true", env=env)
    assert res.returncode == 1
    assert res.stderr == "dmemfs: as-cgroup2 --statfs: building the statfs shim needs a C " \
                         "compiler (install gcc)\n"


@pytest.mark.parametrize("bad", [["--at", "/nonexistent/dir"], []])
def test_as_cgroup2_errors_are_one_line(mnt: Mounted, bad: list[str]) -> None:
    target = mnt.path if bad else "/tmp"
    res = as_cgroup2(mnt, *bad, target, "--", "true")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("dmemfs: ")


PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) fclose(f);
}
"""


def _plant(tmp_path, cache: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A library that leaves a marker file when loaded, under the shim's cached name."""
    import hashlib

    from dmemfs.shim import SOURCE

    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    marker = str(tmp_path / "planted-library-ran")
    src = tmp_path / "planted.c"
    src.write_text(f'#define MARKER "{marker}"\n' + PLANTED)
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, f"statfs_shim-{digest}.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", target, str(src)], check=True)
    return target, marker


@pytest.mark.parametrize("how", ["file-owned-by-other", "dir-owned-by-other",
                                 "dir-writable-by-others"])
def test_a_planted_cached_shim_is_never_preloaded(mnt: Mounted, tmp_path, how: str) -> None:
    """$XDG_CACHE_HOME/dmemfs is the caller's (sudo -E keeps it): a library another user
    could plant or swap there must not be preloaded into a root command."""
    base = tmp_path / "xdg"
    base.mkdir()
    cache = str(base / "dmemfs")
    target, marker = _plant(tmp_path, cache)
    nobody = 65534
    if how == "file-owned-by-other":
        os.chown(target, nobody, nobody)
    elif how == "dir-owned-by-other":
        os.chown(cache, nobody, nobody)
    else:
        os.chmod(cache, 0o777)
    env = dict(os.environ, XDG_CACHE_HOME=str(base))
    res = as_cgroup2(mnt, "--statfs", mnt.path, "--", "true", env=env)
    assert not os.path.exists(marker), "the planted library was preloaded"
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "refusing to preload the statfs shim" in res.stderr


def test_the_cached_shim_is_private(mnt: Mounted, tmp_path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    res = as_cgroup2(mnt, "--statfs", mnt.path, "--", "true", env=env)
    assert res.returncode == 0, res.stderr
    st = os.stat(tmp_path / "dmemfs")
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    res = as_cgroup2(mnt, "--statfs", mnt.path, "--", "true", env=env)  # the cached one
    assert res.returncode == 0, res.stderr
