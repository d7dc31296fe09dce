"""Mount a throw-away dmemfs for tests: used by dmemfs's own suite and its pytest plugin.

The daemon runs in a subprocess started the way ``dmemfs mount`` starts it (see
:mod:`dmemfs.lifecycle`; never touch a FUSE mount from the process serving it) and is always
stopped and unmounted on the way out, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dmemfs import lifecycle
from dmemfs.mounts import find_mount


def fuse_available() -> str | None:
    """None when FUSE mounts can be made here, else the reason they cannot."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "fusermount3 is not installed"
    return None


def is_mounted(path: str) -> bool:
    """Something is mounted at ``path`` (judged from /proc/self/mountinfo, never by touching
    the path, which could hang on a stuck mount)."""
    return find_mount(os.path.abspath(path)) is not None


@dataclass
class Mounted:
    """A running dmemfs: paths of its parts, its daemon process and its log file."""

    path: str
    log_path: str
    proc: subprocess.Popen[bytes]

    @property
    def cgroup(self) -> str:
        return os.path.join(self.path, "cgroup")

    @property
    def dri(self) -> str:
        return os.path.join(self.path, "dev", "dri")

    @property
    def debug(self) -> str:
        return os.path.join(self.path, "debug")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def read(self, rel: str) -> str:
        with open(os.path.join(self.cgroup, rel)) as f:
            return f.read()

    def write(self, rel: str, data: str | bytes) -> int:
        """One ``write()`` to ``cgroup/<rel>``; raises OSError with the kernel's errno."""
        fd = os.open(os.path.join(self.cgroup, rel), os.O_WRONLY)
        try:
            return os.write(fd, data.encode() if isinstance(data, str) else data)
        finally:
            os.close(fd)


def stop(m: Mounted) -> None:
    """SIGTERM the daemon (it unmounts); if that fails, SIGKILL it and unmount lazily."""
    lifecycle.stop(m.proc, m.path)


@contextlib.contextmanager
def mounted(
    args: Sequence[str] = (), *, directory: str | None = None, env: dict[str, str] | None = None
) -> Iterator[Mounted]:
    """Mount dmemfs with extra ``dmemfs mount`` arguments; always unmount afterwards."""
    reason = fuse_available()
    if reason:
        raise RuntimeError(f"cannot mount dmemfs: {reason}")
    tmp = tempfile.mkdtemp(prefix="dmemfs-", dir=directory)
    os.chmod(tmp, 0o755)  # other users of an --allow-other mount must reach it
    path = os.path.join(tmp, "mnt")
    os.mkdir(path)
    log_path = os.path.join(tmp, "daemon.log")
    log_fd = lifecycle.open_log(log_path, default=False)
    try:
        daemon = lifecycle.spawn(["mount", path, *args], log_fd, log_path, env=env)
    except lifecycle.DaemonError as e:
        with open(log_path, errors="replace") as f:
            log = f.read()
        if not is_mounted(path):
            shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"dmemfs failed to mount: {e}\n{log}") from None
    finally:
        os.close(log_fd)
    m = Mounted(path=path, log_path=log_path, proc=daemon.proc)
    try:
        yield m
    finally:
        stop(m)
        if not is_mounted(path):
            shutil.rmtree(tmp, ignore_errors=True)
