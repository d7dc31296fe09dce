"""The device file's uAPI through real mounts: GEM_CREATE validation, protocol errors, replies.

docs/kernel-model.md §12 (xe_gem_create_ioctl checks, the memory-regions query), §9 (the RFC's
PINNED checks) and README "The simulated GPU" (the text protocol). Most tests share one
module-wide mount: each uses its own client and checks that a failed request left nothing
behind.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from dmemfs.client import XeDevice, parse_reply
from dmemfs.testing import Mounted, mounted
from tests.conftest import _require_fuse
from tests.device.helpers import UNSHARED

PCI0 = "0000:03:00.0"
PCI1 = "0000:04:00.0"
VRAM0 = f"drm/{PCI0}/vram0"
VRAM1 = f"drm/{PCI0}/vram1"
OTHER = f"drm/{PCI1}/vram0"
MiB = 1 << 20
DEVICES = ("--device", f"xe,pci={PCI0},vram0=8M,vram1=4M,system=16M",
           "--device", f"xe,pci={PCI1},vram0=2M")
_BAD_LOG = re.compile(r"Traceback|\b(ERROR|CRITICAL|WARNING)\b")


@pytest.fixture(scope="module")
def shared() -> Iterator[Mounted]:
    """One mount for the whole module (two devices; the first with two VRAM regions)."""
    _require_fuse()
    with mounted(DEVICES) as m:
        yield m
        bad = [line for line in m.log().splitlines() if _BAD_LOG.search(line)]
        assert not bad, "daemon log has warnings or errors:\n" + "\n".join(bad[:20])


def _wait_idle(m: Mounted) -> None:
    """Wait until no BO is left (a FUSE release arrives after close() returned)."""
    deadline = time.monotonic() + 5
    while True:
        current = _dmem(m, "dmem.current")
        bos = _bos(m, PCI0) + _bos(m, PCI1)
        if not bos and set(current.values()) == {0}:
            return
        assert time.monotonic() < deadline, f"BOs left behind: {current} {bos}"
        time.sleep(0.02)


@pytest.fixture
def gpu(shared: Mounted) -> Iterator[XeDevice]:
    """A fresh client of renderD128 on the shared mount; nothing may be left afterwards."""
    _wait_idle(shared)
    dev = XeDevice(os.path.join(shared.dri, "renderD128"))
    try:
        yield dev
    finally:
        dev.close()
    _wait_idle(shared)


def _dmem(m: Mounted, name: str, rel: str = "") -> dict[str, int]:
    with open(os.path.join(m.cgroup, rel, name)) as f:
        return {r: int(v) for r, v in (line.split() for line in f.read().splitlines())}


def _bos(m: Mounted, pci: str) -> list[list[str]]:
    with open(os.path.join(m.debug, "dri", pci, "bos")) as f:
        return [line.split() for line in f.read().splitlines()[1:]]


def _raw(dev: XeDevice, data: bytes) -> int:
    """Write ``data`` as one ioctl; return the errno (0 on success)."""
    try:
        os.write(dev.fd, data)
    except OSError as e:
        return e.errno or -1
    return 0


def _regions(dev: XeDevice) -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in dev.query_mem_regions()}


# -- GEM_CREATE validation --------------------------------------------------------------------

GEM_CREATE_ERRORS = [
    # placement (docs/kernel-model.md §12: the first check)
    ("size=64K placement=,", errno.EINVAL),
    ("size=64K placement=vram0,", errno.EINVAL),
    ("size=64K placement=vram0,vram0", errno.EINVAL),
    ("size=64K placement=system,system", errno.EINVAL),
    ("size=64K placement=vram2", errno.EINVAL),
    ("size=64K placement=gtt", errno.EINVAL),
    ("size=64K placement=vram0,vram2", errno.EINVAL),
    # flags (step 3)
    ("size=64K placement=vram0 flags=NO_COMPRESSION", errno.EINVAL),
    ("size=64K placement=vram0 flags=SCANOUT,BOGUS", errno.EINVAL),
    ("size=64K placement=vram0 flags=pinned", errno.EINVAL),
    # size (step 5 and step 11)
    ("size=0 placement=system", errno.EINVAL),
    ("size=0 placement=vram0", errno.EINVAL),
    ("size=4097 placement=system", errno.EINVAL),
    ("size=2K placement=system", errno.EINVAL),
    ("size=4K placement=vram0", errno.EINVAL),
    ("size=68K placement=vram0,system", errno.EINVAL),
    ("size=96K placement=system,vram1", errno.EINVAL),
    # NEEDS_VISIBLE_VRAM without VRAM (step 6)
    ("size=64K placement=system flags=NEEDS_VISIBLE_VRAM", errno.EINVAL),
    # cpu_caching (steps 7-9)
    ("size=64K placement=vram0 cpu_caching=wb", errno.EINVAL),
    ("size=64K placement=vram0,system cpu_caching=wb", errno.EINVAL),
    ("size=64K placement=vram0 cpu_caching=uc", errno.EINVAL),
    ("size=64K placement=system flags=SCANOUT", errno.EINVAL),
    ("size=64K placement=system flags=SCANOUT cpu_caching=wb", errno.EINVAL),
    # vm_id (step 10): ENOENT, and it comes before the 64 KiB alignment check (step 11)
    ("size=64K placement=vram0 vm_id=7", errno.ENOENT),
    ("size=4K placement=vram0 vm_id=7", errno.ENOENT),
    ("size=4K placement=system vm_id=1", errno.ENOENT),
    # but cpu_caching (step 8) comes before the VM lookup
    ("size=64K placement=vram0 cpu_caching=wb vm_id=7", errno.EINVAL),
    # PINNED (docs/kernel-model.md §9)
    ("size=64K placement=vram0,system flags=PINNED", errno.EINVAL),
    ("size=64K placement=vram0,vram1 flags=PINNED", errno.EINVAL),
    ("size=64K placement=vram0 flags=PINNED,DEFER_BACKING", errno.EINVAL),
    ("size=64K placement=system flags=PINNED", errno.ENOSYS),
    # no memory can hold it (docs/kernel-model.md §12: no place fits)
    ("size=16M placement=vram0", errno.ENOMEM),
    ("size=1G placement=vram0,system", errno.ENOMEM),
    ("size=1G placement=system", errno.ENOMEM),
]


@pytest.mark.parametrize(("args", "err"), GEM_CREATE_ERRORS)
def test_gem_create_errno(gpu: XeDevice, args: str, err: int) -> None:
    assert _raw(gpu, f"GEM_CREATE {args}\n".encode()) == err
    _assert_nothing_left(gpu)
    # The client still works, and the failed create consumed no visible handle state.
    bo = gpu.gem_create("64K", ("system",))
    assert gpu.bo_info(bo.handle)["placement"] == "system"


def _assert_nothing_left(dev: XeDevice) -> None:
    """After a failed request: nothing to read but the reason, nothing allocated."""
    reply = os.read(dev.fd, 4096)
    assert reply.startswith(b"error=E") and b" reason=" in reply and reply.count(b"\n") == 1
    assert os.read(dev.fd, 4096) == b""
    used = {name: r["used"] for name, r in _regions(dev).items()}
    assert used == {"system": "0", "vram0": "0", "vram1": "0"}


def test_pinned_with_vm_id_is_einval(gpu: XeDevice) -> None:
    vm = gpu.vm_create()
    # A valid VM is fine for an ordinary BO …
    bo = gpu.gem_create("64K", ("vram0",), vm_id=vm)
    assert bo.placement == "vram0"
    gpu.gem_close(bo.handle)
    # … but a PINNED BO is meant for export (docs/kernel-model.md §9).
    assert _raw(gpu, f"GEM_CREATE size=64K placement=vram0 flags=PINNED vm_id={vm}".encode()) \
        == errno.EINVAL
    _assert_nothing_left(gpu)


def test_vm_id_of_destroyed_or_foreign_vm_is_enoent(shared: Mounted, gpu: XeDevice) -> None:
    vm = gpu.vm_create()
    with XeDevice(os.path.join(shared.dri, "renderD128")) as other:
        # VMs belong to the client (drm_file) that created them.
        assert _raw(other, f"GEM_CREATE size=64K placement=vram0 vm_id={vm}".encode()) \
            == errno.ENOENT
    gpu.vm_destroy(vm)
    assert _raw(gpu, f"GEM_CREATE size=64K placement=vram0 vm_id={vm}".encode()) \
        == errno.ENOENT
    _assert_nothing_left(gpu)


GEM_CREATE_ACCEPTED = [
    ("size=64K placement=vram0", 64 << 10, "vram0"),
    ("size=4K placement=system", 4 << 10, "system"),
    ("size=68K placement=system", 68 << 10, "system"),
    ("size=0x10000 placement=vram1", 64 << 10, "vram1"),
    ("size=1M placement=system,vram0", MiB, "vram0"),  # VRAM is tried first whatever the order
    ("size=128K placement=vram0 flags=NEEDS_VISIBLE_VRAM", 128 << 10, "vram0"),
    ("size=64K placement=vram0,system cpu_caching=wc flags=SCANOUT", 64 << 10, "vram0"),
    ("size=64K placement=system cpu_caching=wc flags=SCANOUT", 64 << 10, "system"),
    ("size=64K placement=system cpu_caching=wb", 64 << 10, "system"),
    ("size=64K placement=vram0 flags=DEFER_BACKING", 64 << 10, "system"),  # VRAM on first use
    ("size=12M placement=vram0,system", 12 * MiB, "system"),  # bigger than vram0: fallback
]


@pytest.mark.parametrize(("args", "size", "placement"), GEM_CREATE_ACCEPTED)
def test_gem_create_accepted(gpu: XeDevice, args: str, size: int, placement: str) -> None:
    reply = parse_reply(gpu.ioctl(f"GEM_CREATE {args}"))
    assert reply == {"handle": "1", "size": str(size), "placement": placement, "pinned": "0"}
    info = gpu.bo_info(1)
    assert info["placement"] == placement
    regions = _regions(gpu)
    assert int(regions[placement]["used"]) == size


def test_pinned_needs_visible_vram_is_not_checked(shared: Mounted, gpu: XeDevice) -> None:
    """The uAPI text says PINNED excludes NEEDS_VISIBLE_VRAM; the RFC code does not check it."""
    bo = gpu.gem_create("64K", ("vram0",), flags=("PINNED", "NEEDS_VISIBLE_VRAM"))
    assert bo.pinned and bo.placement == "vram0"
    assert _dmem(shared, "dmem.pinned")[VRAM0] == 64 << 10


@pytest.mark.dmemfs_args("--device", f"xe,pci={PCI0},vram0=8M")
def test_pinned_beyond_min_is_enospc_and_leaves_nothing(mnt: Mounted) -> None:
    """try_pin checks each level's raw dmem.min (docs/kernel-model.md §9); -EAGAIN reaches
    userspace as ENOSPC and the BO is released again."""
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "p"))
    mnt.write("p/cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "p", "x"))
    os.mkdir(os.path.join(mnt.cgroup, "y"))
    mnt.write("p/dmem.min", f"{VRAM0} 2M")
    mnt.write("p/x/dmem.min", f"{VRAM0} 4M")

    def state() -> tuple[int, int, int, int, str]:
        used = {r["name"]: r["used"] for r in gpu.query_mem_regions()}["vram0"]
        return (_dmem(mnt, "dmem.current", "p/x")[VRAM0], _dmem(mnt, "dmem.current")[VRAM0],
                _dmem(mnt, "dmem.pinned", "p/x")[VRAM0], _dmem(mnt, "dmem.pinned")[VRAM0],
                used)

    gpu = XeDevice(os.path.join(mnt.dri, "renderD128"))
    try:
        mnt.write("p/x/cgroup.procs", str(os.getpid()))
        gpu.gem_create("256K", ("vram0",))
        before = state()
        assert before == (256 << 10, 256 << 10, 0, 0, str(256 << 10))
        # 3M fits x's min (4M) but not p's (2M): the whole pin fails, nothing stays charged.
        assert _raw(gpu, b"GEM_CREATE size=3M placement=vram0 flags=PINNED") == errno.ENOSPC
        assert state() == before
        assert os.read(gpu.fd, 100) == b""
        # Pinning exactly up to the min works …
        assert gpu.gem_create("2M", ("vram0",), flags=("PINNED",)).pinned
        after = state()
        assert after == (2304 << 10, 2304 << 10, 2 * MiB, 2 * MiB, str(2304 << 10))
        # … one more page does not.
        assert _raw(gpu, b"GEM_CREATE size=64K placement=vram0 flags=PINNED") == errno.ENOSPC
        assert state() == after
        mnt.write("p/dmem.min", f"{VRAM0} 3M")
        assert gpu.gem_create("64K", ("vram0",), flags=("PINNED",)).pinned
        # A cgroup without dmem.min can pin nothing.
        mnt.write("y/cgroup.procs", str(os.getpid()))
        assert _raw(gpu, b"GEM_CREATE size=64K placement=vram0 flags=PINNED") == errno.ENOSPC
        assert _dmem(mnt, "dmem.current", "y")[VRAM0] == 0
        assert _dmem(mnt, "dmem.pinned")[VRAM0] == 2 * MiB + (64 << 10)
        assert [line[3:5] for line in _bos(mnt, PCI0)] == [["vram0", "0"], ["vram0", "1"],
                                                           ["vram0", "1"]]
    finally:
        gpu.close()
        mnt.write("cgroup.procs", str(os.getpid()))


# -- protocol errors ----------------------------------------------------------------------------

PROTOCOL_ERRORS = [
    b"FROB\n",
    b"gem_create size=64K placement=vram0\n",
    b"GEM_CREATE size=64K placement=vram0 color=red\n",
    b"GEM_CREATE size=64K size=64K placement=vram0\n",
    b"GEM_CREATE size=64K placement=vram0 placement=vram0\n",
    b"GEM_CREATE size=64K\n",
    b"GEM_CREATE placement=vram0\n",
    b"GEM_CREATE\n",
    b"GEM_CREATE size placement=vram0\n",
    b"GEM_CREATE size= placement=vram0\n",
    b"GEM_CREATE =64K placement=vram0\n",
    b"GEM_CREATE size=abc placement=vram0\n",
    b"GEM_CREATE size=-64K placement=vram0\n",
    b"GEM_CREATE size=64Q placement=vram0\n",
    b"GEM_CREATE size=64KK placement=vram0\n",
    b"GEM_CREATE size=64K placement=vram0 vm_id=x\n",
    b"GEM_CREATE size=64K placement=vram0 vm_id=-1\n",
    b"GEM_CREATE size=64K placement=vram0 vm_id=4294967296\n",
    b"GEM_CREATE size=64K placement=vram0 flags=\n",
    b"GEM_CREATE size=64K placement=vram0 flags=SCANOUT,,PINNED\n",
    b"GEM_CLOSE\n",
    b"GEM_CLOSE handle=abc\n",
    b"GEM_CLOSE handle=-1\n",
    b"GEM_CLOSE handle=1 handle=1\n",
    b"GEM_CLOSE handle=1 pad=0\n",
    b"VM_CREATE vm_id=1\n",
    b"VM_DESTROY\n",
    b"VM_DESTROY vm_id=one\n",
    b"QUERY\n",
    b"QUERY what=mem_regions what=mem_regions\n",
    b"EXEC\n",
    b"EXEC handles=\n",
    b"EXEC handles=1,x\n",
    b"BO_INFO\n",
    b"BO_INFO handle=0x1\n",
    b"\n",
    b"   \n",
    b"VM_CREATE\nVM_CREATE\n",
    b"GEM_CREATE size=64K placement=vram0\nGEM_CREATE size=64K placement=vram0\n",
]


@pytest.mark.parametrize("data", PROTOCOL_ERRORS, ids=repr)
def test_protocol_error_is_einval(gpu: XeDevice, data: bytes) -> None:
    assert _raw(gpu, data) == errno.EINVAL
    _assert_nothing_left(gpu)
    # Nothing was created: the next BO gets handle 1 and there is no VM 1.
    assert gpu.gem_create("64K", ("system",)).handle == 1
    assert _raw(gpu, b"VM_DESTROY vm_id=1") == errno.ENOENT


def test_handle_and_vm_errors(gpu: XeDevice) -> None:
    bo = gpu.gem_create("64K", ("vram0",))
    assert _raw(gpu, b"GEM_CLOSE handle=42") == errno.EINVAL
    assert _raw(gpu, b"GEM_CLOSE handle=0") == errno.EINVAL
    assert _raw(gpu, b"BO_INFO handle=42") == errno.EINVAL
    assert _raw(gpu, b"EXEC handles=1,42") == errno.EINVAL
    assert _raw(gpu, b"VM_DESTROY vm_id=3") == errno.ENOENT
    assert _raw(gpu, b"VM_DESTROY vm_id=0") == errno.ENOENT
    assert _raw(gpu, b"QUERY what=engines") == errno.EINVAL
    assert _raw(gpu, b"QUERY what=mem_regions,engines") == errno.EINVAL
    assert gpu.bo_info(bo.handle)["placement"] == "vram0"  # the errors changed nothing
    gpu.gem_close(bo.handle)
    assert _raw(gpu, f"GEM_CLOSE handle={bo.handle}".encode()) == errno.EINVAL  # closed twice
    assert _raw(gpu, f"BO_INFO handle={bo.handle}".encode()) == errno.EINVAL
    vm = gpu.vm_create()
    gpu.vm_destroy(vm)
    assert _raw(gpu, f"VM_DESTROY vm_id={vm}".encode()) == errno.ENOENT


def test_handles_are_per_client(shared: Mounted, gpu: XeDevice) -> None:
    mine = gpu.gem_create("64K", ("vram0",))
    with XeDevice(os.path.join(shared.dri, "renderD128")) as other:
        assert _raw(other, f"GEM_CLOSE handle={mine.handle}".encode()) == errno.EINVAL
        theirs = other.gem_create("128K", ("vram0",))
        assert theirs.handle == mine.handle  # each drm_file numbers its own handles
        assert other.bo_info(theirs.handle)["size"] == str(128 << 10)
    assert gpu.bo_info(mine.handle)["size"] == str(64 << 10)


# -- replies ------------------------------------------------------------------------------------


def test_read_without_pending_reply_is_empty(gpu: XeDevice) -> None:
    assert os.read(gpu.fd, 4096) == b""  # fresh client
    request = b"GEM_CREATE size=64K placement=vram0\n"
    assert os.write(gpu.fd, request) == len(request)  # the full length on success
    reply = os.read(gpu.fd, 4096)
    assert reply == b"handle=1 size=65536 placement=vram0 pinned=0\n"
    assert os.read(gpu.fd, 4096) == b""  # consumed
    os.write(gpu.fd, b"BO_INFO handle=1\n")
    assert _raw(gpu, b"BOGUS") == errno.EINVAL  # a failed request drops the pending reply
    assert os.read(gpu.fd, 4096).startswith(b"error=EINVAL reason=unknown verb 'BOGUS'")
    assert os.read(gpu.fd, 4096) == b""
    os.write(gpu.fd, b"GEM_CLOSE handle=1\n")  # a verb without a reply
    assert os.read(gpu.fd, 4096) == b""


def test_reply_can_be_read_in_pieces(gpu: XeDevice) -> None:
    os.write(gpu.fd, b"VM_CREATE\n")
    assert os.read(gpu.fd, 3) == b"vm_"
    assert os.read(gpu.fd, 100) == b"id=1\n"
    assert os.read(gpu.fd, 100) == b""


def test_query_two_region_device(gpu: XeDevice) -> None:
    bo0 = gpu.gem_create("1M", ("vram0",))
    gpu.gem_create("256K", ("vram1",))
    gpu.gem_create("8K", ("system",))
    lines = gpu.ioctl("QUERY", what="mem_regions").splitlines()
    assert [parse_reply(line) for line in lines] == [
        {"instance": "0", "class": "system", "name": "system", "dmem_region": "-",
         "min_page_size": "4096", "total_size": str(16 * MiB), "used": str(8 << 10),
         "cpu_visible_size": "0"},
        {"instance": "1", "class": "vram", "name": "vram0", "dmem_region": VRAM0,
         "min_page_size": "65536", "total_size": str(8 * MiB), "used": str(MiB),
         "cpu_visible_size": str(8 * MiB)},
        {"instance": "2", "class": "vram", "name": "vram1", "dmem_region": VRAM1,
         "min_page_size": "65536", "total_size": str(4 * MiB), "used": str(256 << 10),
         "cpu_visible_size": str(4 * MiB)},
    ]
    gpu.gem_close(bo0.handle)
    assert _regions(gpu)["vram0"]["used"] == "0"


def test_query_is_device_wide_and_per_device(shared: Mounted, gpu: XeDevice) -> None:
    with XeDevice(os.path.join(shared.dri, "renderD128")) as other:
        other.gem_create("2M", ("vram0",))
        # "used" is the device's usage, not the caller's (docs/kernel-model.md §12).
        assert _regions(gpu)["vram0"]["used"] == str(2 * MiB)
    with XeDevice(os.path.join(shared.dri, "renderD129")) as second:
        regions = second.query_mem_regions()
        assert [(r["instance"], r["name"], r["dmem_region"], r["total_size"], r["used"])
                for r in regions] == [("0", "system", "-", str(64 << 30), "0"),
                                      ("1", "vram0", OTHER, str(2 * MiB), "0")]
        assert _raw(second, b"GEM_CREATE size=64K placement=vram1") == errno.EINVAL
        second.gem_create("1M", ("vram0",))
        assert _dmem(shared, "dmem.current") == {VRAM0: 0, VRAM1: 0, OTHER: MiB}
    # Region registration order: device order, then region order.
    assert _dmem(shared, "dmem.capacity") == {VRAM0: 8 * MiB, VRAM1: 4 * MiB, OTHER: 2 * MiB}


def test_bo_info_fields(shared: Mounted, gpu: XeDevice) -> None:
    vram = gpu.gem_create("192K", ("vram1", "system"))
    sysmem = gpu.gem_create("12K", ("system",))
    pinned = gpu.gem_create("64K", ("vram0",), flags=("PINNED",))
    assert gpu.bo_info(vram.handle) == {
        "handle": str(vram.handle), "size": str(192 << 10), "placement": "vram1",
        "pinned": "0", "cgroup": "/", "evictions": "0", **UNSHARED}
    assert gpu.bo_info(sysmem.handle) == {
        "handle": str(sysmem.handle), "size": str(12 << 10), "placement": "system",
        "pinned": "0", "cgroup": "-", "evictions": "0", **UNSHARED}
    assert gpu.bo_info(pinned.handle) == {
        "handle": str(pinned.handle), "size": str(64 << 10), "placement": "vram0",
        "pinned": "1", "cgroup": "/", "evictions": "0", **UNSHARED}
    assert gpu.ioctl("BO_INFO", handle=pinned.handle).endswith("\n")
    assert (vram.handle, sysmem.handle, pinned.handle) == (1, 2, 3)
    assert _dmem(shared, "dmem.current") == {VRAM0: 64 << 10, VRAM1: 192 << 10, OTHER: 0}
    assert _dmem(shared, "dmem.pinned") == {VRAM0: 64 << 10, VRAM1: 0, OTHER: 0}


def test_exec_reply(gpu: XeDevice) -> None:
    a = gpu.gem_create("64K", ("vram0",))
    b = gpu.gem_create("64K", ("system",))
    assert gpu.ioctl("EXEC", handles=f"{a.handle},{b.handle},{a.handle}") == \
        "migrated_bytes=0 evicted_bytes=0\n"
    d = gpu.gem_create("128K", ("vram0", "system"), flags=("DEFER_BACKING",))
    assert gpu.bo_info(d.handle)["placement"] == "system"
    assert gpu.exec([d.handle]) == {"migrated_bytes": 128 << 10, "evicted_bytes": 0}
    assert gpu.bo_info(d.handle)["placement"] == "vram0"
    assert gpu.bo_info(d.handle)["evictions"] == "0"


def test_closing_the_client_frees_everything(shared: Mounted) -> None:
    _wait_idle(shared)
    dev = XeDevice(os.path.join(shared.dri, "renderD128"))
    try:
        dev.gem_create("1M", ("vram0",))
        dev.gem_create("1M", ("vram1",), flags=("PINNED",))
        dev.gem_create("1M", ("system",))
        assert _dmem(shared, "dmem.current") == {VRAM0: MiB, VRAM1: MiB, OTHER: 0}
        assert len(_bos(shared, PCI0)) == 3
    finally:
        dev.close()
    _wait_idle(shared)
    assert _dmem(shared, "dmem.pinned") == {VRAM0: 0, VRAM1: 0, OTHER: 0}


# -- the shell ------------------------------------------------------------------------------------


def test_shell_usage(shared: Mounted, gpu: XeDevice) -> None:
    dev = os.path.join(shared.dri, "renderD128")
    res = subprocess.run(
        ["bash", "-c", f'exec 3<>{dev}; echo "GEM_CREATE size=64K placement=vram0" >&3; '
                       "cat <&3"],
        capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "handle=1 size=65536 placement=vram0 pinned=0\n"
    res = subprocess.run(["bash", "-c", f"exec 3<>{dev}; echo BOGUS >&3"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 1
    assert "Invalid argument" in res.stderr
    res = subprocess.run(
        ["bash", "-c", f'exec 3<>{dev}; echo "GEM_CREATE size=64K placement=system '
                       'flags=PINNED" >&3'],
        capture_output=True, text=True, timeout=20)
    assert res.returncode == 1
    assert "Function not implemented" in res.stderr
