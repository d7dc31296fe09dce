"""Kernel caches never serve stale cgroup state.

dmemfs lets the kernel cache entries and attributes and invalidates them when it changes
them. This test interleaves random changes (mkdir, rmdir, +dmem/-dmem, chmod, chown, limit
writes, device allocations) with reads through the mount (stat, listdir, open+read) and
compares every read with what the engine itself says (MOUNT/debug/inspect, a query file that
no kernel cache can answer).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat

import pytest

from dmemfs.client import XeDevice
from dmemfs.testing import Mounted
from tests.conftest import REGION

#: Files whose content depends on host processes (served fresh, but they can change between
#: two reads without any dmemfs request): compared by existence and attributes only.
PROCESS_FILES = {"cgroup.procs", "cgroup.threads", "cgroup.events"}


class Engine:
    """Answers from the daemon's engine, through MOUNT/debug/inspect."""

    def __init__(self, mnt: Mounted) -> None:
        self.fd = os.open(os.path.join(mnt.debug, "inspect"), os.O_RDWR)

    def ask(self, request: str) -> str:
        os.write(self.fd, request.encode())
        out = b""
        while chunk := os.read(self.fd, 65536):
            out += chunk
        return out.decode("latin-1")

    def close(self) -> None:
        os.close(self.fd)


def kernel_stat(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing\n"
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
    return f"{kind} mode={stat.S_IMODE(st.st_mode):o} uid={st.st_uid} gid={st.st_gid}\n"


def check_path(mnt: Mounted, engine: Engine, rel: str) -> None:
    path = os.path.join(mnt.cgroup, rel)
    want = engine.ask(f"stat {rel}")
    assert kernel_stat(path) == want, rel
    if want.startswith("dir"):
        assert "".join(f"{n}\n" for n in sorted(os.listdir(path))) == engine.ask(f"list {rel}")
    elif want.startswith("file") and os.path.basename(rel) not in PROCESS_FILES:
        if "mode=200" in want:
            return
        try:
            with open(path, "rb") as f:
                got = f.read().decode("latin-1")
        except PermissionError:
            return  # chmod'ed to unreadable by the test (root ignores modes, kernfs does not)
        assert got == engine.ask(f"read {rel}"), rel


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_changes_never_read_stale(mnt: Mounted, seed: int) -> None:
    run_random_changes(mnt, seed)


@pytest.mark.dmemfs_args("--page-cache")
@pytest.mark.parametrize("seed", [4, 5])
def test_random_changes_never_read_stale_with_page_cache(mnt: Mounted, seed: int) -> None:
    run_random_changes(mnt, seed)


def run_random_changes(mnt: Mounted, seed: int) -> None:
    rng = random.Random(seed)
    engine = Engine(mnt)
    gpu = XeDevice(os.path.join(mnt.dri, "renderD128"))
    dirs = [""]
    handles: list[int] = []
    seen: set[str] = {""}
    # Files held open the whole time and re-read with pread(0), as monitoring agents do.
    held = {rel: os.open(os.path.join(mnt.cgroup, rel), os.O_RDONLY)
            for rel in ("dmem.current", "cgroup.stat", "cgroup.subtree_control")}
    try:
        for _step in range(120):
            cg = rng.choice(dirs)
            cg_path = os.path.join(mnt.cgroup, cg)
            action = rng.choice(["mkdir", "mkdir", "rmdir", "dmem", "dmem", "dmem", "chmod",
                                 "chown", "limit", "alloc", "alloc", "free", "read"])
            with contextlib.suppress(OSError):
                if action == "mkdir":
                    name = os.path.join(cg, rng.choice("abc")) if cg else rng.choice("abc")
                    os.mkdir(os.path.join(mnt.cgroup, name))
                    dirs.append(name)
                    seen.add(name)
                elif action == "rmdir" and cg:
                    os.rmdir(cg_path)
                    dirs = [d for d in dirs if d != cg and not d.startswith(cg + "/")]
                elif action == "dmem":
                    # Mostly at cgroups with children: that is where files appear and vanish.
                    parents = [d for d in dirs if any(c.startswith(d) and c != d for c in dirs)]
                    where = rng.choice(parents or dirs)
                    mnt.write(os.path.join(where, "cgroup.subtree_control"),
                              rng.choice(["+dmem", "-dmem"]))
                elif action == "chmod":
                    target = rng.choice(["", "dmem.max", "cgroup.procs", "dmem.current"])
                    os.chmod(os.path.join(cg_path, target), rng.choice([0o755, 0o644, 0o600]))
                elif action == "chown":
                    target = rng.choice(["", "dmem.max", "cgroup.subtree_control"])
                    uid = rng.choice([0, 65534])
                    os.chown(os.path.join(cg_path, target), uid, uid)
                elif action == "limit" and cg:
                    value = rng.choice(["max", "0", "64K", "1M", "4G"])
                    mnt.write(os.path.join(cg, rng.choice(["dmem.max", "dmem.min", "dmem.low"])),
                              f"{REGION} {value}")
                elif action == "alloc":
                    mnt.write(os.path.join(cg, "cgroup.procs"), str(os.getpid()))
                    handles.append(gpu.gem_create(rng.choice([64 << 10, 1 << 20])).handle)
                    mnt.write("cgroup.procs", str(os.getpid()))
                elif action == "free" and handles:
                    gpu.gem_close(handles.pop(rng.randrange(len(handles))))
                elif action == "read":
                    mnt.read(os.path.join(cg, "dmem.current"))
            for rel, fd in held.items():
                assert os.pread(fd, 65536, 0).decode("latin-1") == engine.ask(f"read {rel}")
            # Everything the test ever created, still there or not, and its files.
            for rel in sorted(seen):
                check_path(mnt, engine, rel)
                for name in ("dmem.current", "dmem.max", "dmem.min", "dmem.peak",
                             "cgroup.controllers", "cgroup.subtree_control", "cgroup.stat",
                             "cgroup.procs"):
                    check_path(mnt, engine, os.path.join(rel, name))
    finally:
        for fd in held.values():
            os.close(fd)
        mnt.write("cgroup.procs", str(os.getpid()))
        gpu.close()
        engine.close()


def test_inspect_rejects_nonsense(mnt: Mounted) -> None:
    engine = Engine(mnt)
    try:
        with pytest.raises(OSError) as info:
            engine.ask("read dmem.nonexistent")
        assert info.value.errno == errno.EINVAL
        assert engine.ask("stat nowhere") == "missing\n"
    finally:
        engine.close()
