"""Mounts as the CLI finds them: `list`, stale and stuck daemons recognised from the FUSE
connection, `umount` that touches only dmemfs and says who keeps a mount busy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmemfs import lifecycle
from dmemfs.testing import Mounted, is_mounted, mounted
from tests.cli.conftest import daemon_pid, dmemfs, force_unmount, one_line_error
from tests.conftest import _require_fuse

ROOT = Path(__file__).resolve().parents[2]


def _rows(path: str) -> list[dict[str, object]]:
    res = dmemfs("list", "--json")
    assert res.returncode == 0, res.stderr
    return [row for row in json.loads(res.stdout) if row["mountpoint"] == path]


def test_list_shows_each_mount_with_daemon_profile_and_health(mountpoint: str) -> None:
    assert dmemfs("mount", mountpoint, "--profile", "6.14", "--pinning", "posted"
                  ).returncode == 0
    pid = daemon_pid(mountpoint)
    try:
        assert _rows(mountpoint) == [{
            "mountpoint": mountpoint, "owner": 0, "allow_other": False, "health": "ok",
            "reason": None, "pid": pid, "profile": "6.14", "pinning": "posted"}]
        res = dmemfs("list")
        assert res.stdout.splitlines()[0].split() == ["MOUNTPOINT", "PID", "PROFILE",
                                                      "PINNING", "OWNER", "HEALTH"]
        assert [line.split() for line in res.stdout.splitlines()
                if line.startswith(mountpoint + " ")] == [
            [mountpoint, str(pid), "6.14", "posted", "0", "ok"]]
    finally:
        assert dmemfs("umount", mountpoint).returncode == 0
    assert _rows(mountpoint) == []


def test_stale_mount_recognised_from_the_connection_not_cached_attributes() -> None:
    """Regression: after kill -9 of the daemon, `mount` said "already a mount point" and
    `status` exited 0 with "profile ?", because stat() of the root answered from the cache."""
    _require_fuse()
    with mounted() as m:
        os.stat(m.path)  # the kernel now caches the root's attributes
        m.proc.kill()
        m.proc.wait()
        os.stat(m.path)  # ... and still answers from that cache
        err = one_line_error(dmemfs("mount", m.path))
        assert err == (f"dmemfs: {m.path} is a stale FUSE mount (its daemon died); "
                       f"clean it with: dmemfs umount {m.path}\n")
        hint = f"{m.path} is a stale FUSE mount: its daemon died; clean it with: " \
               f"dmemfs umount {m.path}\n"
        assert one_line_error(dmemfs("status", m.path)) == f"dmemfs: {hint}"
        assert one_line_error(dmemfs("cgroup-of", m.path, "1")) == f"dmemfs: {hint}"
        assert [(r["health"], r["pid"]) for r in _rows(m.path)] == [("stale", None)]
        res = dmemfs("umount", m.path)
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"dmemfs: cleaned stale mount {m.path}\n"
        assert not is_mounted(m.path)
        res = dmemfs("mount", m.path)
        assert res.returncode == 0, res.stderr
        assert dmemfs("umount", m.path).returncode == 0


def test_stopped_daemon_is_reported_not_responding(mnt: Mounted) -> None:
    os.kill(mnt.proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        err = one_line_error(dmemfs("status", mnt.path))
        assert err == (f"dmemfs: {mnt.path} did not answer within 3 s (its daemon is stopped "
                       "or stuck)\n")
        assert [r["health"] for r in _rows(mnt.path)] == ["not-responding"]
        assert time.monotonic() - start < 20
    finally:
        os.kill(mnt.proc.pid, signal.SIGCONT)


@pytest.fixture
def floorfs(mountpoint: str) -> Iterator[str]:
    """A FUSE mount that is not dmemfs (like an sshfs): scripts/floorfs.py."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "floorfs.py"), mountpoint],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        yield mountpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_commands_refuse_mounts_that_are_not_dmemfs(floorfs: str, tmp_path) -> None:
    err = one_line_error(dmemfs("umount", floorfs))
    assert err == f"dmemfs: {floorfs} is not a dmemfs mount (fuse from floorfs); " \
                  "not unmounting it\n"
    assert is_mounted(floorfs)
    assert one_line_error(dmemfs("status", floorfs)) == (
        f"dmemfs: {floorfs} is not a dmemfs mount (fuse from floorfs)\n")
    assert _rows(floorfs) == []
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "dmemfs-test", str(tmpfs)], check=True)
    try:
        assert one_line_error(dmemfs("umount", str(tmpfs))) == (
            f"dmemfs: {tmpfs} is not a dmemfs mount (tmpfs from dmemfs-test); "
            "not unmounting it\n")
        assert is_mounted(str(tmpfs))
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)
    assert one_line_error(dmemfs("status", str(tmp_path))) == (
        f"dmemfs: {tmp_path} is not a mount point (no dmemfs mounted there)\n")
    assert one_line_error(dmemfs("mount", floorfs)) == (
        f"dmemfs: {floorfs} is already a mount point (fuse from floorfs); unmount it first\n")


def test_umount_names_the_processes_that_hold_it_and_lazy_detaches(mountpoint: str) -> None:
    assert dmemfs("mount", mountpoint).returncode == 0
    pid = daemon_pid(mountpoint)
    job = os.path.join(mountpoint, "cgroup")
    sleeper = subprocess.Popen(["sleep", "60"], cwd=job)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from dmemfs.client import DeviceError, XeDevice\n"
         f"gpu = XeDevice({os.path.join(mountpoint, 'dev', 'dri', 'renderD128')!r})\n"
         "gpu.gem_create(1 << 20); print(gpu.fd, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        fd = int(holder.stdout.readline())
        err = one_line_error(dmemfs("umount", mountpoint))
        assert err.startswith(f"dmemfs: cannot unmount {mountpoint}: busy, held by ")
        assert f"pid {sleeper.pid} (sleep: cwd {job})" in err
        assert f"pid {holder.pid} (python" in err
        assert f": fd {fd} {mountpoint}/dev/dri/renderD128)" in err
        assert err.endswith(f"; stop them or use dmemfs umount --lazy {mountpoint}\n")
        assert is_mounted(mountpoint)
        res = dmemfs("umount", "--lazy", mountpoint)
        assert res.returncode == 0, res.stderr
        assert res.stdout == (f"dmemfs: detached {mountpoint}; its daemon (pid {pid}) serves "
                              "the processes still using it and exits after the last one "
                              "lets go\n")
        assert not is_mounted(mountpoint)
        # The holders keep working on the detached tree ...
        with open(os.path.join(f"/proc/{sleeper.pid}/cwd", "cgroup.controllers")) as f:
            assert f.read() == "dmem\n"
        assert pid is not None and lifecycle.alive(pid)
        # ... and the daemon exits once they are gone.
        sleeper.kill()
        holder.kill()
        sleeper.wait()
        holder.wait()
        assert lifecycle.wait_exit(pid, timeout=10)
    finally:
        for p in (sleeper, holder):
            if p.poll() is None:
                p.kill()
                p.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()
        force_unmount(mountpoint, pid)
