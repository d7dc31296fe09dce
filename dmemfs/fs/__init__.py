"""The FUSE layer: turns kernel requests into engine and device calls and back."""
