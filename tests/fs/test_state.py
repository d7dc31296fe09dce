"""--state FILE: the configuration survives an unmount, a restart and a crash."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    assert Path(state).read_bytes().startswith(b"{\"dmemfs-state\":2}\n")
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
    assert res.returncode == 1 and "is not a dmemfs state" in res.stderr


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


# -- hardening ----------------------------------------------------------------------------------


def mount_fails(tmp_path: Path, state: Path | str) -> str:
    """``dmemfs mount --state STATE`` must fail with one line on stderr; returns it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "dmemfs", "mount", str(mnt), "--state",
                          str(state)], capture_output=True, text=True, timeout=60)
    if res.returncode == 0:  # it mounted: do not leave the daemon behind
        subprocess.run([sys.executable, "-m", "dmemfs", "umount", str(mnt)], timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    return res.stderr


def test_a_deep_chain_is_saved_and_restored(tmp_path: Path) -> None:
    """600 nested cgroups: saving must not recurse (the daemon died at ~490 levels)."""
    _require_fuse()
    state = str(tmp_path / "state.json")
    depth = 600
    with mounted(["--state", state]) as m:
        fd = os.open(m.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(depth):
                os.mkdir("c", dir_fd=fd)
                new = os.open("c", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = new
        finally:
            os.close(fd)
        assert m.proc.poll() is None, m.log()
    with mounted(["--state", state]) as m:
        fd = os.open(m.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(depth):
                new = os.open("c", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = new
            assert os.listdir(fd) and "c" not in os.listdir(fd)
        finally:
            os.close(fd)


def test_an_acknowledged_change_survives_kill_9(tmp_path: Path) -> None:
    """A write that returned is on disk: SIGKILL right after it loses nothing."""
    _require_fuse()
    state = str(tmp_path / "state.json")
    for round_ in range(3):
        with mounted(["--state", state]) as m:
            if round_ == 0:
                m.write("cgroup.subtree_control", "+dmem")
            os.mkdir(os.path.join(m.cgroup, f"job{round_}"))
            m.write(f"job{round_}/dmem.max", f"{REGION} {round_ + 1}M")
            os.chmod(os.path.join(m.cgroup, f"job{round_}"), 0o700)
            m.proc.kill()  # at once: no clean shutdown, no final save
            m.proc.wait()
    with mounted(["--state", state]) as m:
        for round_ in range(3):
            assert m.read(f"job{round_}/dmem.max") == f"{REGION} {(round_ + 1) << 20}\n"
            mode = os.stat(os.path.join(m.cgroup, f"job{round_}")).st_mode
            assert stat.S_IMODE(mode) == 0o700


def test_a_state_path_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    _require_fuse()
    line = mount_fails(tmp_path, tmp_path / "nowhere" / "state.json")
    assert "state directory" in line and "does not exist" in line
    (tmp_path / "file").write_text("")
    assert "is not a directory" in mount_fails(tmp_path, tmp_path / "file" / "state.json")


def test_a_planted_state_file_is_refused(tmp_path: Path) -> None:
    """A state file another user owns or can write would hand them the tree's owners."""
    _require_fuse()
    state = tmp_path / "state.json"
    with mounted(["--state", str(state)]) as m:
        os.mkdir(os.path.join(m.cgroup, "a"))
    os.chown(state, NOBODY, NOBODY)
    assert "owned by uid 65534" in mount_fails(tmp_path, state)
    os.chown(state, 0, 0)
    os.chmod(state, 0o666)
    assert "writable by others" in mount_fails(tmp_path, state)
    os.chmod(state, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(state)
    assert "symbolic link" in mount_fails(tmp_path, link)
    with mounted(["--state", str(state)]) as m:  # the genuine file is still fine
        assert os.path.isdir(os.path.join(m.cgroup, "a"))


def _v1(root_fields: dict[str, object] | None = None, **child: object) -> str:
    base = {"attr": [0, 0, 0o755], "files_owner": [0, 0], "dmem_owner": [0, 0]}
    a = {**base, **child}
    root = {**base, "subtree_control": ["dmem"], "children": {"a": a}, **(root_fields or {})}
    return json.dumps({"version": 1, "root": root})


@pytest.mark.parametrize("content", [
    _v1(attr=[-1, 0, 0o755]),
    _v1(attr=[1 << 40, 0, 0o755]),
    _v1(dmem={REGION: {"min": -1, "low": 0, "max": 1 << 30}}),
    _v1(max_depth=-5),
    _v1(freeze=7),
    _v1(xattrs={"trusted.evil": "00"}),
    _v1(xattrs={f"user.{i}": "00" for i in range(129)}),
    '{"version": 1, "root": ' + "[" * 100000 + "]" * 100000 + "}",
    '{"dmemfs-state":2}\n' + '{"set":' + "[" * 100000 + "]" * 100000 + "}\n",
], ids=["negative-uid", "huge-uid", "negative-min", "negative-max-depth", "freeze-7",
        "trusted-xattr", "129-xattrs", "nested-v1", "nested-v2"])
def test_a_corrupt_state_file_is_refused(tmp_path: Path, content: str) -> None:
    _require_fuse()
    state = tmp_path / "state.json"
    state.write_text(content)
    state.chmod(0o600)
    assert "is not a dmemfs state" in mount_fails(tmp_path, state)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards."""
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "dmemfs-test", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_failing_save_is_visible_and_recovers(tmp_path: Path, small_fs: Path) -> None:
    """On a full disk, changes still apply, `dmemfs status` says "state NOT saved", the log
    says it once, and the state is saved again once there is room."""
    _require_fuse()
    state = str(small_fs / "state.json")
    with mounted(["--state", state]) as m:
        m.write("cgroup.subtree_control", "+dmem")
        filler = small_fs / "filler"
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        for i in range(40):
            os.mkdir(os.path.join(m.cgroup, f"c{i}"))
            m.write(f"c{i}/dmem.max", f"{REGION} {i + 1}M")
        time.sleep(2.5)  # several retries
        out = subprocess.run([sys.executable, "-m", "dmemfs", "status", m.path],
                             capture_output=True, text=True, timeout=60).stdout
        assert "state NOT saved: No space left on device" in out, out
        assert m.log().count("state NOT saved") == 1, m.log()
        filler.unlink()
        deadline = time.monotonic() + 10
        daemon = Path(m.debug, "daemon")
        while "NOT saved" in daemon.read_text():
            assert time.monotonic() < deadline, "the state was never saved again"
            time.sleep(0.1)
        assert f"state saved {state}" in daemon.read_text()
    with mounted(["--state", state]) as m:
        for i in range(40):
            assert m.read(f"c{i}/dmem.max") == f"{REGION} {(i + 1) << 20}\n"
