"""Command line: argument parsing and one-line errors. The work happens elsewhere."""

from __future__ import annotations

import argparse
import json
import logging
import os
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
from dmemfs.lifecycle import DaemonError
from dmemfs.profile import PINNING_MODES, PROFILE_CHOICES


class UserError(Exception):
    """Printed as one line ``dmemfs: <message>`` with exit status 1."""


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _nonnegative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _command(sub: argparse._SubParsersAction[_Parser], name: str, summary: str,
             description: str) -> _Parser:
    """A subcommand: ``summary`` in ``dmemfs --help``, ``description`` in its own help."""
    return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}"
                          f"{summary[1:]}. {description}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dmemfs",
        description="A FUSE filesystem that behaves like the Linux cgroup v2 filesystem with "
        "the dmem (device memory) controller, with simulated Intel xe GPUs. Errors are one "
        "line on standard error with a non-zero exit status.",
        epilog="Run 'dmemfs COMMAND --help' for a command's options.",
    )
    p.add_argument("-V", "--version", action="version", version=f"dmemfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    m = _command(sub, "mount", "mount a dmemfs tree and leave a daemon serving it",
                 "Returns once the mount is ready and prints the daemon's pid and log file "
                 "(by default /run/dmemfs/MOUNT.log as root, else $XDG_RUNTIME_DIR/dmemfs/; "
                 "each mount starts a new log and keeps the previous one as .log.1). "
                 "SIGINT or SIGTERM to the daemon unmount cleanly.")
    m.add_argument("mountpoint", help="an empty directory")
    m.add_argument("--device", action="append", default=[], metavar="SPEC",
                   help="xe,pci=0000:03:00.0,vram0=16G[,vram1=16G][,system=64G]; repeatable "
                   "(default: one xe at 0000:03:00.0 with 16 GiB of vram0)")
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
    m.add_argument("--foreground", "-f", action="store_true",
                   help="serve in this process; log to standard error")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount (permissions are enforced; a non-root "
                   "user needs user_allow_other in /etc/fuse.conf)")
    m.add_argument("--debug", action="store_true", help="log every request")
    m.add_argument("--log", metavar="FILE",
                   help="the background daemon's log file, appended to (default: see above)")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = _command(sub, "umount", "unmount a dmemfs tree and wait for its daemon to exit",
                 "Refuses mounts that are not dmemfs. A stale mount (its daemon died) is "
                 "cleaned. When the mount is busy, names the processes that use it.")
    u.add_argument("mountpoint")
    u.add_argument("--lazy", "-l", action="store_true",
                   help="detach now even if busy; the daemon exits when the last user is done")

    lst = _command(sub, "list", "list the dmemfs mounts of this machine",
                   "One line per mount: mountpoint, daemon pid, profile, pinning, the uid "
                   "that mounted it and its health (ok; stale: the daemon died; no-access: "
                   "another user's mount without --allow-other; not-responding).")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")

    s = _command(sub, "status", "show a mount's devices and cgroup tree with usage and limits",
                 "Exits non-zero, with the reason, when MOUNT is not a live dmemfs mount.")
    s.add_argument("mountpoint")
    s.add_argument("cgroup", nargs="?", default="/", metavar="CGROUP",
                   help="show only this cgroup and its descendants (e.g. /job)")
    s.add_argument("--depth", type=_nonnegative, metavar="N",
                   help="show N levels of descendants at most (0: the cgroup alone)")
    s.add_argument("--json", action="store_true",
                   help="print JSON (limits as numbers or \"max\") instead of text")

    e = _command(sub, "exec", "run a command inside a cgroup (like cgexec)",
                 "Writes its own pid to CGROUP_DIR/cgroup.procs, then executes CMD.")
    e.add_argument("cgroup_dir", metavar="CGROUP_DIR", help="e.g. /mnt/dmem/cgroup/job")
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD …")

    c = _command(sub, "cgroup-of", "print a process's cgroup like /proc/PID/cgroup",
                 "Prints 0::/path as the kernel's /proc/PID/cgroup would on the mount.")
    c.add_argument("mountpoint")
    c.add_argument("pid", type=int)

    x = _command(sub, "xe", "send one request to a simulated xe device file",
                 "Opens DEVICE (one DRM client), writes one request and prints the reply. "
                 "A failed request prints the errno and the device's reason.")
    x.add_argument("device", help="the device file, e.g. MOUNT/dev/dri/renderD128")
    x.add_argument("verb", help="GEM_CREATE, GEM_CLOSE, VM_CREATE, VM_DESTROY, QUERY, EXEC, "
                   "BO_INFO")
    x.add_argument("args", nargs="*", metavar="key=value")
    x.add_argument("--hold", action="store_true",
                   help="keep the device open (and the BOs alive) until interrupted")

    a = _command(sub, "as-cgroup2", "run CMD where the mount's cgroup/ looks like cgroup2",
                 "Runs CMD in a private mount namespace (needs root) whose /proc/self/mounts "
                 "declares MOUNT/cgroup a cgroup2 file system.")
    a.add_argument("--at", metavar="PATH",
                   help="also bind the cgroup root over PATH (e.g. /sys/fs/cgroup)")
    a.add_argument("--debugfs", action="store_true",
                   help="show MOUNT/debug/dmem_selftest at /sys/kernel/debug/dmem_selftest")
    a.add_argument("--statfs", action="store_true",
                   help="instead of the seccomp supervisor, LD_PRELOAD a shim so that statfs() "
                   "reports CGROUP2_SUPER_MAGIC there (dynamically linked C programs only)")
    a.add_argument("mountpoint")
    # Options are taken anywhere before "--": main() splits CMD off first.
    a.add_argument("cmd", nargs="*", metavar="-- CMD …")

    comp = _command(sub, "completion", "print a shell completion script",
                    "Load it with: source <(dmemfs completion bash), or save it as "
                    "/etc/bash_completion.d/dmemfs.")
    comp.add_argument("shell", choices=["bash"])
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


def _command_line(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UserError(f"{args.command}: no command given (use: -- CMD …)")
    return cmd


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``as-cgroup2`` takes its options anywhere before ``--``: split the command off."""
    words = [w for w in argv if not w.startswith("-")]
    if words[:1] == ["as-cgroup2"] and "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, command = _split_command(argv)
    args = parser().parse_args(options)
    if command is not None:
        args.cmd = command
    try:
        return _dispatch(args, argv)
    except (UserError, ConfigError, DaemonError) as e:
        print(f"dmemfs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dmemfs status … | head`: stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    from dmemfs import commands

    if args.command == "mount":
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return commands.mount(args, _devices(args), argv)
    if args.command == "umount":
        return commands.umount(args.mountpoint, lazy=args.lazy)
    if args.command == "list":
        print(commands.list_mounts(as_json=args.json), end="")
        return 0
    if args.command == "exec":
        return commands.exec_in(args.cgroup_dir, _command_line(args))
    if args.command == "cgroup-of":
        print(commands.cgroup_of(args.mountpoint, args.pid))
        return 0
    if args.command == "status":
        st = commands.status(args.mountpoint, args.cgroup, args.depth)
        sys.stdout.write(json.dumps(st.as_dict(), indent=2) + "\n" if args.json else st.text())
        return 0
    if args.command == "xe":
        return commands.xe(args.device, args.verb, args.args, args.hold)
    if args.command == "as-cgroup2":
        return commands.as_cgroup2(args.mountpoint, _command_line(args), at=args.at,
                                   statfs=args.statfs, debugfs=args.debugfs)
    if args.command == "completion":
        from dmemfs.completion import bash

        print(bash(parser()), end="")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
