"""Model-based test of dma-buf sharing between two simulated xe devices (no mount).

A hypothesis state machine drives two devices that share one :class:`DmaBufTable`, under the
6.14 or the 7.3 profile, in any pinning mode, each device with peer-to-peer on or off, and a
small cgroup tree (``/a/x``, ``/a/y``, ``/b``, ``/c`` and the root hold the processes, each
with its own dmem.min and dmem.max). In any order it opens and closes DRM clients (each in
some cgroup), creates BOs of every kind (VRAM-only, system-capable, system-only, deferred,
PINNED, private to a VM), exports any handle, imports any live dma-buf into any client as a
dynamic, pinning or static importer, takes and drops references like an open
``dev/dma_buf/ID`` file, closes any handle or whole clients, runs EXEC jobs with imported
handles, moves processes, and puts the exporting device under memory pressure (other
cgroups allocating, dmem.max lowered) so exported BOs get evicted and dynamic importers stall.
Every operation may only fail with a :class:`DmemError`. Each step checks its own outcome
(an import on the same device is the exporter's BO with no attachment, no pin, no move; a
static importer leaves the buffer pinned in system memory; an importer without peer-to-peer
cannot take a BO that cannot leave VRAM; an EXEC never evicts its own buffers, maps every
imported one, and whoever brings a buffer back into VRAM is charged for it).

After every step:

- no leaked export: each dma-buf ever made is in the table exactly while something references
  it, and then its ``refs`` is the number of those references (the handle caches of the
  clients, the imported BOs, the open file references); a released one has no attachment and
  its BO no longer names it; a BO is freed exactly when no handle and no dma-buf holds it; an
  attachment exists exactly while its importing BO lives;
- pins balanced: a BO's pin count is its pinned attachments plus the pinning RFC's pin, which
  is held from GEM_CREATE until the first close of a handle to the BO; each VRAM manager's
  ``pinned`` is the bytes of the pinned BOs in it; each dmem pool's own pinned amount is the
  bytes of the RFC-pinned BOs charged to it;
- usage equals the resident BOs: each pool's own usage is the bytes of the VRAM BOs charged to
  it (imported BOs have no memory), each manager's ``used`` and LRU and the system memory's
  ``used`` are the BOs in it;
- each dynamic importer counts at least one stall per eviction of its buffer, the others none,
  and each device's stalls per cgroup add up to its importers' stalls;
- no warning is logged (a pin or charge dropped twice, a BO freed while pinned);
- with every client closed and every reference dropped, the table is empty and nothing is used.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dmemfs.device import ttm
from dmemfs.device.config import DeviceConfig
from dmemfs.device.dmabuf import Attachment, DmaBuf, DmaBufTable, Importer
from dmemfs.device.xe import SYSTEM, Client, Device, Flag, XeBo, XeExport
from dmemfs.engine.cgroup import CgroupTree, Creds
from dmemfs.engine.dmem import DmemCss, Pool
from dmemfs.errors import DmemError, InvalidArgument, NotFound, NotPermitted, NotSupported
from dmemfs.profile import PINNING_MODES, V6_14, V7_3, Profile

KiB = 1 << 10
MiB = 1 << 20
PAGE64K = 64 * KiB
PCIS = ("0000:03:00.0", "0000:04:00.0")
#: Cgroups that hold processes (``/a`` has children, so it holds none).
LEAVES = ("/", "/a/x", "/a/y", "/b", "/c")
LIMITED = ("/a", "/a/x", "/a/y", "/b", "/c")
MINS = ("0", "0", "128K", "256K", "512K", "1M")
MAXES = ("max", "max", "max", "256K", "512K", "1M", "2M")
#: What GEM_CREATE is asked for: placement, flags, whether the BO is private to a VM.
BO_KINDS: dict[str, tuple[tuple[str, ...], frozenset[Flag], bool]] = {
    "ordinary": (("vram0", SYSTEM), frozenset(), False),
    "vram": (("vram0",), frozenset(), False),
    "vram1": (("vram1",), frozenset(), False),
    "system-capable": ((SYSTEM, "vram0"), frozenset(), False),
    "system": ((SYSTEM,), frozenset(), False),
    "deferred": (("vram0", SYSTEM), frozenset({Flag.DEFER_BACKING}), False),
    "pinned": (("vram0",), frozenset({Flag.PINNED}), False),
    "vm": (("vram0", SYSTEM), frozenset(), True),
}
BO_KIND = st.sampled_from(["ordinary", "ordinary", "vram", "vram", "vram1", "system-capable",
                           "system", "deferred", "pinned", "pinned", "pinned", "vm"])
IMPORTERS = st.sampled_from([Importer.DYNAMIC, Importer.DYNAMIC, Importer.PIN, Importer.STATIC])
MAX_CLIENTS = 6
MAX_HANDLES = 30


class _Warnings(logging.Handler):
    """Collects the warnings dmemfs logs: each one is a broken invariant of the model
    (a pin or charge dropped twice, a BO freed while pinned)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def _imports(client: Client) -> int:
    """How many of the client's handles are imports from the other device."""
    return sum(bo.import_attach is not None for bo in client.bos.values())


class DmaBufMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tree: CgroupTree
        self.devices: list[Device] = []
        self.table = DmaBufTable()
        self.clients: list[Client] = []
        self.pids = itertools.count(2000)
        #: The open file references this test holds (a dma-buf once per reference).
        self.files: list[DmaBuf] = []
        #: Everything ever made, to check that what is gone is really gone.
        self.created: list[XeBo] = []
        self.imports: list[XeBo] = []
        self.attachments: dict[Attachment, Device] = {}
        self.exports: list[DmaBuf] = []
        #: BOs one of whose handles was closed (the RFC pin goes at the first close).
        self.handle_closed: set[XeBo] = set()
        #: (stalls, evictions of its buffer) of each live attachment after the last step.
        self.seen: dict[Attachment, tuple[int, int]] = {}
        self.warnings = _Warnings()
        logging.getLogger("dmemfs").addHandler(self.warnings)

    def teardown(self) -> None:
        logging.getLogger("dmemfs").removeHandler(self.warnings)
        kinds = sorted({a.kind.value for a in self.attachments})
        event(f"run: importer kinds {'/'.join(kinds) or '-'}")
        stalls = sum(a.stalls for a in self.attachments)
        event(f"run: stalls {'0' if not stalls else '1-4' if stalls < 5 else '5+'}")

    # -- setup ------------------------------------------------------------------------------

    @initialize(
        data=st.data(),
        profile=st.sampled_from([V7_3, V6_14]),
        pinning=st.sampled_from(PINNING_MODES),
        p2p=st.sampled_from([(True, True)] * 3 + [(True, False), (False, True), (False, False)]),
        vram=st.tuples(st.lists(st.integers(8, 24), min_size=1, max_size=2),
                       st.lists(st.integers(8, 24), min_size=1, max_size=1)),
        system=st.sampled_from([MiB, 4 * MiB, 64 * MiB, 64 * MiB]),
        fast_path=st.sampled_from([ttm.FAST_PATH, ttm.FAST_PATH, None]),
    )
    def setup(self, data: st.DataObject, profile: Profile, pinning: Any,
              p2p: tuple[bool, bool], vram: tuple[list[int], list[int]], system: int,
              fast_path: int | None) -> None:
        self.tree = tree = CgroupTree(profile.with_options(pinning=pinning))
        self.devices = [
            Device(DeviceConfig(pci=PCIS[minor], vram=tuple(n * PAGE64K for n in vram[minor]),
                                system=system, p2p=p2p[minor]),
                   minor, tree, fast_path=fast_path, dmabufs=self.table)
            for minor in range(2)
        ]
        tree.write_subtree_control(tree.root, "+dmem")
        a = tree.mkdir(tree.root, "a")
        tree.write_subtree_control(a, "+dmem")
        for parent, name in ((a, "x"), (a, "y"), (tree.root, "b"), (tree.root, "c")):
            tree.mkdir(parent, name)
        for path in LIMITED:
            css = self._css_at(path)
            for region in tree.dmem.regions:
                for attr, values in (("min", MINS), ("max", MAXES)):
                    value = data.draw(st.sampled_from(values))
                    tree.dmem.write_limit(css, attr, f"{region.name} {value}")
        clients = [self._open(minor, data.draw(st.sampled_from(LEAVES))) for minor in range(2)]
        # A start with something shared: BOs on both devices, some exported and imported.
        for _ in range(data.draw(st.integers(0, 4))):
            client = data.draw(st.sampled_from(clients))
            kind = data.draw(BO_KIND)
            placement, flags, private = BO_KINDS[kind]
            bo = self._create(client, data.draw(st.integers(1, 4)) * PAGE64K, placement,
                              flags, private, kind)
            if bo is None or not data.draw(st.booleans()):
                continue
            buf = self._export(client, bo.handle)
            if buf is not None:
                self._import(clients[1 - client.device.minor], buf, data.draw(IMPORTERS))

    def _css_at(self, path: str) -> DmemCss:
        return self.tree.dmem_css_of(self.tree.lookup(path))

    def _css(self, client: Client) -> DmemCss:
        """The dmem css of the client's process now (as the device file charges it)."""
        return self.tree.dmem_css_of(self.tree.cgroup_of(client.pid))

    def _open(self, minor: int, path: str) -> Client:
        pid = next(self.pids)
        self.tree.migrate(pid, self.tree.lookup(path))
        client = self.devices[minor].open(pid)
        self.clients.append(client)
        return client

    @property
    def profile(self) -> Profile:
        return self.tree.profile

    def _handles(self) -> int:
        return sum(len(c.bos) for c in self.clients)

    def _client(self, data: st.DataObject, with_handles: bool = False) -> Client | None:
        clients = [c for c in self.clients if c.bos or not with_handles]
        return data.draw(st.sampled_from(clients)) if clients else None

    def _live_bufs(self) -> list[DmaBuf]:
        return sorted(self.table, key=lambda b: b.id)

    # -- clients and processes -----------------------------------------------------------

    @precondition(lambda self: self.devices and len(self.clients) < MAX_CLIENTS)
    @rule(minor=st.integers(0, 1), path=st.sampled_from(LEAVES))
    def open_client(self, minor: int, path: str) -> None:
        self._open(minor, path)

    @precondition(lambda self: len(self.clients) > 1)
    @rule(data=st.data())
    def close_client(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self.clients))
        self._close(client)

    def _close(self, client: Client) -> None:
        for bo in client.bos.values():
            self.handle_closed.add(bo)
        client.device.close(client)
        self.clients.remove(client)
        assert not client.bos and not client.prime
        assert client not in client.device.clients

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), path=st.sampled_from(LEAVES))
    def move_process(self, data: st.DataObject, path: str) -> None:
        """The client's process moves: later charges go to the new cgroup, old ones stay."""
        client = data.draw(st.sampled_from(self.clients))
        self.tree.migrate(client.pid, self.tree.lookup(path))

    # -- GEM ----------------------------------------------------------------------------------

    @precondition(lambda self: self.clients and self._handles() < MAX_HANDLES)
    @rule(data=st.data(), kind=BO_KIND, pages=st.integers(1, 6))
    def gem_create(self, data: st.DataObject, kind: str, pages: int) -> None:
        client = self._client(data)
        assert client is not None
        placement, flags, private = BO_KINDS[kind]
        self._create(client, pages * PAGE64K, placement, flags, private, kind)

    def _create(self, client: Client, size: int, placement: tuple[str, ...],
                flags: frozenset[Flag], private: bool, kind: str) -> XeBo | None:
        dev = client.device
        vm_id = client.new_vm() if private else 0
        try:
            bo = dev.gem_create(client, self._css(client), size, placement, flags,
                                vm_id=vm_id)
        except DmemError as e:
            event(f"GEM_CREATE {kind}: {type(e).__name__}")
            if Flag.PINNED in flags and not self.profile.has_pinning:
                assert isinstance(e, InvalidArgument)
            return None
        event(f"GEM_CREATE {kind}: ok")
        assert Flag.PINNED not in flags or self.profile.has_pinning
        assert bo.rfc_pin == (Flag.PINNED in flags) == bo.pinned
        assert client.bos[bo.handle] is bo and bo.refs == 1
        self.created.append(bo)
        return bo

    @precondition(lambda self: any(c.bos for c in self.clients))
    @rule(data=st.data())
    def gem_close(self, data: st.DataObject) -> None:
        """Close any handle: the exporter's, an importer's, a second handle to the same BO."""
        client = self._client(data, with_handles=True)
        assert client is not None
        handle = data.draw(st.sampled_from(sorted(client.bos)))
        bo = client.bos[handle]
        self.handle_closed.add(bo)
        client.device.gem_close(client, handle)
        assert handle not in client.bos and handle not in client.prime
        with pytest.raises(InvalidArgument):
            client.device.gem_close(client, handle)  # the handle is gone

    @precondition(lambda self: any(c.bos for c in self.clients))
    @rule(data=st.data())
    def exec_job(self, data: st.DataObject) -> None:
        """EXEC with any of the client's handles."""
        client = self._client(data, with_handles=True)
        assert client is not None
        handles = data.draw(st.lists(st.sampled_from(sorted(client.bos)), min_size=1,
                                     max_size=4, unique=True))
        self._exec(client, handles)

    @precondition(lambda self: any(_imports(c) for c in self.clients))
    @rule(data=st.data())
    def exec_imports(self, data: st.DataObject) -> None:
        """EXEC with imported handles (a dynamic importer maps the buffer again)."""
        clients = [c for c in self.clients if _imports(c)]
        several = [c for c in clients if _imports(c) > 1]
        client = data.draw(st.sampled_from(several or clients))
        imported = sorted(h for h, bo in client.bos.items() if bo.import_attach is not None)
        handles = data.draw(st.lists(st.sampled_from(imported), min_size=min(2, len(imported)),
                                     max_size=4, unique=True))
        others = sorted(set(client.bos) - set(handles))
        if others:
            handles += data.draw(st.lists(st.sampled_from(others), max_size=2, unique=True))
        self._exec(client, handles)

    def _exec(self, client: Client, handles: list[int]) -> None:
        job = [client.bos[h] for h in handles]
        targets = [bo.exported_bo for bo in job]
        before = [t.evictions for t in targets]
        outside = [not t.in_vram for t in targets]
        imported = sum(bo.import_attach is not None for bo in job)
        css = self._css(client)
        try:
            client.device.exec(client, css, job)
        except DmemError as e:
            event(f"EXEC with {min(imported, 2)} imports: {type(e).__name__}")
            return
        event(f"EXEC with {min(imported, 2)} imports: ok")
        # The job's buffers, its imported ones included, are reserved together: none is
        # evicted by the job itself, and each imported one is mapped when the job runs.
        assert [t.evictions for t in targets] == before
        for bo in job:
            if bo.import_attach is not None:
                assert bo.import_attach.mapped, bo
        # Whoever brings a buffer back into VRAM pays for it, an importer included.
        for t, was_outside in zip(targets, outside, strict=True):
            if was_outside and t.in_vram:
                assert t.pool is not None and t.pool.css is css, t

    # -- PRIME --------------------------------------------------------------------------------

    @precondition(lambda self: any(c.bos for c in self.clients))
    @rule(data=st.data())
    def prime_export(self, data: st.DataObject) -> None:
        client = self._client(data, with_handles=True)
        assert client is not None
        if data.draw(st.integers(0, 9)):
            handle = data.draw(st.sampled_from(sorted(client.bos)))
        else:
            handle = max(client.bos) + 1  # no such handle
        self._export(client, handle)

    @precondition(lambda self: self.clients and len(self.table.bufs) > 0
                  and self._handles() < MAX_HANDLES)
    @rule(data=st.data(), kind=IMPORTERS)
    def prime_import(self, data: st.DataObject, kind: Importer) -> None:
        """Import any live dma-buf into any client (the same device included)."""
        client = self._client(data)
        assert client is not None
        self._import(client, data.draw(st.sampled_from(self._live_bufs())), kind)

    # Sharing is what this test is about: two rules export a handle and import it into a
    # client of the other device (opened for it if need be) in one step.
    @precondition(lambda self: self.clients and self._handles() < MAX_HANDLES)
    @rule(data=st.data(), kind=IMPORTERS, path=st.sampled_from(LEAVES))
    def share(self, data: st.DataObject, kind: Importer, path: str) -> None:
        self._share(data, kind, path)

    @precondition(lambda self: self.clients and self._handles() < MAX_HANDLES)
    @rule(data=st.data(), kind=IMPORTERS, path=st.sampled_from(LEAVES))
    def share_more(self, data: st.DataObject, kind: Importer, path: str) -> None:
        self._share(data, kind, path)

    def _share(self, data: st.DataObject, kind: Importer, path: str) -> None:
        """Export a handle (often of a BO made for it) and import it on the other device."""
        exporter = self._client(data)
        assert exporter is not None
        if not exporter.bos or data.draw(st.booleans()):
            what = data.draw(BO_KIND)
            placement, flags, private = BO_KINDS[what]
            bo = self._create(exporter, data.draw(st.integers(1, 6)) * PAGE64K, placement,
                              flags, private, what)
            if bo is None:
                return
            handle = bo.handle
        else:
            handle = data.draw(st.sampled_from(sorted(exporter.bos)))
        buf = self._export(exporter, handle)
        if buf is None:
            return
        other = self.devices[1 - exporter.device.minor]
        clients = [c for c in self.clients if c.device is other]
        if clients and (len(self.clients) >= MAX_CLIENTS or data.draw(st.integers(0, 3))):
            if data.draw(st.booleans()):
                # The client importing the most already: jobs with several imports.
                clients = [max(clients, key=lambda c: (_imports(c), -self.clients.index(c)))]
            importer = data.draw(st.sampled_from(clients))
        elif len(self.clients) < MAX_CLIENTS:
            importer = self._open(other.minor, path)
        else:
            return
        self._import(importer, buf, kind)

    def _export(self, client: Client, handle: int) -> DmaBuf | None:
        """PRIME_EXPORT of ``handle`` (maybe no handle): checked, the dma-buf or None."""
        creds = Creds(uid=client.uid, gid=client.uid)
        bo = client.bos.get(handle)
        try:
            buf = client.device.prime_export(client, handle, creds)
        except DmemError as e:
            event(f"PRIME_EXPORT: {type(e).__name__}")
            if bo is None:
                assert isinstance(e, NotFound)
            else:
                # A BO private to a VM cannot be exported (EPERM); nothing else fails.
                assert isinstance(e, NotPermitted) and bo.vm_id and bo.import_attach is None
            return None
        assert bo is not None
        event(f"PRIME_EXPORT of {'an import' if bo.import_attach else 'a BO'}: ok")
        assert not bo.vm_id
        assert self.table.get(buf.id) is buf and client.prime.get(handle) is buf
        if bo.import_attach is not None:
            assert buf is bo.import_attach.dmabuf  # re-exporting an import: its dma-buf
        else:
            assert bo.dma_buf is buf and buf.size == bo.size
        if buf not in self.exports:
            self.exports.append(buf)
            assert (buf.uid, buf.gid, buf.mode) == (creds.uid, creds.gid, 0o600)
        refs = buf.refs
        assert client.device.prime_export(client, handle, creds) is buf
        assert buf.refs == refs  # a second export is the same dma-buf, no new reference
        return buf

    def _import(self, client: Client, buf: DmaBuf, kind: Importer) -> None:
        """PRIME_IMPORT of a live dma-buf as ``kind``, checked."""
        exporter = buf.exporter
        assert isinstance(exporter, XeExport)
        target = exporter.bo
        cached = client.prime_handle(buf)
        same = exporter.device is client.device
        attachments = list(buf.attachments)
        refs, pins, where = buf.refs, target.pin_count, target.resource
        handles = dict(client.bos)
        p2p = (kind is not Importer.STATIC and client.device.config.p2p
               and exporter.device.config.p2p)
        label = "cached" if cached is not None else "same device" if same else kind.value
        try:
            handle, bo = client.device.prime_import(client, buf, kind, self._css(client))
        except DmemError as e:
            event(f"PRIME_IMPORT {label}: {type(e).__name__}")
            assert cached is None and not same
            # An importer without peer-to-peer cannot use a BO that cannot leave VRAM.
            if isinstance(e, NotSupported):
                assert not p2p and not exporter.can_migrate_to_system()
            assert buf.attachments == attachments and buf.refs == refs
            assert client.bos == handles
            return
        event(f"PRIME_IMPORT {label}: ok")
        assert client.bos[handle] is bo and client.prime[handle] is buf
        if cached is not None:
            assert handle == cached and client.bos == handles and buf.refs == refs
            return
        assert handle not in handles
        if same:
            # The same device: the exporter's own BO, no attachment, no pin, no move.
            assert bo is target and buf.attachments == attachments
            assert (target.pin_count, target.resource) == (pins, where)
            assert buf.refs == refs + 1
            return
        a = bo.import_attach
        assert a is not None and a.dmabuf is buf and a.kind is kind and a.importer is bo
        assert buf.attachments == [*attachments, a] and buf.refs == refs + 2
        assert bo.resource is None and bo.size == buf.size
        assert a.p2p == p2p and a.mapped
        assert a.pinned == (kind is not Importer.DYNAMIC)
        if target.in_vram and not isinstance(where, ttm.VramManager):
            # The import brought the buffer back into VRAM: the importer pays.
            assert target.pool is not None and target.pool.css is self._css(client)
        if kind is Importer.STATIC:
            assert target.resource is exporter.device.system and target.pinned
        self.imports.append(bo)
        self.attachments[a] = client.device

    @precondition(lambda self: self.devices and len(self.table.bufs) > 0)
    @rule(data=st.data())
    def take_file_reference(self, data: st.DataObject) -> None:
        """Open ``dev/dma_buf/ID`` (or receive the descriptor): a reference."""
        buf = data.draw(st.sampled_from(self._live_bufs()))
        buf.get()
        self.files.append(buf)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def drop_file_reference(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.files) - 1))
        self.files.pop(i).put(self.table)

    # -- memory pressure ------------------------------------------------------------------

    @precondition(lambda self: self.devices and self._handles() < MAX_HANDLES)
    @rule(data=st.data(), pages=st.integers(1, 12), path=st.sampled_from(LEAVES),
          fill=st.booleans())
    def pressure(self, data: st.DataObject, pages: int, path: str, fill: bool) -> None:
        """A client in some cgroup allocates VRAM-only memory where an exported BO lives:
        ``pages`` more than is free with ``fill``, so that something has to be evicted."""
        targets = [b.exporter.bo for b in self._live_bufs() if isinstance(b.exporter, XeExport)]
        if targets:
            bo = data.draw(st.sampled_from(targets))
            dev = bo.device
            assert isinstance(dev, Device)
            man = bo.resource if isinstance(bo.resource, ttm.VramManager) else dev.vram[0]
        else:
            dev = data.draw(st.sampled_from(self.devices))
            man = dev.vram[0]
        size = pages * PAGE64K
        if fill:
            size = min(size + man.size - man.used, man.size)
        clients = [c for c in self.clients if c.device is dev
                   and self.tree.cgroup_of(c.pid) is self.tree.lookup(path)]
        if clients and (len(self.clients) >= MAX_CLIENTS or data.draw(st.booleans())):
            client = data.draw(st.sampled_from(clients))
        elif len(self.clients) < MAX_CLIENTS:
            client = self._open(dev.minor, path)
        else:
            return
        self._create(client, size, (man.name,), frozenset(), False, "pressure")

    @precondition(lambda self: any(isinstance(b.exporter, XeExport) and b.exporter.bo.in_vram
                                   for b in self.table))
    @rule(data=st.data(), fraction=st.integers(0, 3), nonblock=st.booleans())
    def squeeze_exporter(self, data: st.DataObject, fraction: int, nonblock: bool) -> None:
        """dmem.max of the cgroup an exported BO is charged to, below its usage (7.3
        reclaims, which evicts; 6.14 ignores the write)."""
        bos = [b.exporter.bo for b in self._live_bufs()
               if isinstance(b.exporter, XeExport) and b.exporter.bo.in_vram]
        bo = data.draw(st.sampled_from(bos))
        pool = bo.pool
        assert pool is not None
        if pool.css.cgroup.is_root:
            return  # the root has no dmem.max
        value = pool.counter.usage * fraction // 4
        self.tree.dmem.write_limit(pool.css, "max", f"{pool.region.name} {value}",
                                   nonblock=nonblock, task=1)

    @precondition(lambda self: self.devices)
    @rule(data=st.data(), path=st.sampled_from(LIMITED), attr=st.sampled_from(["min", "max"]),
          nonblock=st.booleans())
    def set_limit(self, data: st.DataObject, path: str, attr: str, nonblock: bool) -> None:
        region = data.draw(st.sampled_from(self.tree.dmem.regions))
        value = data.draw(st.sampled_from(MINS if attr == "min" else MAXES))
        self.tree.dmem.write_limit(self._css_at(path), attr, f"{region.name} {value}",
                                   nonblock=nonblock, task=1)

    @precondition(lambda self: self.devices)
    @rule(data=st.data(), path=st.sampled_from(LIMITED), fraction=st.integers(0, 3),
          nonblock=st.booleans())
    def lower_max(self, data: st.DataObject, path: str, fraction: int, nonblock: bool) -> None:
        """dmem.max at 0, 1/4, 2/4 or 3/4 of a cgroup's usage (7.3 reclaims: evictions)."""
        css = self._css_at(path)
        region = data.draw(st.sampled_from(self.tree.dmem.regions))
        usage = css.pools[region].counter.usage if region in css.pools else 0
        self.tree.dmem.write_limit(css, "max", f"{region.name} {usage * fraction // 4}",
                                   nonblock=nonblock, task=1)

    # -- the end --------------------------------------------------------------------------

    @precondition(lambda self: (self.clients or self.files) and len(self.exports) >= 2)
    @rule(data=st.data())
    def close_everything(self, data: st.DataObject) -> None:
        """Close every client and drop every reference, in any order."""
        items: list[Client | DmaBuf] = [*self.clients, *self.files]
        for i in data.draw(st.permutations(range(len(items)))):
            item = items[i]
            if isinstance(item, Client):
                self._close(item)
            else:
                self.files.remove(item)
                item.put(self.table)
        self._assert_nothing_left()

    def _assert_nothing_left(self) -> None:
        assert not self.clients and not self.files
        assert not self.table.bufs, list(self.table.bufs)
        for d in self.devices:
            assert not d.clients
            for m in d.vram:
                assert (m.used, m.pinned, m.lru_head) == (0, 0, None), m
            assert d.system.used == 0
        for css in self.tree.dmem.root_css.walk_pre():
            for pool in css.pools.values():
                assert (pool.counter.usage, pool.counter.pinned) == (0, 0), pool
        for bo in self.created + self.imports:
            assert bo.resource is None and bo.refs == 0, bo

    # -- invariants --------------------------------------------------------------------------

    def _live(self) -> tuple[dict[XeBo, int], list[XeBo]]:
        """The handles naming each BO, and every BO alive (held by a handle or a dma-buf)."""
        handles: dict[XeBo, int] = {}
        for d in self.devices:
            assert d.clients == [c for c in self.clients if c.device is d]
            for c in d.clients:
                for bo in c.bos.values():
                    handles[bo] = handles.get(bo, 0) + 1
        live = dict.fromkeys(handles)
        for buf in self.table:
            assert isinstance(buf.exporter, XeExport)
            live[buf.exporter.bo] = None
        return handles, list(live)

    def _own_amounts(self) -> dict[Pool, tuple[int, int]]:
        """Each pool's own usage and pinned bytes: its counters minus its children's."""
        out = {}
        for css in self.tree.dmem.root_css.walk_pre():
            for region, pool in css.pools.items():
                kids = [k.pools[region].counter for k in css.children if region in k.pools]
                out[pool] = (pool.counter.usage - sum(k.usage for k in kids),
                             pool.counter.pinned - sum(k.pinned for k in kids))
        return out

    @invariant()
    def nothing_logged(self) -> None:
        assert not self.warnings.records, self.warnings.records

    @invariant()
    def no_leaked_export(self) -> None:
        if not self.devices:
            return
        handles, live = self._live()
        expected: dict[DmaBuf, int] = {}
        for c in self.clients:
            assert set(c.prime) <= set(c.bos)
            for h, buf in c.prime.items():
                expected[buf] = expected.get(buf, 0) + 1
                bo = c.bos[h]
                assert buf is (bo.import_attach.dmabuf if bo.import_attach else bo.dma_buf)
            for h, bo in c.bos.items():
                if bo.dma_buf is not None or bo.import_attach is not None:
                    assert h in c.prime  # every handle of a shared BO caches its dma-buf
        for bo in live:
            if bo.import_attach is not None:
                buf = bo.import_attach.dmabuf
                expected[buf] = expected.get(buf, 0) + 1
        for buf in self.files:
            expected[buf] = expected.get(buf, 0) + 1
        assert set(self.table) <= set(self.exports)
        for buf in self.exports:
            exporter = buf.exporter
            assert isinstance(exporter, XeExport)
            n = expected.get(buf, 0)
            if n:
                assert self.table.get(buf.id) is buf and buf.refs == n, (buf.id, buf.refs, n)
                assert exporter.bo.dma_buf is buf and exporter.bo in live
            else:
                assert self.table.get(buf.id) is not buf, buf.id
                assert not buf.attachments and exporter.bo.dma_buf is not buf
        for bo in live:
            n = handles.get(bo, 0) + (bo.dma_buf is not None)
            assert bo.refs == n > 0, (bo, bo.refs, n)
            assert bo.resource is not None or bo.import_attach is not None, bo
        alive = set(live)
        for bo in self.created:
            if bo not in alive:
                assert (bo.refs, bo.resource, bo.pool, bo.pin_count, bo.dma_buf) == (
                    0, None, None, 0, None), bo
        for bo in self.imports:
            if bo not in alive:
                assert (bo.refs, bo.import_attach) == (0, None), bo
        for a, dev in self.attachments.items():
            importer = a.importer
            assert isinstance(importer, XeBo)
            attached = a in a.dmabuf.attachments
            assert attached == (importer in alive), a
            if attached:
                assert importer.import_attach is a and importer.device is dev
                assert a.dmabuf.exporter.device is not dev  # type: ignore[attr-defined]
        for buf in self.table:
            assert set(buf.attachments) <= set(self.attachments)

    @invariant()
    def pins_balanced(self) -> None:
        if not self.devices:
            return
        _, live = self._live()
        rfc: dict[Pool, int] = {}
        for bo in live:
            if bo.import_attach is not None:
                assert (bo.resource, bo.pool, bo.pin_count, bo.rfc_pin) == (None, None, 0, False)
                continue
            atts = bo.dma_buf.attachments if bo.dma_buf is not None else []
            assert bo.pin_count == bo.rfc_pin + sum(a.pinned for a in atts), bo
            # The RFC pin is held from GEM_CREATE until a handle of the BO is first closed.
            created_pinned = Flag.PINNED in bo.flags
            assert bo.rfc_pin == (created_pinned and bo not in self.handle_closed), bo
            if bo.rfc_pin:
                assert bo.in_vram and bo.pool is not None and self.profile.has_pinning
                rfc[bo.pool] = rfc.get(bo.pool, 0) + bo.size
            for a in atts:
                both = a.dmabuf.exporter.device.config.p2p  # type: ignore[attr-defined]
                importer = a.importer
                assert isinstance(importer, XeBo) and isinstance(importer.device, Device)
                both = both and importer.device.config.p2p
                assert a.p2p == (both and a.kind is not Importer.STATIC)
                assert a.pinned == (a.kind is not Importer.DYNAMIC), a.kind
                if a.kind is Importer.STATIC:
                    # Kept in system memory while a non-dynamic importer is attached.
                    assert a.mapped and bo.resource is bo.device.system
                if a.mapped and not a.p2p:
                    # Mapped for an importer without peer-to-peer: in system memory, unless
                    # a peer-to-peer importer's pin keeps it in VRAM.
                    assert bo.resource is bo.device.system or bo.pinned, a
        for d in self.devices:
            for m in d.vram:
                resident = [bo for bo in live if bo.resource is m]
                assert m.pinned == sum(bo.size for bo in resident if bo.pinned), m
        own = self._own_amounts()
        for pool, (_, pinned) in own.items():
            assert pinned == rfc.get(pool, 0), pool
        assert set(rfc) <= set(own)

    @invariant()
    def usage_equals_resident_bos(self) -> None:
        if not self.devices:
            return
        _, live = self._live()
        charged: dict[Pool, int] = {}
        for d in self.devices:
            mine = [bo for bo in live if bo.device is d and bo.import_attach is None]
            for bo in mine:
                if isinstance(bo.resource, ttm.VramManager):
                    assert bo.pool is not None and bo.pool.region is bo.resource.region, bo
                    assert bo.on_lru != bo.pinned, bo
                    charged[bo.pool] = charged.get(bo.pool, 0) + bo.size
                else:
                    assert bo.resource is d.system and bo.pool is None and not bo.on_lru, bo
            for m in d.vram:
                resident = [bo for bo in mine if bo.resource is m]
                assert m.used == sum(bo.size for bo in resident) <= m.size, m
                assert list(m.lru()) == sorted((bo for bo in resident if not bo.pinned),
                                               key=lambda b: b.seq)
            in_system = [bo for bo in mine if bo.resource is d.system]
            assert d.system.used == sum(bo.size for bo in in_system) <= d.system.size
        own = self._own_amounts()
        for pool, (usage, _) in own.items():
            assert usage == charged.get(pool, 0), pool
            assert pool.counter.usage >= pool.counter.pinned >= 0, pool
        assert set(charged) <= set(own)

    @invariant()
    def stalls_follow_moves(self) -> None:
        if not self.devices:
            return
        seen: dict[Attachment, tuple[int, int]] = {}
        for a in self.attachments:
            if a.kind is not Importer.DYNAMIC:
                assert a.stalls == 0, a.kind
            if a not in a.dmabuf.attachments:
                continue
            exporter = a.dmabuf.exporter
            assert isinstance(exporter, XeExport)
            now = (a.stalls, exporter.bo.evictions)
            before = self.seen.get(a)
            if before is not None:
                assert now[0] >= before[0]
                if a.kind is Importer.DYNAMIC:
                    # Each eviction of the buffer is a move its dynamic importers see.
                    assert now[0] - before[0] >= now[1] - before[1], (before, now)
                    if now[1] > before[1]:
                        event("dynamic importer stalled by an eviction")
            seen[a] = now
        self.seen = seen
        for d in self.devices:
            mine = sum(a.stalls for a, dev in self.attachments.items() if dev is d)
            assert sum(d.stalls.values()) == mine, d.pci

    @invariant()
    def empty_when_nothing_is_open(self) -> None:
        if self.devices and not self.clients and not self.files:
            self._assert_nothing_left()


DmaBufMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    report_multiple_bugs=False,  # shrink one failure only: shrinking these runs is slow
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_dmabuf_model = DmaBufMachine.TestCase
