"""The device file's text ioctls: one line ``VERB key=value …`` per write (SPEC §6).

Parsing and reply formatting only; :class:`Session` runs one open file's requests against a
:class:`~dmemfs.device.xe.Device`. Malformed lines, unknown verbs or keys, duplicate or missing
keys and garbage values are EINVAL, like a bad ioctl argument.
"""

from __future__ import annotations

from collections.abc import Callable

from dmemfs.device import ttm
from dmemfs.device.xe import SYSTEM, BufferObject, Caching, Client, Device, Flag
from dmemfs.engine.dmem import DmemCss
from dmemfs.engine.parse import KSPACE, memparse
from dmemfs.errors import InvalidArgument, NotFound

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
}


def parse_request(text: str) -> tuple[str, dict[str, str]]:
    line = text.strip(KSPACE)
    if not line or "\n" in line:
        raise InvalidArgument("one request per write: VERB key=value …")
    verb, *tokens = line.split()
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
    if not value.isdigit() or int(value) > U32_MAX:
        raise InvalidArgument(f"{key}={value!r} is not a 32-bit unsigned number")
    return int(value)


def parse_size(value: str) -> int:
    size, rest = memparse(value)
    if rest or not value[:1].isdigit():
        raise InvalidArgument(f"size={value!r} is not a size (bytes or K/M/G suffix)")
    return size


def parse_list(key: str, value: str) -> tuple[str, ...]:
    items = tuple(value.split(","))
    if any(not item for item in items):
        raise InvalidArgument(f"{key}={value!r}: empty list item")
    return items


def _enum_list(key: str, value: str, kinds: type[Flag]) -> frozenset[Flag]:
    out = set()
    for item in parse_list(key, value):
        try:
            out.add(kinds(item))
        except ValueError:
            raise InvalidArgument(f"unknown {key} {item!r}") from None
    return frozenset(out)


def format_bo(bo: BufferObject) -> str:
    cgroup = bo.pool.css.cgroup.path if bo.pool is not None else "-"
    return (f"handle={bo.handle} size={bo.size} placement={bo.placement} "
            f"pinned={int(bo.pinned)} cgroup={cgroup} evictions={bo.evictions}\n")


def format_regions(device: Device) -> str:
    lines = [f"instance=0 class=system name=system dmem_region=- min_page_size=4096 "
             f"total_size={device.system_size} used={device.system_used} cpu_visible_size=0\n"]
    for r in device.regions:
        dmem_name = r.dmem_region.name if r.dmem_region is not None else "-"
        lines.append(f"instance={r.instance} class=vram name={r.name} dmem_region={dmem_name} "
                     f"min_page_size=65536 total_size={r.size} used={r.used} "
                     f"cpu_visible_size={r.size}\n")
    return "".join(lines)


class Session:
    """One open of the device file: a DRM client and its requests."""

    def __init__(self, device: Device, pid: int, caller_css: Callable[[], DmemCss]) -> None:
        self.device = device
        self.client: Client = device.open(pid)
        #: The dmem css of the opener at the time of each call (SPEC §5, §6).
        self.caller_css = caller_css

    def close(self) -> None:
        self.device.close(self.client)

    def request(self, text: str) -> str:
        verb, args = parse_request(text)
        return getattr(self, "_" + verb.lower())(args)  # type: ignore[no-any-return]

    def _bo(self, handle_text: str) -> BufferObject:
        handle = parse_u32("handle", handle_text)
        bo = self.client.bos.get(handle)
        if bo is None:
            raise InvalidArgument(f"no handle {handle}")
        return bo

    def _gem_create(self, args: dict[str, str]) -> str:
        placement = parse_list("placement", args["placement"])
        for p in placement:
            if p != SYSTEM:
                self.device.region(p)  # EINVAL for a region this device lacks
        flags = _enum_list("flags", args["flags"], Flag) if "flags" in args else frozenset()
        caching = None
        if "cpu_caching" in args:
            try:
                caching = Caching(args["cpu_caching"])
            except ValueError:
                raise InvalidArgument(f"cpu_caching={args['cpu_caching']!r}: wb or wc") from None
        vm_id = parse_u32("vm_id", args["vm_id"]) if "vm_id" in args else 0
        bo = self.device.gem_create(self.client, self.caller_css(), parse_size(args["size"]),
                                    placement, flags, caching, vm_id)
        return (f"handle={bo.handle} size={bo.size} placement={bo.placement} "
                f"pinned={int(bo.pinned)}\n")

    def _gem_close(self, args: dict[str, str]) -> str:
        self.device.gem_close(self.client, parse_u32("handle", args["handle"]))
        return ""

    def _vm_create(self, args: dict[str, str]) -> str:
        return f"vm_id={self.client.new_vm()}\n"

    def _vm_destroy(self, args: dict[str, str]) -> str:
        vm = parse_u32("vm_id", args["vm_id"])
        if vm not in self.client.vms:
            raise NotFound(f"no VM {vm}")
        self.client.vms.discard(vm)
        return ""

    def _query(self, args: dict[str, str]) -> str:
        if args["what"] != "mem_regions":
            raise InvalidArgument(f"unknown query {args['what']!r} (known: mem_regions)")
        return format_regions(self.device)

    def _exec(self, args: dict[str, str]) -> str:
        bos = []
        for item in parse_list("handles", args["handles"]):
            bo = self._bo(item)
            if bo not in bos:
                bos.append(bo)
        migrated, evicted = ttm.exec_bos(bos, self.caller_css(), self.client.pid)
        return f"migrated_bytes={migrated} evicted_bytes={evicted}\n"

    def _bo_info(self, args: dict[str, str]) -> str:
        return format_bo(self._bo(args["handle"]))
