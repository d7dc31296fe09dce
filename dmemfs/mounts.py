"""Mounts on this machine, seen from outside: which are dmemfs, whether their daemon is alive,
and which processes keep one busy. Used by the CLI; nothing here runs inside a daemon.

A mount is recognised from ``/proc/self/mountinfo`` (file system type ``fuse.dmemfs``) and
its health from the FUSE connection itself: ``statfs()`` always reaches the daemon (the
kernel caches no answer to it), so a dead daemon shows as ``ENOTCONN`` even while ``stat()``
still answers from cached attributes.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import dataclass, field

#: The file system type of a dmemfs mount in /proc/self/mountinfo.
FSTYPE = "fuse.dmemfs"
#: Seconds a mount may take to answer a health probe.
PROBE_TIMEOUT = 3.0

_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str
    #: Per-superblock options (``user_id=0``, ``allow_other`` … for FUSE).
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_dmemfs(self) -> bool:
        return self.fstype == FSTYPE

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith(("fuse.", "fuseblk"))

    @property
    def owner(self) -> int | None:
        """The uid that mounted a FUSE file system (only it may use the mount without
        ``allow_other``)."""
        value = self.options.get("user_id")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def allow_other(self) -> bool:
        return "allow_other" in self.options

    def describe(self) -> str:
        return f"{self.fstype} from {self.source}"


def mounts() -> list[MountEntry]:
    """Every mount of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            sep = fields.index(b"-")
            options: dict[str, str] = {}
            for opt in _unescape(fields[sep + 3]).split(","):
                key, _, value = opt.partition("=")
                options[key] = value
            out.append(MountEntry(mountpoint=_unescape(fields[4]),
                                  fstype=_unescape(fields[sep + 1]),
                                  source=_unescape(fields[sep + 2]), options=options))
    return out


def canonical(path: str) -> str:
    """``path`` as mountinfo spells it: absolute, with symbolic links resolved in its parent
    directories. The last component is not touched (a stuck mount there would hang us)."""
    path = os.path.normpath(os.path.abspath(path))
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail) if tail else path


def find_mount(path: str) -> MountEntry | None:
    """The topmost mount whose mountpoint is exactly ``path``, or None."""
    path = canonical(path)
    found = None
    for entry in mounts():
        if entry.mountpoint == path:
            found = entry  # later lines are mounted on top of earlier ones
    return found


def dmemfs_mounts() -> list[MountEntry]:
    return [m for m in mounts() if m.is_dmemfs]


@dataclass(frozen=True)
class Health:
    """How a mount answers: ``state`` is one of ok, stale, no-access, not-responding, error."""

    state: str
    #: One line for the user.
    reason: str
    #: ``MOUNT/debug/daemon`` of a live dmemfs (pid, profile, pinning, …).
    daemon: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def pid(self) -> int | None:
        value = self.daemon.get("pid", "")
        return int(value) if value.isdigit() else None


def _read_daemon(mountpoint: str) -> dict[str, str]:
    info: dict[str, str] = {}
    with open(os.path.join(mountpoint, "debug", "daemon")) as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key:
                info[key] = value
    return info


def _probe_now(entry: MountEntry) -> Health:
    path = entry.mountpoint
    try:
        os.statvfs(path)  # always a request to the daemon
        daemon = _read_daemon(path) if entry.is_dmemfs else {}
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return Health("stale", f"{path} is a stale FUSE mount: its daemon died")
        if e.errno in (errno.EACCES, errno.EPERM):
            who = f"uid {entry.owner}" if entry.owner is not None else "another user"
            return Health("no-access", f"{path} was mounted by {who} without --allow-other: "
                          "only that user can use it")
        return Health("error", f"{path}: {e.strerror}")
    return Health("ok", f"{path}: the daemon answers", daemon)


def probe(entry: MountEntry, timeout: float = PROBE_TIMEOUT) -> Health:
    """Ask the mount's daemon whether it is alive (never trusting cached attributes).

    The probe runs in a helper thread so that a daemon that is stopped or stuck makes it
    time out instead of hanging the caller.
    """
    result: list[Health] = []
    thread = threading.Thread(target=lambda: result.append(_probe_now(entry)), daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return Health("not-responding",
                      f"{entry.mountpoint} did not answer within {timeout:.0f} s "
                      "(its daemon is stopped or stuck)")
    return result[0]


# -- who keeps a mount busy ------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str
    #: What refers to the mount: ``cwd``, ``root``, ``exe``, ``fd 3``, ``mmap``.
    what: str
    path: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.name}: {self.what} {self.path})"


def _under(path: str, mountpoint: str) -> bool:
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def holders(mountpoint: str) -> list[Holder]:
    """Processes whose working directory, root, executable, open files or mappings are on the
    mount. Only links in /proc are read: the mount itself is never touched."""
    mountpoint = canonical(mountpoint)
    found: list[Holder] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        links = [("cwd", f"/proc/{pid}/cwd"), ("root", f"/proc/{pid}/root"),
                 ("exe", f"/proc/{pid}/exe")]
        try:
            links += [(f"fd {fd}", f"/proc/{pid}/fd/{fd}")
                      for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int)]
        except OSError:
            pass
        for what, link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if _under(target, mountpoint):
                found.append(Holder(pid, name, what, target))
        try:
            with open(f"/proc/{pid}/maps") as f:
                mapped = {line.split(None, 5)[5].strip() for line in f
                          if len(line.split(None, 5)) == 6}
        except OSError:
            mapped = set()
        found += [Holder(pid, name, "mmap", path) for path in sorted(mapped)
                  if _under(path, mountpoint)]
    return found


def submounts(mountpoint: str) -> list[MountEntry]:
    """Mounts made below ``mountpoint`` (they keep it busy too)."""
    mountpoint = canonical(mountpoint)
    return [m for m in mounts() if m.mountpoint != mountpoint and _under(m.mountpoint, mountpoint)]
