"""What a container runtime does with a cgroup device program, with raw bpf(2) calls.

Run as ``python bpf_device.py DIR ACTION…``: loads a BPF_PROG_TYPE_CGROUP_DEVICE program
(allow everything) and performs each ACTION on the directory DIR, printing one line each:
``attach[:FLAGS]``, ``replace`` (BPF_F_REPLACE of the first program attached by this run),
``detach``, ``query``.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

NR_BPF = 321
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH, BPF_PROG_QUERY = 5, 8, 9, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
FLAGS = {"none": 0, "override": 1, "multi": 2}

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    ret = libc.syscall(ctypes.c_long(NR_BPF), cmd, attr, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def load() -> int:
    insns = struct.pack("=BBhi", 0xB7, 0, 0, 1) + struct.pack("=BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, 2,
                     ctypes.addressof(code), ctypes.addressof(license_))
    return bpf(BPF_PROG_LOAD, attr)


def attach(target: int, prog: int, flags: int, replace: int = 0) -> None:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=5I", attr, 0, target, prog, BPF_CGROUP_DEVICE, flags, replace)
    bpf(BPF_PROG_ATTACH, attr)


def detach(target: int, prog: int) -> None:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=3I", attr, 0, target, prog, BPF_CGROUP_DEVICE)
    bpf(BPF_PROG_DETACH, attr)


def query(target: int) -> tuple[int, list[int]]:
    ids = (ctypes.c_uint32 * 8)()
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIIIQI", attr, 0, target, BPF_CGROUP_DEVICE, 0, 0,
                     ctypes.addressof(ids), 8)
    bpf(BPF_PROG_QUERY, attr)
    flags, = struct.unpack_from("=I", attr, 12)
    cnt, = struct.unpack_from("=I", attr, 24)
    return flags, list(ids[:cnt])


def main() -> None:
    target = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    progs: list[int] = []
    for action in sys.argv[2:]:
        verb, _, arg = action.partition(":")
        try:
            if verb == "attach":
                progs.append(load())
                attach(target, progs[-1], FLAGS[arg or "multi"])
                print("attach ok")
            elif verb == "replace":
                progs.append(load())
                attach(target, progs[-1], FLAGS["multi"] | 4, progs[0])
                print("replace ok")
            elif verb == "detach":
                detach(target, progs.pop())
                print("detach ok")
            elif verb == "query":
                flags, ids = query(target)
                print(f"query flags={flags} count={len(ids)}")
        except OSError as e:
            print(f"{verb} {os.strerror(e.errno or 0)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
