"""The one errno table: every error the engine and the device raise, each with its errno.

The FUSE layer turns a :class:`DmemError` into ``pyfuse3.FUSEError(err.errno)`` in one place;
the CLI prints ``str(err)`` on one line.
"""

from __future__ import annotations

import errno as _errno


class DmemError(Exception):
    """Base class: an operation was refused with a kernel errno. State is unchanged."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "") -> None:
        super().__init__(message or _errno.errorcode.get(self.errno, "error"))


class InvalidArgument(DmemError):
    errno = _errno.EINVAL


class OutOfRange(DmemError):
    errno = _errno.ERANGE


class TooBig(DmemError):
    errno = _errno.E2BIG


class Busy(DmemError):
    errno = _errno.EBUSY


class NotFound(DmemError):
    errno = _errno.ENOENT


class Exists(DmemError):
    errno = _errno.EEXIST


class TryAgain(DmemError):
    errno = _errno.EAGAIN


class NoSpace(DmemError):
    errno = _errno.ENOSPC


class NoDevice(DmemError):
    errno = _errno.ENODEV


class NoMemory(DmemError):
    errno = _errno.ENOMEM


class NotSupported(DmemError):
    errno = _errno.EOPNOTSUPP


class NotPermitted(DmemError):
    errno = _errno.EPERM


class AccessDenied(DmemError):
    errno = _errno.EACCES


class NoProcess(DmemError):
    errno = _errno.ESRCH


class BadFile(DmemError):
    errno = _errno.EBADF


class NotImplementedByKernel(DmemError):
    """The emulated kernel code path returns ENOSYS (e.g. pinning system memory in the RFC)."""

    errno = _errno.ENOSYS


class ChargeLimited(TryAgain):
    """``dmem_cgroup_try_charge`` hit a limit: ``limit_pool`` is the lowest pool over its max."""

    def __init__(self, limit_pool: object, message: str = "") -> None:
        super().__init__(message or "dmem limit reached")
        self.limit_pool = limit_pool


_BY_ERRNO: dict[int, type[DmemError]] = {}


def error_for(code: int, message: str = "") -> DmemError:
    """The :class:`DmemError` for an errno (a kernel function's ``-ret``)."""
    if not _BY_ERRNO:
        stack: list[type[DmemError]] = [DmemError]
        while stack:
            cls = stack.pop()
            _BY_ERRNO.setdefault(cls.errno, cls)
            stack.extend(cls.__subclasses__())
    found = _BY_ERRNO.get(code)
    if found is None:
        err = DmemError(message or _errno.errorcode.get(code, "error"))
        err.errno = code
        return err
    return found(message)
