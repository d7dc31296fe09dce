"""Charging, limits, protection, eviction and pinning of the simulated xe GPU, through mounts.

README "The simulated GPU" and docs/kernel-model.md §2, §9, §10: the charge goes to the cgroup
the opener is in at the time of each ioctl; TTM evicts least recently used BOs inside the
limiting subtree (limit hit) or across cgroups honouring dmem.min and, in a second pass only,
dmem.low (device full); pinned BOs never move.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import threading

import pytest

from dmemfs.client import XeDevice
from dmemfs.testing import Mounted, mounted
from tests.device.helpers import (
    UNSHARED,
    bos,
    cgroups,
    dev,
    errno_of,
    evictions,
    gpu,
    inside,
    join,
    placement,
    set_limit,
    value,
    view,
    wait_for,
)

PCI = "0000:03:00.0"
REGION = f"drm/{PCI}/vram0"
KiB = 1 << 10
MiB = 1 << 20

DEVICE = f"xe,pci={PCI},vram0=4M"
pytestmark = pytest.mark.dmemfs_args("--device", DEVICE)
#: Device-full protection judged against the root: Linux 6.14 through 7.2 (tests of 7.3's
#: common-ancestor rule are in test_kernel_73.py).
PROFILE_614 = pytest.mark.dmemfs_args("--device", DEVICE, "--profile", "6.14")
__all__ = ["gpu"]  # the fixture


# -- where the charge lands ---------------------------------------------------------------------


def test_charge_follows_the_openers_cgroup_at_each_ioctl(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "b")
    in_root = gpu.gem_create("1M")  # opened and called in the root cgroup
    assert value(mnt, "") == MiB
    assert (value(mnt, "a"), value(mnt, "b")) == (0, 0)
    with inside(mnt, "a"):  # moved after open: later ioctls charge the new cgroup
        in_a = gpu.gem_create("512K")
        assert value(mnt, "a") == 512 * KiB
        join(mnt, "b")
        in_b = gpu.gem_create("256K")
        # A client opened inside b charges b as well.
        with XeDevice(dev(mnt)) as other:
            other.gem_create("128K")
            assert value(mnt, "b") == 384 * KiB
    assert value(mnt, "a") == 512 * KiB
    assert value(mnt, "") == MiB + 512 * KiB + 256 * KiB
    assert [gpu.bo_info(bo.handle)["cgroup"] for bo in (in_root, in_a, in_b)] == ["/", "/a", "/b"]
    # Freeing uncharges the pool that was charged, whoever frees it and from where.
    gpu.gem_close(in_a.handle)
    assert value(mnt, "a") == 0
    assert value(mnt, "b") == 256 * KiB
    assert value(mnt, "") == MiB + 256 * KiB
    # A BO in system memory is charged to no one.
    with inside(mnt, "a"):
        gpu.gem_create("1M", ("system",))
    assert value(mnt, "a") == 0


def test_counters_agree_with_the_bos(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "p", "p/x", "p/y", "q")
    set_limit(mnt, "p", "dmem.min", "1M")
    set_limit(mnt, "p/x", "dmem.min", "1M")
    with inside(mnt, "p/x"):
        big = gpu.gem_create("1M")
        gpu.gem_create("256K", flags=("PINNED",))
        gpu.gem_create("64K", ("system",))
        join(mnt, "p/y")
        gpu.gem_create("512K", ("system", "vram0"))
        join(mnt, "q")
        gpu.gem_create("128K", ("vram0", "system"), flags=("SCANOUT",))
    listed = bos(mnt)
    assert len(listed) == 5 and {b["pid"] for b in listed} == {str(os.getpid())}
    own: dict[str, int] = {}
    pinned: dict[str, int] = {}
    for b in listed:
        if b["placement"] == "vram0":
            own[b["cgroup"]] = own.get(b["cgroup"], 0) + int(b["size"])
            pinned[b["cgroup"]] = pinned.get(b["cgroup"], 0) + int(b["size"]) * int(b["pinned"])
        else:
            assert b["cgroup"] == "-"
    assert own == {"/p/x": 1280 * KiB, "/p/y": 512 * KiB, "/q": 128 * KiB}
    assert pinned == {"/p/x": 256 * KiB, "/p/y": 0, "/q": 0}
    # dmem.current is hierarchical: each cgroup shows its subtree.
    for rel, expected in (("p/x", own["/p/x"]), ("p/y", own["/p/y"]), ("q", own["/q"]),
                          ("p", own["/p/x"] + own["/p/y"]), ("", sum(own.values()))):
        assert value(mnt, rel) == expected, rel
        assert value(mnt, rel, "dmem.pinned") == (256 * KiB if rel in ("p/x", "p", "") else 0)
    assert value(mnt, "p", "dmem.peak") == 1792 * KiB
    gpu.gem_close(big.handle)
    assert value(mnt, "p/x") == 256 * KiB
    assert value(mnt, "p") == 768 * KiB
    # dmem.peak keeps the high watermark.
    assert value(mnt, "p/x", "dmem.peak") == 1280 * KiB
    assert value(mnt, "p", "dmem.peak") == 1792 * KiB
    assert value(mnt, "q", "dmem.peak") == 128 * KiB
    # QUERY's used is the device's VRAM usage.
    used = {r["name"]: int(r["used"]) for r in gpu.query_mem_regions()}
    assert used == {"system": 64 * KiB, "vram0": 896 * KiB}


# -- limit hits ---------------------------------------------------------------------------------


def test_limit_hit_evicts_the_lru_oldest_own_bo(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.max", "2M")
    # The limiting pool may always evict its own BOs, whatever its protection
    # (docs/kernel-model.md §8 rule 1).
    set_limit(mnt, "a", "dmem.min", "4M")
    set_limit(mnt, "a", "dmem.low", "4M")
    with inside(mnt, "a"):
        first = gpu.gem_create("1M", ("vram0", "system"))
        second = gpu.gem_create("1M", ("vram0",))
        # A job using `first` makes it the most recently used one.
        assert gpu.exec([first.handle]) == {"migrated_bytes": 0, "evicted_bytes": 0}
        third = gpu.gem_create("1M", ("vram0",))
    assert third.placement == "vram0"
    # The VRAM-only BO was evicted to system memory, not refused (xe evicts to TT).
    assert gpu.bo_info(second.handle) == {
        "handle": str(second.handle), "size": str(MiB), "placement": "system", "pinned": "0",
        "cgroup": "-", "evictions": "1", **UNSHARED}
    assert placement(gpu, first.handle) == "vram0"
    assert value(mnt, "a") == 2 * MiB
    assert value(mnt, "") == 2 * MiB  # the device (4M) was not full: the limit decided
    assert evictions(mnt) == [(str(second.handle), "/a", "limit of /a")]
    assert view(mnt, "eviction_counts") == "/a 1\n"


def test_limit_hit_with_nothing_evictable(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "b")
    set_limit(mnt, "a", "dmem.min", "1M")
    set_limit(mnt, "a", "dmem.max", "1M")
    with inside(mnt, "b"):
        outside = gpu.gem_create("1M")  # outside the limiting subtree: never a candidate
    with inside(mnt, "a"):
        pinned = gpu.gem_create("1M", flags=("PINNED",))
        assert pinned.pinned
        fallback = gpu.gem_create("1M", ("vram0", "system"))
        assert fallback.placement == "system"
        assert value(mnt, "a") == MiB
        assert errno_of(gpu.gem_create, "64K", ("vram0",)) == errno.ENOMEM
    assert value(mnt, "a") == MiB
    assert value(mnt, "b") == MiB
    assert value(mnt, "") == 2 * MiB
    assert placement(gpu, outside.handle) == "vram0"
    assert gpu.bo_info(pinned.handle)["pinned"] == "1"
    assert placement(gpu, pinned.handle) == "vram0"
    assert evictions(mnt) == []


def test_limit_of_a_parent_evicts_within_its_subtree(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "p", "p/x", "p/y", "q")
    set_limit(mnt, "p", "dmem.max", "2M")
    with inside(mnt, "q"):
        q_bo = gpu.gem_create("1M")
        join(mnt, "p/x")
        x_bo = gpu.gem_create("1M")
        join(mnt, "p/y")
        y_bo = gpu.gem_create("1M")
        y_bo2 = gpu.gem_create("1M")  # p at its max: the LRU-oldest BO under p goes
    assert placement(gpu, x_bo.handle) == "system"
    assert [placement(gpu, b.handle) for b in (q_bo, y_bo, y_bo2)] == ["vram0"] * 3
    assert (value(mnt, "p/x"), value(mnt, "p/y"), value(mnt, "p")) == (0, 2 * MiB, 2 * MiB)
    assert evictions(mnt) == [(str(x_bo.handle), "/p/x", "limit of /p")]


def test_limit_of_a_parent_respects_min_below_it(mnt: Mounted, gpu: XeDevice) -> None:
    """With a limit pool, protection is computed relative to it (docs/kernel-model.md §8, §10)."""
    cgroups(mnt, "p", "p/x", "p/y")
    set_limit(mnt, "p", "dmem.max", "2M")
    set_limit(mnt, "p/x", "dmem.min", "1M")
    with inside(mnt, "p/x"):
        x_bo = gpu.gem_create("1M")  # the LRU-oldest, but x is within its min
        join(mnt, "p/y")
        y_bo = gpu.gem_create("1M", ("vram0", "system"))
        y_bo2 = gpu.gem_create("1M")
    assert [placement(gpu, b.handle) for b in (x_bo, y_bo, y_bo2)] == [
        "vram0", "system", "vram0"]
    assert evictions(mnt) == [(str(y_bo.handle), "/p/y", "limit of /p")]
    assert (value(mnt, "p/x"), value(mnt, "p/y"), value(mnt, "p")) == (MiB, MiB, 2 * MiB)


# -- device full ----------------------------------------------------------------------------------


@PROFILE_614
def test_device_full_spares_min_protected_cgroups(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "b", "c")
    set_limit(mnt, "a", "dmem.min", "2M")
    with inside(mnt, "a"):
        a1 = gpu.gem_create("1M")
        a2 = gpu.gem_create("1M")
        join(mnt, "b")
        b1 = gpu.gem_create("1M")
        b2 = gpu.gem_create("1M")  # the device (4M) is full
        join(mnt, "c")
        c1 = gpu.gem_create("1M")
        assert (placement(gpu, b1.handle), placement(gpu, b2.handle)) == ("system", "vram0")
        c2 = gpu.gem_create("1M")
    assert [placement(gpu, b.handle) for b in (a1, a2, c1, c2)] == ["vram0"] * 4
    assert placement(gpu, b2.handle) == "system"
    assert (value(mnt, "a"), value(mnt, "b"), value(mnt, "c")) == (2 * MiB, 0, 2 * MiB)
    assert [(h, cg) for h, cg, _ in evictions(mnt)] == [(str(b1.handle), "/b"),
                                                         (str(b2.handle), "/b")]
    assert {reason for _, _, reason in evictions(mnt)} == {"device full"}


@PROFILE_614
def test_device_full_of_min_protected_bos(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.min", "4M")
    with inside(mnt, "a"):
        kept = [gpu.gem_create("1M") for _ in range(4)]
    # From the root: nothing may be evicted.
    assert errno_of(gpu.gem_create, "64K", ("vram0",)) == errno.ENOMEM
    assert gpu.gem_create("64K", ("vram0", "system")).placement == "system"
    assert [placement(gpu, b.handle) for b in kept] == ["vram0"] * 4
    assert evictions(mnt) == []
    # Once the protection is gone, the same request evicts the LRU-oldest BO.
    set_limit(mnt, "a", "dmem.min", "0")
    assert gpu.gem_create("64K", ("vram0",)).placement == "vram0"
    assert [placement(gpu, b.handle) for b in kept] == ["system"] + ["vram0"] * 3


@PROFILE_614
def test_device_full_honours_recursive_min_protection(mnt: Mounted, gpu: XeDevice) -> None:
    """dmem's protection is recursive (docs/kernel-model.md §7): P's min covers children
    without their own."""
    cgroups(mnt, "p", "p/x", "p/y", "q", "r")
    set_limit(mnt, "p", "dmem.min", "2M")
    with inside(mnt, "p/x"):
        x_bo = gpu.gem_create("1M")  # emin = 2M * 1M / 2M = 1M: protected
        join(mnt, "p/y")
        y_bo = gpu.gem_create("1M")
        join(mnt, "q")
        q_bos = [gpu.gem_create("1M") for _ in range(2)]  # the device is full
        join(mnt, "r")
        r_bo = gpu.gem_create("1M")
    assert [placement(gpu, b.handle) for b in (x_bo, y_bo, *q_bos, r_bo)] == [
        "vram0", "vram0", "system", "vram0", "vram0"]
    assert [(h, cg) for h, cg, _ in evictions(mnt)] == [(str(q_bos[0].handle), "/q")]


@PROFILE_614
def test_device_full_low_protection_is_a_second_pass(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "b", "c")
    set_limit(mnt, "a", "dmem.low", "2M")
    set_limit(mnt, "c", "dmem.low", "2M")
    with inside(mnt, "a"):
        a1 = gpu.gem_create("1M")
        a2 = gpu.gem_create("1M")
        join(mnt, "b")
        b1 = gpu.gem_create("1M")
        join(mnt, "c")
        c1 = gpu.gem_create("1M")  # the device is full
        # First pass: a's BOs are older but low-protected; b's unprotected BO goes.
        c2 = gpu.gem_create("1M")
        assert placement(gpu, b1.handle) == "system"
        assert placement(gpu, a1.handle) == "vram0"
        # Now everything resident is low-protected (a: 2M <= low, c: 2M <= low): the first
        # pass finds nothing, the low-ignoring second pass takes the LRU-oldest BO.
        c3 = gpu.gem_create("1M")
    assert placement(gpu, a1.handle) == "system"
    assert [placement(gpu, b.handle) for b in (a2, c1, c2, c3)] == ["vram0"] * 4
    assert [(h, cg) for h, cg, _ in evictions(mnt)] == [(str(b1.handle), "/b"),
                                                         (str(a1.handle), "/a")]
    assert (value(mnt, "a"), value(mnt, "b"), value(mnt, "c")) == (MiB, 0, 3 * MiB)


def test_pinned_bos_are_never_evicted(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "c")
    set_limit(mnt, "a", "dmem.min", "1M")
    with inside(mnt, "a"):
        pinned = gpu.gem_create("1M", flags=("PINNED",))  # the oldest BO on the device
        join(mnt, "c")
        c1 = gpu.gem_create("3M")
        c2 = gpu.gem_create("1M")  # full: c1 goes, the pinned BO stays
        assert placement(gpu, c1.handle) == "system"
        c3 = gpu.gem_create("3M")
        assert placement(gpu, c2.handle) == "system"
        assert placement(gpu, c3.handle) == "vram0"
        # 4M would need the pinned BO's VRAM. Like TTM, the fruitless attempt has already
        # evicted what it could (c3); the pinned BO still stays.
        assert errno_of(gpu.gem_create, "4M", ("vram0",)) == errno.ENOMEM
        assert placement(gpu, c3.handle) == "system"
        assert gpu.gem_create("4M", ("vram0", "system")).placement == "system"
    assert gpu.bo_info(pinned.handle) == {
        "handle": str(pinned.handle), "size": str(MiB), "placement": "vram0", "pinned": "1",
        "cgroup": "/a", "evictions": "0", **UNSHARED}
    assert str(pinned.handle) not in [h for h, _, _ in evictions(mnt)]
    assert value(mnt, "a", "dmem.pinned") == MiB
    regions = view(mnt, "regions").splitlines()
    assert regions[2].split() == ["vram0", REGION, str(4 * MiB), str(MiB), str(MiB)]


def test_exec_brings_an_evicted_bo_back_charging_the_caller(
    mnt: Mounted, gpu: XeDevice
) -> None:
    cgroups(mnt, "a", "b", "c")
    with inside(mnt, "a"):
        x = gpu.gem_create("2M", ("vram0", "system"))
        y = gpu.gem_create("2M", ("vram0",))
        join(mnt, "b")
        z = gpu.gem_create("2M", ("vram0", "system"))  # full: evicts x
        assert placement(gpu, x.handle) == "system"
        gpu.gem_close(y.handle)
        assert gpu.exec([x.handle]) == {"migrated_bytes": 2 * MiB, "evicted_bytes": 0}
        assert gpu.bo_info(x.handle) == {
            "handle": str(x.handle), "size": str(2 * MiB), "placement": "vram0",
            "pinned": "0", "cgroup": "/b", "evictions": "1", **UNSHARED}
        assert (value(mnt, "a"), value(mnt, "b")) == (0, 4 * MiB)
        join(mnt, "c")
        w = gpu.gem_create("1M", ("vram0", "system"))  # full: evicts z, the LRU-oldest
        assert placement(gpu, z.handle) == "system"
        # z may live in system memory, where it is (a FALLBACK place TTM keeps when VRAM
        # would need an eviction): it stays there, nothing is evicted for it.
        assert gpu.exec([z.handle, w.handle]) == {"migrated_bytes": 0, "evicted_bytes": 0}
        assert placement(gpu, z.handle) == "system"
        # A VRAM-only BO evicted to system memory does come back, evicting the LRU-oldest.
        v = gpu.gem_create("1M", ("vram0",))
        gpu.gem_close(w.handle)
        u = gpu.gem_create("2M", ("vram0",))  # full again: x (the oldest) goes
        assert (placement(gpu, x.handle), placement(gpu, v.handle)) == ("system", "vram0")
        assert placement(gpu, u.handle) == "vram0"
    assert [h for h, _, _ in evictions(mnt)] == [str(x.handle), str(z.handle), str(x.handle)]


def test_exec_of_an_evicted_vram_only_bo_evicts(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "b")
    with inside(mnt, "a"):
        v = gpu.gem_create("2M", ("vram0",))
        join(mnt, "b")
        w = gpu.gem_create("2M", ("vram0", "system"))
        u = gpu.gem_create("2M", ("vram0",))  # full: evicts v (a VRAM-only BO goes to TT too)
        assert placement(gpu, v.handle) == "system"
        # EXEC of v from /b: VRAM only, so forcing space evicts the LRU-oldest, w.
        assert gpu.exec([v.handle]) == {"migrated_bytes": 2 * MiB, "evicted_bytes": 2 * MiB}
    assert (placement(gpu, v.handle), placement(gpu, w.handle)) == ("vram0", "system")
    assert placement(gpu, u.handle) == "vram0"
    assert gpu.bo_info(v.handle)["cgroup"] == "/b"


def test_exec_never_evicts_bos_of_the_same_job(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.min", "2M")
    with inside(mnt, "a"):
        gpu.gem_create("2M", flags=("PINNED",))
    b = gpu.gem_create("2M", ("vram0", "system"))
    d = gpu.gem_create("2M", ("vram0", "system"))  # full: evicts b
    assert (placement(gpu, b.handle), placement(gpu, d.handle)) == ("system", "vram0")
    reply = gpu.exec([d.handle, b.handle])
    # b can only come back by evicting d, which the same job needs: b stays in system memory.
    assert placement(gpu, d.handle) == "vram0"
    assert gpu.bo_info(d.handle)["evictions"] == "0"
    assert reply == {"migrated_bytes": 0, "evicted_bytes": 0}


# -- process lifetime ----------------------------------------------------------------------------


def _hold(mnt: Mounted, size: str, cgroup_dir: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``dmemfs xe … GEM_CREATE --hold`` (via ``dmemfs exec`` when ``cgroup_dir``)."""
    cmd = [sys.executable, "-m", "dmemfs", "xe", dev(mnt), "GEM_CREATE", f"size={size}",
           "placement=vram0", "--hold"]
    if cgroup_dir is not None:
        cmd = [sys.executable, "-m", "dmemfs", "exec", cgroup_dir, "--", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _reply(child: subprocess.Popen[bytes]) -> bytes:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 20)
    assert ready, "the client printed no reply"
    return child.stdout.readline()


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(timeout=20)
    if child.stdout is not None:
        child.stdout.close()


def test_kill_9_of_a_client_frees_its_bos(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "b")
    mine = gpu.gem_create("1M")  # held by this process in the root cgroup
    joined = forked = None
    try:
        # One client joins a with `dmemfs exec`; the other is forked while this process is in
        # b, so it starts in b.
        joined = _hold(mnt, "2M", os.path.join(mnt.cgroup, "a"))
        with inside(mnt, "b"):
            forked = _hold(mnt, "512K")
        assert _reply(joined) == b"handle=1 size=2097152 placement=vram0 pinned=0\n"
        assert _reply(forked) == b"handle=1 size=524288 placement=vram0 pinned=0\n"
        assert (value(mnt, "a"), value(mnt, "b")) == (2 * MiB, 512 * KiB)
        assert mnt.read("a/cgroup.procs") == f"{joined.pid}\n"
        assert sorted((b["pid"], b["cgroup"]) for b in bos(mnt)) == sorted(
            [(str(joined.pid), "/a"), (str(forked.pid), "/b"), (str(os.getpid()), "/")])
        joined.kill()
        joined.wait(timeout=20)
        wait_for(lambda: value(mnt, "a") == 0, "the killed client's BOs to be freed")
        assert value(mnt, "b") == 512 * KiB  # the other client keeps its BO
        assert value(mnt, "") == MiB + 512 * KiB
        forked.kill()
        forked.wait(timeout=20)
        wait_for(lambda: value(mnt, "b") == 0, "the second client's BOs to be freed")
    finally:
        for child in (joined, forked):
            if child is not None:
                _stop(child)
    assert value(mnt, "") == MiB
    assert [b["pid"] for b in bos(mnt)] == [str(os.getpid())]
    assert placement(gpu, mine.handle) == "vram0"


def test_a_thread_opening_the_device_charges_its_process_cgroup(
    mnt: Mounted, gpu: XeDevice
) -> None:
    cgroups(mnt, "a")
    result: list[object] = []

    def work() -> None:
        try:
            with XeDevice(dev(mnt)) as client:  # FUSE sees the thread id as the opener
                client.gem_create("256K")
                result.append((value(mnt, "a"), [b["pid"] for b in bos(mnt)]))
        except BaseException as e:
            result.append(e)

    with inside(mnt, "a"):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(20)
    assert result == [(256 * KiB, [str(os.getpid())])]


def test_pins_survive_rmdir(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.min", "1M")
    with inside(mnt, "a"):
        pinned = gpu.gem_create("1M", flags=("PINNED",))
        loose = gpu.gem_create("512K")
    os.rmdir(os.path.join(mnt.cgroup, "a"))
    stat = dict(line.split() for line in mnt.read("cgroup.stat").splitlines())
    assert stat == {"nr_descendants": "0", "nr_subsys_dmem": "1", "nr_dying_descendants": "1",
                    "nr_dying_subsys_dmem": "1"}
    assert value(mnt, "", "dmem.pinned") == MiB
    assert value(mnt, "") == MiB + 512 * KiB
    assert gpu.bo_info(pinned.handle)["pinned"] == "1"
    # The dying cgroup lost its protection: its unpinned BO is evictable, the pinned one not.
    big = gpu.gem_create("3M", ("vram0",))
    assert (placement(gpu, loose.handle), placement(gpu, pinned.handle)) == ("system", "vram0")
    gpu.gem_close(big.handle)
    gpu.gem_close(loose.handle)
    assert value(mnt, "", "dmem.pinned") == MiB
    assert mnt.read("cgroup.stat").count("nr_dying_descendants 1") == 1
    gpu.gem_close(pinned.handle)
    assert value(mnt, "", "dmem.pinned") == 0
    assert value(mnt, "") == 0
    stat = dict(line.split() for line in mnt.read("cgroup.stat").splitlines())
    assert (stat["nr_dying_descendants"], stat["nr_dying_subsys_dmem"]) == ("0", "0")


def test_pin_from_the_root_cgroup_is_not_checked_in_intended_mode(
    mnt: Mounted, gpu: XeDevice
) -> None:
    bo = gpu.gem_create("2M", flags=("PINNED",))
    assert bo.pinned
    assert value(mnt, "", "dmem.pinned") == 2 * MiB


@pytest.mark.dmemfs_args("--pinning", "posted", "--device", f"xe,pci={PCI},vram0=4M")
def test_posted_pinning_fails_every_pin(mnt: Mounted, gpu: XeDevice) -> None:
    with open(os.path.join(mnt.debug, "daemon")) as f:
        assert "pinning posted\n" in f.read()
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.min", "4M")
    assert errno_of(gpu.gem_create, "64K", flags=("PINNED",)) == errno.ENOSPC
    with inside(mnt, "a"):
        assert errno_of(gpu.gem_create, "64K", flags=("PINNED",)) == errno.ENOSPC
        assert errno_of(gpu.gem_create, "1M", flags=("PINNED",)) == errno.ENOSPC
        assert value(mnt, "a") == 0
        assert gpu.gem_create("64K").placement == "vram0"  # unpinned creates still work
    assert value(mnt, "a") == 64 * KiB
    assert value(mnt, "", "dmem.pinned") == 0
    assert value(mnt, "a", "dmem.pinned") == 0
    assert [b["handle"] for b in bos(mnt)] == ["4"]


# -- debug views ---------------------------------------------------------------------------------


def test_debug_views_list_bos_and_evictions(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a", "b")
    set_limit(mnt, "a", "dmem.min", "1M")
    pid = os.getpid()
    with inside(mnt, "a"):
        gpu.gem_create("1M", flags=("PINNED",))
        gpu.gem_create("2M")
        join(mnt, "b")
        gpu.gem_create("1M", ("system", "vram0"))  # full now
        gpu.gem_create("1M", ("vram0",))  # evicts handle 2 (a: 3M > min 1M + 1M pinned)
    assert bos(mnt) == [
        {"pid": str(pid), "handle": "1", "size": str(MiB), "placement": "vram0", "pinned": "1",
         "evictions": "0", "cgroup": "/a"},
        {"pid": str(pid), "handle": "2", "size": str(2 * MiB), "placement": "system",
         "pinned": "0", "evictions": "1", "cgroup": "-"},
        {"pid": str(pid), "handle": "3", "size": str(MiB), "placement": "vram0", "pinned": "0",
         "evictions": "0", "cgroup": "/b"},
        {"pid": str(pid), "handle": "4", "size": str(MiB), "placement": "vram0", "pinned": "0",
         "evictions": "0", "cgroup": "/b"},
    ]
    (line,) = view(mnt, "evictions").splitlines()
    assert line.split(" ", 1)[1] == (
        f"vram0 evicted pid={pid} handle=2 size={2 * MiB} cgroup=/a by pid={pid} "
        f"cgroup=/b (device full)")
    assert view(mnt, "eviction_counts") == "/a 1\n"
    regions = [line.split() for line in view(mnt, "regions").splitlines()]
    assert regions[1] == ["system", "-", str(64 << 30), str(2 * MiB), "0"]
    assert regions[2] == ["vram0", REGION, str(4 * MiB), str(3 * MiB), str(MiB)]
    assert os.listdir(os.path.join(mnt.debug, "dri")) == [PCI]


# -- inherited device files ----------------------------------------------------------------------

INHERIT = r"""
import os, sys
dev, lim = sys.argv[1], sys.argv[2]
fd = os.open(dev, os.O_RDWR)            # opened here, in the root cgroup
r, w = os.pipe()
if os.fork() == 0:                      # the child inherits the open device file
    os.close(w)
    with open(os.path.join(lim, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    os.read(r, 1)                       # EOF: the opener has exited
    for size in ("2M", "512K"):
        try:
            os.write(fd, f"GEM_CREATE size={size} placement=vram0".encode())
            print(size, os.read(fd, 4096).decode().strip(), flush=True)
        except OSError as e:
            print(size, e.strerror, flush=True)
    os._exit(0)
os._exit(0)                             # the opener exits; the child still holds the file
"""


def _inherit(mnt: Mounted, code: str) -> list[str]:
    cgroups(mnt, "lim")
    mnt.write("lim/dmem.max", f"{REGION} 1M")  # the device has 4M
    # stdout reaches EOF once the child, which holds it too, has exited.
    res = subprocess.run([sys.executable, "-c", code, dev(mnt),
                          os.path.join(mnt.cgroup, "lim")],
                         capture_output=True, text=True, timeout=60)
    out = res.stdout.splitlines()
    assert len(out) == 2, res.stdout + res.stderr
    return out


OPENER_WAITS = INHERIT.replace("os._exit(0)                             # the opener exits",
                               "os.close(w); os.wait()                  # the opener waits")


@pytest.mark.parametrize("callers", ["request", "opener"])
def test_an_inherited_device_file_charges_the_caller(callers: str) -> None:
    """The opener exited; the child that inherited the file calls, so its cgroup (and its
    limit) is charged, not the root. With the request's caller (default) that is exact; the
    fallback finds the live holder of the same open file."""
    from tests.conftest import _require_fuse

    _require_fuse()
    env = dict(os.environ, DMEMFS_CALLERS=callers)
    with mounted(["--device", DEVICE], env=env) as m:
        out = _inherit(m, INHERIT)
    assert out[0] == "2M Cannot allocate memory"
    assert out[1].startswith("512K handle=") and "placement=vram0" in out[1]


def test_a_live_opener_does_not_stand_for_the_caller(mnt: Mounted) -> None:
    """The kernel charges the calling task: the child, in the 1M-limited cgroup, even while
    the opener (in the root) lives."""
    out = _inherit(mnt, OPENER_WAITS)
    assert out[0] == "2M Cannot allocate memory"


def test_fallback_a_live_opener_stands_for_every_holder() -> None:
    """Without the request's caller, a live opener is taken for the caller (documented)."""
    from tests.conftest import _require_fuse

    _require_fuse()
    env = dict(os.environ, DMEMFS_CALLERS="opener")
    with mounted(["--device", DEVICE], env=env) as m:
        out = _inherit(m, OPENER_WAITS)
    assert out[0].startswith("2M handle="), out
