"""The daemon's lifecycle as users see it: how it is started, what it logs and where, how
it says it is ready, and how a failure to mount is reported."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys

import pytest

from dmemfs import lifecycle
from dmemfs.testing import is_mounted
from tests.cli.conftest import dmemfs, force_unmount, one_line_error


def _pid(res: subprocess.CompletedProcess[str]) -> int:
    assert res.returncode == 0, res.stderr
    return int(re.search(r"daemon pid (\d+)", res.stdout).group(1))


def test_background_mode_reruns_the_command_line_in_the_foreground(mountpoint: str) -> None:
    """Relative paths mean what they meant to the caller; the daemon then leaves the
    directory, so it keeps nothing busy."""
    cwd = os.path.dirname(mountpoint)
    argv = ["mount", "mnt", "--state", "state.json", "--device", "xe,vram0=1G"]
    res = dmemfs(*argv, cwd=cwd)
    pid = _pid(res)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode().split("\0")[:-1]
        assert cmdline[:-1] == [sys.executable, "-m", "dmemfs", *argv, "--foreground",
                                "--ready-fd"]
        assert cmdline[-1].isdigit()
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        os.mkdir(os.path.join(mountpoint, "cgroup", "kept"))
        res = dmemfs("status", mountpoint, "--json")
        state = os.path.join(cwd, "state.json")
        assert json.loads(res.stdout)["daemon"]["state"] == f"saved {state}"
    finally:
        assert dmemfs("umount", mountpoint).returncode == 0
    with open(os.path.join(cwd, "state.json")) as f:
        assert '"/kept"' in f.read()


def test_default_log_says_mounted_ready_unmounted_and_is_rotated(mountpoint: str) -> None:
    log_path = lifecycle.default_log_path(mountpoint)
    assert log_path.startswith("/run/dmemfs/")  # root's logs never go to /tmp
    pids = []
    for _ in range(2):
        res = dmemfs("mount", mountpoint, "--profile", "6.14")
        pids.append(_pid(res))
        assert res.stdout == f"dmemfs: mounted {mountpoint} (daemon pid {pids[-1]}, log " \
                             f"{log_path})\n"
        assert dmemfs("umount", mountpoint).returncode == 0
    assert stat.S_IMODE(os.stat("/run/dmemfs").st_mode) == 0o700
    with open(log_path) as f:
        current = f.read()
    with open(log_path + ".1") as f:
        previous = f.read()
    for text, pid in ((current, pids[1]), (previous, pids[0])):
        lines = text.splitlines()
        mounted = [i for i, line in enumerate(lines) if re.search(
            rf"INFO dmemfs.mount: mounted {mountpoint}: profile 6.14, pinning intended, "
            r"devices 0000:03:00.0 vram0 16384 MiB$", line)]
        ready = [i for i, line in enumerate(lines) if line.endswith(
            f"INFO dmemfs.commands: ready: serving {mountpoint} (pid {pid})")]
        assert len(mounted) == len(ready) == 1 and mounted[0] < ready[0], text
        assert lines[-1].endswith(f"INFO dmemfs.mount: unmounted {mountpoint}")
    assert f"(pid {pids[0]})" not in current  # one log per daemon


def test_default_log_is_never_followed_through_a_symlink(mountpoint: str, tmp_path) -> None:
    """Regression: root appended to whatever /tmp/dmemfs….log pointed to."""
    log_path = lifecycle.default_log_path(mountpoint)
    os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    os.symlink(secret, log_path)
    try:
        err = one_line_error(dmemfs("mount", mountpoint))
        assert err == (f"dmemfs: log file {log_path} is a symbolic link: not following it "
                       "(remove it or choose a log file with --log FILE)\n")
        assert secret.read_text() == "root only\n"
        assert os.path.islink(log_path) and not is_mounted(mountpoint)
    finally:
        os.unlink(log_path)


def test_default_log_refuses_a_fifo_instead_of_blocking(mountpoint: str) -> None:
    """Regression: a FIFO at the log path blocked `dmemfs mount` forever."""
    log_path = lifecycle.default_log_path(mountpoint)
    os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
    os.mkfifo(log_path)
    try:
        err = one_line_error(dmemfs("mount", mountpoint, timeout=20))
        assert err == f"dmemfs: log file {log_path} is not a regular file\n"
        assert not is_mounted(mountpoint)
    finally:
        os.unlink(log_path)


def test_log_directory_must_be_private(tmp_path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o777)
    os.chmod(logs, 0o777)
    with pytest.raises(lifecycle.DaemonError, match="mode 777: others could replace"):
        lifecycle.open_log(str(logs / "x.log"), default=True)
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(lifecycle.DaemonError, match=r"not a directory \(a symbolic link"):
        lifecycle.open_log(str(tmp_path / "link" / "x.log"), default=True)
    assert os.listdir(tmp_path / "real") == []


def test_default_logs_are_pruned(tmp_path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    for i in range(lifecycle.KEEP_LOGS + 5):
        path = logs / f"old{i}.log"
        path.write_text("x")
        os.utime(path, (1000 + i, 1000 + i))
    os.close(lifecycle.open_log(str(logs / "new.log"), default=True))
    names = set(os.listdir(logs))
    assert len(names) == lifecycle.KEEP_LOGS + 1
    assert "new.log" in names and "old0.log" not in names and "old36.log" in names


def test_foreground_says_mounted_and_ready(mountpoint: str, tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "dmemfs", "mount", mountpoint,
                             "--foreground"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == (f"dmemfs: mounted {mountpoint} (daemon pid {proc.pid}, in the "
                        f"foreground: stop it with Ctrl-C or dmemfs umount {mountpoint})\n")
        with open(os.path.join(mountpoint, "cgroup", "cgroup.controllers")) as f:
            assert f.read() == "dmem\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            force_unmount(mountpoint)
    assert proc.returncode == 0 and out == ""
    assert f"INFO dmemfs.mount: mounted {mountpoint}: profile 7.3" in err
    assert f"INFO dmemfs.commands: ready: serving {mountpoint} (pid {proc.pid})" in err
    assert "received SIGTERM, unmounting" in err
    assert not is_mounted(mountpoint)
    err = one_line_error(dmemfs("mount", mountpoint, "--foreground", "--log",
                                str(tmp_path / "x.log")))
    assert "--log is for the background daemon" in err


def test_a_daemon_that_cannot_mount_says_why_and_where_its_log_is(mountpoint: str,
                                                                   tmp_path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    log = tmp_path / "daemon.log"
    err = one_line_error(dmemfs("mount", mountpoint, "--state", str(state), "--log", str(log)))
    assert err.startswith(f"dmemfs: state file {state} is not a dmemfs state: ")
    assert err.endswith(f" (log: {log})\n")
    assert not is_mounted(mountpoint)
    assert f"state file {state} is not a dmemfs state" in log.read_text()
