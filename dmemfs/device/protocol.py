"""The device file's text ioctls: one line ``VERB key=value …`` per write.

:func:`parse_request` turns the bytes of one ``write()`` into a verb and its arguments;
:class:`Session` is one open of the device file (a DRM client) and runs each request against
its :class:`~dmemfs.device.xe.Device`, charging the cgroup the calling process is in at that
moment. Malformed lines, unknown verbs or keys, duplicate or missing keys and garbage values
are EINVAL, like a bad ioctl argument; a write over one page is E2BIG like a cgroup file's.
Numbers follow the kernel's ``kstrtou64``/``memparse`` (ASCII digits only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dmemfs.device.dmabuf import DmaBuf, Importer
from dmemfs.device.xe import SYSTEM, Caching, Client, Device, Flag, XeBo, may_open
from dmemfs.engine.cgroup import Creds
from dmemfs.engine.dmem import DmemCss
from dmemfs.engine.parse import KSPACE, kstrtou64, memparse
from dmemfs.errors import AccessDenied, BadFile, InvalidArgument, NotFound, OutOfRange, TooBig
from dmemfs.profile import MAX_WRITE

U32_MAX = (1 << 32) - 1

#: verb → (required keys, optional keys)
VERBS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "GEM_CREATE": (frozenset({"size", "placement"}),
                   frozenset({"flags", "cpu_caching", "vm_id"})),
    "GEM_CLOSE": (frozenset({"handle"}), frozenset()),
    "VM_CREATE": (frozenset(), frozenset()),
    "VM_DESTROY": (frozenset({"vm_id"}), frozenset()),
    "QUERY": (frozenset({"what"}), frozenset()),
    "EXEC": (frozenset({"handles"}), frozenset()),
    "BO_INFO": (frozenset({"handle"}), frozenset()),
    "PRIME_EXPORT": (frozenset({"handle"}), frozenset()),
    "PRIME_IMPORT": (frozenset(), frozenset({"dmabuf", "fd", "importer"})),
}


class Caller(Protocol):
    """Who makes a request (the file system layer knows; see dmemfs/fs/handles.py)."""

    @property
    def pid(self) -> int:
        """The calling process, known to the cgroup tree."""
        ...

    @property
    def caller_creds(self) -> Creds:
        """The calling process's credentials."""
        ...

    def dmabuf_fd(self, fd: int) -> int | None:
        """The id of the dma-buf the caller holds open as descriptor ``fd``, if it does."""
        ...


def _tokens(line: str) -> list[str]:
    """Split on the kernel's white space (``isspace`` of lib/ctype.c), nothing else."""
    out: list[str] = []
    word: list[str] = []
    for c in line:
        if c in KSPACE:
            if word:
                out.append("".join(word))
                word = []
        else:
            word.append(c)
    if word:
        out.append("".join(word))
    return out


def parse_request(data: bytes) -> tuple[str, dict[str, str]]:
    if len(data) > MAX_WRITE:
        raise TooBig(f"a request is limited to {MAX_WRITE} bytes")
    line = data.decode("latin-1").strip(KSPACE)
    if not line or "\n" in line:
        raise InvalidArgument("one request per write: VERB key=value …")
    verb, *tokens = _tokens(line)
    if verb not in VERBS:
        raise InvalidArgument(f"unknown verb {verb!r} (known: {', '.join(VERBS)})")
    required, optional = VERBS[verb]
    args: dict[str, str] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep or not key or not value:
            raise InvalidArgument(f"{tok!r} is not key=value")
        if key not in required and key not in optional:
            raise InvalidArgument(f"{verb} takes no key {key!r}")
        if key in args:
            raise InvalidArgument(f"{key} given twice")
        args[key] = value
    missing = required - args.keys()
    if missing:
        raise InvalidArgument(f"{verb} needs {', '.join(sorted(missing))}")
    return verb, args


def parse_u32(key: str, value: str) -> int:
    """A decimal, hex (``0x``) or octal number up to 2^32 - 1 (``kstrtou32``)."""
    try:
        n = kstrtou64(value, 0)
    except OutOfRange:
        n = U32_MAX + 1
    except InvalidArgument:
        raise InvalidArgument(f"{key}={value!r} is not a number") from None
    if n > U32_MAX:
        raise InvalidArgument(f"{key}={value!r} does not fit 32 bits")
    return n


def parse_size(value: str) -> int:
    """Bytes with an optional K/M/G/T/P/E suffix (``memparse``; nothing may follow)."""
    size, rest = memparse(value)
    if rest or not value[:1].isascii() or not value[:1].isdigit():
        raise InvalidArgument(f"size={value!r} is not a size (bytes or K/M/G suffix)")
    return size


def parse_list(key: str, value: str) -> tuple[str, ...]:
    items = tuple(value.split(","))
    if any(not item for item in items):
        raise InvalidArgument(f"{key}={value!r}: empty list item")
    return items


def _flags(value: str) -> frozenset[Flag]:
    out = set()
    for item in parse_list("flags", value):
        try:
            out.add(Flag(item))
        except ValueError:
            raise InvalidArgument(f"unknown flag {item!r}") from None
    return frozenset(out)


def format_bo(handle: int, bo: XeBo) -> str:
    """BO_INFO of a handle. For an imported BO the placement, pinned state, cgroup and
    evictions are those of the exporter's BO it uses; ``p2p`` and ``stalls`` are the
    importer's own (for the exporter: every importer reaches it peer-to-peer; the sum)."""
    target = bo.exported_bo
    cgroup = target.pool.css.cgroup.path if target.pool is not None else "-"
    line = (f"handle={handle} size={target.size} placement={target.placement} "
            f"pinned={int(target.pinned)} cgroup={cgroup} evictions={target.evictions}")
    dmabuf = target.dma_buf
    if dmabuf is None:
        return f"{line} exported=0 imported=0 importers=0 p2p=0 stalls=0\n"
    a = bo.import_attach
    if a is not None:
        p2p = a.p2p and target.in_vram
        stalls = a.stalls
    else:
        p2p = (bool(dmabuf.attachments) and target.in_vram
               and all(x.p2p for x in dmabuf.attachments))
        stalls = dmabuf.stalls
    return (f"{line} exported=1 imported={int(a is not None)} "
            f"importers={len(dmabuf.attachments)} p2p={int(p2p)} stalls={stalls} "
            f"dmabuf={dmabuf.id}\n")


def format_regions(device: Device) -> str:
    system = device.system
    lines = [f"instance=0 class=system name=system dmem_region=- min_page_size=4096 "
             f"total_size={system.size} used={system.used} cpu_visible_size=0\n"]
    for man in device.vram:
        dmem_name = man.region.name if man.region is not None else "-"
        lines.append(f"instance={man.instance} class=vram name={man.name} "
                     f"dmem_region={dmem_name} min_page_size=65536 total_size={man.size} "
                     f"used={man.used} cpu_visible_size={man.size}\n")
    return "".join(lines)


class Session:
    """One open of the device file: a DRM client and its requests."""

    def __init__(self, device: Device, pid: int, uid: int = 0) -> None:
        self.device = device
        self.client: Client = device.open(pid, uid)
        #: Who makes the request being run.
        self.caller: Caller

    def close(self) -> None:
        self.device.close(self.client)

    def request(self, data: bytes, caller: Caller) -> str:
        """Run one request for ``caller``; the reply."""
        verb, args = parse_request(data)
        tree = self.device.tree
        self.caller = caller
        css = tree.dmem_css_of(tree.cgroup_of(caller.pid))
        handler: Callable[[Session, dict[str, str], DmemCss], str] = _HANDLERS[verb]
        return handler(self, args, css)

    def _bo(self, handle_text: str) -> XeBo:
        handle = parse_u32("handle", handle_text)
        bo = self.client.bos.get(handle)
        if bo is None:
            raise InvalidArgument(f"no handle {handle}")
        return bo

    def gem_create(self, args: dict[str, str], css: DmemCss) -> str:
        placement = parse_list("placement", args["placement"])
        for p in placement:
            if p != SYSTEM:
                self.device.region(p)  # EINVAL for a region this device lacks
        flags = _flags(args["flags"]) if "flags" in args else frozenset()
        caching = None
        if "cpu_caching" in args:
            try:
                caching = Caching(args["cpu_caching"])
            except ValueError:
                raise InvalidArgument(f"cpu_caching={args['cpu_caching']!r}: wb or wc") from None
        vm_id = parse_u32("vm_id", args["vm_id"]) if "vm_id" in args else 0
        bo = self.device.gem_create(self.client, css,
                                    parse_size(args["size"]), placement, flags, caching, vm_id)
        return (f"handle={bo.handle} size={bo.size} placement={bo.placement} "
                f"pinned={int(bo.pinned)}\n")

    def gem_close(self, args: dict[str, str], css: DmemCss) -> str:
        self.device.gem_close(self.client, parse_u32("handle", args["handle"]))
        return ""

    def vm_create(self, args: dict[str, str], css: DmemCss) -> str:
        return f"vm_id={self.client.new_vm()}\n"

    def vm_destroy(self, args: dict[str, str], css: DmemCss) -> str:
        vm = parse_u32("vm_id", args["vm_id"])
        if vm not in self.client.vms:
            raise NotFound(f"no VM {vm}")
        self.client.vms.discard(vm)
        return ""

    def query(self, args: dict[str, str], css: DmemCss) -> str:
        if args["what"] != "mem_regions":
            raise InvalidArgument(f"unknown query {args['what']!r} (known: mem_regions)")
        return format_regions(self.device)

    def exec(self, args: dict[str, str], css: DmemCss) -> str:
        bos: list[XeBo] = []
        for item in parse_list("handles", args["handles"]):
            bo = self._bo(item)
            if bo not in bos:
                bos.append(bo)
        migrated, evicted = self.device.exec(self.client, css, bos)
        return f"migrated_bytes={migrated} evicted_bytes={evicted}\n"

    def bo_info(self, args: dict[str, str], css: DmemCss) -> str:
        handle = parse_u32("handle", args["handle"])
        return format_bo(handle, self._bo(args["handle"]))

    def prime_export(self, args: dict[str, str], css: DmemCss) -> str:
        handle = parse_u32("handle", args["handle"])
        dmabuf = self.device.prime_export(self.client, handle, self.caller.caller_creds)
        return f"dmabuf={dmabuf.id}\n"

    def prime_import(self, args: dict[str, str], css: DmemCss) -> str:
        dmabuf = self._dmabuf(args)
        try:
            kind = Importer(args.get("importer", "dynamic"))
        except ValueError:
            raise InvalidArgument(
                f"importer={args['importer']!r}: dynamic, pin or static") from None
        handle, bo = self.device.prime_import(self.client, dmabuf, kind, css)
        a = bo.import_attach
        p2p = int(a is not None and a.p2p and bo.exported_bo.in_vram)
        return f"handle={handle} size={bo.size} p2p={p2p}\n"

    def _dmabuf(self, args: dict[str, str]) -> DmaBuf:
        """The dma-buf named by ``dmabuf=ID`` (the caller must be able to open its file)
        or held open as ``fd=N`` by the caller (as DRM_IOCTL_PRIME_FD_TO_HANDLE takes it)."""
        if ("dmabuf" in args) == ("fd" in args):
            raise InvalidArgument("PRIME_IMPORT needs dmabuf= or fd=, not both")
        table = self.device.dmabufs
        if "fd" in args:
            fd = parse_u32("fd", args["fd"])
            found = self.caller.dmabuf_fd(fd)
            dmabuf = table.get(found) if found is not None else None
            if dmabuf is None:
                raise BadFile(f"descriptor {fd} is not an open dma-buf")
            return dmabuf
        dmabuf = table.get(parse_u32("dmabuf", args["dmabuf"]))
        if dmabuf is None:
            raise NotFound(f"no dma-buf {args['dmabuf']}")
        if not may_open(dmabuf, self.caller.caller_creds):
            raise AccessDenied(f"no permission to open dma-buf {dmabuf.id}")
        return dmabuf


_HANDLERS = {verb: getattr(Session, verb.lower()) for verb in VERBS}
