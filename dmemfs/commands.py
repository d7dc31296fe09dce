"""What the command-line verbs do (cli.py only parses arguments)."""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dmemfs import lifecycle, mounts
from dmemfs.cli import UserError
from dmemfs.client import error_reason
from dmemfs.device.config import DeviceConfig

log = logging.getLogger(__name__)


# -- mount / umount / list -------------------------------------------------------------------


def _stale_hint(entry: mounts.MountEntry) -> str:
    if entry.is_dmemfs:
        return f"clean it with: dmemfs umount {entry.mountpoint}"
    return f"clean it with: fusermount3 -u -z {entry.mountpoint}"


def check_mountpoint(mountpoint: str) -> None:
    """Clear one-line errors for a missing, busy or stale mountpoint."""
    entry = mounts.find_mount(mountpoint)
    if entry is not None:
        health = mounts.probe(entry)
        if health.state == "stale":
            raise UserError(f"{mountpoint} is a stale FUSE mount (its daemon died); "
                            + _stale_hint(entry))
        raise UserError(f"{mountpoint} is already a mount point ({entry.describe()}); "
                        "unmount it first")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise UserError(f"mountpoint {mountpoint} does not exist (create it with mkdir)") from None
    except OSError as e:
        raise UserError(f"mountpoint {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"mountpoint {mountpoint} is not a directory")
    if not os.path.exists("/dev/fuse"):
        raise UserError(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container "
            "the device (--device /dev/fuse)"
        )


def mount(args: argparse.Namespace, devices: list[DeviceConfig], argv: Sequence[str]) -> int:
    """``dmemfs mount``: in the background, run ``argv`` again as a foreground daemon and
    return once it reports the mount ready."""
    mountpoint = os.path.abspath(args.mountpoint)
    if args.foreground:
        return _mount_foreground(args, mountpoint, devices)
    check_mountpoint(mountpoint)
    log_path = os.path.abspath(args.log) if args.log else lifecycle.default_log_path(mountpoint)
    log_fd = lifecycle.open_log(log_path, default=not args.log)
    try:
        daemon = lifecycle.spawn(argv, log_fd, log_path)
    finally:
        os.close(log_fd)
    print(f"dmemfs: mounted {mountpoint} (daemon pid {daemon.proc.pid}, log {log_path})")
    return 0


def _mount_foreground(
    args: argparse.Namespace, mountpoint: str, devices: list[DeviceConfig]
) -> int:
    from dmemfs.mount import MountOptions, run
    from dmemfs.profile import get_profile

    ready = lifecycle.ReadyPipe(args.ready_fd)
    spawned = args.ready_fd is not None
    try:
        if args.log and not spawned:
            raise UserError("--log is for the background daemon; in the foreground the log "
                            "goes to standard error")
        check_mountpoint(mountpoint)
    except UserError as e:
        ready.failed(str(e))
        raise
    options = MountOptions(
        mountpoint=mountpoint,
        devices=devices,
        profile=get_profile(args.profile).with_options(pinning=args.pinning),
        allow_other=args.allow_other,
        debug=args.debug,
        selftest=args.selftest,
        page_cache=args.page_cache,
        state=os.path.abspath(args.state) if args.state else None,
        lineage=args.lineage,
    )
    os.chdir("/")  # every path is absolute now; do not keep a directory busy

    def on_ready() -> None:
        log.info("ready: serving %s (pid %d)", mountpoint, os.getpid())
        ready.ready()
        if not spawned:
            print(f"dmemfs: mounted {mountpoint} (daemon pid {os.getpid()}, in the "
                  f"foreground: stop it with Ctrl-C or dmemfs umount {mountpoint})", flush=True)

    try:
        run(options, ready=on_ready)
    except OSError as e:
        reason = str(e.strerror or e)
        ready.failed(reason)
        raise UserError(reason) from None
    return 0


def _busy_message(mountpoint: str, fusermount_error: str) -> str:
    held = [h.describe() for h in mounts.holders(mountpoint)]
    held += [f"a mount at {m.mountpoint} ({m.fstype})" for m in mounts.submounts(mountpoint)]
    if not held:
        return f"cannot unmount {mountpoint}: {fusermount_error}"
    shown = ", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")
    return (f"cannot unmount {mountpoint}: busy, held by {shown}; stop them or use "
            f"dmemfs umount --lazy {mountpoint}")


def _fusermount_error(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    text = lines[-1] if lines else f"fusermount3 exited with status {res.returncode}"
    return text.split(": ", 1)[1] if text.startswith("fusermount") and ": " in text else text


def umount(mountpoint: str, *, lazy: bool = False) -> int:
    mountpoint = os.path.abspath(mountpoint)
    entry = mounts.find_mount(mountpoint)
    if entry is None:
        raise UserError(f"{mountpoint} is not a mount point")
    if not entry.is_dmemfs:
        raise UserError(f"{mountpoint} is not a dmemfs mount ({entry.describe()}); "
                        "not unmounting it")
    health = mounts.probe(entry)
    if health.state == "stale":
        res = lifecycle.fusermount("-u", "-z", mountpoint)
        if res.returncode:
            raise UserError(f"cannot clean stale mount {mountpoint}: {_fusermount_error(res)}")
        print(f"dmemfs: cleaned stale mount {mountpoint}")
        return 0
    pid = health.pid
    if lazy:
        res = lifecycle.fusermount("-u", "-z", mountpoint)
        if res.returncode:
            raise UserError(f"cannot unmount {mountpoint}: {_fusermount_error(res)}")
        if pid is not None and not lifecycle.wait_exit(pid, timeout=1.0):
            print(f"dmemfs: detached {mountpoint}; its daemon (pid {pid}) serves the processes "
                  "still using it and exits after the last one lets go")
        return 0
    res = lifecycle.fusermount("-u", mountpoint)
    if res.returncode:
        error = _fusermount_error(res)
        if "busy" in error.lower():
            raise UserError(_busy_message(mountpoint, error))
        raise UserError(f"cannot unmount {mountpoint}: {error}")
    if pid is not None and not lifecycle.wait_exit(pid):
        raise UserError(f"unmounted {mountpoint}, but its daemon (pid {pid}) did not exit "
                        f"within {lifecycle.EXIT_TIMEOUT:.0f} s")
    return 0


def list_mounts(*, as_json: bool = False) -> str:
    """``dmemfs list``: every dmemfs mount of this mount namespace and its health."""
    entries = mounts.dmemfs_mounts()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(entries)))) as ex:
        healths = list(ex.map(mounts.probe, entries))
    rows = []
    for entry, health in zip(entries, healths, strict=True):
        rows.append({
            "mountpoint": entry.mountpoint,
            "owner": entry.owner,
            "allow_other": entry.allow_other,
            "health": health.state,
            "reason": None if health.ok else health.reason,
            "pid": health.pid,
            "profile": health.daemon.get("profile"),
            "pinning": health.daemon.get("pinning"),
        })
    if as_json:
        return json.dumps(rows, indent=2) + "\n"
    if not rows:
        return "no dmemfs mounts\n"
    table = [("MOUNTPOINT", "PID", "PROFILE", "PINNING", "OWNER", "HEALTH")]
    for row in rows:
        table.append((str(row["mountpoint"]), _dash(row["pid"]), _dash(row["profile"]),
                      _dash(row["pinning"]), _dash(row["owner"]), str(row["health"])))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  "
                   + r[-1] + "\n" for r in table)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _require_live(mountpoint: str) -> mounts.Health:
    """The health of a live dmemfs mount at ``mountpoint``; anything else is a UserError
    saying what is there instead."""
    mountpoint = os.path.abspath(mountpoint)
    entry = mounts.find_mount(mountpoint)
    if entry is None:
        raise UserError(f"{mountpoint} is not a mount point (no dmemfs mounted there)")
    if not entry.is_dmemfs:
        raise UserError(f"{mountpoint} is not a dmemfs mount ({entry.describe()})")
    health = mounts.probe(entry)
    if health.state == "stale":
        raise UserError(f"{health.reason}; {_stale_hint(entry)}")
    if not health.ok:
        raise UserError(health.reason)
    return health


# -- processes ---------------------------------------------------------------------------------

#: Why a move into a cgroup fails, in the words of the kernel's rules (cgroup_migrate_vet_dst,
#: cgroup_procs_write_permission).
_JOIN_ERRORS = {
    errno.EBUSY: "a cgroup with controllers enabled in its cgroup.subtree_control cannot hold "
                 "processes (the no-internal-process rule); join a leaf cgroup",
    errno.EACCES: "moving needs write access to cgroup.procs of the target and of the common "
                  "ancestor of the source and target cgroups",
    errno.ENODEV: "the cgroup was removed",
    errno.ENOENT: "the cgroup was removed",
}


def exec_in(cgroup_dir: str, cmd: list[str]) -> int:
    if not os.path.isdir(cgroup_dir):
        raise UserError(f"exec: {cgroup_dir}: no such directory")
    procs = os.path.join(cgroup_dir, "cgroup.procs")
    if not os.path.isfile(procs):
        raise UserError(f"exec: {cgroup_dir} is not a cgroup directory (it has no cgroup.procs)")
    program = shutil.which(cmd[0])
    if program is None:
        if "/" not in cmd[0]:
            why = "command not found"
        elif os.path.exists(cmd[0]):
            why = "not an executable file"
        else:
            why = "no such file"
        raise UserError(f"exec: {cmd[0]}: {why}")
    try:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except OSError as e:
        rule = _JOIN_ERRORS.get(e.errno or 0)
        raise UserError(f"exec: cannot join {cgroup_dir}: {e.strerror}"
                        + (f" ({rule})" if rule else "")) from None
    try:
        os.execv(program, cmd)
    except OSError as e:
        raise UserError(f"exec: {cmd[0]}: {e.strerror}") from None
    return 127  # not reached


def cgroup_of(mountpoint: str, pid: int) -> str:
    _require_live(mountpoint)
    path = os.path.join(mountpoint, "debug", "pid-cgroup")
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise UserError(f"{mountpoint}: cannot open debug/pid-cgroup: {e.strerror}") from None
    try:
        os.write(fd, str(pid).encode())
        return os.read(fd, 4096).decode().strip()
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise UserError(f"no process {pid}") from None
        raise UserError(f"cgroup-of {pid}: {e.strerror}") from None
    finally:
        os.close(fd)


# -- xe -----------------------------------------------------------------------------------------


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def xe(device: str, verb: str, args: list[str], hold: bool) -> int:
    """One ioctl on a fresh client; print the reply; with ``hold`` keep the client open."""
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as e:
        raise UserError(f"cannot open {device}: {e.strerror}") from None
    try:
        try:
            os.write(fd, " ".join([verb, *args]).encode() + b"\n")
        except OSError as e:
            reason = error_reason(_read_all(fd))
            raise UserError(f"{verb}: {e.strerror}" + (f": {reason}" if reason else "")) from None
        sys.stdout.write(_read_all(fd))
        sys.stdout.flush()
        if hold:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, lambda signum, frame: None)
            signal.pause()
    finally:
        os.close(fd)
    return 0


# -- status ---------------------------------------------------------------------------------

#: The dmem files a status reads per cgroup (a file a cgroup lacks is left out).
STATUS_FILES = ("current", "peak", "pinned", "min", "low", "max")


def human(n: int | str) -> str:
    if isinstance(n, str):
        return n
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20),
                        ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.1f} {unit}" if value != int(value) else f"{int(value)} {unit}"
    return f"{n} B"


def _parse_keyed(text: str) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(" ")
        if key:
            out[key] = int(value) if value.isdigit() else value
    return out


def _read_at(dir_fd: int | None, path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return _read_all(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass
class CgroupStatus:
    path: str
    #: Depth below the first cgroup shown.
    depth: int
    #: dmem file name (``current`` …) → region → value; a file the cgroup lacks is absent.
    files: dict[str, dict[str, int | str]] = field(default_factory=dict)
    evictions: int = 0
    #: Device (PCI address) → times an exported buffer moved under this cgroup's dynamic
    #: importers on that device (dma-buf stalls).
    stalls: dict[str, int] = field(default_factory=dict)

    @property
    def dmem(self) -> bool:
        """The parent enabled dmem (the cgroup has dmem files)."""
        return "current" in self.files

    def regions(self, names: list[str]) -> dict[str, dict[str, int | str]]:
        """region → {file: value} for the files the cgroup has."""
        if not self.dmem:
            return {}
        return {r: {k: v.get(r, 0) for k, v in self.files.items()} for r in names}


@dataclass
class Status:
    """What ``dmemfs status`` shows, as plain data."""

    mountpoint: str
    daemon: dict[str, str]
    #: One per device: ``pci``, its ``regions`` (name, dmem_region, size, used, pinned) and
    #: ``stalls`` of its dma-buf importers by cgroup.
    devices: list[dict[str, Any]]
    #: The dmem regions, in the order of dmem.capacity.
    regions: list[str]
    cgroups: list[CgroupStatus]

    def as_dict(self) -> dict[str, Any]:
        pid = self.daemon.get("pid", "")
        return {
            "mountpoint": self.mountpoint,
            "daemon": {"pid": int(pid) if pid.isdigit() else None,
                       "profile": self.daemon.get("profile"),
                       "pinning": self.daemon.get("pinning"),
                       "lineage": self.daemon.get("lineage"),
                       # --state: "saved PATH" or "NOT saved: REASON"; None without it
                       "state": self.daemon.get("state")},
            "devices": self.devices,
            "regions": self.regions,
            "cgroups": [{"path": c.path, "dmem": c.dmem, "evictions": c.evictions,
                         "stalls": c.stalls, "regions": c.regions(self.regions)}
                        for c in self.cgroups],
        }

    def text(self) -> str:
        d = self.daemon
        lines = [f"dmemfs at {self.mountpoint}: profile {d.get('profile', '?')}, "
                 f"pinning {d.get('pinning', '?')}, daemon pid {d.get('pid', '?')}"]
        if d.get("state", "").startswith("NOT saved"):  # --state cannot save: say so
            lines.append(f"state {d['state']}")
        for device in self.devices:
            lines.append(f"device {device['pci']} (used / size, pinned):")
            for r in device["regions"]:
                lines.append(f"  {r['dmem_region'] or r['name']}  {human(r['used'])} / "
                             f"{human(r['size'])}, {human(r['pinned'])} pinned")
            stalls = sum(device["stalls"].values())
            if stalls:
                lines.append(f"  dma-buf importers stalled {stalls} times")
        lines.append("cgroups (per region: current, peak, pinned; limits min/low/max):")
        for c in self.cgroups:
            indent = "  " * c.depth
            if not c.dmem:
                lines.append(f"{indent}{c.path}  (dmem not enabled by the parent)")
                continue
            events = [f"buffers evicted {c.evictions} times"] if c.evictions else []
            events += [f"importers stalled {n} times on {pci}"
                       for pci, n in sorted(c.stalls.items())]
            lines.append(f"{indent}{c.path}" + (f"  ({', '.join(events)})" if events else ""))
            for region, values in c.regions(self.regions).items():
                parts = [f"current {human(values['current'])}"]
                if "peak" in values:
                    parts.append(f"peak {human(values['peak'])}")
                parts.append(f"pinned {human(values.get('pinned', 0))}")
                if "max" in values:
                    parts.append("min {} low {} max {}".format(
                        *(human(values[k]) for k in ("min", "low", "max"))))
                lines.append(f"{indent}  {region}: " + ", ".join(parts))
        return "\n".join(lines) + "\n"


def walk(root: str, start: str = "/", max_depth: int | None = None
         ) -> Iterator[tuple[str, int, int]]:
    """The cgroups of ``root`` (a cgroup2 directory) from ``start`` down, in sorted pre-order:
    ``(cgroup path, depth below start, directory fd)``; the fd is valid during the step.

    Iterative, with one directory open at a time (children are reached with ``openat`` and
    left through ``..``), so neither nesting depth nor PATH_MAX limits it.
    """
    fd = os.open(os.path.join(root, start.strip("/")), os.O_RDONLY | os.O_DIRECTORY)
    base = [p for p in start.split("/") if p]
    parts: list[str] = []
    pending: list[list[str]] = []  # per level of the current path: children still to visit
    try:
        while True:
            yield "/" + "/".join(base + parts), len(parts), fd
            children: list[str] = []
            if max_depth is None or len(parts) < max_depth:
                with os.scandir(fd) as it:
                    children = sorted((e.name for e in it if e.is_dir(follow_symlinks=False)),
                                      reverse=True)
            pending.append(children)
            while True:
                while pending and not pending[-1]:
                    pending.pop()
                    if pending:
                        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                        os.close(fd)
                        fd = parent
                        parts.pop()
                if not pending:
                    return
                name = pending[-1].pop()
                try:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=fd)
                except FileNotFoundError:
                    continue  # removed meanwhile
                os.close(fd)
                fd = child
                parts.append(name)
                break
    finally:
        os.close(fd)


def status(mountpoint: str, cgroup: str = "/", depth: int | None = None) -> Status:
    """The tree of a live mount from ``cgroup`` down (``depth`` levels at most)."""
    health = _require_live(mountpoint)
    mountpoint = os.path.abspath(mountpoint)
    root = os.path.join(mountpoint, "cgroup")
    start = "/" + "/".join(p for p in cgroup.split("/") if p)
    if not os.path.isdir(os.path.join(root, start.lstrip("/"))):
        raise UserError(f"no cgroup {start} in {mountpoint}")
    regions = list(_parse_keyed(_read_at(None, os.path.join(root, "dmem.capacity")) or ""))
    devices = []
    evictions: dict[str, int] = {}
    stalls: dict[str, dict[str, int]] = {}  # cgroup → device → count
    dri = os.path.join(mountpoint, "debug", "dri")
    for pci in sorted(os.listdir(dri)) if os.path.isdir(dri) else []:
        counts = _parse_keyed(_read_at(None, os.path.join(dri, pci, "eviction_counts")) or "")
        for path, count in counts.items():
            evictions[path] = evictions.get(path, 0) + int(count)
        rows = (_read_at(None, os.path.join(dri, pci, "regions")) or "").splitlines()[1:]
        device_regions = []
        for row in rows:
            name, dmem_region, size, used, pinned = row.split()
            device_regions.append({
                "name": name, "dmem_region": None if dmem_region == "-" else dmem_region,
                "size": int(size), "used": int(used), "pinned": int(pinned)})
        device_stalls = {path: int(n) for path, n in _parse_keyed(
            _read_at(None, os.path.join(dri, pci, "dmabuf_stalls")) or "").items()}
        for path, n in device_stalls.items():
            stalls.setdefault(path, {})[pci] = n
        devices.append({"pci": pci, "regions": device_regions, "stalls": device_stalls})
    cgroups = []
    for path, level, fd in walk(root, start, depth):
        c = CgroupStatus(path, level, evictions=evictions.get(path, 0),
                         stalls=stalls.get(path, {}))
        for name in STATUS_FILES:
            text = _read_at(fd, f"dmem.{name}")
            if text is not None:
                c.files[name] = _parse_keyed(text)
        cgroups.append(c)
    return Status(mountpoint, health.daemon, devices, regions, cgroups)


# -- as-cgroup2 -----------------------------------------------------------------------------


def as_cgroup2(mountpoint: str, cmd: list[str], *, at: str | None = None,
               statfs: bool = False, debugfs: bool = False) -> int:
    """See dmemfs/ascgroup2.py."""
    from dmemfs.ascgroup2 import as_cgroup2 as run

    return run(mountpoint, cmd, at=at, statfs=statfs, debugfs=debugfs)
