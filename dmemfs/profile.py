"""The emulated kernel: profiles, deliberate choices and constants, all in one place.

Everything dmemfs does differently depending on the kernel version it emulates, and every
deliberate choice where the kernel and the pinning RFC leave room, is named here so a reader
can see what is emulated.
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

PinningMode = Literal["intended", "posted"]
ProfileName = Literal["latest", "6.14"]


@dataclass(frozen=True, slots=True)
class Profile:
    """One emulated kernel version of the dmem controller and the RFC pinning extension."""

    name: ProfileName
    #: 2026 tip: one ``region value`` per limit write. 6.14: multi-line, applied in order up to
    #: the first bad line (earlier lines stay applied).
    single_region_write: bool
    #: ``dmem.peak`` exists (2026 tip only).
    has_peak: bool
    #: ``intended`` (default): try_pin does not check the root pool, whose min is always 0.
    #: ``posted``: exactly the RFC as posted, where the root level makes every pin fail.
    pinning: PinningMode = "intended"
    #: Effective-protection products are computed in u64 and wrap like the kernel's (default);
    #: ``False`` computes them with unbounded integers.
    wrap_u64: bool = True

    def with_options(
        self, *, pinning: PinningMode | None = None, wrap_u64: bool | None = None
    ) -> Profile:
        return replace(
            self,
            pinning=self.pinning if pinning is None else pinning,
            wrap_u64=self.wrap_u64 if wrap_u64 is None else wrap_u64,
        )


LATEST = Profile(name="latest", single_region_write=True, has_peak=True)
V6_14 = Profile(name="6.14", single_region_write=False, has_peak=False)
PROFILES: dict[str, Profile] = {p.name: p for p in (LATEST, V6_14)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r} (choose from {', '.join(sorted(PROFILES))})"
        ) from None
