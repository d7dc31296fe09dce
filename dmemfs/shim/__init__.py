"""The LD_PRELOAD statfs shim used by ``dmemfs as-cgroup2 --statfs``: built on first use."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "statfs_shim.c")


class ShimError(Exception):
    """The shim cannot be built here (one-line message for the user)."""


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dmemfs")


def build() -> str:
    """Path of the compiled shim, compiling it (once per source version) if needed."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    target = os.path.join(cache_dir(), f"statfs_shim-{digest}.so")
    if os.path.exists(target):
        return target
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if cc is None:
        raise ShimError("building the statfs shim needs a C compiler (install gcc)")
    os.makedirs(cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
    os.close(fd)
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, SOURCE, "-ldl"],
                         capture_output=True, text=True)
    if res.returncode:
        os.unlink(tmp)
        first = (res.stderr.strip().splitlines() or ["unknown error"])[0]
        raise ShimError(f"compiling the statfs shim failed: {first}")
    os.replace(tmp, target)
    return target
