#!/usr/bin/env python3
"""Scale benchmarks. Prints one JSON object. Needs root and /dev/fuse; takes a few minutes.

``tree``: ~10,000 cgroups (depth 4, dmem enabled) and 100,000 BOs on two devices, through a
real mount: daemon memory per cgroup and per BO, walking and reading every dmem.current, and
the latency of device-full allocations. Targets: under 10 KB per cgroup; under 5 s to read
every dmem.current; an eviction pass under 1 s.

``eviction``: 100,000 BOs of 64 KiB fill one device; 99% of them belong to 990 cgroups within
their dmem.min (jobs/svc/gN/lM), 1% to 10 unprotected ones (jobs/batch/bN). Each allocation
by jobs/batch/new must evict one BO. Timed per profile in this process (the accelerated walk
and the kernel's BO-by-BO walk, same engine and device code) and through a mount. Target:
under 5 ms per allocation. Also a cgroup holding 10,000 BOs (interleaved in the LRU with
another's 10,000) whose dmem.max is lowered to 0 (Linux 7.3 reclaim). Target: under 50 ms.

``python scripts/bench_scale.py [tree|eviction]`` runs one part (default: both).
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
from dmemfs.device.config import DeviceConfig  # noqa: E402
from dmemfs.device.xe import Device  # noqa: E402
from dmemfs.engine.cgroup import Cgroup, CgroupTree  # noqa: E402
from dmemfs.profile import LATEST, get_profile  # noqa: E402
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


def eviction_scan_in_process() -> float:
    """Seconds for one eviction scan over the same tree shape (engine only), the work a
    device-full eviction does when the first BOs of the LRU are all protected."""
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
    own: dict = {}
    subtree: dict = {}
    for css in tree.dmem.root_css.walk_pre():
        pool = css.pools.get(region)
        if pool is not None and pool.counter.usage and not css.children:
            own[pool] = 1
            p = pool
            while p is not None:
                subtree[p] = subtree.get(p, 0) + 1
                p = p.parent
    t0 = time.perf_counter()
    tree.dmem.eviction_scan(None, region, False, own, subtree)
    return time.perf_counter() - t0


def tree_part() -> dict[str, object]:
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
    out["eviction_scan_s_in_process"] = round(eviction_scan_in_process(), 4)
    out["targets"] = {
        "daemon_rss_kib_per_cgroup_max": 10,
        "eviction_pass_s_max": 1.0,
        "walk_and_read_all_s_max": 5.0,
    }
    return out


# -- eviction at scale -------------------------------------------------------------------------

EV_REGION = "drm/0000:03:00.0/vram0"
EV_PROTECTED_LEAVES = (10, 99)  # jobs/svc/g0..g9/l0..l98
EV_BATCH = 10  # jobs/batch/b0..b9
EV_PER_LEAF = 100
EV_BOS = (EV_PROTECTED_LEAVES[0] * EV_PROTECTED_LEAVES[1] + EV_BATCH) * EV_PER_LEAF
EV_ALLOCATIONS = 100
K64 = 64 << 10


def _ms(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    return {"median": round(s[len(s) // 2] * 1e3, 3),
            "p95": round(s[int(len(s) * 0.95)] * 1e3, 3), "max": round(s[-1] * 1e3, 3)}


def cpu_ns(pid: int) -> int:
    """CPU time a process has used so far, all threads, in ns (/proc/PID/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def _ev_tree_in_process(profile: str, fast_path: int | None) -> tuple[Device, object, Cgroup]:
    tree = CgroupTree(get_profile(profile))
    config = DeviceConfig(pci="0000:03:00.0", vram=(EV_BOS * K64,), system=64 << 30)
    device = Device(config, 0, tree, fast_path=fast_path)

    def mk(parent: Cgroup, name: str, minimum: int = 0, enable: bool = False) -> Cgroup:
        cg = tree.mkdir(parent, name)
        if enable:
            tree.write_subtree_control(cg, "+dmem")
        if minimum:
            assert cg.dmem_css is not None
            tree.dmem.write_limit(cg.dmem_css, "min", f"{EV_REGION} {minimum}")
        return cg

    tree.write_subtree_control(tree.root, "+dmem")
    groups, per_group = EV_PROTECTED_LEAVES
    protected = groups * per_group * EV_PER_LEAF * K64
    jobs = mk(tree.root, "jobs", protected, True)
    svc = mk(jobs, "svc", protected, True)
    batch = mk(jobs, "batch", 0, True)
    client = device.open(1)
    for g in range(groups):
        group = mk(svc, f"g{g}", per_group * EV_PER_LEAF * K64, True)
        for leaf_i in range(per_group):
            leaf = mk(group, f"l{leaf_i}", EV_PER_LEAF * K64)
            assert leaf.dmem_css is not None
            for _ in range(EV_PER_LEAF):
                device.gem_create(client, leaf.dmem_css, K64, ("vram0", "system"))
    for b in range(EV_BATCH):
        leaf = mk(batch, f"b{b}")
        assert leaf.dmem_css is not None
        for _ in range(EV_PER_LEAF):
            device.gem_create(client, leaf.dmem_css, K64, ("vram0", "system"))
    return device, client, mk(batch, "new")


def eviction_in_process(profile: str, fast_path: int | None, n: int) -> dict[str, object]:
    """Wall time per allocation, and CPU time per allocation over all of them (on a loaded
    machine the wall times include time the process was not running)."""
    device, client, new = _ev_tree_in_process(profile, fast_path)
    assert new.dmem_css is not None
    times = []
    c0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        bo = device.gem_create(client, new.dmem_css, K64, ("vram0", "system"))  # type: ignore
        times.append(time.perf_counter() - t0)
        assert bo.placement == "vram0"
    cpu = (time.process_time() - c0) / n
    assert len(device.log.entries) == n
    return {"wall_ms": _ms(times), "cpu_ms_per_allocation": round(cpu * 1e3, 3)}


def eviction_through_mount(profile: str) -> dict[str, object]:
    """The same tree and BOs made through a mount; allocation latency as a process sees it."""
    groups, per_group = EV_PROTECTED_LEAVES
    protected = groups * per_group * EV_PER_LEAF * K64
    device = f"xe,pci=0000:03:00.0,vram0={EV_BOS * 64}K"
    with mounted(["--device", device, "--profile", profile]) as m:
        root = m.cgroup
        t0 = time.perf_counter()
        write(os.path.join(root, "cgroup.subtree_control"), "+dmem")

        def mk(path: str, minimum: int = 0, enable: bool = False) -> str:
            full = os.path.join(root, path)
            os.mkdir(full)
            if enable:
                write(os.path.join(full, "cgroup.subtree_control"), "+dmem")
            if minimum:
                write(os.path.join(full, "dmem.min"), f"{EV_REGION} {minimum}")
            return full

        mk("jobs", protected, True)
        mk("jobs/svc", protected, True)
        mk("jobs/batch", 0, True)
        leaves = []
        for g in range(groups):
            mk(f"jobs/svc/g{g}", per_group * EV_PER_LEAF * K64, True)
            leaves += [mk(f"jobs/svc/g{g}/l{i}", EV_PER_LEAF * K64) for i in range(per_group)]
        leaves += [mk(f"jobs/batch/b{b}") for b in range(EV_BATCH)]
        new = mk("jobs/batch/new")
        gpu = XeDevice(os.path.join(m.dri, "renderD128"))
        for leaf in leaves:
            write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
            for _ in range(EV_PER_LEAF):
                gpu.ioctl("GEM_CREATE", size=K64, placement="vram0,system")
        write(os.path.join(new, "cgroup.procs"), str(os.getpid()))
        built = time.perf_counter() - t0
        times = []
        c0 = cpu_ns(m.proc.pid)
        for _ in range(EV_ALLOCATIONS):
            t0 = time.perf_counter()
            reply = gpu.ioctl("GEM_CREATE", size=K64, placement="vram0,system")
            times.append(time.perf_counter() - t0)
            assert "placement=vram0" in reply, reply
        daemon_cpu = (cpu_ns(m.proc.pid) - c0) / EV_ALLOCATIONS / 1e6
        write(os.path.join(root, "cgroup.procs"), str(os.getpid()))
        gpu.close()
        return {"build_s": round(built, 1), "allocation_wall_ms": _ms(times),
                "daemon_cpu_ms_per_allocation": round(daemon_cpu, 3)}


def _reclaim_tree(n: int) -> tuple[CgroupTree, Cgroup]:
    tree = CgroupTree(get_profile("7.3"))
    config = DeviceConfig(pci="0000:03:00.0", vram=(2 * n * K64,), system=64 << 30)
    device = Device(config, 0, tree)
    tree.write_subtree_control(tree.root, "+dmem")
    a, other = tree.mkdir(tree.root, "a"), tree.mkdir(tree.root, "other")
    client = device.open(1)
    assert a.dmem_css is not None and other.dmem_css is not None
    for _ in range(n):
        device.gem_create(client, a.dmem_css, K64, ("vram0", "system"))
        device.gem_create(client, other.dmem_css, K64, ("vram0", "system"))
    return tree, a


def reclaim_in_process(n: int = 10_000) -> dict[str, float]:
    tree, a = _reclaim_tree(n)  # the two cgroups' BOs alternate in the LRU
    assert a.dmem_css is not None
    w0, c0 = time.perf_counter(), time.process_time()
    tree.dmem.write_limit(a.dmem_css, "max", f"{EV_REGION} 0")
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    assert a.dmem_css.pools[tree.dmem.regions[0]].counter.usage == 0
    return {"wall_ms": round(wall * 1e3, 1), "cpu_ms": round(cpu * 1e3, 1)}


def reclaim_through_mount(n: int = 10_000) -> dict[str, float]:
    with mounted(["--device", f"xe,pci=0000:03:00.0,vram0={2 * n * 64}K"]) as m:
        write(os.path.join(m.cgroup, "cgroup.subtree_control"), "+dmem")
        a, other = os.path.join(m.cgroup, "a"), os.path.join(m.cgroup, "other")
        os.mkdir(a)
        os.mkdir(other)
        gpu = XeDevice(os.path.join(m.dri, "renderD128"))
        for _ in range(n // 100):  # the two cgroups' BOs interleaved in the LRU
            for path in (a, other):
                write(os.path.join(path, "cgroup.procs"), str(os.getpid()))
                for _ in range(100):
                    gpu.ioctl("GEM_CREATE", size=K64, placement="vram0,system")
        write(os.path.join(m.cgroup, "cgroup.procs"), str(os.getpid()))
        with open(os.path.join(a, "dmem.current")) as f:
            assert f.read() == f"{EV_REGION} {n * K64}\n"
        c0 = cpu_ns(m.proc.pid)
        t0 = time.perf_counter()
        write(os.path.join(a, "dmem.max"), f"{EV_REGION} 0")
        took = time.perf_counter() - t0
        daemon_cpu = (cpu_ns(m.proc.pid) - c0) / 1e6
        with open(os.path.join(a, "dmem.current")) as f:
            assert f.read() == f"{EV_REGION} 0\n"
        gpu.close()
        return {"write_wall_ms": round(took * 1e3, 1), "daemon_cpu_ms": round(daemon_cpu, 1)}


def eviction_part() -> dict[str, object]:
    out: dict[str, object] = {
        "bos": EV_BOS, "bo_size": K64,
        "protected_share": round(1 - EV_BATCH * EV_PER_LEAF / EV_BOS, 3),
        "cgroups": 3 + EV_PROTECTED_LEAVES[0] * (1 + EV_PROTECTED_LEAVES[1]) + EV_BATCH + 1,
    }
    for profile in ("7.3", "6.14"):
        out[profile] = {
            "in_process_ms": eviction_in_process(profile, 32, EV_ALLOCATIONS),
            "in_process_kernel_walk_ms": eviction_in_process(profile, None, 10),
            "through_mount": eviction_through_mount(profile),
        }
    out["reclaim_10k_bos"] = {"in_process": reclaim_in_process(),
                              "through_mount": reclaim_through_mount()}
    out["targets"] = {"device_full_allocation_ms": 5, "reclaim_10k_bos_ms": 50}
    return out


def main() -> int:
    started = time.monotonic()
    parts = sys.argv[1:] or ["tree", "eviction"]
    out: dict[str, object] = {}
    for part in parts:
        if part == "tree":
            out["tree"] = tree_part()
        elif part == "eviction":
            out["eviction"] = eviction_part()
        else:
            print(f"bench_scale: unknown part {part!r} (tree, eviction)", file=sys.stderr)
            return 2
    out["total_runtime_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
