"""The kernel's ``dmem_selftest`` helper module, emulated (``dmemfs mount --selftest``).

The module registers a 256 MiB region named ``dmem_selftest`` and two debugfs files: a write
of a byte count to ``charge`` charges the writer's cgroup (one outstanding charge at most),
any write to ``uncharge`` releases it; a charge of 0 or more than the region is EINVAL (the
module's v5, "[PATCH v5 1/4] cgroup: Add dmem_selftest module", July 2026). dmemfs serves
them as ``MOUNT/debug/dmem_selftest/``;
``dmemfs as-cgroup2 --debugfs`` binds them at ``/sys/kernel/debug/dmem_selftest`` so kernel
selftests written for the module run unmodified.
"""

from __future__ import annotations

from dmemfs.engine.cgroup import CgroupTree
from dmemfs.engine.dmem import DmemCss, Pool, Region
from dmemfs.engine.parse import kstrtou64, strstrip
from dmemfs.errors import Busy, ChargeLimited, InvalidArgument, NoDevice, TryAgain

REGION_NAME = "dmem_selftest"
REGION_SIZE = 256 << 20
#: The module copies a write into a 32-byte buffer and refuses anything that does not fit.
MAX_CHARGE_WRITE = 32


class DmemSelftest:
    def __init__(self, tree: CgroupTree) -> None:
        self.tree = tree
        self.region: Region | None = tree.dmem.register_region(REGION_NAME, REGION_SIZE)
        self.charged: tuple[Pool, int] | None = None

    def charge(self, css: DmemCss, data: bytes) -> None:
        if self.region is None:
            raise NoDevice("dmem_selftest region is not registered")
        if not data or len(data) >= MAX_CHARGE_WRITE:
            raise InvalidArgument("write a byte count (at most 31 characters)")
        # strim() (the kernel's white space, lib/ctype.c), then kstrtou64.
        size = kstrtou64(strstrip(data.decode("latin-1")), 0)
        if size == 0 or size > REGION_SIZE:
            raise InvalidArgument(f"a charge must be 1 to {REGION_SIZE} bytes")
        if self.charged is not None:
            raise Busy("a charge is outstanding; uncharge it first")
        try:
            pool = self.tree.dmem.try_charge(css, self.region, size)
        except ChargeLimited as e:
            raise TryAgain(str(e)) from None
        self.charged = (pool, size)

    def uncharge(self, data: bytes) -> None:
        if not data or self.charged is None:
            raise InvalidArgument("nothing is charged")
        pool, size = self.charged
        self.charged = None
        self.tree.dmem.uncharge(pool, size)
