"""The LD_PRELOAD statfs shim used by ``dmemfs as-cgroup2 --statfs``: built on first use.

The compiled shim is cached (``$XDG_CACHE_HOME/dmemfs``, else ``~/.cache/dmemfs``) and later
preloaded into commands, often as root (``sudo -E`` keeps the caller's ``XDG_CACHE_HOME``).
A cached library is therefore used only if it, its directory and every directory above are
owned by this user or root and writable by no one else (a sticky directory such as ``/tmp``
excepted): anyone else who could plant or swap it would run code as root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "statfs_shim.c")


class ShimError(Exception):
    """The shim cannot be built here (one-line message for the user)."""


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dmemfs")


def _untrusted(path: str, st: os.stat_result) -> str | None:
    """Why ``path`` could be changed by someone other than this user or root, or None."""
    if st.st_uid not in (os.geteuid(), 0):
        return f"{path} is owned by uid {st.st_uid}"
    if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def check_trusted(path: str) -> None:
    """ShimError unless ``path`` (a regular file or directory, not a symlink) and every
    directory above it can be changed only by this user or root."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ShimError(f"refusing to preload the statfs shim: {path} is not a regular file")
    p = path
    while True:
        reason = _untrusted(p, st)
        if reason:
            raise ShimError(f"refusing to preload the statfs shim: {reason}")
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent
        st = os.stat(p)


def build() -> str:
    """Path of the compiled shim, compiling it (once per source version) if needed."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    target = os.path.join(os.path.realpath(cache_dir()), f"statfs_shim-{digest}.so")
    if os.path.lexists(target):
        check_trusted(target)
        return target
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if cc is None:
        raise ShimError("building the statfs shim needs a C compiler (install gcc)")
    directory = os.path.dirname(target)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    check_trusted(directory)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, SOURCE, "-ldl"],
                         capture_output=True, text=True)
    if res.returncode:
        os.unlink(tmp)
        first = (res.stderr.strip().splitlines() or ["unknown error"])[0]
        raise ShimError(f"compiling the statfs shim failed: {first}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target
