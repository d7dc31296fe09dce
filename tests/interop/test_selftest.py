"""The emulated dmem_selftest module, and a selftest-style C program run unmodified against it."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmemfs.testing import Mounted

pytestmark = pytest.mark.dmemfs_args("--selftest")
SOURCE = Path(__file__).with_name("selftest_dmem.c")
#: The module's behaviour does not depend on the kernel version emulated; run both.
PROFILES = pytest.mark.parametrize("profile", [
    pytest.param(p, marks=pytest.mark.dmemfs_args("--selftest", "--profile", p))
    for p in ("7.3", "6.14")
])


@pytest.fixture(scope="module")
def selftest_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        if os.environ.get("DMEMFS_REQUIRE_TOOLS") == "1":
            pytest.fail("a C compiler is required (scripts/bootstrap installs gcc)")
        pytest.skip("no C compiler")
    out = str(tmp_path_factory.mktemp("selftest") / "selftest_dmem")
    subprocess.run([cc, "-O2", "-Wall", "-Wno-format-truncation", "-o", out, str(SOURCE)],
                   check=True)
    return out


def _write(path: str, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _errno(path: str, data: bytes) -> int:
    with pytest.raises(OSError) as info:
        _write(path, data)
    return info.value.errno


def test_region_comes_first_and_files_exist(mnt: Mounted) -> None:
    assert mnt.read("dmem.capacity").splitlines()[0] == f"dmem_selftest {256 << 20}"
    for name in ("charge", "uncharge"):
        st = os.stat(os.path.join(mnt.debug, "dmem_selftest", name))
        assert st.st_mode & 0o777 == 0o200


@PROFILES
def test_charge_and_uncharge_rules(mnt: Mounted, profile: str) -> None:
    charge = os.path.join(mnt.debug, "dmem_selftest", "charge")
    uncharge = os.path.join(mnt.debug, "dmem_selftest", "uncharge")
    assert _errno(uncharge, b"\n") == errno.EINVAL  # nothing charged
    assert _errno(charge, b"abc") == errno.EINVAL
    assert _errno(charge, b"0") == errno.EINVAL
    # v5: more than the region (256 MiB) is EINVAL; strim() strips the kernel's white space
    # only, not the other characters Python counts as space.
    assert _errno(charge, str((256 << 20) + 1).encode()) == errno.EINVAL
    assert _errno(charge, b"4096\x85") == errno.EINVAL
    assert _errno(charge, b"\x1c4096") == errno.EINVAL
    assert _errno(charge, "4²".encode()) == errno.EINVAL
    assert _errno(charge, b"1" * 32) == errno.EINVAL  # does not fit the module's buffer
    assert _errno(charge, b"99999999999999999999") == errno.ERANGE
    assert _write(charge, b" 0x1000\n") == 8
    assert mnt.read("dmem.current").splitlines()[0] == "dmem_selftest 4096"
    assert _errno(charge, b"1") == errno.EBUSY  # one outstanding charge at most
    assert _write(uncharge, b"x") == 1
    assert mnt.read("dmem.current").splitlines()[0] == "dmem_selftest 0"


def test_limit_hit_is_eagain_in_the_writers_cgroup(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "small"))
    mnt.write("small/dmem.max", "dmem_selftest 8K")
    code = (
        "import os, sys\n"
        f"open({mnt.cgroup + '/small/cgroup.procs'!r}, 'w').write('0')\n"
        f"fd = os.open({mnt.debug + '/dmem_selftest/charge'!r}, os.O_WRONLY)\n"
        "try:\n    os.write(fd, b'8193')\nexcept OSError as e:\n    print(e.errno)\n"
        "os.write(fd, b'8192')\n"
        f"print(open({mnt.cgroup + '/small/dmem.current'!r}).read().split()[1])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(errno.EAGAIN), "8192"]


@PROFILES
@pytest.mark.parametrize("at", [[], ["--at", "/sys/fs/cgroup"]], ids=["mount-path", "at-sys"])
def test_selftest_program_runs_unmodified(mnt: Mounted, selftest_binary: str,
                                          at: list[str], profile: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "dmemfs", "as-cgroup2", "--debugfs", *at, mnt.path, "--",
         selftest_binary],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        "1..4", "ok 1 dmem.max", "ok 2 dmem.min", "ok 3 dmem.low", "ok 4 byte granularity",
    ]
    # It cleaned up after itself, and nothing stays charged.
    assert not [n for n in os.listdir(mnt.cgroup) if n.startswith("sel_")]
    assert mnt.read("dmem.current").splitlines()[0] == "dmem_selftest 0"


def test_debugfs_needs_the_selftest_mount_option(tmp_path: Path) -> None:
    from dmemfs.testing import mounted

    with mounted() as m:
        res = subprocess.run([sys.executable, "-m", "dmemfs", "as-cgroup2", "--debugfs",
                              m.path, "--", "true"], capture_output=True, text=True)
        assert res.returncode == 1
        assert "mount with --selftest" in res.stderr
