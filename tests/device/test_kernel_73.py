"""Linux 7.3's dmem and TTM rules through a real mount, each with its 6.14 contrast.

docs/kernel-model.md lists the rules: reclaim when dmem.max is lowered (unless the file is
O_NONBLOCK at the time of the write), protection-aware eviction (a protected allocator evicts
in the first pass; a victim is judged against the common ancestor of its cgroup and the
allocator's), one region per limit write, dmem.peak. Each test runs under both profiles
where they differ and asserts what each kernel does.
"""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from dmemfs.client import XeDevice
from dmemfs.testing import Mounted
from tests.device.helpers import (
    PCI,
    REGION,
    cgroups,
    errno_of,
    evictions,
    gpu,
    inside,
    join,
    placement,
    set_limit,
    value,
)

__all__ = ["gpu"]  # the fixture

KiB = 1 << 10
MiB = 1 << 20
DEVICE = f"xe,pci={PCI},vram0=4M"


def _profile(name: str, device: str = DEVICE) -> object:
    return pytest.param(name, marks=pytest.mark.dmemfs_args("--device", device,
                                                              "--profile", name))


BOTH = pytest.mark.parametrize("profile", [_profile("7.3"), _profile("6.14")])
ONLY_73 = pytest.mark.dmemfs_args("--device", DEVICE, "--profile", "7.3")


def _victims(mnt: Mounted) -> list[str]:
    """The cgroup of each evicted BO, oldest eviction first."""
    return [cg for _, cg, _ in evictions(mnt)]


def _write(path: str, data: str, flags: int = 0) -> int:
    fd = os.open(path, os.O_WRONLY | flags)
    try:
        return os.write(fd, data.encode())
    finally:
        os.close(fd)


# -- (a) protection-aware eviction -----------------------------------------------------------


@BOTH
def test_top_level_siblings_do_not_protect_each_other_in_73(
    mnt: Mounted, gpu: XeDevice, profile: str
) -> None:
    """A victim sharing only the root with the allocator is judged against the root cgroup's
    pool, for which evict_valuable answers "evictable" without looking at protection."""
    cgroups(mnt, "a", "b")
    set_limit(mnt, "a", "dmem.min", "2M")
    with inside(mnt, "a"):
        a1 = gpu.gem_create("1M", ("vram0", "system"))
        gpu.gem_create("1M", ("vram0", "system"))
        join(mnt, "b")
        b1 = gpu.gem_create("1M", ("vram0", "system"))
        gpu.gem_create("1M", ("vram0", "system"))  # the device is full
        b3 = gpu.gem_create("1M", ("vram0", "system"))
    assert placement(gpu, b3.handle) == "vram0"
    if profile == "7.3":
        assert _victims(mnt) == ["/a"] and placement(gpu, a1.handle) == "system"
    else:  # against the root, /a is within its dmem.min: b's own oldest BO goes
        assert _victims(mnt) == ["/b"] and placement(gpu, b1.handle) == "system"


@BOTH
def test_siblings_are_judged_against_their_common_parent_in_73(
    mnt: Mounted, gpu: XeDevice, profile: str
) -> None:
    """p/a has dmem.min, p has none. Against p (7.3) a's min counts in full; against the
    root (6.14) p has no protection to hand down, so a has none."""
    cgroups(mnt, "p", "p/a", "p/b")
    set_limit(mnt, "p/a", "dmem.min", "2M")
    with inside(mnt, "p/a"):
        a1 = gpu.gem_create("1M", ("vram0", "system"))
        gpu.gem_create("1M", ("vram0", "system"))
        join(mnt, "p/b")
        b1 = gpu.gem_create("1M", ("vram0", "system"))
        gpu.gem_create("1M", ("vram0", "system"))
        gpu.gem_create("1M", ("vram0", "system"))
    if profile == "7.3":
        assert _victims(mnt) == ["/p/b"] and placement(gpu, b1.handle) == "system"
        assert placement(gpu, a1.handle) == "vram0"
    else:
        assert _victims(mnt) == ["/p/a"] and placement(gpu, a1.handle) == "system"


@BOTH
def test_an_ancestors_own_bos_are_always_evictable_in_73(
    mnt: Mounted, gpu: XeDevice, profile: str
) -> None:
    """BOs charged to p itself (before p gave its subtree the controller) are taken for p/a:
    the common ancestor is p, the victim's own pool (limit == test)."""
    cgroups(mnt, "p")
    set_limit(mnt, "p", "dmem.min", "4M")
    with inside(mnt, "p"):
        p_bos = [gpu.gem_create("1M", ("vram0", "system")) for _ in range(4)]  # full
    mnt.write("p/cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "p", "a"))
    with inside(mnt, "p/a"):
        a1 = gpu.gem_create("1M", ("vram0", "system"))
    if profile == "7.3":
        assert placement(gpu, a1.handle) == "vram0"
        assert _victims(mnt) == ["/p"] and placement(gpu, p_bos[0].handle) == "system"
    else:  # p is within its min against the root: nothing may go, a1 falls back
        assert placement(gpu, a1.handle) == "system" and _victims(mnt) == []


@BOTH
def test_an_allocator_in_the_root_cgroup(mnt: Mounted, gpu: XeDevice, profile: str) -> None:
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.min", "4M")
    with inside(mnt, "a"):
        kept = [gpu.gem_create("1M") for _ in range(4)]
    if profile == "7.3":  # the common ancestor is the root: protection is not looked at
        assert gpu.gem_create("64K", ("vram0",)).placement == "vram0"
        assert placement(gpu, kept[0].handle) == "system"
    else:
        assert errno_of(gpu.gem_create, "64K", ("vram0",)) == errno.ENOMEM
        assert [placement(gpu, b.handle) for b in kept] == ["vram0"] * 4


def _protected_exec_setup(mnt: Mounted, gpu: XeDevice, kind: str, amount: str
                          ) -> tuple[object, object, list[object]]:
    """p (kind 4M) with p/a (kind ``amount``) and p/b (nothing). a holds a0 in VRAM and a1
    with deferred backing (in system memory); b fills the device. Returns (a0, a1, b's)."""
    cgroups(mnt, "p", "p/a", "p/b")
    set_limit(mnt, "p", f"dmem.{kind}", "4M")
    set_limit(mnt, "p/a", f"dmem.{kind}", amount)
    with inside(mnt, "p/a"):
        a0 = gpu.gem_create("1M", ("vram0", "system"))
        a1 = gpu.gem_create("1M", ("vram0", "system"), flags=("DEFER_BACKING",))
        join(mnt, "p/b")
        b_bos = [gpu.gem_create("1M", ("vram0", "system")) for _ in range(3)]  # full
    assert placement(gpu, a1.handle) == "system"
    return a0, a1, b_bos


@BOTH
def test_an_allocator_within_its_min_evicts_in_the_first_pass(
    mnt: Mounted, gpu: XeDevice, profile: str
) -> None:
    """EXEC of a BO that may live in system memory: TTM leaves it there unless the first
    (non-forcing) pass finds room. In 7.3 an allocator within its effective min may evict
    in that pass, its own BOs included (they are the LRU-oldest here)."""
    a0, a1, _ = _protected_exec_setup(mnt, gpu, "min", "2M")
    with inside(mnt, "p/a"):
        reply = gpu.exec([a1.handle])
    if profile == "7.3":
        assert reply == {"migrated_bytes": MiB, "evicted_bytes": MiB}
        assert placement(gpu, a1.handle) == "vram0"
        assert _victims(mnt) == ["/p/a"] and placement(gpu, a0.handle) == "system"
    else:
        assert reply == {"migrated_bytes": 0, "evicted_bytes": 0}
        assert placement(gpu, a1.handle) == "system" and _victims(mnt) == []


@ONLY_73
def test_an_allocator_within_only_its_low_spares_its_own_bos(
    mnt: Mounted, gpu: XeDevice
) -> None:
    """Within effective low but not min: the first pass may evict, but not the allocator's
    own cgroup's BOs (a0 is older, b's unprotected BO goes) and not low-protected ones."""
    a0, a1, b_bos = _protected_exec_setup(mnt, gpu, "low", "2M")
    with inside(mnt, "p/a"):
        assert gpu.exec([a1.handle]) == {"migrated_bytes": MiB, "evicted_bytes": MiB}
    assert placement(gpu, a0.handle) == "vram0"
    assert _victims(mnt) == ["/p/b"] and placement(gpu, b_bos[0].handle) == "system"


@ONLY_73
def test_protection_is_tested_with_the_new_bo_charged(mnt: Mounted, gpu: XeDevice) -> None:
    """a holds 1M and brings back 1M: with dmem.min 1M it is over its protection once the
    new BO is charged, so the first pass does not evict and the BO stays in system memory."""
    _, a1, _ = _protected_exec_setup(mnt, gpu, "min", "1M")
    set_limit(mnt, "p", "dmem.min", "1M")
    with inside(mnt, "p/a"):
        assert gpu.exec([a1.handle]) == {"migrated_bytes": 0, "evicted_bytes": 0}
    assert placement(gpu, a1.handle) == "system" and _victims(mnt) == []


@BOTH
def test_a_limit_hit_needing_two_victims(mnt: Mounted, gpu: XeDevice, profile: str) -> None:
    """7.3 keeps evicting inside the limiting cgroup until the charge fits. In 6.14 the
    charge retried inside the eviction walk fails again with -EAGAIN, which ends the walk:
    GEM_CREATE fails with EAGAIN after evicting one BO (a retry then fits)."""
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.max", "2M")
    with inside(mnt, "a"):
        small = [gpu.gem_create("512K", ("vram0", "system")) for _ in range(4)]
        if profile == "7.3":
            big = gpu.gem_create("1M", ("vram0", "system"))
            assert big.placement == "vram0"
            assert [placement(gpu, b.handle) for b in small] == ["system"] * 2 + ["vram0"] * 2
        else:
            assert errno_of(gpu.gem_create, "1M", ("vram0", "system")) == errno.EAGAIN
            assert [placement(gpu, b.handle) for b in small] == ["system"] + ["vram0"] * 3
            assert gpu.gem_create("1M", ("vram0", "system")).placement == "vram0"
            assert [placement(gpu, b.handle) for b in small] == ["system"] * 2 + ["vram0"] * 2
    assert value(mnt, "a") == 2 * MiB


# -- (b) reclaim when dmem.max is lowered ------------------------------------------------------


@BOTH
def test_lowering_max_below_usage(mnt: Mounted, gpu: XeDevice, profile: str) -> None:
    cgroups(mnt, "a")
    with inside(mnt, "a"):
        bos = [gpu.gem_create("512K", ("vram0", "system")) for _ in range(4)]
    data = f"{REGION} 1M"
    assert _write(os.path.join(mnt.cgroup, "a", "dmem.max"), data) == len(data)
    if profile == "7.3":  # stored, then the LRU-oldest go until the usage fits
        assert mnt.read("a/dmem.max") == f"{REGION} {MiB}\n"
        assert value(mnt, "a") == MiB
        assert [placement(gpu, b.handle) for b in bos] == ["system"] * 2 + ["vram0"] * 2
        assert [reason for _, _, reason in evictions(mnt)] == ["reclaim: dmem.max of /a"] * 2
    else:  # page_counter_set_max's -EBUSY is ignored: nothing changes
        assert mnt.read("a/dmem.max") == f"{REGION} max\n"
        assert value(mnt, "a") == 2 * MiB and evictions(mnt) == []


@ONLY_73
def test_o_nonblock_skips_reclaim_and_later_charges_evict_inside(
    mnt: Mounted, gpu: XeDevice
) -> None:
    cgroups(mnt, "a")
    with inside(mnt, "a"):
        bos = [gpu.gem_create("512K", ("vram0", "system")) for _ in range(4)]
        data = f"{REGION} 1M"
        assert _write(os.path.join(mnt.cgroup, "a", "dmem.max"), data, os.O_NONBLOCK) == len(
            data)
        assert mnt.read("a/dmem.max") == f"{REGION} {MiB}\n"
        assert value(mnt, "a") == 2 * MiB and evictions(mnt) == []
        # Every charge in the subtree now fails at a: the limit-hit path evicts inside a
        # until the new BO fits under the lowered max (the "lazy" reclaim).
        new = gpu.gem_create("512K", ("vram0", "system"))
    assert new.placement == "vram0"
    assert [placement(gpu, b.handle) for b in bos] == ["system"] * 3 + ["vram0"]
    assert value(mnt, "a") == MiB
    assert {reason for _, _, reason in evictions(mnt)} == {"limit of /a"}


@ONLY_73
def test_o_nonblock_set_with_fcntl_after_open_counts(mnt: Mounted, gpu: XeDevice) -> None:
    """The flags of the open file at the time of the write decide, as file->f_flags does."""
    cgroups(mnt, "a")
    with inside(mnt, "a"):
        bos = [gpu.gem_create("512K", ("vram0", "system")) for _ in range(4)]
    fd = os.open(os.path.join(mnt.cgroup, "a", "dmem.max"), os.O_WRONLY)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        os.write(fd, f"{REGION} 1M".encode())
        assert value(mnt, "a") == 2 * MiB and evictions(mnt) == []
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)  # blocking again: the same write reclaims
        os.write(fd, f"{REGION} 1M".encode())
    finally:
        os.close(fd)
    assert value(mnt, "a") == MiB
    assert [placement(gpu, b.handle) for b in bos] == ["system"] * 2 + ["vram0"] * 2


@ONLY_73
def test_reclaim_order_own_then_unprotected_then_low_never_min(
    mnt: Mounted, gpu: XeDevice
) -> None:
    """Draining p: p's own BOs go whatever p's own protection; its children are judged
    against p: unprotected first, low-protected in the second walk, min-protected never.
    Usage stays above max; the write still succeeds."""
    cgroups(mnt, "p")
    set_limit(mnt, "p", "dmem.min", "4M")
    with inside(mnt, "p"):
        p0 = gpu.gem_create("512K", ("vram0", "system"))
    mnt.write("p/cgroup.subtree_control", "+dmem")
    for child in ("x", "y", "z"):
        os.mkdir(os.path.join(mnt.cgroup, "p", child))
    set_limit(mnt, "p/x", "dmem.min", "1M")
    set_limit(mnt, "p/y", "dmem.low", "1M")
    with inside(mnt, "p/x"):
        x1 = gpu.gem_create("1M", ("vram0", "system"))
        join(mnt, "p/y")
        y1 = gpu.gem_create("1M", ("vram0", "system"))
        join(mnt, "p/z")
        z1 = gpu.gem_create("512K", ("vram0", "system"))
    data = f"{REGION} 0"
    assert _write(os.path.join(mnt.cgroup, "p", "dmem.max"), data) == len(data)
    assert [(h, cg) for h, cg, _ in evictions(mnt)] == [
        (str(p0.handle), "/p"), (str(z1.handle), "/p/z"), (str(y1.handle), "/p/y")]
    assert placement(gpu, x1.handle) == "vram0"
    assert (value(mnt, "p"), mnt.read("p/dmem.max")) == (MiB, f"{REGION} 0\n")


@ONLY_73
def test_reclaim_skips_pinned_bos_and_other_regions(mnt: Mounted) -> None:
    two = f"xe,pci={PCI},vram0=4M,vram1=4M"
    del mnt
    from dmemfs.testing import mounted

    with mounted(["--device", two, "--profile", "7.3"]) as m, \
            XeDevice(os.path.join(m.dri, "renderD128")) as gpu:
        vram1 = f"drm/{PCI}/vram1"
        cgroups(m, "a")
        set_limit(m, "a", "dmem.min", "1M")
        with inside(m, "a"):
            pinned = gpu.gem_create("1M", ("vram0",), flags=("PINNED",))
            plain = gpu.gem_create("1M", ("vram0", "system"))
            other = gpu.gem_create("1M", ("vram1", "system"))
        _write(os.path.join(m.cgroup, "a", "dmem.max"), f"{REGION} 0")
        assert placement(gpu, plain.handle) == "system"
        assert placement(gpu, pinned.handle) == "vram0"  # pinned: never evicted
        assert placement(gpu, other.handle) == "vram1"  # another region's LRU
        assert value(m, "a") == MiB and value(m, "a", region=vram1) == MiB
        _write(os.path.join(m.cgroup, "a", "dmem.max"), f"{vram1} 0")
        assert placement(gpu, other.handle) == "system"
        join(m, "")


# -- (c) one region per write, (d) dmem.peak --------------------------------------------------


@BOTH
def test_whitespace_only_limit_write(mnt: Mounted, profile: str) -> None:
    cgroups(mnt, "a")
    path = os.path.join(mnt.cgroup, "a", "dmem.max")
    for data in ("\n", " ", "\t\n"):
        if profile == "7.3":
            with pytest.raises(OSError) as e:
                _write(path, data)
            assert e.value.errno == errno.EINVAL
        else:
            assert _write(path, data) == len(data)
    two_lines = f"{REGION} 1M\n{REGION} 2M\n"
    if profile == "7.3":
        with pytest.raises(OSError) as e:
            _write(path, two_lines)
        assert e.value.errno == errno.EINVAL
    else:
        assert _write(path, two_lines) == len(two_lines)
        assert mnt.read("a/dmem.max") == f"{REGION} {2 * MiB}\n"


@BOTH
def test_peak_and_a_failed_charge_raising_it(
    mnt: Mounted, gpu: XeDevice, profile: str
) -> None:
    """dmem.peak (7.3 only) is the page counter's watermark: never lowered, and raised on the
    levels below a limit that a failed charge hit (page_counter_try_charge)."""
    cgroups(mnt, "a", "a/b")
    set_limit(mnt, "a", "dmem.max", "1M")
    with inside(mnt, "a/b"):
        bo = gpu.gem_create("512K", ("vram0",))
        gpu.gem_close(bo.handle)
        assert errno_of(gpu.gem_create, "2M", ("vram0",)) == errno.ENOMEM
    exists = os.path.exists(os.path.join(mnt.cgroup, "a", "b", "dmem.peak"))
    assert exists == (profile == "7.3")
    if profile == "7.3":
        assert value(mnt, "a/b", "dmem.peak") == 2 * MiB  # the failed 2M charge, at b
        assert value(mnt, "a", "dmem.peak") == 512 * KiB  # a refused it: not raised
        assert value(mnt, "a/b") == 0


# -- --pinning off -------------------------------------------------------------------------------


@pytest.mark.dmemfs_args("--device", DEVICE, "--pinning", "off")
def test_pinning_off_is_mainline(mnt: Mounted, gpu: XeDevice) -> None:
    cgroups(mnt, "a")
    set_limit(mnt, "a", "dmem.min", "1M")
    assert not os.path.exists(os.path.join(mnt.cgroup, "dmem.pinned"))
    assert not os.path.exists(os.path.join(mnt.cgroup, "a", "dmem.pinned"))
    assert "dmem.pinned" not in os.listdir(os.path.join(mnt.cgroup, "a"))
    with inside(mnt, "a"):
        assert errno_of(gpu.gem_create, "1M", ("vram0",), flags=("PINNED",)) == errno.EINVAL
        assert gpu.gem_create("1M", ("vram0",)).pinned is False
    with open(os.path.join(mnt.debug, "daemon")) as f:
        assert "profile 7.3\npinning off\n" in f.read()
