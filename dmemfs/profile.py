"""The emulated kernel: profiles, deliberate choices and constants, all in one place.

Everything dmemfs does differently depending on the kernel version it emulates, and every
deliberate choice where the kernel and the pinning RFC leave room, is named here so a reader
can see what is emulated. docs/kernel-model.md gives each rule with its kernel source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

#: ``PAGE_COUNTER_MAX`` on 64-bit with 4 KiB pages (``LONG_MAX / PAGE_SIZE``). dmem stores bytes
#: in page counters, so this is also the largest byte limit; values >= it read back as ``max``.
PAGE_COUNTER_MAX = 2251799813685247
PAGE_SIZE = 4096
U64_MASK = (1 << 64) - 1
INT_MAX = (1 << 31) - 1

#: A single ``write()`` to a kernfs file larger than this fails with E2BIG.
MAX_WRITE = PAGE_SIZE

#: kernfs: at most this many ``user.*`` xattrs per node and this many bytes of their values.
MAX_XATTRS = 128
MAX_XATTR_BYTES = 128 << 10
#: The VFS: the longest xattr name (``XATTR_NAME_MAX``) and value (``XATTR_SIZE_MAX``).
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536

#: v2 controllers this cgroup hierarchy offers, in subsystem-id order. dmemfs emulates dmem
#: only; listing controllers whose files do not exist would mislead tools (a deviation).
CONTROLLERS: tuple[str, ...] = ("dmem",)

#: The pinning RFC ("[RFC 0/3] cgroups: Add support for pinned device memory", Aug 2025):
#: ``off`` is mainline (no ``dmem.pinned``, no PINNED flag); ``intended`` (default) skips the
#: root level in try_pin, whose min is always 0; ``posted`` is the series exactly as posted,
#: where that root check makes every pin fail.
PinningMode = Literal["off", "intended", "posted"]
PINNING_MODES: tuple[PinningMode, ...] = ("off", "intended", "posted")
ProfileName = Literal["6.14", "7.3"]


@dataclass(frozen=True, slots=True)
class Profile:
    """One emulated kernel version of the dmem controller, TTM and xe, plus the pinning mode."""

    name: ProfileName
    #: 7.3: one ``region value`` per limit write (a whitespace-only write is EINVAL).
    #: 6.14: multi-line, applied in order up to the first bad line (earlier lines stay).
    single_region_write: bool
    #: ``dmem.peak`` exists (7.3).
    has_peak: bool
    #: 7.3: writing ``dmem.max`` below usage stores it and reclaims (unless O_NONBLOCK).
    #: 6.14: such a write is silently ignored (page_counter_set_max's -EBUSY is dropped).
    reclaim_on_max: bool
    #: 7.3 TTM: charge before allocating, protected allocators may evict in the first pass,
    #: victims judged against the common ancestor with the allocator. 6.14: protection is
    #: evaluated against the root and a failed charge inside the eviction walk ends it.
    protection_aware_eviction: bool
    #: 7.3 xe ("drm/xe/dma-buf: Allow pinning of p2p dma-buf"): a dma-buf pin keeps the BO
    #: in VRAM when every importer is peer-to-peer. 6.14: a pin moves it to system memory.
    pin_p2p_dma_buf: bool
    pinning: PinningMode = "intended"
    #: Effective-protection products are computed in u64 and wrap like the kernel's (default);
    #: ``False`` computes them with unbounded integers.
    wrap_u64: bool = True

    @property
    def has_pinning(self) -> bool:
        return self.pinning != "off"

    def with_options(
        self, *, pinning: PinningMode | None = None, wrap_u64: bool | None = None
    ) -> Profile:
        return replace(
            self,
            pinning=self.pinning if pinning is None else pinning,
            wrap_u64=self.wrap_u64 if wrap_u64 is None else wrap_u64,
        )


V7_3 = Profile(name="7.3", single_region_write=True, has_peak=True, reclaim_on_max=True,
               protection_aware_eviction=True, pin_p2p_dma_buf=True)
V6_14 = Profile(name="6.14", single_region_write=False, has_peak=False, reclaim_on_max=False,
                protection_aware_eviction=False, pin_p2p_dma_buf=False)
#: ``latest`` is the newest emulated kernel.
LATEST = V7_3
PROFILES: dict[str, Profile] = {"latest": LATEST, "7.3": V7_3, "6.14": V6_14}
PROFILE_CHOICES = ("latest", "7.3", "6.14")


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r} (choose from {', '.join(PROFILE_CHOICES)})"
        ) from None
