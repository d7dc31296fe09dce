"""Seccomp user notification (``SECCOMP_RET_USER_NOTIF``, Linux ≥ 5.9) with raw syscalls.

A filter installed with ``SECCOMP_FILTER_FLAG_NEW_LISTENER`` stops the listed system calls of
the installing task and of every task it starts, and hands each call to whoever holds the
listener descriptor: :func:`receive` one, answer it with :func:`respond` (a result or an
errno) or let the kernel run it as if nothing happened (:func:`proceed`,
``SECCOMP_USER_NOTIF_FLAG_CONTINUE``). Structures and numbers are those of
``include/uapi/linux/seccomp.h`` and ``filter.h`` on x86_64, the one architecture handled.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

#: System call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NR = {"statfs": 137, "fstatfs": 138, "bpf": 321, "setrlimit": 160, "prlimit64": 302, "mount": 165,
      "seccomp": 317, "pidfd_getfd": 438, "openat2": 437, "setgroups": 116, "setfsuid": 122,
      "setfsgid": 123, "capget": 125,
      "capset": 126}
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PR_SET_NO_NEW_PRIVS = 38

# _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct seccomp_notif_resp),
# _IOW('!', 2, __u64)
NOTIF_SIZE = 80
RESP_SIZE = 24
IOCTL_NOTIF_RECV = 0xC0502100
IOCTL_NOTIF_SEND = 0xC0182101
IOCTL_NOTIF_ID_VALID = 0x40082102

# Classic BPF (include/uapi/linux/filter.h, bpf_common.h).
_BPF_LD_W_ABS = 0x20
_BPF_JMP_JEQ_K = 0x15
_BPF_RET_K = 0x06

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SeccompError(Exception):
    """Seccomp user notification cannot be used here (one line for the user)."""


def syscall(name: str, *args: int | ctypes._CData | None) -> int:
    """A raw system call; OSError with its errno on failure."""
    ret = _libc.syscall(ctypes.c_long(NR[name]), *[
        ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def supported() -> str | None:
    """Why the filter cannot be used on this machine, or None."""
    if platform.machine() != "x86_64":
        return f"seccomp supervision is implemented for x86_64 only (this is {platform.machine()})"
    return None


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


#: seccomp_data offsets: nr, arch, then args[i] at 16 + 8 * i (low 32 bits first).
_ARG = 16
RLIMIT_MEMLOCK = 8


def _assemble(program: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """Classic BPF from ("ld", offset), ("jeq", k, label_true, label_false), ("ret", action)
    and ("label", name); a jump label None means the next instruction."""
    labels: dict[str, int] = {}
    pc = 0
    for insn in program:
        if insn[0] == "label":
            labels[insn[1]] = pc
        else:
            pc += 1
    out = []
    pc = 0
    for insn in program:
        if insn[0] == "label":
            continue
        if insn[0] == "ld":
            out.append(_insn(_BPF_LD_W_ABS, insn[1]))
        elif insn[0] == "ret":
            out.append(_insn(_BPF_RET_K, insn[1]))
        else:
            _, k, t, f = insn
            jt = 0 if t is None else labels[t] - pc - 1
            jf = 0 if f is None else labels[f] - pc - 1
            out.append(_insn(_BPF_JMP_JEQ_K, k, jt, jf))
        pc += 1
    return b"".join(out)


def build_filter(names: list[str]) -> bytes:
    """A filter that notifies the listed x86_64 system calls and allows everything else
    (x32 and 32-bit calls too: they are not x86_64 ones). ``setrlimit`` and ``prlimit64``
    are notified only when they set RLIMIT_MEMLOCK."""
    prog: list[tuple] = [("ld", 4), ("jeq", AUDIT_ARCH_X86_64, None, "allow"),  # type: ignore[type-arg]
                         ("ld", 0)]
    for name in names:
        target = {"setrlimit": "setrlimit", "prlimit64": "prlimit64"}.get(name, "notify")
        prog.append(("jeq", NR[name], target, None))
    prog.append(("ret", SECCOMP_RET_ALLOW))
    if "setrlimit" in names:  # args[0] == RLIMIT_MEMLOCK
        prog += [("label", "setrlimit"), ("ld", _ARG), ("jeq", RLIMIT_MEMLOCK, "notify", "allow")]
    if "prlimit64" in names:  # args[1] == RLIMIT_MEMLOCK and args[2] (new limit) != NULL
        prog += [("label", "prlimit64"), ("ld", _ARG + 8),
                 ("jeq", RLIMIT_MEMLOCK, None, "allow"), ("ld", _ARG + 16),
                 ("jeq", 0, None, "notify"), ("ld", _ARG + 20), ("jeq", 0, "allow", "notify")]
    prog += [("label", "allow"), ("ret", SECCOMP_RET_ALLOW),
             ("label", "notify"), ("ret", SECCOMP_RET_USER_NOTIF)]
    return _assemble(prog)


def install(names: list[str]) -> int:
    """Install the filter on the calling thread (it applies to every process it starts) and
    return the listener descriptor. Without CAP_SYS_ADMIN, no_new_privs is set first."""
    code = build_filter(names)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("=HxxxxxxQ", len(code) // 8, ctypes.addressof(buf))
    pbuf = ctypes.create_string_buffer(prog, len(prog))
    try:
        return syscall("seccomp", SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                       pbuf)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM):
            raise
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    return syscall("seccomp", SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, pbuf)


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    pid: int
    nr: int
    args: tuple[int, int, int, int, int, int]

    @property
    def name(self) -> str:
        return next((n for n, v in NR.items() if v == self.nr), str(self.nr))


def receive(listener: int) -> Notification | None:
    """The next notification, or None if it vanished (the caller was interrupted)."""
    buf = ctypes.create_string_buffer(NOTIF_SIZE)
    if _libc.ioctl(listener, ctypes.c_ulong(IOCTL_NOTIF_RECV), buf) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.EINTR):
            return None
        raise OSError(err, os.strerror(err))
    nid, pid, _flags, nr, _arch, _ip, *args = struct.unpack("=QIIiIQ6Q", buf.raw)
    return Notification(nid, pid, nr, tuple(args))


def _send(listener: int, nid: int, val: int, error: int, flags: int) -> None:
    resp = ctypes.create_string_buffer(struct.pack("=QqiI", nid, val, error, flags), RESP_SIZE)
    if _libc.ioctl(listener, ctypes.c_ulong(IOCTL_NOTIF_SEND), resp) != 0:
        err = ctypes.get_errno()
        if err != errno.ENOENT:  # ENOENT: the caller went away (a signal, or it exited)
            raise OSError(err, os.strerror(err))


def respond(listener: int, n: Notification, val: int = 0, error: int = 0) -> None:
    """Answer the call: it returns ``val``, or fails with ``error`` (a positive errno)."""
    _send(listener, n.id, val if not error else 0, -error, 0)


def proceed(listener: int, n: Notification) -> None:
    """Let the kernel make the call as if it had not been stopped."""
    _send(listener, n.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)


def still_valid(listener: int, n: Notification) -> bool:
    """Whether the caller is still waiting (its memory and pid are still what we read)."""
    nid = ctypes.c_uint64(n.id)
    ret = _libc.ioctl(listener, ctypes.c_ulong(IOCTL_NOTIF_ID_VALID), ctypes.byref(nid))
    return bool(ret == 0)


def read_memory(pid: int, addr: int, size: int) -> bytes:
    """Up to ``size`` bytes of process ``pid``'s memory at ``addr`` (fewer at an unmapped
    page)."""
    out = b""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        while len(out) < size:
            chunk = min(size - len(out), 4096 - (addr + len(out)) % 4096)
            try:
                data = os.pread(mem.fileno(), chunk, addr + len(out))
            except OSError:
                break
            if not data:
                break
            out += data
    return out


def read_string(pid: int, addr: int, limit: int = 4096) -> bytes | None:
    """The NUL-terminated string at ``addr``, or None if it is unreadable or too long."""
    out = b""
    while len(out) < limit:
        chunk = read_memory(pid, addr + len(out), min(256, limit - len(out)))
        if not chunk:
            return None
        end = chunk.find(b"\0")
        if end >= 0:
            return out + chunk[:end]
        out += chunk
    return None


def write_memory(pid: int, addr: int, data: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            return bool(os.pwrite(mem.fileno(), data, addr) == len(data))
    except OSError:
        return False
