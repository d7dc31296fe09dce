"""What the command-line verbs do (cli.py only parses arguments)."""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import time

from dmemfs.cli import UserError
from dmemfs.device.config import DeviceConfig

#: Seconds ``dmemfs mount`` waits for the daemon to report the mount ready.
READY_TIMEOUT = 30.0
#: Seconds ``dmemfs umount`` waits for the daemon to exit.
EXIT_TIMEOUT = 10.0


# -- mount / umount ---------------------------------------------------------------------------


def check_mountpoint(mountpoint: str) -> None:
    """Clear one-line errors for a missing, busy or stale mountpoint."""
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise UserError(f"mountpoint {mountpoint} does not exist (create it with mkdir)") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UserError(
                f"{mountpoint} is a stale FUSE mount (its daemon died); "
                f"clean it with: dmemfs umount {mountpoint}"
            ) from None
        raise UserError(f"mountpoint {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise UserError(f"{mountpoint} is already a mount point (unmount it first)")
    if not os.path.exists("/dev/fuse"):
        raise UserError(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container "
            "the device (--device /dev/fuse)"
        )


def _log_path(mountpoint: str) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, "dmemfs" + mountpoint.replace("/", "_") + ".log")


def _daemon_argv(args: argparse.Namespace, mountpoint: str, ready_fd: int) -> list[str]:
    argv = [sys.executable, "-m", "dmemfs", "mount", mountpoint, "--foreground",
            "--ready-fd", str(ready_fd), "--profile", args.profile, "--pinning", args.pinning]
    for spec in args.device:
        argv += ["--device", spec]
    if args.config:
        argv += ["--config", os.path.abspath(args.config)]
    if args.allow_other:
        argv.append("--allow-other")
    if args.debug:
        argv.append("--debug")
    if args.selftest:
        argv.append("--selftest")
    if args.page_cache:
        argv.append("--page-cache")
    if args.state:
        argv += ["--state", os.path.abspath(args.state)]
    if args.lineage != "auto":
        argv += ["--lineage", args.lineage]
    return argv


def mount(args: argparse.Namespace, devices: list[DeviceConfig]) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    check_mountpoint(mountpoint)
    if args.foreground:
        return _mount_foreground(args, mountpoint, devices)
    r, w = os.pipe()
    log_path = args.log or _log_path(mountpoint)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            _daemon_argv(args, mountpoint, w), pass_fds=[w], stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=log_file, start_new_session=True, cwd="/",
        )
    os.close(w)
    message = _read_ready(r, proc)
    if message != "ok":
        try:
            proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise UserError(message or f"the daemon exited with status {proc.returncode}; "
                        f"see {log_path}")
    os.stat(os.path.join(mountpoint, "cgroup"))  # served: the daemon answers requests
    print(f"dmemfs: mounted {mountpoint} (daemon pid {proc.pid}, log {log_path})")
    return 0


def _read_ready(fd: int, proc: subprocess.Popen[bytes]) -> str:
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                return f"the daemon did not become ready within {READY_TIMEOUT:.0f} s"
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _mount_foreground(
    args: argparse.Namespace, mountpoint: str, devices: list[DeviceConfig]
) -> int:
    from dmemfs.mount import MountOptions, run
    from dmemfs.profile import get_profile

    ready_fd = args.ready_fd

    def report(message: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, message.encode() + b"\n")
                os.close(ready_fd)
            except OSError:
                pass
            ready_fd = None

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
    try:
        run(options, ready=lambda: report("ok"))
    except OSError as e:
        report(str(e.strerror or e))
        raise UserError(str(e.strerror or e)) from None
    return 0


def _mount_entry(mountpoint: str) -> tuple[str, str] | None:
    """(fstype, source) of the mount at ``mountpoint`` from /proc/self/mountinfo."""
    entry = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            if point == mountpoint:  # the last (topmost) mount at that point wins
                sep = fields.index("-")
                entry = (fields[sep + 1], fields[sep + 2])
    return entry


def _daemon_pid(mountpoint: str) -> int | None:
    try:
        with open(os.path.join(mountpoint, "debug", "daemon")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "pid":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def _fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise UserError("fusermount3 not found (install the fuse3 package)")
    return subprocess.run([tool, *args], capture_output=True, text=True)


def umount(mountpoint: str) -> int:
    mountpoint = os.path.abspath(mountpoint)
    entry = _mount_entry(mountpoint)
    if entry is None or not entry[0].startswith("fuse"):
        raise UserError(f"{mountpoint} is not a dmemfs mount")
    try:
        os.stat(mountpoint)
        stale = False
    except OSError as e:
        stale = e.errno == errno.ENOTCONN
    if stale:
        res = _fusermount("-u", "-z", mountpoint)
        if res.returncode:
            raise UserError(f"cannot clean stale mount {mountpoint}: {res.stderr.strip()}")
        print(f"dmemfs: cleaned stale mount {mountpoint}")
        return 0
    pid = _daemon_pid(mountpoint)
    res = _fusermount("-u", mountpoint)
    if res.returncode:
        msg = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"
        raise UserError(f"cannot unmount {mountpoint}: {msg}")
    if pid is not None:
        deadline = time.monotonic() + EXIT_TIMEOUT
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- processes ---------------------------------------------------------------------------------


def exec_in(cgroup_dir: str, cmd: list[str]) -> int:
    procs = os.path.join(cgroup_dir, "cgroup.procs")
    try:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise UserError(f"cannot join {cgroup_dir}: {e.strerror}") from None
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        raise UserError(f"{cmd[0]}: {e.strerror}") from None
    return 127  # not reached


def cgroup_of(mountpoint: str, pid: int) -> str:
    path = os.path.join(mountpoint, "debug", "pid-cgroup")
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise UserError(f"{mountpoint} is not a dmemfs mount ({e.strerror})") from None
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


def xe(device: str, verb: str, args: list[str], hold: bool) -> int:
    """One ioctl on a fresh client; print the reply; with ``hold`` keep the client open."""
    import signal

    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as e:
        raise UserError(f"cannot open {device}: {e.strerror}") from None
    try:
        try:
            os.write(fd, " ".join([verb, *args]).encode() + b"\n")
        except OSError as e:
            raise UserError(f"{verb}: {e.strerror}") from None
        while chunk := os.read(fd, 65536):
            sys.stdout.write(chunk.decode())
        sys.stdout.flush()
        if hold:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, lambda signum, frame: None)
            signal.pause()
    finally:
        os.close(fd)
    return 0


# -- status ---------------------------------------------------------------------------------


def human(n: int | str) -> str:
    if isinstance(n, str):
        return n
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20),
                        ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.1f} {unit}" if value != int(value) else f"{int(value)} {unit}"
    return f"{n} B"


def _read_keyed(path: str) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().rpartition(" ")
                if key:
                    out[key] = int(value) if value.isdigit() else value
    except OSError:
        pass
    return out


def _read_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def _state_warning(mountpoint: str) -> list[str]:
    """--state: the daemon's "state NOT saved: REASON" line, when saving fails."""
    return [line for line in _read_lines(os.path.join(mountpoint, "debug", "daemon"))
            if line.startswith("state NOT saved")]


def status(mountpoint: str) -> str:
    root = os.path.join(mountpoint, "cgroup")
    if not os.path.isdir(root):
        raise UserError(f"{mountpoint} is not a dmemfs mount")
    daemon = _read_keyed(os.path.join(mountpoint, "debug", "daemon"))
    capacity = _read_keyed(os.path.join(root, "dmem.capacity"))
    lines = [f"dmemfs at {mountpoint}: profile {daemon.get('profile', '?')}, "
             f"pinning {daemon.get('pinning', '?')}, daemon pid {daemon.get('pid', '?')}"]
    lines += _state_warning(mountpoint)
    evictions: dict[str, int] = {}
    dri = os.path.join(mountpoint, "debug", "dri")
    for pci in sorted(os.listdir(dri)) if os.path.isdir(dri) else []:
        for path, count in _read_keyed(os.path.join(dri, pci, "eviction_counts")).items():
            evictions[path] = evictions.get(path, 0) + int(count)
        lines.append(f"device {pci} (used / size, pinned):")
        for row in _read_lines(os.path.join(dri, pci, "regions"))[1:]:
            name, dmem_region, size, used, pinned = row.split()
            label = name if dmem_region == "-" else dmem_region
            lines.append(f"  {label}  {human(int(used))} / {human(int(size))}, "
                         f"{human(int(pinned))} pinned")
    lines.append("cgroups (per region: current, peak, pinned; limits min/low/max):")
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        name = "/" if rel == "." else "/" + rel
        depth = 0 if rel == "." else rel.count("/") + 1
        indent = "  " * depth
        files = {n: _read_keyed(os.path.join(dirpath, f"dmem.{n}"))
                 for n in ("current", "peak", "pinned", "min", "low", "max")}
        if not files["current"]:
            lines.append(f"{indent}{name}  (dmem not enabled by the parent)")
            continue
        evicted = f"  (buffers evicted {evictions[name]} times)" if name in evictions else ""
        lines.append(f"{indent}{name}{evicted}")
        for region in capacity:
            cur = files["current"].get(region, 0)
            parts = [f"current {human(cur)}"]
            if files["peak"]:
                parts.append(f"peak {human(files['peak'].get(region, 0))}")
            parts.append(f"pinned {human(files['pinned'].get(region, 0))}")
            if files["max"]:
                parts.append("min {} low {} max {}".format(
                    *(human(files[k].get(region, 0)) for k in ("min", "low", "max"))))
            lines.append(f"{indent}  {region}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


# -- as-cgroup2 -----------------------------------------------------------------------------

DEBUGFS = "/sys/kernel/debug"
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def _mount_escape(path: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def as_cgroup2(mountpoint: str, cmd: list[str], *, at: str | None = None,
               statfs: bool = False, debugfs: bool = False) -> int:
    """Exec ``cmd`` in a private mount namespace whose /proc/self/mounts shows the mount's
    ``cgroup/`` (or ``at``, where it is bound too) as the cgroup2 filesystem; with ``statfs``,
    an LD_PRELOAD shim makes statfs() report CGROUP2_SUPER_MAGIC there."""
    cgroup_root = os.path.realpath(os.path.join(os.path.abspath(mountpoint), "cgroup"))
    if not os.path.isfile(os.path.join(cgroup_root, "cgroup.controllers")):
        raise UserError(f"{mountpoint} is not a dmemfs mount")
    if at is not None:
        at = os.path.abspath(at)
        if not os.path.isdir(at):
            raise UserError(f"as-cgroup2: --at {at}: no such directory")
    env = dict(os.environ)
    if statfs:
        from dmemfs.shim import ShimError, build

        try:
            shim = build()
        except ShimError as e:
            raise UserError(f"as-cgroup2 --statfs: {e}") from None
        env["LD_PRELOAD"] = " ".join(filter(None, [shim, env.get("LD_PRELOAD")]))
        env["DMEMFS_CGROUP2_ROOTS"] = ":".join(filter(None, [cgroup_root, at]))
    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            err = ctypes.get_errno()
            raise UserError(f"as-cgroup2: {what}: {os.strerror(err)} (needs root)")

    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    if at is not None:
        check(libc.mount(cgroup_root.encode(), at.encode(), None, MS_BIND, None),
              f"binding the cgroup root over {at}")
    if debugfs:
        selftest = os.path.join(os.path.abspath(mountpoint), "debug", "dmem_selftest")
        if not os.path.isdir(selftest):
            raise UserError("as-cgroup2 --debugfs: the mount has no debug/dmem_selftest "
                            "(mount with --selftest)")
        check(libc.mount(b"dmemfs-debugfs", DEBUGFS.encode(), b"tmpfs", 0, b"mode=0700"),
              f"mounting a tmpfs over {DEBUGFS}")
        os.mkdir(os.path.join(DEBUGFS, "dmem_selftest"))
        check(libc.mount(selftest.encode(), os.path.join(DEBUGFS, "dmem_selftest").encode(),
                         None, MS_BIND, None), "binding dmem_selftest")
    with tempfile.NamedTemporaryFile("w", prefix="dmemfs-mounts.", delete=False) as f:
        f.write(f"cgroup2 {_mount_escape(at or cgroup_root)} cgroup2 "
                "rw,nosuid,nodev,noexec,relatime 0 0\n")
    try:
        target = f"/proc/{os.getpid()}/mounts".encode()
        check(libc.mount(f.name.encode(), target, None, MS_BIND, None), "binding mounts file")
    finally:
        os.unlink(f.name)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        raise UserError(f"{cmd[0]}: {e.strerror}") from None
    return 127  # not reached
