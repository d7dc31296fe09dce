"""``dmemfs mount --state FILE``: the configuration, durable before a change is acknowledged.

FILE is a log of JSON lines: a header, then ``{"set": RECORD}`` (a cgroup's configuration,
see engine/persist.py) and ``{"rm": PATH}`` entries; replaying them in order gives the
configuration. A request that changed the configuration returns only once its entries are
appended and flushed to disk (``fdatasync``); requests that arrive while a flush is running
share the next one (group commit). When the log has grown to twice its compacted size it is
rewritten: the current records written aside, flushed, renamed over FILE, the directory
flushed. A crash therefore loses nothing that was acknowledged; a torn last line (a crash
during an append nobody was told about) is ignored at the next mount.

The records are kept serialised in memory (one string per cgroup, updated by each change),
so neither a change nor a rewrite walks the tree, and a rewrite runs in a worker thread.

If saving fails (a full disk, an I/O error), changes still apply, the log says so once,
``MOUNT/debug/daemon`` (and ``dmemfs status``) say "state NOT saved: REASON", and a rewrite is
retried every :data:`RETRY` seconds until it succeeds.

The file is trusted with the tree's owners and modes, so it is refused unless it is a regular
file owned by the daemon's user (or root) and writable by no one else.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterable
from typing import Any

import trio

from dmemfs.engine.cgroup import Cgroup, CgroupTree
from dmemfs.engine.persist import check_path, from_nested, record, restore

log = logging.getLogger(__name__)

HEADER = b'{"dmemfs-state":2}\n'
#: The longest line read back (a record with 128 KiB of xattr values is about 260 KiB).
MAX_LINE = 4 << 20
#: The log is rewritten when it exceeds twice its compacted size, and at least this.
COMPACT_MIN = 1 << 20
#: Seconds between attempts to save again after a failure.
RETRY = 1.0


class StateError(Exception):
    """The state file cannot be used (one line for the user)."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- reading ----------------------------------------------------------------------------------


def check_directory(path: str) -> None:
    """The directory FILE goes in exists and this process can create files in it."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        raise StateError(f"state directory {directory} does not exist") from None
    except OSError as e:
        raise StateError(f"state directory {directory}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"state directory {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StateError(f"state directory {directory} is not writable")


def _check_owner(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"state file {path} is not a regular file")
    if st.st_uid not in (os.geteuid(), 0):
        raise StateError(f"state file {path} is owned by uid {st.st_uid}, not by this user "
                         f"or root: refusing to trust it")
    if st.st_mode & 0o022:
        raise StateError(f"state file {path} is writable by others "
                         f"(mode {stat.S_IMODE(st.st_mode):o}): refusing to trust it")


def read(path: str) -> bytes | None:
    """The content of FILE, or None if there is none yet; refused if it cannot be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        reason = "is a symbolic link" if os.path.islink(path) else e.strerror
        raise StateError(f"state file {path}: {reason}") from None
    try:
        _check_owner(path, os.fstat(fd))
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as e:
        raise StateError(f"cannot read state file {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def parse(data: bytes) -> list[object]:
    """The records a state file holds (unchecked): the log replayed, or the first format."""
    if not data.startswith(HEADER):
        try:
            return list(from_nested(json.loads(data)))
        except RecursionError:
            raise ValueError("nested too deeply") from None
    records: dict[str, object] = {}
    lines = data[len(HEADER):].split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    if torn:
        log.warning("state: ignoring an incomplete last entry (%d bytes): a crash during a "
                    "save that was never acknowledged", len(torn))
    for number, line in enumerate(lines, start=2):
        if len(line) > MAX_LINE:
            raise ValueError(f"line {number} is longer than {MAX_LINE} bytes")
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            raise ValueError(f"line {number} is not a state entry") from None
        if isinstance(entry, dict) and entry.keys() == {"set"} and isinstance(
                entry["set"], dict):
            path = check_path(entry["set"].get("path"))
            records[path] = entry["set"]
        elif isinstance(entry, dict) and entry.keys() == {"rm"}:
            records.pop(check_path(entry["rm"]), None)
        else:
            raise ValueError(f"line {number} is not a state entry")
    return list(records.values())


def load(path: str, tree: CgroupTree) -> bool:
    """Restore FILE into ``tree``; False if there is no such file yet."""
    data = read(path)
    if data is None:
        return False
    try:
        restore(tree, parse(data))
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(f"state file {path} is not a dmemfs state: {e}") from None
    return True


# -- writing ----------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _rewrite(path: str, records: Iterable[str]) -> tuple[int, int]:
    """Write a compacted FILE aside, flush it, rename it over FILE and flush the directory.
    Returns an open descriptor of the new file (positioned at its end) and its size."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".dmemfs-state.", dir=directory)
    try:
        data = HEADER + "".join(f'{{"set":{r}}}\n' for r in records).encode()
        _write_all(fd, data)
        os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return fd, len(data)


class StateKeeper:
    """Keeps FILE in step with the tree (see the module's docstring)."""

    def __init__(self, path: str, tree: CgroupTree) -> None:
        self.path = path
        self.tree = tree
        #: Serialised record of every live cgroup, by path, parents first.
        self.records: dict[str, str] = {}
        #: Why the last save failed (None while FILE is up to date).
        self.error: str | None = None
        self._fd: int | None = None
        self._size = 0
        self._compacted = 0
        self._pending: list[str] = []
        self._rewrite_next = False
        self._wakeup = trio.Event()
        self._flushed = trio.Event()

    def start(self) -> None:
        """At mount, before serving: write FILE afresh from the (restored) tree."""
        self.records = {cg.path: _dumps(record(self.tree, cg)) for cg in self.tree.root.walk()}
        try:
            self._compact(list(self.records.values()))
        except OSError as e:
            raise StateError(f"cannot write state file {self.path}: {e.strerror}") from None

    def status(self) -> str:
        """One line for ``MOUNT/debug/daemon``."""
        if self.error is not None:
            return f"state NOT saved: {self.error}"
        return f"state saved {self.path}"

    # -- changes (on the trio thread) --------------------------------------------------------

    def _entries(self, cgroups: Iterable[Cgroup]) -> list[str]:
        out = []
        for cg in cgroups:
            path = cg.path
            if cg.dying:
                if self.records.pop(path, None) is not None:
                    out.append(_dumps({"rm": path}))
                continue
            line = _dumps(record(self.tree, cg))
            if self.records.get(path) != line:
                self.records[path] = line
                out.append(f'{{"set":{line}}}')
        return out

    async def changed(self, cgroups: Iterable[Cgroup]) -> None:
        """The configuration of ``cgroups`` may have changed (a removed one is dying):
        returns once FILE holds it, or at once while saving fails."""
        entries = self._entries(cgroups)
        if not entries:
            return
        self._pending += entries
        flushed = self._flushed
        self._wakeup.set()
        if self.error is None:
            await flushed.wait()

    async def run(self) -> None:
        """The writer: one flush for whatever changes are pending (group commit)."""
        while True:
            if self.error is None:
                await self._wakeup.wait()
            else:
                with trio.move_on_after(RETRY):
                    await self._wakeup.wait()
            self._wakeup = trio.Event()
            pending, self._pending = self._pending, []
            flushed, self._flushed = self._flushed, trio.Event()
            try:
                if self.error is not None or self._rewrite_next or self._size > max(
                        COMPACT_MIN, 2 * self._compacted):
                    await trio.to_thread.run_sync(self._compact, list(self.records.values()))
                elif pending:
                    data = "".join(f"{e}\n" for e in pending).encode()
                    await trio.to_thread.run_sync(self._append, data)
                self._saved()
            except OSError as e:
                self._failed(e)
            flushed.set()

    # -- file operations (in a worker thread, one at a time) ---------------------------------

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        self._rewrite_next = True  # until this append is known complete
        _write_all(self._fd, data)
        os.fdatasync(self._fd)
        self._size += len(data)
        self._rewrite_next = False

    def _compact(self, records: list[str]) -> None:
        fd, size = _rewrite(self.path, records)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._size = self._compacted = size

    def _saved(self) -> None:
        if self.error is not None:
            log.info("state saved to %s again", self.path)
            self.error = None

    def _failed(self, e: OSError) -> None:
        reason = f"{e.strerror or e} ({self.path})"
        if self.error is None:
            log.error("state NOT saved: %s; changes still apply, retrying every %g s",
                      reason, RETRY)
        self.error = reason

    def close(self) -> None:
        """At unmount: compact FILE (or a last attempt to save it)."""
        try:
            if self.error is not None or self._pending or self._size > self._compacted:
                self._compact(list(self.records.values()))
                self._saved()
        except OSError as e:
            self._failed(e)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
