"""The daemon's lifecycle, in one place: its log file, spawning it, the ready protocol, stopping.

``dmemfs mount`` (background) runs its own command line again with ``--foreground --ready-fd
N`` added: the child mounts, serves, and writes one line on fd N, ``ready`` once the kernel
has the mount or ``error <reason>`` when it could not mount, then closes it. The parent
waits for that line, so ``dmemfs mount`` returns only when the mount is usable (or fails
with the daemon's reason). :mod:`dmemfs.testing` spawns daemons the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dmemfs.mounts import find_mount

#: Seconds a daemon may take to report the mount ready.
READY_TIMEOUT = 30.0
#: Seconds a daemon may take to exit once unmounted or signalled.
EXIT_TIMEOUT = 10.0
#: The line a daemon writes on its ready fd once the mount is usable.
READY = "ready"
#: The prefix of the line a daemon writes when it could not mount.
ERROR = "error "
#: Logs kept in the default log directory: the newest, whatever their mountpoint.
KEEP_LOGS = 32


class DaemonError(Exception):
    """The daemon could not be started, or did not become ready (one line for the user)."""


# -- the log ---------------------------------------------------------------------------------


def default_log_dir() -> str:
    """Where daemons log by default: ``/run/dmemfs`` for root, else ``$XDG_RUNTIME_DIR/dmemfs``
    (``/tmp/dmemfs-UID`` without one). Never a directory another user can write to."""
    if os.geteuid() == 0:
        return "/run/dmemfs"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "dmemfs")
    return f"/tmp/dmemfs-{os.geteuid()}"


def log_name(mountpoint: str) -> str:
    """The log's file name for a mountpoint: ``/mnt/dmem`` → ``mnt_dmem.log``."""
    name = mountpoint.strip("/").replace("/", "_") or "_"
    if len(name) > 200:  # NAME_MAX is 255: keep a readable prefix and make it unique
        name = name[:150] + "-" + hashlib.sha256(mountpoint.encode()).hexdigest()[:16]
    return name + ".log"


def default_log_path(mountpoint: str) -> str:
    return os.path.join(default_log_dir(), log_name(mountpoint))


def _private_dir(path: str) -> None:
    """Create ``path`` (mode 0700) if missing; refuse it unless it is a real directory owned
    by us that nobody else can write to."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise DaemonError(f"cannot create the log directory {path}: {e.strerror} "
                          "(choose a log file with --log FILE)") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise DaemonError(f"the log directory {path} is not a directory (a symbolic link?); "
                          "remove it or choose a log file with --log FILE")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise DaemonError(f"the log directory {path} is owned by uid {st.st_uid} with mode "
                          f"{stat.S_IMODE(st.st_mode):o}: others could replace its files; "
                          "remove it or choose a log file with --log FILE")


def open_log(path: str, *, default: bool) -> int:
    """Open the daemon's log for appending; return the descriptor.

    The default log (``default``) lives in a private directory, is rotated (the previous
    daemon's log becomes ``NAME.log.1``) and must be a regular file: a symbolic link is not
    followed and a FIFO is refused instead of blocking. A log chosen with ``--log`` is
    appended to, and may also be a character device such as ``/dev/null``.
    """
    if default:
        _private_dir(os.path.dirname(path))
        _prune(os.path.dirname(path))
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.replace(path, path + ".1")
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
    if default:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DaemonError(f"log file {path} is a symbolic link: not following it "
                              "(remove it or choose a log file with --log FILE)") from None
        if e.errno == errno.ENXIO:  # a FIFO nobody reads
            raise DaemonError(f"log file {path} is not a regular file") from None
        raise DaemonError(f"cannot open log file {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not default)):
        os.close(fd)
        raise DaemonError(f"log file {path} is not a regular file")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _prune(directory: str) -> None:
    """Keep the newest :data:`KEEP_LOGS` logs of the directory (current and rotated ones)."""
    try:
        entries = [e for e in os.scandir(directory)
                   if e.is_file(follow_symlinks=False) and ".log" in e.name]
        entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime, reverse=True)
    except OSError:
        return
    for entry in entries[KEEP_LOGS:]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


# -- spawning and the ready protocol ------------------------------------------------------------


@dataclass
class Spawned:
    """A daemon started in the background: its process and where it logs."""

    proc: subprocess.Popen[bytes]
    log_path: str


def daemon_command(argv: Sequence[str], ready_fd: int) -> list[str]:
    """The command line that runs ``dmemfs ARGV`` as a foreground daemon reporting on
    ``ready_fd``: the caller's own arguments, unchanged, plus those two options."""
    return [sys.executable, "-m", "dmemfs", *argv, "--foreground", "--ready-fd", str(ready_fd)]


def spawn(argv: Sequence[str], log_fd: int, log_path: str, *,
          env: dict[str, str] | None = None) -> Spawned:
    """Start ``dmemfs ARGV`` (a ``mount`` command line) as a daemon and wait until it is ready.

    The daemon runs in its own session with ``log_fd`` as its standard output and error; it
    inherits the working directory (relative paths in ARGV mean what they meant to the
    caller) and leaves it once it has resolved them. Raises :class:`DaemonError` with the
    daemon's reason if it does not become ready.
    """
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(daemon_command(argv, w), pass_fds=[w], stdin=subprocess.DEVNULL,
                                stdout=log_fd, stderr=log_fd, env=env, start_new_session=True)
    except OSError as e:
        os.close(r)
        raise DaemonError(f"cannot start the daemon: {e.strerror}") from None
    finally:
        os.close(w)
    spawned = Spawned(proc, log_path)
    try:
        wait_ready(r, spawned)
    finally:
        os.close(r)
    return spawned


def wait_ready(fd: int, spawned: Spawned, timeout: float = READY_TIMEOUT) -> None:
    """Read the daemon's one line from ``fd``: return on ``ready``; otherwise make sure the
    daemon is gone and raise :class:`DaemonError` with its reason and log path."""
    line = _read_line(fd, timeout)
    if line == READY:
        return
    proc = spawned.proc
    if line is None:
        proc.kill()
        proc.wait()
        raise DaemonError(f"the daemon did not become ready within {timeout:.0f} s "
                          f"(killed it; log: {spawned.log_path})")
    try:
        proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if line.startswith(ERROR):
        raise DaemonError(f"{line[len(ERROR):]} (log: {spawned.log_path})")
    raise DaemonError(f"the daemon exited with status {proc.returncode} before the mount was "
                      f"ready{_last_words(spawned.log_path)} (log: {spawned.log_path})")


def _read_line(fd: int, timeout: float) -> str | None:
    """The first line written on ``fd`` ('' at end of file without one); None on timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def _last_words(log_path: str) -> str:
    """``: <the log's last line>`` (what a crashing daemon printed last), or ''."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1].strip()}" if lines else ""


class ReadyPipe:
    """The daemon's side of the protocol: say ``ready`` or ``error …`` once, then close."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def _say(self, line: str) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode() + b"\n")
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def ready(self) -> None:
        self._say(READY)

    def failed(self, reason: str) -> None:
        self._say(ERROR + " ".join(reason.split()))


# -- stopping ------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def wait_exit(pid: int, timeout: float = EXIT_TIMEOUT) -> bool:
    """Wait for ``pid`` to exit; False if it still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``fusermount3`` (``fusermount`` on older systems) with ``args``."""
    for tool in ("fusermount3", "fusermount"):
        try:
            return subprocess.run([tool, *args], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            continue
    raise DaemonError("fusermount3 not found (install the fuse3 package)")


def stop(proc: subprocess.Popen[bytes], mountpoint: str) -> None:
    """Stop a daemon we started: SIGTERM (it unmounts), SIGKILL if it does not exit in time;
    a mount it left behind is detached lazily."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if find_mount(mountpoint) is not None:
        fusermount("-u", "-z", mountpoint)
