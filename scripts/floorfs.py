#!/usr/bin/env python3
"""The floor for scripts/bench_fs.py: the least a pyfuse3 + trio filesystem can cost.

It serves one constant file (``value``), a request counter (``requests``), accepts writes
(discarded) and mkdir/rmdir of empty directories, with the same mount options, cache
timeouts and direct I/O as dmemfs. Usage: floorfs.py MOUNTPOINT (prints "ok" when mounted;
SIGTERM unmounts). ``floorfs.py MOUNTPOINT N`` adds N more constant files, so that a
listing of its root returns as many entries as the dmemfs directory it is compared with.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio

CONTENT = b"drm/0000:03:00.0/vram0 0\n"
TIMEOUT = 300.0
REQUESTS: collections.Counter[str] = collections.Counter()


class FloorFS(pyfuse3.Operations):
    def __init__(self, extra_files: int = 0) -> None:
        super().__init__()
        self.names = {b"value": 2, b"requests": 3}
        self.names.update({f"f{i}".encode(): 100 + i for i in range(extra_files)})
        self.dirs: dict[bytes, int] = {}
        self.next_ino = 10
        self.now = time.time_ns()
        self.snapshots: dict[int, bytes] = {}
        self.counter_fhs: set[int] = set()
        self.next_fh = 1

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.entry_timeout = e.attr_timeout = TIMEOUT
        is_dir = ino == pyfuse3.ROOT_INODE or ino in self.dirs.values()
        e.st_mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
        e.st_nlink = 2 if is_dir else 1
        e.st_size = 0
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = self.now
        return e

    async def lookup(self, parent_inode, name, ctx):
        REQUESTS["lookup"] += 1
        ino = self.names.get(name) or self.dirs.get(name)
        if parent_inode != pyfuse3.ROOT_INODE or ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(ino)

    async def getattr(self, inode, ctx):
        REQUESTS["getattr"] += 1
        return self._attr(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        REQUESTS["setattr"] += 1
        return self._attr(inode)

    async def forget(self, inode_list):
        REQUESTS["forget"] += 1

    async def opendir(self, inode, ctx):
        REQUESTS["opendir"] += 1
        return inode

    async def readdir(self, fh, start_id, token):
        REQUESTS["readdir"] += 1
        entries = sorted({**self.names, **self.dirs}.items())
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i + 1):
                break

    async def releasedir(self, fh):
        REQUESTS["releasedir"] += 1

    async def mkdir(self, parent_inode, name, mode, ctx):
        REQUESTS["mkdir"] += 1
        if name in self.dirs or name in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self.dirs[name] = self.next_ino
        self.next_ino += 1
        return self._attr(self.dirs[name])

    async def rmdir(self, parent_inode, name, ctx):
        REQUESTS["rmdir"] += 1
        if self.dirs.pop(name, None) is None:
            raise pyfuse3.FUSEError(errno.ENOENT)

    async def open(self, inode, flags, ctx):
        REQUESTS["open"] += 1
        fh = self.next_fh
        self.next_fh += 1
        if inode == self.names[b"requests"]:
            self.counter_fhs.add(fh)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):
        REQUESTS["read"] += 1
        if off == 0 or fh not in self.snapshots:
            self.snapshots[fh] = (
                "".join(f"{k} {v}\n" for k, v in sorted(REQUESTS.items())).encode()
                if fh in self.counter_fhs else CONTENT
            )
        return self.snapshots[fh][off : off + size]

    async def write(self, fh, off, buf):
        REQUESTS["write"] += 1
        return len(buf)

    async def release(self, fh):
        REQUESTS["release"] += 1
        self.snapshots.pop(fh, None)
        self.counter_fhs.discard(fh)


async def serve() -> None:
    async with trio.open_nursery() as nursery:
        async def stop() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    mountpoint = sys.argv[1]
    extra = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    pyfuse3.init(FloorFS(extra), mountpoint, set(pyfuse3.default_options) | {"fsname=floorfs"})
    try:
        print("ok", flush=True)
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
