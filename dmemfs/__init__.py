"""dmemfs: a FUSE filesystem that behaves like the Linux cgroup v2 dmem controller."""

__version__ = "0.1.0"
