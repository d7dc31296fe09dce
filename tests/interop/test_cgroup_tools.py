"""libcgroup's tools (Debian cgroup-tools) work against dmemfs through `dmemfs as-cgroup2`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from dmemfs.testing import Mounted
from tests.conftest import REGION

pytestmark = pytest.mark.skipif(
    shutil.which("cgcreate") is None and os.environ.get("DMEMFS_REQUIRE_TOOLS") != "1",
    reason="cgroup-tools is not installed (scripts/bootstrap installs it)",
)


def _as_cgroup2(mnt: Mounted, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmemfs", "as-cgroup2", mnt.path, "--", *cmd],
        capture_output=True, text=True, timeout=60,
    )


def test_mounts_file_shows_cgroup2(mnt: Mounted) -> None:
    res = _as_cgroup2(mnt, "cat", "/proc/self/mounts")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"cgroup2 {mnt.cgroup} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
    # Only the exec'd process is affected; the rest of the machine is not.
    with open("/proc/self/mounts") as f:
        assert f"{mnt.cgroup} cgroup2" not in f.read()


def test_cgcreate_cgset_cgget_cgexec_cgdelete(mnt: Mounted) -> None:
    res = _as_cgroup2(mnt, "cgcreate", "-g", "dmem:/x")
    assert res.returncode == 0, res.stderr
    assert os.path.isdir(os.path.join(mnt.cgroup, "x"))
    assert mnt.read("cgroup.subtree_control") == "dmem\n"

    res = _as_cgroup2(mnt, "cgset", "-r", f"dmem.max={REGION} 1G", "x")
    assert res.returncode == 0, res.stderr
    assert mnt.read("x/dmem.max") == f"{REGION} 1073741824\n"

    res = _as_cgroup2(mnt, "cgget", "-g", "dmem", "x")
    assert res.returncode == 0, res.stderr
    assert f"dmem.max: {REGION} 1073741824" in res.stdout
    assert f"dmem.current: {REGION} 0" in res.stdout

    # cgexec moves itself into x, then execs the command, which reports its own cgroup.
    res = _as_cgroup2(
        mnt, "cgexec", "-g", "dmem:x", "sh", "-c",
        f"exec {sys.executable} -m dmemfs cgroup-of {mnt.path} $$",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "0::/x\n"

    res = _as_cgroup2(mnt, "cgdelete", "-g", "dmem:x")
    assert res.returncode == 0, res.stderr
    assert not os.path.exists(os.path.join(mnt.cgroup, "x"))
