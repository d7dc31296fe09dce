"""The FUSE request being handled: who sent it and, for a write, the open file's flags.

pyfuse3 tells ``write()`` neither the calling process nor the flags of the open file, but
the kernel puts both in the request (``fuse_in_header.pid``, ``fuse_write_in.flags``). The C
module ``dmemfs._fusereq`` reads them as libfuse dispatches each request; it must be loaded,
with ``RTLD_GLOBAL``, before pyfuse3 is (``dmemfs/__init__.py`` does it first thing). Where it
is missing (not built, or pyfuse3 imported first) :func:`current` returns None and callers
fall back to what the open told them (docs/architecture.md, "Who calls").
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType

#: ``fuse_in_header.opcode`` of a WRITE (include/uapi/linux/fuse.h).
FUSE_WRITE = 16
#: ``fuse_read_in.read_flags``: set by ``fuse_send_read`` for a ``read()`` of a direct-I/O
#: file, never on a READ that fills the page cache (splice, sendfile, mmap).
FUSE_READ_LOCKOWNER = 1 << 1


@dataclass(frozen=True, slots=True)
class Request:
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    #: Thread id of the caller (0 for requests the kernel sends on its own behalf).
    pid: int
    #: For a WRITE: the file handle it is for and the open file's f_flags at that time.
    fh: int | None
    flags: int | None


#: Set to "opener" in the daemon's environment to ignore the requests' callers (the fallback
#: the tests exercise).
ENV = "DMEMFS_CALLERS"


def _load() -> ModuleType | None:
    if os.environ.get(ENV) == "opener":
        return None
    if "pyfuse3" in sys.modules:
        return None  # too late: pyfuse3 has already bound libfuse's function
    saved = sys.getdlopenflags()
    sys.setdlopenflags(saved | os.RTLD_GLOBAL)
    try:
        module = importlib.import_module("dmemfs._fusereq")
    except ImportError:
        return None
    finally:
        sys.setdlopenflags(saved)
    return module


_module = _load()


def available() -> bool:
    """Whether requests are being seen (the interposer is loaded and libfuse calls it)."""
    return _module is not None and bool(_module.requests_seen())


def current() -> Request | None:
    """The request whose handler is running (read it before the handler's first await)."""
    if _module is None:
        return None
    raw = _module.last()
    if raw is None:
        return None
    opcode, unique, nodeid, uid, gid, pid, is_write, fh, flags = raw
    return Request(opcode, unique, nodeid, uid, gid, pid,
                   fh if is_write else None, flags if is_write else None)


def read_flags(fh: int) -> int | None:
    """``read_flags`` of the READ request for ``fh`` being handled, None if unknown."""
    if _module is None:
        return None
    raw = _module.last_read()
    if raw is None or raw[0] != fh:
        return None
    return int(raw[3])
