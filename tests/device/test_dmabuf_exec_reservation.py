"""An EXEC reserves every buffer of its job, the exporters' BOs of its imported handles too.

Found by the dma-buf state machine (tests/device/test_dmabuf_model.py): mapping one imported
buffer back into the exporter's VRAM evicted another buffer of the same job, so the job
"succeeded" with one of its own buffers evicted again and its importer stalled by itself.
"""

from __future__ import annotations

import errno
import os

import pytest

from dmemfs.client import XeDevice
from dmemfs.testing import Mounted
from tests.device.helpers import errno_of

TWO_SMALL_GPUS = ("--device", "xe,pci=0000:03:00.0,vram0=512K",
                  "--device", "xe,pci=0000:04:00.0,vram0=512K")


@pytest.mark.dmemfs_args(*TWO_SMALL_GPUS)
def test_exec_does_not_evict_its_own_imported_buffers(mnt: Mounted) -> None:
    with XeDevice(os.path.join(mnt.dri, "renderD128")) as gpu0, \
            XeDevice(os.path.join(mnt.dri, "renderD129")) as gpu1:
        # Two 384 KiB VRAM-only buffers on GPU 0 (512 KiB of VRAM), both imported by GPU 1.
        first = gpu0.gem_create("384K", ("vram0",))
        imp1 = gpu1.prime_import(gpu0.prime_export(first.handle))["handle"]
        second = gpu0.gem_create("384K", ("vram0",))  # evicts the first
        imp2 = gpu1.prime_import(gpu0.prime_export(second.handle))["handle"]
        assert gpu0.bo_info(first.handle)["placement"] == "system"
        assert gpu0.bo_info(second.handle)["placement"] == "vram0"
        stalls = gpu1.bo_info(imp2)["stalls"]

        # A job needing both cannot have them in VRAM at once: ENOMEM, as for two buffers
        # of GPU 0's own; the buffer already in VRAM stays there, its importer not stalled.
        assert errno_of(gpu1.exec, [imp1, imp2]) == errno.ENOMEM
        assert gpu0.bo_info(second.handle)["placement"] == "vram0"
        assert gpu1.bo_info(imp2)["stalls"] == stalls

        # Each alone runs: the first comes back (evicting the second, which stalls).
        assert gpu1.exec([imp1])["migrated_bytes"] == 384 << 10
        assert gpu0.bo_info(first.handle)["placement"] == "vram0"
        assert int(gpu1.bo_info(imp2)["stalls"]) == int(stalls) + 1
