"""The pure engine: cgroup tree, dmem page counters, protection and pinning (no I/O)."""

from dmemfs.engine.cgroup import Attr, Cgroup, CgroupTree, Creds
from dmemfs.engine.dmem import Dmem, DmemCss, Pool, Region
from dmemfs.engine.files import FILES, CgroupFile, WriteContext, read_file, write_file

__all__ = [
    "FILES",
    "Attr",
    "Cgroup",
    "CgroupFile",
    "CgroupTree",
    "Creds",
    "Dmem",
    "DmemCss",
    "Pool",
    "Region",
    "WriteContext",
    "read_file",
    "write_file",
]
