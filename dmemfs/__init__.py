"""dmemfs: a FUSE filesystem that behaves like the Linux cgroup v2 dmem controller."""

# First, before anything imports pyfuse3: the FUSE request interposer (dmemfs/fs/request.py).
from dmemfs.fs import request as _request  # noqa: F401

__version__ = "0.1.0"
