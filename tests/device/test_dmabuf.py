"""dma-buf sharing between two simulated devices, through a real mount.

docs/kernel-model.md §16 lists the rules (drm_prime.c, dma-buf.c, xe_dma_buf.c and the
pinning RFC's patch 3/3): PRIME export and import, ``MOUNT/dev/dma_buf/ID`` files and their
lifetime, the three kinds of importer under each kernel profile and pinning mode, who is
charged, stalls and the views that show them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dmemfs.client import XeDevice, parse_reply
from dmemfs.testing import Mounted
from tests.device.helpers import cgroups, errno_of, inside, join, set_limit, value

KiB = 1 << 10
MiB = 1 << 20
PCI0, PCI1 = "0000:03:00.0", "0000:04:00.0"
REGION0, REGION1 = f"drm/{PCI0}/vram0", f"drm/{PCI1}/vram0"
NOBODY = 65534


def _devices(*extra: str, p2p1: str = "1") -> list[str]:
    return ["--device", f"xe,pci={PCI0},vram0=4M", "--device",
            f"xe,pci={PCI1},vram0=4M,p2p={p2p1}", *extra]


TWO = pytest.mark.dmemfs_args(*_devices())


def _profiles(*extra: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("profile", [
        pytest.param(p, marks=pytest.mark.dmemfs_args(*_devices("--profile", p, *extra)))
        for p in ("7.3", "6.14")])


@pytest.fixture
def gpu0(mnt: Mounted) -> Iterator[XeDevice]:
    """The exporting device's client (opened by this process, in the root cgroup)."""
    with XeDevice(os.path.join(mnt.dri, "renderD128")) as device:
        yield device
    join(mnt, "")


@pytest.fixture
def gpu1(mnt: Mounted) -> Iterator[XeDevice]:
    """A client of the second device (the consumer)."""
    with XeDevice(os.path.join(mnt.dri, "renderD129")) as device:
        yield device
    join(mnt, "")


def _dmabuf_path(mnt: Mounted, dmabuf: int) -> str:
    return os.path.join(mnt.path, "dev", "dma_buf", str(dmabuf))


def _listed(mnt: Mounted) -> list[str]:
    return sorted(os.listdir(os.path.join(mnt.path, "dev", "dma_buf")))


def _view(mnt: Mounted, pci: str, name: str) -> str:
    with open(os.path.join(mnt.debug, "dri", pci, name)) as f:
        return f.read()


def _info(gpu: XeDevice, handle: int) -> dict[str, str]:
    return gpu.bo_info(handle)


# -- export -------------------------------------------------------------------------------------


@TWO
def test_export_makes_a_file_owned_by_the_exporter(mnt: Mounted, gpu0: XeDevice) -> None:
    bo = gpu0.gem_create("1M", ("vram0", "system"))
    assert _listed(mnt) == []
    dmabuf = gpu0.prime_export(bo.handle)
    assert _listed(mnt) == [str(dmabuf)]
    st = os.stat(_dmabuf_path(mnt, dmabuf))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (0, 0)
    # Exporting again gives the same dma-buf (drm_prime caches it on the GEM object).
    assert gpu0.prime_export(bo.handle) == dmabuf
    info = _info(gpu0, bo.handle)
    assert (info["exported"], info["imported"], info["importers"], info["dmabuf"]) == (
        "1", "0", "0", str(dmabuf))
    with open(_dmabuf_path(mnt, dmabuf)) as f:
        text = f.read()
    assert text.split()[:2] == [f"dmabuf={dmabuf}", f"size={MiB}"]
    # A sendfile reader (cp, busybox cat) gets the same.
    copy = os.path.join(os.path.dirname(mnt.path), "dmabuf-copy")
    shutil.copyfile(_dmabuf_path(mnt, dmabuf), copy)
    with open(copy) as f:
        assert f.read() == text


@TWO
def test_export_errors(mnt: Mounted, gpu0: XeDevice) -> None:
    vm = gpu0.vm_create()
    private = gpu0.gem_create("64K", ("vram0",), vm_id=vm)
    assert errno_of(gpu0.prime_export, private.handle) == errno.EPERM  # xe_gem_prime_export
    assert errno_of(gpu0.prime_export, 99) == errno.ENOENT  # drm_gem_prime_handle_to_fd
    assert errno_of(gpu0.ioctl, "PRIME_EXPORT") == errno.EINVAL
    assert errno_of(gpu0.ioctl, "PRIME_IMPORT", dmabuf=1, fd=3) == errno.EINVAL
    assert errno_of(gpu0.ioctl, "PRIME_IMPORT", dmabuf=7) == errno.ENOENT
    bo = gpu0.gem_create("64K", ("vram0",))
    dmabuf = gpu0.prime_export(bo.handle)
    assert errno_of(gpu0.prime_import, dmabuf, importer="other") == errno.EINVAL
    assert _listed(mnt) == [str(dmabuf)]


@TWO
def test_the_export_lives_while_a_handle_a_file_or_an_import_holds_it(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice
) -> None:
    bo = gpu0.gem_create("1M", ("vram0", "system"))
    dmabuf = gpu0.prime_export(bo.handle)
    fd = os.open(_dmabuf_path(mnt, dmabuf), os.O_RDONLY)
    gpu0.gem_close(bo.handle)
    # The open file is a reference: the buffer and its charge stay.
    assert _listed(mnt) == [str(dmabuf)] and value(mnt, "", region=REGION0) == MiB
    imported = gpu1.prime_import(dmabuf)
    os.close(fd)
    # Now the import holds it.
    assert _listed(mnt) == [str(dmabuf)] and value(mnt, "", region=REGION0) == MiB
    assert _info(gpu1, imported["handle"])["placement"] == "vram0"
    gpu1.gem_close(imported["handle"])
    assert _listed(mnt) == [] and value(mnt, "", region=REGION0) == 0
    assert errno_of(os.stat, _dmabuf_path(mnt, dmabuf)) == errno.ENOENT
    assert errno_of(gpu1.prime_import, dmabuf) == errno.ENOENT


@TWO
def test_closing_the_exporting_client_releases_an_unreferenced_export(
    mnt: Mounted, gpu0: XeDevice
) -> None:
    dmabuf = gpu0.prime_export(gpu0.gem_create("1M").handle)
    gpu0.close()
    assert _listed(mnt) == [] and value(mnt, "", region=REGION0) == 0
    assert errno_of(os.open, _dmabuf_path(mnt, dmabuf), os.O_RDONLY) == errno.ENOENT


@TWO
def test_import_on_the_same_device_is_the_same_bo(
    mnt: Mounted, gpu0: XeDevice
) -> None:
    bo = gpu0.gem_create("1M", ("vram0",))
    dmabuf = gpu0.prime_export(bo.handle)
    # The exporting client gets its own handle back (drm_prime's handle cache).
    assert gpu0.prime_import(dmabuf, importer="static")["handle"] == bo.handle
    with XeDevice(os.path.join(mnt.dri, "renderD128")) as other:
        reply = other.prime_import(dmabuf, importer="static")
        assert reply == {"handle": 1, "size": MiB, "p2p": 0}
        # No attachment, no pin and no move whatever importer= says.
        info = _info(other, reply["handle"])
        assert (info["placement"], info["pinned"], info["importers"]) == ("vram0", "0", "0")
        gpu0.gem_close(bo.handle)
        assert value(mnt, "", region=REGION0) == MiB  # the other handle holds the BO
        assert _info(other, reply["handle"])["size"] == str(MiB)
    assert value(mnt, "", region=REGION0) == 0 and _listed(mnt) == []


# -- permissions and descriptors ------------------------------------------------------------------


def _as_nobody(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.dmemfs_args(*_devices("--allow-other"))
def test_a_caller_who_cannot_open_the_file_gets_eacces(
    mnt: Mounted, gpu0: XeDevice
) -> None:
    dmabuf = gpu0.prime_export(gpu0.gem_create("64K").handle)
    dev1 = os.path.join(mnt.dri, "renderD129")
    script = (f"exec 3<>{dev1}; echo 'PRIME_IMPORT dmabuf={dmabuf}' >&3 && cat <&3; "
              f"cat {_dmabuf_path(mnt, dmabuf)}")
    res = _as_nobody(script)
    assert res.stdout == ""
    assert res.stderr.count("Permission denied") == 2, res.stderr
    # Handing the file over (as with a chown of a shared file) lets the user import it.
    os.chown(_dmabuf_path(mnt, dmabuf), NOBODY, NOBODY)
    res = _as_nobody(script)
    assert res.returncode == 0, res.stderr
    assert parse_reply(res.stdout.splitlines()[0]) == {"handle": "1", "size": str(64 * KiB),
                                                       "p2p": "1"}


@TWO
def test_a_descriptor_passed_with_scm_rights_imports_and_keeps_the_buffer(
    mnt: Mounted, gpu0: XeDevice
) -> None:
    """The exporter sends its open dma-buf file over a Unix socket and closes everything; the
    receiver imports it with PRIME_IMPORT fd=N (its own descriptor number)."""
    bo = gpu0.gem_create("1M", ("vram0", "system"))
    dmabuf = gpu0.prime_export(bo.handle)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the receiver
        code = 1
        try:
            ours.close()
            os.close(gpu0.fd)  # only the parent holds the exporting client
            _, fds, _, _ = socket.recv_fds(theirs, 16, 1)
            with XeDevice(os.path.join(mnt.dri, "renderD129")) as gpu1:
                theirs.sendall(b"ready")
                theirs.recv(16)  # the sender has closed its client and its descriptor
                reply = gpu1.ioctl("PRIME_IMPORT", fd=fds[0])
                os.close(fds[0])
                info = gpu1.ioctl("BO_INFO", handle=parse_reply(reply)["handle"])
                theirs.sendall((reply + info).encode())
                theirs.recv(16)  # hold the import until the parent has looked
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    try:
        fd = os.open(_dmabuf_path(mnt, dmabuf), os.O_RDONLY)
        socket.send_fds(ours, [b"fd"], [fd])
        os.close(fd)
        assert ours.recv(16) == b"ready"
        gpu0.close()
        ours.sendall(b"go")
        reply, info = ours.recv(4096).decode().splitlines()
        assert parse_reply(reply) == {"handle": "1", "size": str(MiB), "p2p": "1"}
        assert parse_reply(info)["placement"] == "vram0"
        assert _listed(mnt) == [str(dmabuf)] and value(mnt, "", region=REGION0) == MiB
        ours.sendall(b"done")
    finally:
        ours.close()
        _, status = os.waitpid(pid, 0)
    assert status == 0
    assert _listed(mnt) == [] and value(mnt, "", region=REGION0) == 0


@TWO
def test_fd_must_be_an_open_dma_buf_of_the_caller(mnt: Mounted, gpu1: XeDevice) -> None:
    with open(os.path.join(mnt.cgroup, "cgroup.procs")) as f:
        assert errno_of(gpu1.prime_import, fd=f.fileno()) == errno.EBADF
    assert errno_of(gpu1.prime_import, fd=12345) == errno.EBADF


# -- importer kinds ------------------------------------------------------------------------------


def _fill(gpu0: XeDevice, mnt: Mounted, cgroup: str, sizes: list[str]) -> list[int]:
    with inside(mnt, cgroup):
        return [gpu0.gem_create(s, ("vram0", "system")).handle for s in sizes]


def _fill_from_another_process(mnt: Mounted, cgroup: str, sizes: list[str]) -> None:
    """A process in ``cgroup`` allocates BOs of ``sizes`` on the first device and exits
    (its BOs go with it)."""
    dev0 = os.path.join(mnt.dri, "renderD128")
    creates = "; ".join(f"echo 'GEM_CREATE size={s} placement=vram0,system' >&3 && cat <&3"
                        for s in sizes)
    script = (f"echo $$ > {os.path.join(mnt.cgroup, cgroup, 'cgroup.procs')} && "
              f"exec 3<>{dev0} && {creates}")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert [parse_reply(line)["placement"] for line in res.stdout.splitlines()] == [
        "vram0"] * len(sizes)


@_profiles()
def test_a_dynamic_importer_stalls_on_each_move_and_its_exec_brings_it_back_at_its_cost(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice, profile: str
) -> None:
    cgroups(mnt, "a", "b", "c")
    with inside(mnt, "a"):
        bo = gpu0.gem_create("2M", ("vram0", "system"))
        dmabuf = gpu0.prime_export(bo.handle)
    with inside(mnt, "c"):  # the consumer
        imported = gpu1.prime_import(dmabuf)  # dynamic
        handle = imported["handle"]
        assert imported["p2p"] == 1 and _info(gpu1, handle)["placement"] == "vram0"
        _fill_from_another_process(mnt, "b", ["2M", "2M"])  # the device is full: a's BO goes
        assert _info(gpu0, bo.handle)["placement"] == "system"
        info = _info(gpu1, handle)
        assert (info["stalls"], info["p2p"], info["evictions"]) == ("1", "0", "1")
        evictions = _view(mnt, PCI0, "evictions").splitlines()
        assert len(evictions) == 1 and "cgroup=/a by pid=" in evictions[0]
        assert evictions[0].endswith(f" stalled={PCI1}:{os.getpid()}:{handle}")
        assert _view(mnt, PCI1, "dmabuf_stalls") == "/c 1\n"
        # The importer's next use maps it again: it comes back into VRAM (the filler has
        # gone), charged to the caller.
        assert gpu1.exec([handle]) == {"migrated_bytes": 2 * MiB, "evicted_bytes": 0}
        assert (value(mnt, "a", region=REGION0), value(mnt, "c", region=REGION0)) == (
            0, 2 * MiB)
        info = _info(gpu1, handle)
        assert (info["placement"], info["cgroup"], info["p2p"], info["stalls"]) == (
            "vram0", "/c", "1", "2")  # moving back is a move too
        # A mapped importer's EXEC of a resident buffer moves nothing.
        assert gpu1.exec([handle]) == {"migrated_bytes": 0, "evicted_bytes": 0}
        assert _info(gpu1, handle)["stalls"] == "2"
        assert _view(mnt, PCI1, "dmabuf_stalls") == "/c 2\n"


@_profiles()
def test_the_exporters_dmem_min_spares_the_importer_in_73_only(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice, profile: str
) -> None:
    """No pinning: an exported BO of p/a within dmem.min, p/b filling the device. 7.3 judges
    the victim against the common ancestor p, where a's min counts; 6.14 against the root,
    where p (no min of its own) hands a nothing."""
    cgroups(mnt, "p", "p/a", "p/b", "c")
    set_limit(mnt, "p/a", "dmem.min", "2M", region=REGION0)
    with inside(mnt, "p/a"):
        bo = gpu0.gem_create("2M", ("vram0", "system"))
        dmabuf = gpu0.prime_export(bo.handle)
    with inside(mnt, "c"):
        handle = gpu1.prime_import(dmabuf)["handle"]
        _fill_from_another_process(mnt, "p/b", ["1M", "1M", "1M"])
    info = _info(gpu1, handle)
    if profile == "7.3":
        assert (info["placement"], info["stalls"], info["p2p"]) == ("vram0", "0", "1")
        assert _view(mnt, PCI1, "dmabuf_stalls") == ""
    else:
        assert (info["placement"], info["stalls"], info["p2p"]) == ("system", "1", "0")
        assert _view(mnt, PCI1, "dmabuf_stalls") == "/c 1\n"


@pytest.mark.dmemfs_args(*_devices(p2p1="0"))
def test_without_peer_to_peer_the_buffer_moves_to_system_memory(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice
) -> None:
    shared = gpu0.gem_create("1M", ("vram0", "system"))
    vram_only = gpu0.gem_create("1M", ("vram0",))
    reply = gpu1.prime_import(gpu0.prime_export(shared.handle))
    assert reply["p2p"] == 0 and _info(gpu0, shared.handle)["placement"] == "system"
    assert _info(gpu0, shared.handle)["pinned"] == "0"  # a dynamic importer does not pin
    # xe_dma_buf_attach: no peer-to-peer and no way into system memory.
    dmabuf = gpu0.prime_export(vram_only.handle)
    for kind in ("dynamic", "pin", "static"):
        assert errno_of(gpu1.prime_import, dmabuf, importer=kind) == errno.EOPNOTSUPP
    assert _info(gpu0, vram_only.handle)["importers"] == "0"
    assert value(mnt, "", region=REGION0) == MiB


@_profiles()
def test_a_pinning_importer_of_an_ordinary_bo(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice, profile: str
) -> None:
    """6.14 pins a dma-buf only in system memory; 7.3 ("drm/xe/dma-buf: Allow pinning of
    p2p dma-buf") pins it where it is when every importer is peer-to-peer."""
    cgroups(mnt, "a", "b")
    with inside(mnt, "a"):
        bo = gpu0.gem_create("2M", ("vram0", "system"))
        reply = gpu1.prime_import(gpu0.prime_export(bo.handle), importer="pin")
    info = _info(gpu0, bo.handle)
    if profile == "7.3":
        assert reply["p2p"] == 1
        assert (info["placement"], info["pinned"], info["p2p"]) == ("vram0", "1", "1")
        assert value(mnt, "a", region=REGION0) == 2 * MiB
        assert value(mnt, "a", "dmem.pinned", region=REGION0) == 0  # a TTM pin, not the RFC's
        _fill(gpu0, mnt, "b", ["2M", "2M"])  # cannot evict it
        assert _info(gpu0, bo.handle)["placement"] == "vram0"
        # A static importer cannot share a buffer pinned in VRAM (xe_dma_buf_pin: EINVAL).
        with XeDevice(os.path.join(mnt.dri, "renderD129")) as third:
            dmabuf = int(info["dmabuf"])
            assert errno_of(third.prime_import, dmabuf, importer="static") == errno.EINVAL
    else:
        assert reply["p2p"] == 0
        assert (info["placement"], info["pinned"]) == ("system", "1")
        assert value(mnt, "a", region=REGION0) == 0
    gpu1.gem_close(reply["handle"])  # detach unpins
    assert _info(gpu0, bo.handle)["pinned"] == "0"


@_profiles()
def test_a_static_importer_pins_the_buffer_in_system_memory_while_attached(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice, profile: str
) -> None:
    bo = gpu0.gem_create("1M", ("vram0", "system"))
    reply = gpu1.prime_import(gpu0.prime_export(bo.handle), importer="static")
    assert reply["p2p"] == 0
    info = _info(gpu0, bo.handle)
    assert (info["placement"], info["pinned"], info["importers"]) == ("system", "1", "1")
    assert value(mnt, "", region=REGION0) == 0  # system memory is not dmem-charged
    assert gpu0.exec([bo.handle]) == {"migrated_bytes": 0, "evicted_bytes": 0}
    assert _info(gpu0, bo.handle)["placement"] == "system"  # pinned: it cannot come back
    gpu1.gem_close(reply["handle"])
    assert _info(gpu0, bo.handle)["pinned"] == "0"
    assert gpu0.exec([bo.handle]) == {"migrated_bytes": MiB, "evicted_bytes": 0}
    assert value(mnt, "", region=REGION0) == MiB
    # A VRAM-only BO cannot be imported by a non-dynamic importer (xe_dma_buf_attach).
    vram_only = gpu0.gem_create("1M", ("vram0",))
    dmabuf = gpu0.prime_export(vram_only.handle)
    assert errno_of(gpu1.prime_import, dmabuf, importer="static") == errno.EOPNOTSUPP


# -- PINNED exports (the RFC) -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dynamic", "pin"])
@_profiles("--pinning", "intended")
def test_a_pinned_export_within_dmem_min_stays_in_vram(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice, profile: str, kind: str
) -> None:
    cgroups(mnt, "p", "p/a", "p/b", "c")
    set_limit(mnt, "p", "dmem.min", "2M", region=REGION0)  # a pin must fit every level's min
    set_limit(mnt, "p/a", "dmem.min", "2M", region=REGION0)
    with inside(mnt, "p/a"):
        bo = gpu0.gem_create("2M", ("vram0",), flags=("PINNED",))
        join(mnt, "c")
        reply = gpu1.prime_import(gpu0.prime_export(bo.handle), importer=kind)
    assert reply["p2p"] == 1
    _fill(gpu0, mnt, "p/b", ["1M", "1M", "1M"])
    info = _info(gpu1, reply["handle"])
    assert (info["placement"], info["pinned"], info["p2p"], info["stalls"]) == (
        "vram0", "1", "1", "0")
    assert value(mnt, "p/a", "dmem.pinned", region=REGION0) == 2 * MiB
    gpu1.gem_close(reply["handle"])
    # The importer's pin (if any) went; the RFC pin stays while the exporter's handle lives.
    assert _info(gpu0, bo.handle)["pinned"] == "1"
    gpu0.gem_close(bo.handle)
    assert value(mnt, "p/a", "dmem.pinned", region=REGION0) == 0
    assert value(mnt, "p/a", region=REGION0) == 0


@_profiles("--pinning", "intended")
def test_a_pinned_export_beyond_dmem_min_is_refused(
    mnt: Mounted, gpu0: XeDevice, profile: str
) -> None:
    """The review's objection: with dmem.min 0 (the default) a PINNED buffer for sharing
    cannot be made at all."""
    cgroups(mnt, "a")
    with inside(mnt, "a"):
        assert errno_of(gpu0.gem_create, "1M", ("vram0",), ("PINNED",)) == errno.ENOSPC
    assert value(mnt, "a", region=REGION0) == 0


@pytest.mark.dmemfs_args(*_devices("--pinning", "posted"))
def test_posted_pinning_refuses_every_pinned_export(mnt: Mounted, gpu0: XeDevice) -> None:
    cgroups(mnt, "p", "p/a")
    set_limit(mnt, "p", "dmem.min", "2M", region=REGION0)
    set_limit(mnt, "p/a", "dmem.min", "2M", region=REGION0)
    with inside(mnt, "p/a"):
        assert errno_of(gpu0.gem_create, "1M", ("vram0",), ("PINNED",)) == errno.ENOSPC


@pytest.mark.dmemfs_args(*_devices("--pinning", "off"))
def test_without_the_rfc_there_is_no_pinned_flag(mnt: Mounted, gpu0: XeDevice) -> None:
    assert errno_of(gpu0.gem_create, "1M", ("vram0",), ("PINNED",)) == errno.EINVAL


# -- views ----------------------------------------------------------------------------------------


@TWO
def test_views_list_exports_and_attachments(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice
) -> None:
    bo = gpu0.gem_create("1M", ("vram0", "system"))
    dmabuf = gpu0.prime_export(bo.handle)
    reply = gpu1.prime_import(dmabuf)
    view0 = _view(mnt, PCI0, "dmabuf").splitlines()
    assert view0[0].startswith(f"export dmabuf={dmabuf} pid={os.getpid()} handle={bo.handle} ")
    assert view0[1].startswith(f"attach dmabuf={dmabuf} exporter={PCI0} importer={PCI1} "
                               f"pid={os.getpid()} handle={reply['handle']} kind=dynamic "
                               f"p2p=1 pinned=0 mapped=1 stalls=0")
    assert _view(mnt, PCI1, "dmabuf").splitlines() == view0[1:]
    with open(os.path.join(mnt.debug, "dma_buf", "bufinfo")) as f:
        bufinfo = f.read().splitlines()
    assert bufinfo[0].startswith(f"dmabuf={dmabuf} size={MiB} refs=3 exporter={PCI0} ")
    assert bufinfo[1] == "importer=dynamic p2p=1 pinned=0 mapped=1 stalls=0"
    gpu1.close()
    assert len(_view(mnt, PCI0, "dmabuf").splitlines()) == 1
    assert _view(mnt, PCI1, "dmabuf") == ""


@TWO
def test_status_counts_stalls_per_device_and_cgroup(
    mnt: Mounted, gpu0: XeDevice, gpu1: XeDevice
) -> None:
    cgroups(mnt, "a", "b", "c")
    with inside(mnt, "a"):
        dmabuf = gpu0.prime_export(gpu0.gem_create("2M", ("vram0", "system")).handle)
    with inside(mnt, "c"):
        gpu1.prime_import(dmabuf)
        _fill_from_another_process(mnt, "b", ["2M", "2M"])
    res = subprocess.run([sys.executable, "-m", "dmemfs", "status", mnt.path, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert [d["stalls"] for d in status["devices"]] == [{}, {"/c": 1}]
    assert {c["path"]: c["stalls"] for c in status["cgroups"]} == {
        "/": {}, "/a": {}, "/b": {}, "/c": {PCI1: 1}}
    text = subprocess.run([sys.executable, "-m", "dmemfs", "status", mnt.path],
                          capture_output=True, text=True, timeout=60).stdout
    assert "  dma-buf importers stalled 1 times\n" in text
    assert f"/c  (importers stalled 1 times on {PCI1})\n" in text
    assert "/a  (buffers evicted 1 times)\n" in text
