"""--state FILE: the configuration survives an unmount, a restart and a crash."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from dmemfs.testing import Mounted, mounted
from tests.conftest import REGION, _require_fuse

NOBODY = 65534


def configure(m: Mounted) -> None:
    m.write("cgroup.subtree_control", "+dmem")
    os.makedirs(os.path.join(m.cgroup, "a", "b"))
    m.write("a/cgroup.subtree_control", "+dmem")
    m.write("a/dmem.max", f"{REGION} 1G")
    m.write("a/dmem.min", f"{REGION} 64M")
    m.write("a/b/dmem.low", f"{REGION} 16M")
    m.write("a/cgroup.max.depth", "1")
    m.write("a/b/cgroup.freeze", "1")
    os.chmod(os.path.join(m.cgroup, "a"), 0o750)
    os.chown(os.path.join(m.cgroup, "a", "b"), NOBODY, NOBODY)
    os.chown(os.path.join(m.cgroup, "a", "cgroup.procs"), NOBODY, NOBODY)
    os.setxattr(os.path.join(m.cgroup, "a"), "user.note", b"kept")


def check(m: Mounted) -> None:
    assert m.read("cgroup.subtree_control") == "dmem\n"
    assert m.read("a/cgroup.subtree_control") == "dmem\n"
    assert m.read("a/dmem.max") == f"{REGION} {1 << 30}\n"
    assert m.read("a/dmem.min") == f"{REGION} {64 << 20}\n"
    assert m.read("a/b/dmem.low") == f"{REGION} {16 << 20}\n"
    assert m.read("a/cgroup.max.depth") == "1\n"
    assert m.read("a/b/cgroup.freeze") == "1\n"
    assert stat.S_IMODE(os.stat(os.path.join(m.cgroup, "a")).st_mode) == 0o750
    st = os.stat(os.path.join(m.cgroup, "a", "b"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert os.stat(os.path.join(m.cgroup, "a", "cgroup.procs")).st_uid == NOBODY
    assert os.getxattr(os.path.join(m.cgroup, "a"), "user.note") == b"kept"
    # Runtime state is not configuration: nothing is charged after a restart.
    assert m.read("dmem.current") == f"{REGION} 0\n"


def test_configuration_survives_unmount_and_remount(tmp_path: Path) -> None:
    _require_fuse()
    state = str(tmp_path / "state.json")
    with mounted(["--state", state]) as m:
        configure(m)
    assert json.loads(Path(state).read_text())["version"] == 1
    with mounted(["--state", state]) as m:
        check(m)
        os.rmdir(os.path.join(m.cgroup, "a", "b"))
    with mounted(["--state", state]) as m:
        assert not os.path.exists(os.path.join(m.cgroup, "a", "b"))
        assert m.read("a/dmem.max") == f"{REGION} {1 << 30}\n"


def test_configuration_survives_a_crash(tmp_path: Path) -> None:
    _require_fuse()
    state = str(tmp_path / "state.json")
    with mounted(["--state", state]) as m:
        configure(m)
        deadline = time.monotonic() + 5
        while not os.path.exists(state) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the save of the last change (changes are saved within ~50 ms)
        m.proc.kill()  # no clean shutdown, no final save
        m.proc.wait()
    with mounted(["--state", state]) as m:
        check(m)


def test_bad_state_file_is_a_clear_error(tmp_path: Path) -> None:
    _require_fuse()
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "root": {"attr": "nonsense"}}')
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run([sys.executable, "-m", "dmemfs", "mount", str(mnt), "--state",
                          str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "is not a dmemfs state" in res.stderr
    bad.write_text("{not json")
    res = subprocess.run([sys.executable, "-m", "dmemfs", "mount", str(mnt), "--state",
                          str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "cannot read state file" in res.stderr


def test_limits_of_a_region_that_is_gone_are_dropped(tmp_path: Path) -> None:
    _require_fuse()
    state = str(tmp_path / "state.json")
    with mounted(["--state", state, "--device", "xe,pci=0000:03:00.0,vram0=1G,vram1=1G"]) as m:
        m.write("cgroup.subtree_control", "+dmem")
        os.mkdir(os.path.join(m.cgroup, "a"))
        m.write("a/dmem.max", "drm/0000:03:00.0/vram1 4096")
        m.write("a/dmem.min", "drm/0000:03:00.0/vram0 8192")
    with mounted(["--state", state]) as m:
        assert m.read("a/dmem.min") == "drm/0000:03:00.0/vram0 8192\n"
        assert m.read("a/dmem.max") == "drm/0000:03:00.0/vram0 max\n"
        assert "no region drm/0000:03:00.0/vram1 any more" in m.log()
