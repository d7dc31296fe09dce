"""Read-only text views of a device for ``MOUNT/debug/dri/<pci>/``."""

from __future__ import annotations

import time

from dmemfs.device.xe import Device, XeBo, XeExport


def regions(device: Device) -> str:
    lines = [f"{'region':<8} {'dmem region':<32} {'size':>14} {'used':>14} {'pinned':>14}\n"]
    system = device.system
    lines.append(f"{'system':<8} {'-':<32} {system.size:>14} {system.used:>14} {0:>14}\n")
    for man in device.vram:
        name = man.region.name if man.region is not None else "-"
        lines.append(f"{man.name:<8} {name:<32} {man.size:>14} {man.used:>14} "
                     f"{man.pinned:>14}\n")
    return "".join(lines)


def bos(device: Device, viewer_uid: int = 0) -> str:
    """Every BO with its process and cgroup; a non-root viewer sees only its own clients'
    (as /proc shows another user's open files only to root)."""
    lines = [f"{'pid':>8} {'handle':>6} {'size':>14} {'placement':<9} {'pinned':>6} "
             f"{'evictions':>9}  cgroup\n"]
    shown = [bo for bo in device.all_bos() if viewer_uid == 0 or bo.client.uid == viewer_uid]
    for bo in sorted(shown, key=lambda b: (b.client.pid, b.handle)):
        cgroup = bo.pool.css.cgroup.path if bo.pool is not None else "-"
        lines.append(f"{bo.client.pid:>8} {bo.handle:>6} {bo.size:>14} {bo.placement:<9} "
                     f"{int(bo.pinned):>6} {bo.evictions:>9}  {cgroup}\n")
    return "".join(lines)


def evictions(device: Device) -> str:
    lines = []
    for e in device.log.entries:
        stamp = time.strftime("%H:%M:%S", time.localtime(e.time))
        victim = e.victim
        pid = getattr(getattr(victim, "client", None), "pid", 0)
        handle = getattr(victim, "handle", 0)
        lines.append(f"{stamp} {e.manager} evicted pid={pid} handle={handle} "
                     f"size={e.size} cgroup={e.victim_cgroup} by pid={e.evictor_pid} "
                     f"cgroup={e.evictor_cgroup} ({e.reason})"
                     + (f" stalled={','.join(e.stalled)}" if e.stalled else "") + "\n")
    return "".join(lines)


def eviction_counts(device: Device) -> str:
    return "".join(f"{path} {n}\n" for path, n in sorted(device.log.counts_by_path().items()))


def dmabuf_stalls(device: Device) -> str:
    """Stalls of this device's dynamic importers (an exported buffer they map moved), by
    the importer's cgroup."""
    return "".join(f"{path} {n}\n" for path, n in sorted(device.dmabuf_stalls().items()))


def dmabufs(device: Device) -> str:
    """The dma-bufs this device exported, and every attachment to or from it."""
    lines = []
    for b in device.dmabufs:
        exporter = b.exporter
        assert isinstance(exporter, XeExport)
        bo = exporter.bo
        if exporter.device is device:
            lines.append(f"export dmabuf={b.id} pid={bo.client.pid} handle={bo.handle} "
                         f"size={b.size} placement={bo.placement} pinned={bo.pin_count} "
                         f"refs={b.refs} importers={len(b.attachments)}\n")
        for a in b.attachments:
            importer = a.importer
            assert isinstance(importer, XeBo)
            if exporter.device is not device and importer.device is not device:
                continue
            lines.append(f"attach dmabuf={b.id} exporter={exporter.device.pci} "
                         f"importer={importer.client.device.pci} pid={importer.client.pid} "
                         f"handle={importer.handle} kind={a.kind.value} p2p={int(a.p2p)} "
                         f"pinned={int(a.pinned)} mapped={int(a.mapped)} "
                         f"stalls={a.stalls}\n")
    return "".join(lines)
