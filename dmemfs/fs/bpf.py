"""Device programs attached to cgroups, and what ``dmemfs as-cgroup2``'s supervisor asks.

Container runtimes turn ``linux.resources.devices`` into a ``BPF_PROG_TYPE_CGROUP_DEVICE``
program and attach it to the container's cgroup directory with ``bpf(BPF_PROG_ATTACH)``;
the kernel refuses that for a directory that is not on cgroupfs. Under ``as-cgroup2`` the
supervisor (dmemfs/supervisor.py) stops those calls and forwards them here: the program is
checked and recorded as the kernel's ``cgroup_bpf_attach`` would (``BPF_F_ALLOW_MULTI``,
``BPF_F_REPLACE``, one program without flags), held open as an attachment holds it (so the
ids ``BPF_PROG_QUERY`` returns can be opened), and released by detach or ``rmdir``. Nothing
runs the program: device access is not filtered.

``MOUNT/debug/supervisor`` (root only) takes one request per write and answers it:

- ``ino N``: ``cgroup PATH`` for a cgroup directory, ``file PATH`` for an interface file,
  ``other`` for anything else on the mount;
- ``attach pid=P ino=N prog_fd=F flags=X replace_fd=R``: attach process P's program F;
- ``detach pid=P ino=N prog_fd=F`` (``prog_fd=-1``: the one program attached without flags);
- ``query ino=N``: ``flags=X ids=ID,…``.

``MOUNT/debug/cgroup-bpf`` lists the attached device programs, one line per program:
``PATH device id=ID tag=TAG flags=FLAGS``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

from dmemfs.engine.cgroup import Attr, Cgroup
from dmemfs.errors import DmemError, InvalidArgument, NotFound, NotPermitted
from dmemfs.fs.handles import Opener, QueryHandle, TextHandle
from dmemfs.fs.inodes import CgroupDir, CgroupFileNode, SpecialFile
from dmemfs.fs.operations import Operations

# include/uapi/linux/bpf.h
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4
_NR_BPF = 321
_NR_PIDFD_GETFD = 438
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BadDescriptor(DmemError):
    errno = errno.EBADF


class Exists(DmemError):
    errno = errno.EEXIST


@dataclass(frozen=True)
class Program:
    fd: int  # the daemon's reference, as the attachment's in the kernel
    id: int
    tag: str
    flags: int


def _prog_info(fd: int) -> tuple[int, int, str]:
    """(type, id, tag) of the BPF program ``fd``; EINVAL if it is not one."""
    info = ctypes.create_string_buffer(88)
    attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, 88, ctypes.addressof(info)), 16)
    if _libc.syscall(ctypes.c_long(_NR_BPF), BPF_OBJ_GET_INFO_BY_FD, attr, 16) != 0:
        raise InvalidArgument(f"fd {fd} is not a BPF program")
    ptype, pid, tag = struct.unpack_from("=II8s", info.raw)
    return ptype, pid, tag.hex()


def _take_fd(pid: int, fd: int) -> int:
    """A descriptor of ours for process ``pid``'s descriptor ``fd`` (pidfd_getfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        raise NotFound(f"no process {pid}") from None
    try:
        ret = _libc.syscall(ctypes.c_long(_NR_PIDFD_GETFD), pidfd, fd, 0)
        if ret < 0:
            raise BadDescriptor(f"process {pid} has no descriptor {fd}")
        return int(ret)
    finally:
        os.close(pidfd)


def _capable(pid: int) -> bool:
    """Whether ``pid`` may attach cgroup programs (CAP_NET_ADMIN or CAP_SYS_ADMIN)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(caps & (1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN))


def _fields(text: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, _, v in (w.partition("=") for w in text.split()[1:])}
    except ValueError:
        raise InvalidArgument(f"bad request {text.strip()!r}") from None


class DevicePrograms:
    """The device programs attached to each cgroup of one mount."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self._attached: dict[Cgroup, list[Program]] = {}

    def _prune(self) -> None:
        for cg in [cg for cg in self._attached if cg.dying]:
            for prog in self._attached.pop(cg):  # rmdir releases them (cgroup_bpf_release)
                os.close(prog.fd)

    def cgroup(self, ino: int) -> Cgroup:
        node = self.ops.inodes.get(ino)
        if not isinstance(node, CgroupDir) or node.cgroup.dying:
            raise BadDescriptor("not a cgroup directory")
        return node.cgroup

    def describe(self, ino: int) -> str:
        node = self.ops.inodes.get(ino)
        if isinstance(node, CgroupDir) and not node.cgroup.dying:
            return f"cgroup {node.cgroup.path}\n"
        if isinstance(node, CgroupFileNode) and not node.gone:
            return f"file {node.cgroup.path.rstrip('/')}/{node.row.name}\n"
        return "other\n"

    def attach(self, pid: int, ino: int, prog_fd: int, flags: int, replace_fd: int) -> None:
        """``__cgroup_bpf_attach`` for a device program (kernel/bpf/cgroup.c)."""
        self._prune()
        if flags & ~(BPF_F_ALLOW_OVERRIDE | BPF_F_ALLOW_MULTI | BPF_F_REPLACE):
            raise InvalidArgument("unknown attach flags")
        if flags & BPF_F_ALLOW_OVERRIDE and flags & BPF_F_ALLOW_MULTI:
            raise InvalidArgument("ALLOW_OVERRIDE with ALLOW_MULTI")
        if flags & BPF_F_REPLACE and not flags & BPF_F_ALLOW_MULTI:
            raise InvalidArgument("REPLACE without ALLOW_MULTI")
        if not _capable(pid):
            raise NotPermitted("attaching a cgroup program needs CAP_NET_ADMIN")
        cg = self.cgroup(ino)
        fd = _take_fd(pid, prog_fd)
        try:
            ptype, pid_, tag = _prog_info(fd)
            if ptype != BPF_PROG_TYPE_CGROUP_DEVICE:
                raise InvalidArgument("not a cgroup device program")
            progs = self._attached.setdefault(cg, [])
            if progs and (progs[0].flags & BPF_F_ALLOW_MULTI) != (flags & BPF_F_ALLOW_MULTI):
                raise NotPermitted("attach flags differ from the attached program's")
            if any(p.id == pid_ for p in progs) and not flags & BPF_F_REPLACE:
                raise Exists("program already attached")
            new = Program(fd, pid_, tag, flags & ~BPF_F_REPLACE)
            if flags & BPF_F_REPLACE:
                old_id = self._id_of(pid, replace_fd)
                index = next((i for i, p in enumerate(progs) if p.id == old_id), None)
                if index is None:
                    raise NotFound("the program to replace is not attached")
                os.close(progs[index].fd)
                progs[index] = new
            elif flags & BPF_F_ALLOW_MULTI:
                progs.append(new)
            else:
                for p in progs:
                    os.close(p.fd)
                progs[:] = [new]
        except BaseException:
            os.close(fd)
            raise

    def _id_of(self, pid: int, fd: int) -> int:
        ours = _take_fd(pid, fd)
        try:
            return _prog_info(ours)[1]
        finally:
            os.close(ours)

    def detach(self, pid: int, ino: int, prog_fd: int) -> None:
        self._prune()
        progs = self._attached.get(self.cgroup(ino), [])
        if prog_fd < 0:
            index = 0 if len(progs) == 1 and not progs[0].flags & BPF_F_ALLOW_MULTI else None
        else:
            wanted = self._id_of(pid, prog_fd)
            index = next((i for i, p in enumerate(progs) if p.id == wanted), None)
        if index is None:
            raise NotFound("program not attached")
        os.close(progs.pop(index).fd)

    def query(self, ino: int) -> str:
        self._prune()
        progs = self._attached.get(self.cgroup(ino), [])
        flags = progs[0].flags if progs else 0
        return f"flags={flags} ids={','.join(str(p.id) for p in progs)}\n"

    def request(self, text: str) -> str:
        words = text.split()
        verb = words[0] if words else ""
        try:
            if verb == "ino" and len(words) == 2:
                return self.describe(int(words[1]))
            f = _fields(text)
            if verb == "attach":
                self.attach(f["pid"], f["ino"], f["prog_fd"], f.get("flags", 0),
                            f.get("replace_fd", -1))
                return "ok\n"
            if verb == "detach":
                self.detach(f["pid"], f["ino"], f.get("prog_fd", -1))
                return "ok\n"
            if verb == "query":
                return self.query(f["ino"])
        except (KeyError, ValueError):
            pass
        raise InvalidArgument(f"bad request {text.strip()!r}")

    def view(self) -> str:
        self._prune()
        lines = []
        for cg in sorted(self._attached, key=lambda c: c.path):
            for p in self._attached[cg]:
                flags = ("multi" if p.flags & BPF_F_ALLOW_MULTI else
                         "override" if p.flags & BPF_F_ALLOW_OVERRIDE else "none")
                lines.append(f"{cg.path} device id={p.id} tag={p.tag} flags={flags}\n")
        return "".join(lines)


def add_bpf_files(ops: Operations) -> DevicePrograms:
    programs = DevicePrograms(ops)

    def answer(opener: Opener, text: str) -> str:
        return programs.request(text)

    ops.add_file(ops.debug, "supervisor", SpecialFile(
        Attr(0, 0, 0o600), lambda o, f: QueryHandle(o, answer)))
    ops.add_file(ops.debug, "cgroup-bpf", SpecialFile(
        Attr(0, 0, 0o444), lambda o, f: TextHandle(o, programs.view)))
    return programs
