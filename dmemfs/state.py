"""``dmemfs mount --state FILE``: the tree's configuration saved atomically, restored at mount.

Saving happens shortly after every configuration change (a burst of changes is saved once)
and at unmount: the file is written next to its final name, flushed to disk and renamed
over it, so a crash leaves either the old or the new configuration, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import trio

from dmemfs.engine.cgroup import CgroupTree
from dmemfs.engine.persist import restore, snapshot

log = logging.getLogger(__name__)

#: Seconds a change waits before it is saved, so a burst (a script building a tree) saves once.
DELAY = 0.05


class StateError(Exception):
    """The state file cannot be used (one line for the user)."""


def load(path: str, tree: CgroupTree) -> bool:
    """Restore ``path`` into ``tree``; False if there is no such file yet."""
    try:
        with open(path) as f:
            data: Any = json.load(f)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as e:
        raise StateError(f"cannot read state file {path}: {e}") from None
    try:
        restore(tree, data)
    except Exception as e:  # any malformed content: refuse it rather than mount half of it
        raise StateError(f"state file {path} is not a dmemfs state ({e!r})") from None
    return True


def save(path: str, tree: CgroupTree) -> None:
    data = json.dumps(snapshot(tree), separators=(",", ":"))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".dmemfs-state.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class StateKeeper:
    def __init__(self, path: str, tree: CgroupTree) -> None:
        self.path = path
        self.tree = tree
        self.dirty = False
        self._wakeup: trio.Event | None = None

    def changed(self) -> None:
        """A configuration change happened (called by the request handlers)."""
        self.dirty = True
        if self._wakeup is not None:
            self._wakeup.set()

    def flush(self) -> None:
        if self.dirty:
            self.dirty = False
            try:
                save(self.path, self.tree)
            except OSError as e:
                self.dirty = True
                log.error("cannot save state to %s: %s", self.path, e)

    async def run(self) -> None:
        while True:
            self._wakeup = trio.Event()
            if not self.dirty:
                await self._wakeup.wait()
            await trio.sleep(DELAY)
            self.flush()
