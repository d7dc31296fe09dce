#!/usr/bin/env python3
"""Scale benchmark: ~10,000 cgroups (depth 4, dmem enabled) and 100,000 BOs on two devices.

Everything is done through a real mount except the protection walk, which is timed on an
engine built in this process with the same tree. Prints one JSON object. Needs root and
/dev/fuse; takes a few minutes.

Targets: under 10 KB of daemon memory per cgroup; an eviction pass under 1 s; reading every
dmem.current of 10,000 cgroups under 5 s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dmemfs.client import XeDevice  # noqa: E402
from dmemfs.engine.cgroup import CgroupTree  # noqa: E402
from dmemfs.profile import LATEST  # noqa: E402
from dmemfs.testing import mounted  # noqa: E402

FANOUT = (10, 10, 10, 10)  # 10 + 100 + 1,000 + 10,000 cgroups
BOS = 100_000
BO_SIZE = 64 << 10
DEVICES = ["xe,pci=0000:03:00.0,vram0=4G", "xe,pci=0000:04:00.0,vram0=4G"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def build_tree(cgroup_root: str) -> tuple[list[str], list[str]]:
    """mkdir the tree level by level, enabling dmem in every non-leaf; returns (all, leaves)."""
    write(os.path.join(cgroup_root, "cgroup.subtree_control"), "+dmem")
    level = [cgroup_root]
    everything: list[str] = []
    for depth, fanout in enumerate(FANOUT):
        nxt = []
        for parent in level:
            for i in range(fanout):
                path = os.path.join(parent, f"g{i}")
                os.mkdir(path)
                if depth < len(FANOUT) - 1:
                    write(os.path.join(path, "cgroup.subtree_control"), "+dmem")
                nxt.append(path)
        everything += nxt
        level = nxt
    return everything, level


def protection_walk_in_process() -> float:
    """Seconds for one full protection walk over the same tree shape (engine only)."""
    tree = CgroupTree(LATEST)
    region = tree.dmem.register_region("drm/0000:03:00.0/vram0", 4 << 30)
    assert region is not None
    tree.write_subtree_control(tree.root, "+dmem")
    level = [tree.root]
    for depth, fanout in enumerate(FANOUT):
        nxt = []
        for parent in level:
            for i in range(fanout):
                child = tree.mkdir(parent, f"g{i}")
                if depth < len(FANOUT) - 1:
                    tree.write_subtree_control(child, "+dmem")
                assert child.dmem_css is not None
                tree.dmem.write_limit(child.dmem_css, "min", f"{region.name} 64K")
                nxt.append(child)
        level = nxt
    for leaf in level:
        assert leaf.dmem_css is not None
        for _ in range(BOS // len(level) // 2):
            tree.dmem.try_charge(leaf.dmem_css, region, BO_SIZE)
    pool = tree.dmem.get_pool(tree.dmem.root_css, region)
    t0 = time.perf_counter()
    tree.dmem.protection_walk(pool)
    return time.perf_counter() - t0


def main() -> int:
    started = time.monotonic()
    out: dict[str, object] = {"fanout": FANOUT, "bos": BOS, "bo_size": BO_SIZE,
                              "devices": DEVICES}
    args = [a for spec in DEVICES for a in ("--device", spec)]
    with mounted(args) as m:
        daemon = m.proc.pid
        rss0 = rss_kib(daemon)
        t0 = time.perf_counter()
        cgroups, leaves = build_tree(m.cgroup)
        out["cgroups"] = len(cgroups)
        out["build_tree_s"] = round(time.perf_counter() - t0, 2)
        rss1 = rss_kib(daemon)
        out["daemon_rss_kib_per_cgroup"] = round((rss1 - rss0) / len(cgroups), 2)

        # Protect a tenth of the leaves so that the eviction pass has to skip them.
        for leaf in leaves[::10]:
            write(os.path.join(leaf, "dmem.min"), "drm/0000:03:00.0/vram0 128K")

        gpus = [XeDevice(os.path.join(m.dri, f"renderD{128 + i}")) for i in range(2)]
        per_leaf = BOS // len(leaves)
        t0 = time.perf_counter()
        for leaf in leaves:
            write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
            for j in range(per_leaf):
                gpus[j % 2].ioctl("GEM_CREATE", size=BO_SIZE, placement="vram0,system")
        write(os.path.join(m.cgroup, "cgroup.procs"), str(os.getpid()))
        out["create_bos_s"] = round(time.perf_counter() - t0, 2)
        rss2 = rss_kib(daemon)
        out["daemon_rss_kib_per_bo"] = round((rss2 - rss1) / BOS, 3)
        out["daemon_rss_mib_total"] = round(rss2 / 1024, 1)

        # A monitoring agent's poll: find every cgroup, read its dmem.current (open, read,
        # close, as a C agent does; `cat` adds an fstat and a read at EOF).
        t0 = time.perf_counter()
        walked = [dirpath for dirpath, _dirs, _files in os.walk(m.cgroup)]
        t1 = time.perf_counter()
        total = 0
        for dirpath in walked:
            fd = os.open(os.path.join(dirpath, "dmem.current"), os.O_RDONLY)
            total += sum(int(line.split()[1]) for line in os.read(fd, 4096).splitlines())
            os.close(fd)
        t2 = time.perf_counter()
        out["walk_all_cgroups_s"] = round(t1 - t0, 2)
        out["read_all_dmem_current_s"] = round(t2 - t1, 2)
        out["walk_and_read_all_s"] = round(t2 - t0, 2)

        # Fill what is left of device 0's VRAM, then time allocations that each need one
        # device-full eviction pass across cgroups.
        vram = gpus[0].query_mem_regions()[1]
        for _ in range((int(vram["total_size"]) - int(vram["used"])) // BO_SIZE):
            gpus[0].ioctl("GEM_CREATE", size=BO_SIZE, placement="vram0")
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            reply = gpus[0].ioctl("GEM_CREATE", size=BO_SIZE, placement="vram0")
            times.append(time.perf_counter() - t0)
            assert "placement=vram0" in reply, reply
        out["eviction_pass_s_max"] = round(max(times), 4)
        out["eviction_pass_s_median"] = round(sorted(times)[len(times) // 2], 4)
        with open(os.path.join(m.debug, "dri", "0000:03:00.0", "eviction_counts")) as f:
            out["evicted_cgroups"] = len(f.read().splitlines())
        for g in gpus:
            g.close()
    out["protection_walk_s_in_process"] = round(protection_walk_in_process(), 4)
    out["targets"] = {
        "daemon_rss_kib_per_cgroup_max": 10,
        "eviction_pass_s_max": 1.0,
        "walk_and_read_all_s_max": 5.0,
    }
    out["total_runtime_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
