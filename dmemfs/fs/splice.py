"""Exact content for sendfile(2) and splice(2) readers of direct-I/O files.

Interface files are served with direct I/O (``FOPEN_DIRECT_IO``), so ``read()`` always
reaches the daemon. Linux up to 6.18 at least (before "fuse: use copy_splice_read() for
FOPEN_DIRECT_IO splice read") serves ``splice``/``sendfile`` of such a file from the page
cache instead (``fuse_splice_read`` → ``filemap_splice_read``), up to the inode's size: a
file that reports size 0, as cgroupfs files do, splices nothing, and once a short read has
set the size to a content's length, a longer content is cut there. Fixed kernels read
through ``read_iter`` and never touch the page cache; everything here then stays idle.

So on a kernel that splices from the page cache:

- a readable direct-I/O file reports one page (:data:`SIZE`, as sysfs attribute files do);
  the kernel fills page 0 with a READ the daemon renders fresh, and the short reply makes
  the kernel shrink its size to the content's exact length (``fuse_short_read``);
- a content longer than the READ asked for is stored into the following pages
  (``FUSE_NOTIFY_STORE``, which also extends the size) before the READ is answered;
- a little after such a page-cache READ has been answered (:data:`DROP_DELAY`), its pages
  are dropped (``FUSE_NOTIFY_INVAL_INODE``) and the size raised back to :data:`SIZE` (a
  one-byte ``FUSE_NOTIFY_STORE``), so the next splice of the same open file reads afresh
  and whole; the same happens after an open with ``O_TRUNC`` (the kernel sets the size to
  0, then a write to its length). A change made through the mount does it for all pending
  files before it returns, and a readable open does it first for its own file;
- a device or query file's reply is placed at the offset where its writer left the file
  position, and the size raised past it when the reply is written.

A READ the kernel makes for its page cache is told from a ``read()`` by its missing
``FUSE_READ_LOCKOWNER`` flag (``fuse_send_read`` sets it for direct reads only), read from
the request itself (dmemfs/fs/request.py).

Notifications that touch pages wait for page locks a reader may hold while its READ waits
in this daemon's queue, so they are made from a worker thread while the request loop goes
on serving.
"""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

from dmemfs.fs import request

log = logging.getLogger(__name__)

#: What a readable direct-I/O file reports as its size: one page, enough for the kernel to
#: ask the daemon for page 0.
SIZE = 4096
#: How long a READ waits for the pages after it to be stored before it is answered anyway.
STORE_TIMEOUT = 1.0
#: How long the pages a splice reader filled stay cached, unless a change made through the
#: mount drops them sooner: time for the reader to copy them.
DROP_DELAY = 0.05


def _drop_and_raise(inodes: list[int], end: int = SIZE) -> None:
    """Drop the cached pages of ``inodes``, then make their kernel size at least ``end``
    (one byte stored at ``end - 1``: a store only ever grows the size)."""
    for ino in inodes:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the kernel had already forgotten it
                log.warning("dropping the cached pages of inode %d: %s", ino, e)
            continue
        _store(ino, end - 1, b"\0")


def _store(ino: int, offset: int, data: bytes) -> None:
    try:
        pyfuse3.notify_store(ino, offset, data)
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.warning("storing %d bytes at %d of inode %d: %s", len(data), offset, ino, e)


class SpliceReads:
    """The page-cache side of direct-I/O files (see the module docstring)."""

    def __init__(self) -> None:
        #: Inodes whose kernel size may be below SIZE (a page-cache read or O_TRUNC since).
        self._shrunk: set[int] = set()
        #: Inodes read through the page cache at least once (splice readers).
        self._spliced: set[int] = set()
        #: Inodes whose cached pages are to be dropped, and those being dropped now.
        self._pending: set[int] = set()
        self._dropping: set[int] = set()
        self._dropped = trio.Event()
        self._urgent = trio.Event()
        self._wakeup: trio.Event | None = None
        #: Page-cache READs served (MOUNT/debug/requests-style counter for tests).
        self.page_cache_reads = 0

    @staticmethod
    def is_page_cache_read(fh: int) -> bool | None:
        """Whether the READ being handled (for ``fh``) fills the kernel's page cache, None
        when the request cannot be read. Call before the handler's first await."""
        flags = request.read_flags(fh)
        return None if flags is None else not flags & request.FUSE_READ_LOCKOWNER

    async def read(self, ino: int, end: int, rest: bytes, *, drop: bool = True) -> None:
        """Before a page-cache READ of ``ino`` that ends at offset ``end`` is answered:
        store ``rest``, the content that follows it; with ``drop``, have its pages dropped
        a little later (:data:`DROP_DELAY`), or before the next change made through the
        mount returns."""
        self.page_cache_reads += 1
        self._spliced.add(ino)
        self._shrunk.add(ino)
        if rest:
            with trio.move_on_after(STORE_TIMEOUT):
                await trio.to_thread.run_sync(_store, ino, end, rest, abandon_on_cancel=True)
        if drop:
            self._pending.add(ino)
            self._wake()

    def truncated(self, ino: int) -> None:
        """An open with O_TRUNC: the kernel sets the file's size to 0 after it (and a
        write then to the write's length); the size is raised again with the next drops."""
        self._shrunk.add(ino)
        self._pending.add(ino)
        self._wake()

    async def opening(self, ino: int) -> None:
        """Before a readable direct-I/O open of ``ino`` returns: its kernel size back to
        SIZE (the open itself drops the cached pages: no FOPEN_KEEP_CACHE)."""
        if ino not in self._shrunk:
            return
        self._shrunk.discard(ino)
        self._pending.discard(ino)  # the open drops the pages itself
        while ino in self._dropping:
            await self._dropped.wait()
        # One byte at the end of page 0 extends the size to SIZE (it only ever grows it).
        await trio.to_thread.run_sync(_store, ino, SIZE - 1, b"\0")

    async def reply_written(self, ino: int, reply_at: int) -> None:
        """A write to a device or query file put a reply at file offset ``reply_at``, and
        extended the kernel's size to that offset at most: for a file a splice reader
        uses, drop the pages holding the last reply and raise the size past the page that
        holds the new one."""
        if ino in self._spliced:
            end = (reply_at // SIZE + 1) * SIZE
            await trio.to_thread.run_sync(_drop_and_raise, [ino], end)
            self._shrunk.discard(ino)

    async def settled(self) -> None:
        """Return once the pages of every page-cache READ answered so far are dropped and
        the sizes raised again (before a change made through the mount returns: a reader
        that reads again after it, through a descriptor it kept, reads the new content)."""
        while self._pending or self._dropping:
            self._urgent.set()
            await self._dropped.wait()

    def _wake(self) -> None:
        if self._wakeup is None:
            self._wakeup = trio.Event()
            trio.lowlevel.spawn_system_task(self._drop_loop, name="dmemfs-splice-drops")
        self._wakeup.set()

    async def _drop_loop(self) -> None:
        """Drops pages, and raises the sizes, after the READs that filled them were answered:
        dropping earlier would also stop the kernel from shrinking the size to the content's,
        and at once would make a reader that has not yet copied the page (or goes on reading
        past the content's end) read it again."""
        while True:
            assert self._wakeup is not None
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            with trio.move_on_after(DROP_DELAY):
                await self._urgent.wait()
            self._urgent = trio.Event()
            self._dropping, self._pending = self._pending, set()
            try:
                await trio.to_thread.run_sync(_drop_and_raise, sorted(self._dropping))
            except Exception:  # a system task must not raise: it would end the daemon
                log.exception("dropping cached pages")
            self._shrunk -= self._dropping
            self._dropping = set()
            done, self._dropped = self._dropped, trio.Event()
            done.set()
