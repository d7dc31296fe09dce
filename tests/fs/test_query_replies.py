"""Files answered by a reply (the device file, debug/pid-cgroup, debug/inspect): a failed
request still fails with its errno, and the next read says why."""

from __future__ import annotations

import errno
import os

import pytest

from dmemfs.client import DeviceError, XeDevice
from dmemfs.testing import Mounted


def _request(fd: int, line: str) -> int:
    """Write one request; return 0 or the errno it failed with."""
    try:
        os.write(fd, line.encode())
    except OSError as e:
        return e.errno or -1
    return 0


def _reply(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_device_error_reply(mnt: Mounted) -> None:
    fd = os.open(os.path.join(mnt.dri, "renderD128"), os.O_RDWR)
    try:
        assert _request(fd, "GEM_CREATE size=100 placement=vram0\n") == errno.EINVAL
        assert _reply(fd) == ("error=EINVAL reason=size 100 is not a positive multiple of "
                              "4096\n")
        assert _reply(fd) == ""  # consumed, like any reply
        assert _request(fd, "VM_DESTROY vm_id=7") == errno.ENOENT
        assert _reply(fd) == "error=ENOENT reason=no VM 7\n"
        # A failure replaces any reply still pending; a success replaces the error.
        assert _request(fd, "VM_CREATE") == 0
        assert _request(fd, "GEM_CLOSE handle=9") == errno.EINVAL
        assert _request(fd, "VM_CREATE") == 0
        assert _reply(fd) == "vm_id=2\n"
        # A reason never spans lines, whatever the request held.
        assert _request(fd, "BOGUS\nMORE") == errno.EINVAL
        reply = _reply(fd)
        assert reply.startswith("error=EINVAL reason=") and reply.count("\n") == 1
    finally:
        os.close(fd)


@pytest.mark.parametrize("name, request_, reply", [
    ("pid-cgroup", "abc", "error=EINVAL reason=not a pid: 'abc'\n"),
    ("pid-cgroup", "999999999", "error=ESRCH reason=no process 999999999\n"),
    ("inspect", "frob /", "error=EINVAL reason=inspect: cannot 'frob' '/'\n"),
])
def test_debug_query_error_reply(mnt: Mounted, name: str, request_: str, reply: str) -> None:
    fd = os.open(os.path.join(mnt.debug, name), os.O_RDWR)
    try:
        expected = getattr(errno, reply.split()[0].removeprefix("error="))
        assert _request(fd, request_) == expected
        assert _reply(fd) == reply
    finally:
        os.close(fd)


def test_client_error_carries_the_reason(mnt: Mounted) -> None:
    with XeDevice(os.path.join(mnt.dri, "renderD128")) as gpu:
        with pytest.raises(OSError) as info:
            gpu.gem_create(100, placement=("vram0",))
        assert isinstance(info.value, DeviceError)
        assert (info.value.errno, info.value.strerror) == (22, "Invalid argument")
        assert info.value.reason == "size 100 is not a positive multiple of 4096"
        assert str(info.value) == ("[Errno 22] GEM_CREATE: Invalid argument: size 100 is not "
                                   "a positive multiple of 4096")
        assert gpu.gem_create(1 << 20).handle == 1  # the client is still usable
