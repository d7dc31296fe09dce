"""The command line, run as users run it: `python -m dmemfs …` in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from dmemfs.testing import Mounted, is_mounted, mounted
from tests.conftest import REGION, _require_fuse


def dmemfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmemfs", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("dmemfs")
    return res.stderr


@pytest.fixture
def mountpoint() -> Iterator[str]:
    _require_fuse()
    tmp = tempfile.mkdtemp(prefix="dmemfs-cli-")
    path = os.path.join(tmp, "mnt")
    os.mkdir(path)
    try:
        yield path
    finally:
        if is_mounted(path):
            pid = None
            try:
                with open(os.path.join(path, "debug", "daemon")) as f:
                    pid = int(f.readline().split()[1])
            except (OSError, ValueError, IndexError):
                pass
            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        os.rmdir(path)
        os.rmdir(tmp)


def test_version_and_module_entry_point() -> None:
    res = dmemfs("--version")
    assert res.returncode == 0 and re.fullmatch(r"dmemfs \d+\.\d+\.\d+\n", res.stdout)


def test_usage_errors_are_one_line() -> None:
    assert "invalid int value" in one_line_error(dmemfs("cgroup-of", "/x", "self"))
    assert "required" in one_line_error(dmemfs("mount"))


def test_mount_status_umount_in_background(mountpoint: str) -> None:
    res = dmemfs("mount", mountpoint, "--device", "xe,pci=0000:03:00.0,vram0=8G,vram1=4G")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"dmemfs: mounted {mountpoint} (daemon pid ")
    pid = int(re.search(r"daemon pid (\d+)", res.stdout).group(1))
    with open(os.path.join(mountpoint, "cgroup", "dmem.capacity")) as f:
        assert f.read() == (f"drm/0000:03:00.0/vram0 {8 << 30}\n"
                            f"drm/0000:03:00.0/vram1 {4 << 30}\n")
    with open(os.path.join(mountpoint, "cgroup", "cgroup.subtree_control"), "w") as f:
        f.write("+dmem")
    os.mkdir(os.path.join(mountpoint, "cgroup", "job"))
    with open(os.path.join(mountpoint, "cgroup", "job", "dmem.max"), "w") as f:
        f.write("drm/0000:03:00.0/vram0 2G")
    res = dmemfs("status", mountpoint)
    assert res.returncode == 0, res.stderr
    assert "profile 7.3, pinning intended" in res.stdout
    assert "drm/0000:03:00.0/vram1  0 B / 4 GiB, 0 B pinned" in res.stdout
    assert re.search(r"\n  /job\n    drm/0000:03:00.0/vram0: current 0 B, peak 0 B, "
                     r"pinned 0 B, min 0 B low 0 B max 2 GiB\n", res.stdout), res.stdout
    res = dmemfs("umount", mountpoint)
    assert res.returncode == 0, res.stderr
    assert not is_mounted(mountpoint)
    assert not _alive(pid)  # umount waited for the daemon to exit


def test_mount_errors(mountpoint: str, tmp_path) -> None:
    assert "does not exist" in one_line_error(dmemfs("mount", str(tmp_path / "missing")))
    bad = one_line_error(dmemfs("mount", mountpoint, "--device", "xe,pci=zz,vram0=1G"))
    assert "not a PCI address" in bad
    assert "multiple of 64 KiB" in one_line_error(
        dmemfs("mount", mountpoint, "--device", "xe,vram0=1000"))
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[device]]\npci = '0000:03:00.0'\nvram0 = '1Q'\n")
    assert "not a size" in one_line_error(dmemfs("mount", mountpoint, "--config", str(cfg)))
    assert not is_mounted(mountpoint)
    assert dmemfs("mount", mountpoint).returncode == 0
    assert "already a mount point" in one_line_error(dmemfs("mount", mountpoint))
    assert dmemfs("umount", mountpoint).returncode == 0
    assert "not a dmemfs mount" in one_line_error(dmemfs("umount", mountpoint))


def test_toml_config(mountpoint: str, tmp_path) -> None:
    cfg = tmp_path / "devices.toml"
    cfg.write_text('[[device]]\npci = "0000:03:00.0"\nvram0 = "1G"\n\n'
                   '[[device]]\npci = "0000:04:00.0"\nvram0 = "2G"\nvram1 = "2G"\n')
    assert dmemfs("mount", mountpoint, "--config", str(cfg)).returncode == 0
    try:
        with open(os.path.join(mountpoint, "cgroup", "dmem.capacity")) as f:
            assert f.read() == (f"drm/0000:03:00.0/vram0 {1 << 30}\n"
                                f"drm/0000:04:00.0/vram0 {2 << 30}\n"
                                f"drm/0000:04:00.0/vram1 {2 << 30}\n")
    finally:
        dmemfs("umount", mountpoint)


def test_stale_mount_detected_and_cleaned() -> None:
    _require_fuse()
    with mounted() as m:
        m.proc.kill()
        m.proc.wait()
        with pytest.raises(OSError):
            os.stat(m.cgroup)
        err = one_line_error(dmemfs("mount", m.path))
        assert "stale FUSE mount" in err and f"dmemfs umount {m.path}" in err
        res = dmemfs("umount", m.path)
        assert res.returncode == 0, res.stderr
        assert "cleaned stale mount" in res.stdout
        assert not is_mounted(m.path)
        res = dmemfs("mount", m.path)
        assert res.returncode == 0, res.stderr
        assert dmemfs("umount", m.path).returncode == 0


def test_exec_joins_cgroup_and_cgroup_of(mnt: Mounted) -> None:
    os.mkdir(os.path.join(mnt.cgroup, "job"))
    res = dmemfs("exec", os.path.join(mnt.cgroup, "job"), "--", "sh", "-c",
                 f"cat {mnt.cgroup}/job/cgroup.procs; echo $$")
    assert res.returncode == 0, res.stderr
    listed, own = res.stdout.split("\n")[:-2], res.stdout.split("\n")[-2]
    assert own in listed  # the shell itself, plus its `cat`
    res = dmemfs("exec", os.path.join(mnt.cgroup, "job"), "--", "sh", "-c",
                 f"exec {sys.executable} -m dmemfs cgroup-of {mnt.path} $$")
    assert res.stdout == "0::/job\n"
    assert dmemfs("cgroup-of", mnt.path, str(os.getpid())).stdout == "0::/\n"
    assert "no process" in one_line_error(dmemfs("cgroup-of", mnt.path, "999999999"))


def test_exec_errors(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "p"))
    mnt.write("p/cgroup.subtree_control", "+dmem")
    err = one_line_error(dmemfs("exec", os.path.join(mnt.cgroup, "p"), "--", "true"))
    assert "Device or resource busy" in err  # no internal processes
    assert "no command given" in one_line_error(dmemfs("exec", mnt.cgroup))
    err = one_line_error(dmemfs("exec", mnt.cgroup, "--", "/nonexistent/prog"))
    assert "No such file" in err
    assert f"{REGION} 0\n" == mnt.read("dmem.current")
