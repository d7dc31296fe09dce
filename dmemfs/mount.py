"""The composition root: engine → operations → pyfuse3, run under trio until told to stop."""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

from dmemfs.device.config import DEFAULT_DEVICE, DeviceConfig
from dmemfs.engine.cgroup import Attr, CgroupTree
from dmemfs.errors import InvalidArgument
from dmemfs.fs.handles import Opener, QueryHandle, TextHandle
from dmemfs.fs.inodes import SpecialFile
from dmemfs.fs.operations import Operations
from dmemfs.procs import HostProcesses
from dmemfs.profile import Profile, get_profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountOptions:
    mountpoint: str
    devices: list[DeviceConfig] = field(default_factory=lambda: [DEFAULT_DEVICE])
    profile: Profile = field(default_factory=lambda: get_profile("latest"))
    allow_other: bool = False
    debug: bool = False


def build(options: MountOptions) -> Operations:
    """Engine, host processes and the FUSE operations, with the devices registered."""
    tree = CgroupTree(options.profile)
    for device in options.devices:
        for name, size in zip(device.region_names(), device.vram, strict=True):
            tree.dmem.register_region(name, size)
    host = HostProcesses(tree)
    ops = Operations(tree, host)
    _add_debug_files(ops, options)
    return ops


def _add_debug_files(ops: Operations, options: MountOptions) -> None:
    def daemon_info() -> str:
        p = options.profile
        return (
            f"pid {os.getpid()}\nprofile {p.name}\npinning {p.pinning}\n"
            f"mountpoint {os.path.abspath(options.mountpoint)}\n"
        )

    def pid_cgroup(opener: Opener, text: str) -> str:
        try:
            pid = int(text.strip())
        except ValueError:
            raise InvalidArgument(f"not a pid: {text.strip()!r}") from None
        cgroup = ops.host.cgroup_of(pid)
        return f"0::{cgroup.path}\n"

    ro = Attr(0, 0, 0o444)
    ops.add_file(ops.debug, "daemon", SpecialFile(ro, lambda o, f: TextHandle(o, daemon_info)))
    ops.add_file(
        ops.debug, "pid-cgroup",
        SpecialFile(Attr(0, 0, 0o666), lambda o, f: QueryHandle(o, pid_cgroup)),
    )


def fuse_options(options: MountOptions) -> set[str]:
    opts = set(pyfuse3.default_options) | {"fsname=dmemfs", "subtype=dmemfs"}
    if options.allow_other:
        opts.add("allow_other")
    if options.debug:
        opts.add("debug")
    return opts


async def _serve() -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s, unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def run(options: MountOptions, ready: Callable[[], None] = lambda: None) -> None:
    """Mount, call ``ready`` once the kernel has the mount, serve until unmounted or signalled."""
    ops = build(options)
    try:
        pyfuse3.init(ops, options.mountpoint, fuse_options(options))
    except RuntimeError as e:
        raise OSError(errno.EIO, f"cannot mount at {options.mountpoint}: {e}") from None
    try:
        ready()
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", options.mountpoint)
