"""Command line: argument parsing and one-line errors. The work happens elsewhere."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from dmemfs import __version__
from dmemfs.device.config import (
    DEFAULT_DEVICE,
    ConfigError,
    DeviceConfig,
    check_unique,
    load_config,
    parse_device_spec,
)
from dmemfs.profile import PINNING_MODES, PROFILE_CHOICES


class UserError(Exception):
    """Printed as one line ``dmemfs: <message>`` with exit status 1."""


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog.split()[0]} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dmemfs",
        description="A FUSE filesystem that behaves like the cgroup v2 dmem controller, "
        "with simulated xe GPUs.",
    )
    p.add_argument("--version", action="version", version=f"dmemfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mount", help="mount a dmemfs tree (returns once it is ready)")
    m.add_argument("mountpoint")
    m.add_argument("--device", action="append", default=[], metavar="SPEC",
                   help="xe,pci=0000:03:00.0,vram0=16G[,vram1=16G][,system=64G]; repeatable")
    m.add_argument("--config", metavar="FILE", help="TOML file with [[device]] tables")
    m.add_argument("--profile", choices=PROFILE_CHOICES, default="latest",
                   help="emulated kernel: 7.3 (= latest, the default) or 6.14 (Linux 6.14 "
                   "through 7.2)")
    m.add_argument("--pinning", choices=PINNING_MODES, default="intended",
                   help="the pinned-device-memory RFC: off (mainline), intended (default) or "
                   "posted (the series exactly as posted)")
    m.add_argument("--selftest", action="store_true",
                   help="emulate the kernel's dmem_selftest module (debug/dmem_selftest/)")
    m.add_argument("--state", metavar="FILE",
                   help="save the configuration (cgroups, limits, owners, modes) to FILE and "
                   "restore it at mount")
    m.add_argument("--page-cache", action="store_true",
                   help="serve reads through the page cache: files report their real size "
                   "and a cat costs 2-3 requests instead of 4")
    m.add_argument("--lineage", choices=["auto", "trace", "proc"], default="auto",
                   help="where new processes are placed from: fork events (trace, needs root "
                   "and tracefs), the /proc parent chain (proc), or trace when possible "
                   "(auto, the default)")
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount (permissions are enforced)")
    m.add_argument("--debug", action="store_true", help="log every request")
    m.add_argument("--log", metavar="FILE", help="daemon log file when in the background")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="unmount and stop the daemon")
    u.add_argument("mountpoint")

    e = sub.add_parser("exec", help="run a command inside a cgroup (like cgexec)")
    e.add_argument("cgroup_dir", metavar="CGROUP_DIR")
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD …")

    c = sub.add_parser("cgroup-of", help="print a process's cgroup like /proc/PID/cgroup")
    c.add_argument("mountpoint")
    c.add_argument("pid", type=int)

    s = sub.add_parser("status", help="show the cgroup tree with usage and limits")
    s.add_argument("mountpoint")

    x = sub.add_parser("xe", help="send one request to a simulated xe device file")
    x.add_argument("device", help="the device file, e.g. MOUNT/dev/dri/renderD128")
    x.add_argument("verb", help="GEM_CREATE, GEM_CLOSE, VM_CREATE, VM_DESTROY, QUERY, EXEC, "
                   "BO_INFO")
    x.add_argument("args", nargs="*", metavar="key=value")
    x.add_argument("--hold", action="store_true",
                   help="keep the device open (and the BOs alive) until interrupted")

    a = sub.add_parser("as-cgroup2", help="run CMD where the mount's cgroup/ looks like cgroup2")
    a.add_argument("--at", metavar="PATH",
                   help="also bind the cgroup root over PATH (e.g. /sys/fs/cgroup)")
    a.add_argument("--debugfs", action="store_true",
                   help="show MOUNT/debug/dmem_selftest at /sys/kernel/debug/dmem_selftest")
    a.add_argument("--statfs", action="store_true",
                   help="LD_PRELOAD a shim so statfs() reports CGROUP2_SUPER_MAGIC there")
    a.add_argument("mountpoint")
    a.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD …")
    return p


def _devices(args: argparse.Namespace) -> list[DeviceConfig]:
    devices: list[DeviceConfig] = []
    if args.config:
        devices += load_config(args.config)
    devices += [parse_device_spec(s) for s in args.device]
    if not devices:
        devices = [DEFAULT_DEVICE]
    check_unique(devices)
    return devices


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UserError(f"{args.command}: no command given (use: -- CMD …)")
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (UserError, ConfigError) as e:
        print(f"dmemfs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from dmemfs import commands

    if args.command == "mount":
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return commands.mount(args, _devices(args))
    if args.command == "umount":
        return commands.umount(args.mountpoint)
    if args.command == "exec":
        return commands.exec_in(args.cgroup_dir, _command(args))
    if args.command == "cgroup-of":
        print(commands.cgroup_of(args.mountpoint, args.pid))
        return 0
    if args.command == "status":
        print(commands.status(args.mountpoint), end="")
        return 0
    if args.command == "xe":
        return commands.xe(args.device, args.verb, args.args, args.hold)
    if args.command == "as-cgroup2":
        return commands.as_cgroup2(args.mountpoint, _command(args), at=args.at,
                                   statfs=args.statfs, debugfs=args.debugfs)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
