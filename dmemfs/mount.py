"""The composition root: engine → operations → pyfuse3, run under trio until told to stop."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyfuse3
import trio

from dmemfs.cputime import HostCpu, has_irq_pressure, has_psi, read_pressure
from dmemfs.device import views
from dmemfs.device.config import DEFAULT_DEVICE, DeviceConfig
from dmemfs.device.dmabuf import DmaBufTable
from dmemfs.device.protocol import Session
from dmemfs.device.selftest import DmemSelftest
from dmemfs.device.xe import Device
from dmemfs.engine.cgroup import Attr, Cgroup, CgroupTree
from dmemfs.errors import DmemError
from dmemfs.fs import dmabufs
from dmemfs.fs.debug import add_debug_files
from dmemfs.fs.dmabufs import DmaBufDir
from dmemfs.fs.handles import Call, CommandHandle, DeviceHandle, Opener, TextHandle
from dmemfs.fs.inodes import SpecialFile
from dmemfs.fs.operations import Operations
from dmemfs.lineage import LineageUnavailable, TraceLineage
from dmemfs.procs import HostProcesses
from dmemfs.profile import Profile, get_profile
from dmemfs.state import StateError, StateKeeper, check_directory, load

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountOptions:
    mountpoint: str
    devices: list[DeviceConfig] = field(default_factory=lambda: [DEFAULT_DEVICE])
    profile: Profile = field(default_factory=lambda: get_profile("latest"))
    allow_other: bool = False
    debug: bool = False
    #: Emulate the kernel's dmem_selftest module (its region is registered first).
    selftest: bool = False
    #: Serve read-only opens through the page cache (real sizes; fewer requests).
    page_cache: bool = False
    #: Save the configuration here and restore it at mount.
    state: str | None = None
    #: Where new processes are placed from: "trace" (fork events), "proc" (the /proc parent
    #: chain) or "auto" (trace when permitted).
    lineage: str = "auto"


def build(options: MountOptions, lineage: TraceLineage | None = None) -> Operations:
    """Engine, host processes and the FUSE operations, with the devices registered."""
    tree = CgroupTree(options.profile, psi=has_psi(), irq_pressure=has_irq_pressure())
    host = HostProcesses(tree, lineage)
    host.mountpoint = os.path.abspath(options.mountpoint)
    tree.pressure = read_pressure
    tree.cpu = HostCpu(tree, functools.partial(_locate, host))
    ops = Operations(tree, host, page_cache=options.page_cache)
    tree.cpu.on_exit = ops.processes_exited
    if options.selftest:
        _add_selftest(ops, DmemSelftest(tree))
    dmabufs = DmaBufTable()
    devices = [Device(config, minor, tree, dmabufs=dmabufs)
               for minor, config in enumerate(options.devices)]
    for device in devices:
        _add_device(ops, device)
    _add_dmabufs(ops, dmabufs)
    add_debug_files(ops, options.profile, options.mountpoint)
    return ops


def _locate(host: HostProcesses, pid: int) -> Cgroup | None:
    """The cgroup of a live process (resolved through its parents if dmemfs never saw it)."""
    try:
        return host.cgroup_of(pid)
    except DmemError:
        return None


def _add_selftest(ops: Operations, selftest: DmemSelftest) -> None:
    directory = ops.add_dir(ops.debug, "dmem_selftest")
    wo = Attr(0, 0, 0o200)
    tree = ops.tree

    def charge(call: Call, data: bytes) -> None:
        # dmem_cgroup_try_charge charges the calling task's cgroup (``current``).
        selftest.charge(tree.dmem_css_of(tree.cgroup_of(call.pid)), data)

    ops.add_file(directory, "charge", SpecialFile(wo, lambda o, f: CommandHandle(o, charge)))
    ops.add_file(directory, "uncharge", SpecialFile(wo, lambda o, f: CommandHandle(
        o, lambda call, data: selftest.uncharge(data))))


def _add_device(ops: Operations, device: Device) -> None:
    def open_device(opener: Opener, flags: int) -> DeviceHandle:
        return DeviceHandle(opener, Session(device, opener.pid, opener.uid))

    ops.add_file(ops.dri, device.node_name, SpecialFile(Attr(0, 0, 0o666), open_device))
    debug = ops.add_dir(ops.add_dir_once(ops.debug, "dri"), device.pci)
    ro = Attr(0, 0, 0o444)
    for name, render in (("regions", views.regions), ("evictions", views.evictions),
                         ("eviction_counts", views.eviction_counts),
                         ("dmabuf", views.dmabufs), ("dmabuf_stalls", views.dmabuf_stalls)):
        text = functools.partial(render, device)
        ops.add_file(debug, name, SpecialFile(ro, functools.partial(_text_handle, text)))
    ops.add_file(debug, "bos", SpecialFile(ro, lambda o, f: TextHandle(
        o, lambda: views.bos(device, o.uid))))


def _add_dmabufs(ops: Operations, table: DmaBufTable) -> None:
    """``dev/dma_buf/ID`` per exported buffer and ``debug/dma_buf/bufinfo`` listing them
    (the kernel has ``/sys/kernel/debug/dma_buf/bufinfo``)."""
    directory = DmaBufDir(ops.dev, table)
    ops.inodes.add(directory)
    ops.dev.children["dma_buf"] = directory
    debug = ops.add_dir(ops.debug, "dma_buf")

    def bufinfo() -> str:
        return "".join(dmabufs.describe(b) for b in table)

    ops.add_file(debug, "bufinfo", SpecialFile(Attr(0, 0, 0o444),
                                               functools.partial(_text_handle, bufinfo)))


def _text_handle(render: Callable[[], str], opener: Opener, flags: int) -> TextHandle:
    return TextHandle(opener, render)


def fuse_options(options: MountOptions) -> set[str]:
    opts = set(pyfuse3.default_options) | {"fsname=dmemfs", "subtype=dmemfs"}
    if options.allow_other:
        opts.add("allow_other")
    if options.debug:
        opts.add("debug")
    return opts


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: Seconds between reads of fork/exit events when no request needs them (keeps the trace
#: buffer from filling up on a busy host).
EVENTS_INTERVAL = 0.1


async def _apply_events(host: HostProcesses) -> None:
    while True:
        await trio.sleep(EVENTS_INTERVAL)
        host.sync()


async def _serve(early: list[int], keeper: StateKeeper | None, host: HostProcesses,
                 cpu: HostCpu | None, ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        if keeper is not None:
            nursery.start_soon(keeper.run)
        if host.lineage is not None:
            nursery.start_soon(_apply_events, host)
        if cpu is not None:
            nursery.start_soon(cpu.run)

        async def stop_on_signal(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
                task_status.started()
                # A signal may have come after the mount was ready but before this receiver.
                signum = early[0] if early else await anext(signals)
                log.info("received %s, unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()

        await nursery.start(stop_on_signal)
        ready()  # the loop runs: requests queued by the kernel are served from here on
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect the lines written to file descriptor 2 while the block runs (by C code and
    child processes too), then copy them to the real stderr, the log."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            if data:
                os.write(2, data)
            lines.extend(data.decode(errors="replace").splitlines())


def run(options: MountOptions, ready: Callable[[], None] = lambda: None) -> None:
    """Mount, call ``ready`` once the kernel has the mount, serve until unmounted or signalled."""
    lineage = _open_lineage(options.lineage)
    try:
        _run(options, ready, lineage)
    finally:
        if lineage is not None:
            lineage.close()


def _open_lineage(mode: str) -> TraceLineage | None:
    if mode == "proc":
        return None
    try:
        return TraceLineage.open()
    except LineageUnavailable as e:
        if mode == "trace":
            raise OSError(errno.EPERM, f"--lineage trace: {e}") from None
        log.info("new processes are placed by their /proc parent chain (%s); see README "
                 "'Processes' for what that gets wrong", e)
        return None


def _run(options: MountOptions, ready: Callable[[], None], lineage: TraceLineage | None
         ) -> None:
    ops = build(options, lineage)
    keeper = None
    if options.state:
        keeper = StateKeeper(options.state, ops.tree)
        try:
            check_directory(options.state)
            if load(options.state, ops.tree):
                log.info("restored the configuration from %s", options.state)
            keeper.start()
        except StateError as e:
            raise OSError(errno.EINVAL, str(e)) from None
        ops.config_changed = keeper.changed
        ops.state_status = keeper.status
    with _captured_stderr() as said:
        try:
            pyfuse3.init(ops, options.mountpoint, fuse_options(options))
        except RuntimeError as e:
            failed = str(e)
        else:
            failed = ""
    if failed:
        # libfuse (and fusermount3, which it runs for non-root users) print the cause.
        lines = [line.strip() for line in said if line.strip()]
        cause = "; ".join([x for x in lines if "fuse" in x.lower()][-2:] or lines[-2:]) or failed
        raise OSError(errno.EIO, f"cannot mount at {options.mountpoint}: {cause}")
    log.info("mounted %s: profile %s, pinning %s, devices %s", options.mountpoint,
             options.profile.name, options.profile.pinning, "; ".join(
                 f"{d.pci} " + ", ".join(f"vram{i} {size >> 20} MiB"
                                         for i, size in enumerate(d.vram))
                 for d in options.devices))
    early: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: early.append(signum))
                for s in STOP_SIGNALS}
    cpu = ops.tree.cpu if isinstance(ops.tree.cpu, HostCpu) else None
    if cpu is not None:
        cpu.start()
    try:
        trio.run(_serve, early, keeper, ops.host, cpu, ready)
    finally:
        if cpu is not None:
            cpu.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if keeper is not None:
            keeper.close()
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", options.mountpoint)
