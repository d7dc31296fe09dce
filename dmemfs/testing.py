"""Mount a throw-away dmemfs for tests: used by dmemfs's own suite and its pytest plugin.

The daemon runs in a subprocess (never touch a FUSE mount from the process serving it) and
is always stopped and unmounted on the way out, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

#: Seconds to wait for a mount to become ready or a daemon to exit.
TIMEOUT = 30.0


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
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


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


def _wait_ready(fd: int, proc: subprocess.Popen[bytes], log_path: str) -> None:
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"dmemfs did not become ready in {TIMEOUT} s; log: {log_path}")
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    if data.strip() != b"ok":
        proc.wait(timeout=TIMEOUT)
        with open(log_path, errors="replace") as f:
            raise RuntimeError(f"dmemfs failed to mount: {data.decode().strip()}\n{f.read()}")


def stop(m: Mounted) -> None:
    """SIGTERM the daemon (it unmounts); if that fails, unmount lazily and SIGKILL."""
    if m.proc.poll() is None:
        m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait()
    if is_mounted(m.path):
        tool = shutil.which("fusermount3") or "fusermount"
        subprocess.run([tool, "-u", "-z", m.path], capture_output=True)


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
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "dmemfs", "mount", path, "--foreground",
           "--ready-fd", str(w), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, pass_fds=[w], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, env=env, start_new_session=True)
    os.close(w)
    m = Mounted(path=path, log_path=log_path, proc=proc)
    try:
        try:
            _wait_ready(r, proc, log_path)
        finally:
            os.close(r)
        yield m
    finally:
        stop(m)
        if not is_mounted(path):
            shutil.rmtree(tmp, ignore_errors=True)
