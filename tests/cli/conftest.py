"""Helpers for the command-line tests: run `python -m dmemfs …` as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from dmemfs.mounts import find_mount
from dmemfs.testing import is_mounted
from tests.conftest import _require_fuse


def dmemfs(*args: str, timeout: float = 60, **kwargs: object
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmemfs", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          **kwargs)  # type: ignore[call-overload]


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    """The one-line error a failed command printed (asserting it is one line, no traceback)."""
    assert res.returncode != 0, res.stdout
    assert res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("dmemfs")
    return res.stderr


def daemon_pid(path: str) -> int | None:
    try:
        with open(os.path.join(path, "debug", "daemon")) as f:
            return int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def force_unmount(path: str, pid: int | None = None) -> None:
    """Last-resort cleanup of a mount a test made with the CLI (and of its daemon)."""
    if find_mount(path) is not None:
        pid = pid or daemon_pid(path)
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    if pid:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def mountpoint() -> Iterator[str]:
    """An empty directory to mount on with the CLI; anything left mounted there is removed."""
    _require_fuse()
    tmp = tempfile.mkdtemp(prefix="dmemfs-cli-")
    path = os.path.join(tmp, "mnt")
    os.mkdir(path)
    try:
        yield path
    finally:
        if is_mounted(path):
            force_unmount(path)
        os.rmdir(path)
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
