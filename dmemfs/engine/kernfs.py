"""What every cgroupfs node inherits from kernfs (fs/kernfs/): name order, times, xattrs.

* Directory listings come in the order of ``kernfs_name_hash()`` (fs/kernfs/dir.c): children
  sit in an rbtree sorted by (hash, name) and ``kernfs_fop_readdir()`` walks it.
* A node's times live in its ``iattr`` once something set them (``kernfs_setattr()``, an
  xattr); adding or removing a child updates the parent's mtime/ctime only then
  (``kernfs_add_one()``, ``__kernfs_remove()``). Without an ``iattr`` the VFS inode's own
  creation times show.
* Extended attributes: ``trusted.*`` and ``security.*`` without a limit of their own,
  ``user.*`` at most ``KERNFS_MAX_USER_XATTRS`` per node and ``KERNFS_USER_XATTR_SIZE_LIMIT``
  bytes of values (fs/kernfs/inode.c); other namespaces are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dmemfs.errors import InvalidArgument, NoSpace, NotSupported

_U64 = (1 << 64) - 1
#: ``GOLDEN_RATIO_64`` (include/linux/hash.h).
_GOLDEN_RATIO_64 = 0x61C8864680B583EB
_INT_MAX = (1 << 31) - 1

KERNFS_MAX_USER_XATTRS = 128
KERNFS_USER_XATTR_SIZE_LIMIT = 128 << 10
#: Namespaces kernfs keeps (``kernfs_xattr_handlers``); anything else is EOPNOTSUPP.
XATTR_PREFIXES = ("user.", "trusted.", "security.")


@lru_cache(maxsize=4096)
def name_hash(name: str) -> int:
    """``kernfs_name_hash(name, NULL)`` on a 64-bit kernel.

    The byte-wise ``partial_name_hash()`` (each ``char`` sign-extended, as on x86), folded by
    ``end_name_hash()`` (``hash_long(h, 32)``), masked to 31 bits with 0, 1 and ``INT_MAX``
    reserved.
    """
    h = 0
    for byte in name.encode("utf-8", "surrogateescape"):
        c = byte | (_U64 ^ 0xFF) if byte & 0x80 else byte
        h = ((h + ((c << 4) & _U64) + (c >> 4)) * 11) & _U64
    h = ((h * _GOLDEN_RATIO_64) & _U64) >> 32
    h &= 0x7FFFFFFF
    if h < 2:
        h += 2
    if h >= _INT_MAX:
        h = _INT_MAX - 1
    return h


def listing_order(names: list[str]) -> list[str]:
    """``names`` in the order ``readdir()`` of a kernfs directory returns them."""
    return sorted(names, key=lambda n: (name_hash(n), n))


@dataclass(frozen=True, slots=True)
class Stamp:
    """A node's times once its ``iattr`` exists (nanoseconds since the epoch)."""

    atime: int
    mtime: int
    ctime: int


def check_xattr(name: str) -> None:
    """EOPNOTSUPP for a name outside the namespaces kernfs keeps; EINVAL for a bare prefix
    (the VFS's ``xattr_resolve_name()``)."""
    if name in XATTR_PREFIXES:
        raise InvalidArgument(f"xattr {name!r}: empty name")
    if not name.startswith(XATTR_PREFIXES):
        raise NotSupported(f"xattr {name!r}: namespace not supported")


def set_xattr(xattrs: dict[str, bytes], name: str, value: bytes) -> dict[str, bytes]:
    """``xattrs`` with ``name`` set (added or replaced).

    ``user.*`` names go through ``kernfs_vfs_user_xattr_add()``: the count is raised and the
    new value's size added *before* an existing value is dropped, so even replacing fails with
    ENOSPC once a node holds the maximum number or size of ``user.*`` values.
    """
    check_xattr(name)
    if name.startswith("user."):
        user = [v for n, v in xattrs.items() if n.startswith("user.")]
        if len(user) + 1 > KERNFS_MAX_USER_XATTRS:
            raise NoSpace(f"more than {KERNFS_MAX_USER_XATTRS} user.* xattrs")
        if sum(len(v) for v in user) + len(value) > KERNFS_USER_XATTR_SIZE_LIMIT:
            raise NoSpace(f"user.* xattr values over {KERNFS_USER_XATTR_SIZE_LIMIT} bytes")
    out = dict(xattrs)
    out[name] = value
    return out
