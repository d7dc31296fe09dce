"""The command line, run as users run it: `python -m dmemfs …` in a subprocess."""

from __future__ import annotations

import os
import re
import sys

from dmemfs.lifecycle import alive
from dmemfs.testing import Mounted, is_mounted
from tests.cli.conftest import dmemfs, one_line_error
from tests.conftest import REGION


def test_version_and_module_entry_point() -> None:
    for flag in ("--version", "-V"):
        res = dmemfs(flag)
        assert res.returncode == 0 and re.fullmatch(r"dmemfs \d+\.\d+\.\d+\n", res.stdout)


def test_usage_errors_are_one_line() -> None:
    err = one_line_error(dmemfs("cgroup-of", "/x", "self"))
    assert "invalid int value" in err and "see dmemfs cgroup-of --help" in err
    assert "required" in one_line_error(dmemfs("mount"))
    assert "must be 0 or more" in one_line_error(dmemfs("status", "/x", "--depth", "-1"))


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
    assert not alive(pid)  # umount waited for the daemon to exit


def test_mount_errors(mountpoint: str, tmp_path) -> None:
    assert "does not exist" in one_line_error(dmemfs("mount", str(tmp_path / "missing")))
    (tmp_path / "file").write_text("")
    assert "not a directory" in one_line_error(dmemfs("mount", str(tmp_path / "file")))
    bad = one_line_error(dmemfs("mount", mountpoint, "--device", "xe,pci=zz,vram0=1G"))
    assert "not a PCI address" in bad
    assert "multiple of 64 KiB" in one_line_error(
        dmemfs("mount", mountpoint, "--device", "xe,vram0=1000"))
    assert not is_mounted(mountpoint)
    assert dmemfs("mount", mountpoint).returncode == 0
    err = one_line_error(dmemfs("mount", mountpoint))
    assert "already a mount point (fuse.dmemfs from dmemfs)" in err
    assert dmemfs("umount", mountpoint).returncode == 0
    assert "is not a mount point" in one_line_error(dmemfs("umount", mountpoint))


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


def test_exec_errors_name_what_is_wrong(mnt: Mounted, tmp_path) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "p"))
    mnt.write("p/cgroup.subtree_control", "+dmem")
    err = one_line_error(dmemfs("exec", os.path.join(mnt.cgroup, "p"), "--", "true"))
    assert "Device or resource busy" in err and "no-internal-process rule" in err
    assert "no command given" in one_line_error(dmemfs("exec", mnt.cgroup))
    err = one_line_error(dmemfs("exec", mnt.cgroup, "--", "/nonexistent/prog"))
    assert err == "dmemfs: exec: /nonexistent/prog: no such file\n"
    err = one_line_error(dmemfs("exec", mnt.cgroup, "--", "no-such-command-dmemfs"))
    assert err == "dmemfs: exec: no-such-command-dmemfs: command not found\n"
    err = one_line_error(dmemfs("exec", str(tmp_path), "--", "true"))
    assert err == f"dmemfs: exec: {tmp_path} is not a cgroup directory (it has no cgroup.procs)\n"
    err = one_line_error(dmemfs("exec", str(tmp_path / "nope"), "--", "true"))
    assert err == f"dmemfs: exec: {tmp_path / 'nope'}: no such directory\n"
    # Nothing was moved by the failed attempts: the command is checked before joining.
    assert mnt.read("p/cgroup.procs") == ""
    assert f"{REGION} 0\n" == mnt.read("dmem.current")


def test_xe_failure_prints_the_devices_reason(mnt: Mounted) -> None:
    dev = os.path.join(mnt.dri, "renderD128")
    err = one_line_error(dmemfs("xe", dev, "GEM_CREATE", "size=1M", "placement=vram5"))
    assert err == "dmemfs: GEM_CREATE: Invalid argument: 0000:03:00.0 has no region 'vram5'\n"
    err = one_line_error(dmemfs("xe", dev, "BOGUS"))
    assert err.startswith("dmemfs: BOGUS: Invalid argument: unknown verb 'BOGUS'")
    res = dmemfs("xe", dev, "GEM_CREATE", "size=1M", "placement=vram0")
    assert res.returncode == 0 and res.stdout.startswith("handle=1 size=1048576")
