"""A Python client for a mounted dmemfs: the simulated xe device file and cgroup directories.

    with XeDevice("/mnt/dmem/dev/dri/renderD128") as gpu:
        bo = gpu.gem_create(256 << 20, placement=("vram0",))
        gpu.bo_info(bo.handle)["placement"]          # 'vram0'

Errors are ``OSError`` with the ioctl's errno (``ENOMEM``, ``ENOSPC``, ``EINVAL`` …); for a
failed device request a :class:`DeviceError` whose ``reason`` is what the device said
(``[Errno 22] GEM_CREATE: Invalid argument: size 100 is not …``).
Each :class:`XeDevice` is one open of the device file, i.e. one DRM client: closing it frees
every buffer object it created. Charges go to the cgroup of the process that opened it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType


def parse_reply(line: str) -> dict[str, str]:
    """``"a=1 b=x"`` → ``{"a": "1", "b": "x"}``."""
    return dict(token.split("=", 1) for token in line.split())


def error_reason(reply: str) -> str | None:
    """The reason in the reply of a failed request, ``error=EINVAL reason=…``; else None."""
    line = reply.strip()
    if not line.startswith("error="):
        return None
    _, sep, reason = line.partition(" reason=")
    return reason if sep else None


class DeviceError(OSError):
    """A device request failed: ``errno`` and ``strerror`` as for any failed ``write()``,
    ``verb`` the request and ``reason`` the device's explanation (None if it gave none)."""

    def __init__(self, code: int, verb: str, reason: str | None) -> None:
        super().__init__(code, os.strerror(code))
        self.verb = verb
        self.reason = reason

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"[Errno {self.errno}] {self.verb}: {self.strerror}{why}"


@dataclass(frozen=True)
class BufferObject:
    handle: int
    size: int
    placement: str
    pinned: bool


class XeDevice:
    """One DRM client of a simulated xe device (``MOUNT/dev/dri/renderD128`` …)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> XeDevice:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def ioctl(self, verb: str, **args: object) -> str:
        """Send one request; return the reply text ('' when the verb has none)."""
        line = " ".join([verb, *(f"{k}={v}" for k, v in args.items() if v is not None)])
        try:
            os.write(self.fd, line.encode() + b"\n")
        except OSError as e:
            # The failed request's reply says why: ``error=EINVAL reason=…``.
            raise DeviceError(e.errno or 0, verb, error_reason(self._read_reply())) from None
        return self._read_reply()

    def _read_reply(self) -> str:
        chunks = []
        while chunk := os.read(self.fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def gem_create(
        self,
        size: int | str,
        placement: Iterable[str] = ("vram0",),
        flags: Iterable[str] = (),
        cpu_caching: str | None = None,
        vm_id: int | None = None,
    ) -> BufferObject:
        reply = parse_reply(self.ioctl(
            "GEM_CREATE", size=size, placement=",".join(placement),
            flags=",".join(flags) or None, cpu_caching=cpu_caching, vm_id=vm_id,
        ))
        return BufferObject(int(reply["handle"]), int(reply["size"]), reply["placement"],
                            reply["pinned"] == "1")

    def gem_close(self, handle: int) -> None:
        self.ioctl("GEM_CLOSE", handle=handle)

    def vm_create(self) -> int:
        return int(parse_reply(self.ioctl("VM_CREATE"))["vm_id"])

    def vm_destroy(self, vm_id: int) -> None:
        self.ioctl("VM_DESTROY", vm_id=vm_id)

    def query_mem_regions(self) -> list[dict[str, str]]:
        return [parse_reply(line) for line in self.ioctl("QUERY", what="mem_regions").splitlines()]

    def exec(self, handles: Iterable[int]) -> dict[str, int]:
        reply = parse_reply(self.ioctl("EXEC", handles=",".join(str(h) for h in handles)))
        return {k: int(v) for k, v in reply.items()}

    def bo_info(self, handle: int) -> dict[str, str]:
        return parse_reply(self.ioctl("BO_INFO", handle=handle))

    def prime_export(self, handle: int) -> int:
        """Export a BO as a dma-buf; its id (the file ``MOUNT/dev/dma_buf/ID``)."""
        return int(parse_reply(self.ioctl("PRIME_EXPORT", handle=handle))["dmabuf"])

    def prime_import(self, dmabuf: int | None = None, *, fd: int | None = None,
                     importer: str | None = None) -> dict[str, int]:
        """Import a dma-buf by id or by a descriptor of its file this process holds
        (``importer``: dynamic, pin or static); ``{"handle", "size", "p2p"}``."""
        reply = parse_reply(self.ioctl("PRIME_IMPORT", dmabuf=dmabuf, fd=fd,
                                       importer=importer))
        return {k: int(v) for k, v in reply.items()}


class CgroupDir:
    """A cgroup directory of a mounted dmemfs (or any cgroup2 tree)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def write(self, name: str, value: str) -> None:
        """One ``write()``; raises OSError with the kernel's errno."""
        fd = os.open(os.path.join(self.path, name), os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def child(self, name: str, *, create: bool = True) -> CgroupDir:
        path = os.path.join(self.path, name)
        if create and not os.path.isdir(path):
            os.mkdir(path)
        return CgroupDir(path)

    def limits(self, name: str) -> dict[str, str]:
        """A ``dmem.*`` file as {region: value}."""
        return dict(line.rsplit(" ", 1) for line in self.read(name).splitlines())
