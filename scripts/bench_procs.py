#!/usr/bin/env python3
"""How process tracking scales: root ``cgroup.procs`` and ``rmdir`` with thousands of processes.

For each number of extra host processes (idle ``sleep``s started by this script and killed at
the end) and each ``--lineage`` mode (fork events, the /proc parent chain), mounts dmemfs and
times a read of the root's ``cgroup.procs`` and an mkdir+rmdir (median of several rounds).
Prints one JSON object. Needs root and /dev/fuse.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dmemfs.testing import mounted  # noqa: E402

COUNTS = (0, 1000, 3000)
ROUNDS = 5


def _time(fn: Callable[[], object], n: int) -> float:
    """Median milliseconds per call over ROUNDS rounds of ``n`` calls."""
    fn()
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t0) / n * 1e3)
    return round(statistics.median(rounds), 3)


def measure(mode: str) -> dict[str, object]:
    with mounted(["--lineage", mode]) as m:
        procs = os.path.join(m.cgroup, "cgroup.procs")
        d = os.path.join(m.cgroup, "x")

        def read_procs() -> int:
            with open(procs) as f:
                return len(f.read().split())

        def mkdir_rmdir() -> None:
            os.mkdir(d)
            os.rmdir(d)

        return {"root_procs_listed": read_procs(),
                "read_root_cgroup_procs_ms": _time(read_procs, 5),
                "mkdir_rmdir_ms": _time(mkdir_rmdir, 20)}


def main() -> int:
    results: dict[str, object] = {"statistic": f"median of {ROUNDS} rounds", "unit": "ms"}
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        for count in COUNTS:
            while len(sleepers) < count:
                sleepers.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
            results[f"{count}_extra_processes"] = {
                mode: measure(mode) for mode in ("trace", "proc")}
    finally:
        for p in sleepers:
            p.kill()
        for p in sleepers:
            p.wait()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
