"""``dmemfs as-cgroup2 MOUNT -- CMD``: run CMD where the mount's ``cgroup/`` is cgroup2.

Tools find cgroup v2 by the filesystem type in ``/proc/self/mounts`` or by the ``statfs()``
magic of a path. CMD runs in a private mount namespace where:

- ``/proc/self/mounts`` of CMD's own process is one line declaring the cgroup root (or
  ``--at PATH``, where it is also bound) a ``cgroup2`` filesystem;
- CMD and everything it starts run under the seccomp supervisor (dmemfs/supervisor.py),
  which answers ``statfs``/``fstatfs`` under the cgroup root with cgroup2's answer and
  records device programs attached there; or, with ``--statfs``, an ``LD_PRELOAD`` shim
  does the first part for dynamically linked C programs (where seccomp user notification
  is not available).

The supervisor is forked before the filter is installed (so it is not under it), detaches
(its own session, no terminal, no stdio) and runs until the last process under the filter
exits; this process installs the filter, hands it the listener and execs CMD, which keeps
its pid, its signals and its exit status.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import socket
import sys
import tempfile

from dmemfs.cli import UserError

DEBUGFS = "/sys/kernel/debug"
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
#: Seconds to wait for the supervisor to take the listener.
HANDOVER_TIMEOUT = 10.0
#: A file the supervisor logs to (default: nowhere).
LOG_ENV = "DMEMFS_SUPERVISOR_LOG"


def _mount_escape(path: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def as_cgroup2(mountpoint: str, cmd: list[str], *, at: str | None = None,
               statfs: bool = False, debugfs: bool = False) -> int:
    """Set up the namespace, start the supervisor (unless ``statfs``) and exec ``cmd``."""
    mountpoint = os.path.abspath(mountpoint)
    cgroup_root = os.path.realpath(os.path.join(mountpoint, "cgroup"))
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
    else:
        from dmemfs import seccomp

        reason = seccomp.supported()
        if reason:
            raise UserError(f"as-cgroup2: {reason} (use --statfs)")
    _private_mounts(mountpoint, cgroup_root, at, debugfs)
    if not statfs:
        _supervise(mountpoint)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        raise UserError(f"{cmd[0]}: {e.strerror}") from None
    return 127  # not reached


def _private_mounts(mountpoint: str, cgroup_root: str, at: str | None, debugfs: bool) -> None:
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
        selftest = os.path.join(mountpoint, "debug", "dmem_selftest")
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


def _supervise(mountpoint: str) -> None:
    """Fork the supervisor, put this process under the filter and hand it the listener."""
    from dmemfs import seccomp

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        ours.close()
        _supervisor_process(theirs, mountpoint)
    theirs.close()
    os.waitpid(child, 0)  # the intermediate process exits at once (double fork)
    try:
        try:
            listener = seccomp.install(_syscalls())
        except OSError as e:
            raise UserError(f"as-cgroup2: installing the seccomp filter: {e.strerror} "
                            "(seccomp user notification needs Linux 5.9; use --statfs)"
                            ) from None
        socket.send_fds(ours, [b"listener"], [listener])
        os.close(listener)
        ready, _, _ = select.select([ours], [], [], HANDOVER_TIMEOUT)
        if not ready or ours.recv(16) != b"ready":
            raise UserError("as-cgroup2: the supervisor did not start")
    finally:
        ours.close()


def _syscalls() -> list[str]:
    from dmemfs.supervisor import SYSCALLS

    return SYSCALLS


def _supervisor_process(sock: socket.socket, mountpoint: str) -> None:  # pragma: no cover
    """The forked side: detach, take the listener, serve, exit (never returns)."""
    status = 1
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.chdir("/")
        log_path = os.environ.get(LOG_ENV)
        logging.basicConfig(
            filename=log_path, level=logging.INFO if log_path else logging.CRITICAL + 1,
            format="%(asctime)s %(levelname)s dmemfs-supervisor[%(process)d]: %(message)s")
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
        if not fds:
            os._exit(1)
        from dmemfs.supervisor import Supervisor

        supervisor = Supervisor(fds[0], mountpoint)
        sock.send(b"ready")
        sock.close()
        supervisor.run()
        status = 0
    except OSError as e:
        if e.errno != errno.EPIPE:
            logging.getLogger(__name__).exception("supervisor")
    except BaseException:
        logging.getLogger(__name__).exception("supervisor")
    finally:
        os._exit(status)
