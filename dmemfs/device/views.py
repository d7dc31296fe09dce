"""Read-only text views of a device for ``MOUNT/debug/dri/<pci>/``."""

from __future__ import annotations

import time

from dmemfs.device.xe import Device


def regions(device: Device) -> str:
    lines = [f"{'region':<8} {'dmem region':<32} {'size':>14} {'used':>14} {'pinned':>14}\n"]
    lines.append(f"{'system':<8} {'-':<32} {device.system_size:>14} {device.system_used:>14} "
                 f"{0:>14}\n")
    for r in device.regions:
        name = r.dmem_region.name if r.dmem_region is not None else "-"
        lines.append(f"{r.name:<8} {name:<32} {r.size:>14} {r.used:>14} {r.pinned:>14}\n")
    return "".join(lines)


def bos(device: Device) -> str:
    lines = [f"{'pid':>8} {'handle':>6} {'size':>14} {'placement':<9} {'pinned':>6} "
             f"{'evictions':>9}  cgroup\n"]
    for bo in sorted(device.all_bos(), key=lambda b: (b.client.pid, b.handle)):
        cgroup = bo.pool.css.cgroup.path if bo.pool is not None else "-"
        lines.append(f"{bo.client.pid:>8} {bo.handle:>6} {bo.size:>14} {bo.placement:<9} "
                     f"{int(bo.pinned):>6} {bo.evictions:>9}  {cgroup}\n")
    return "".join(lines)


def evictions(device: Device) -> str:
    lines = []
    for e in device.evictions:
        stamp = time.strftime("%H:%M:%S", time.localtime(e.time))
        lines.append(f"{stamp} {e.region} evicted pid={e.victim_pid} handle={e.victim_handle} "
                     f"size={e.size} cgroup={e.victim_cgroup} by pid={e.evictor_pid} "
                     f"cgroup={e.evictor_cgroup} ({e.reason})\n")
    return "".join(lines)


def eviction_counts(device: Device) -> str:
    return "".join(f"{path} {n}\n" for path, n in sorted(device.evictions_by_cgroup.items()))
