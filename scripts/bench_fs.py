#!/usr/bin/env python3
"""Benchmark dmemfs against the floor (a minimal pyfuse3 filesystem, scripts/floorfs.py).

Both are mounted in the same run with the same options; every operation is timed on both
(median of 5 runs of many iterations) and the FUSE requests it costs are counted by the
daemons themselves. Prints one JSON object. Needs root (or fusermount3) and /dev/fuse.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dmemfs.testing import Mounted, is_mounted, mounted  # noqa: E402

REGION = "drm/0000:03:00.0/vram0"
REPEATS = 7
#: Operations on reads, stat and writes are held to this ratio against the floor.
TARGET_RATIO = 1.15


@contextmanager
def floor_mount(entries: int) -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="floorfs-")
    path = os.path.join(tmp, "mnt")
    os.mkdir(path)
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "floorfs.py"), path,
                             str(max(0, entries - 2))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ok":
            raise RuntimeError("floorfs failed to mount")
        os.stat(os.path.join(path, "value"))
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if is_mounted(path):
            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


class Target:
    """One mounted filesystem and the paths each operation uses on it."""

    def __init__(self, name: str, file: str, write_file: str, write_data: bytes, dir_: str,
                 counters: str, device: str, device_ops: tuple[bytes, bytes]) -> None:
        self.name = name
        self.file = file
        self.write_file = write_file
        self.write_data = write_data
        self.dir = dir_
        self.counters = counters
        self.device = device
        self.device_ops = device_ops

    def requests(self) -> int:
        with open(self.counters) as f:
            return sum(int(line.split()[1]) for line in f)


def op_open_read_close(t: Target) -> Callable[[], None]:
    def run() -> None:
        fd = os.open(t.file, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
    return run


def op_cat(t: Target) -> Callable[[], None]:
    def run() -> None:
        fd = os.open(t.file, os.O_RDONLY)
        while os.read(fd, 131072):
            pass
        os.close(fd)
    return run


def op_sendfile(t: Target) -> Callable[[], None]:
    """open + sendfile(2) to a pipe + close: a busybox cat or shutil.copyfile reader."""
    r, w = os.pipe()

    def run() -> None:
        fd = os.open(t.file, os.O_RDONLY)
        while n := os.sendfile(w, fd, None, 65536):
            os.read(r, n)
        os.close(fd)
    return run


def op_stat(t: Target) -> Callable[[], None]:
    return lambda: os.stat(t.file) and None


def op_listdir(t: Target) -> Callable[[], None]:
    return lambda: os.listdir(t.dir) and None


def op_write(t: Target) -> Callable[[], None]:
    def run() -> None:
        fd = os.open(t.write_file, os.O_WRONLY)
        os.write(fd, t.write_data)
        os.close(fd)
    return run


def op_mkdir_rmdir(t: Target) -> Callable[[], None]:
    path = os.path.join(t.dir, "bench-x")

    def run() -> None:
        os.mkdir(path)
        os.rmdir(path)
    return run


def op_device(t: Target) -> Callable[[], None]:
    fd = os.open(t.device, os.O_RDWR)
    create, close = t.device_ops

    def run() -> None:
        os.write(fd, create)
        os.read(fd, 4096)
        os.write(fd, close)
    return run


OPS: dict[str, tuple[Callable[[Target], Callable[[], None]], int, bool]] = {
    # name: (factory, iterations per timed run, held to the ratio target)
    "open_read_close": (op_open_read_close, 2000, True),
    "cat": (op_cat, 2000, True),
    "stat": (op_stat, 5000, True),
    "listdir": (op_listdir, 500, True),
    "limit_write": (op_write, 2000, True),
    "mkdir_rmdir": (op_mkdir_rmdir, 300, False),
    "gem_create_close": (op_device, 1000, False),
}


def _batch(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def measure_pair(a: Callable[[], None], b: Callable[[], None], n: int
                 ) -> tuple[float, float, float]:
    """Microseconds per call of ``a`` and ``b`` and the ratio a/b: medians over REPEATS
    rounds, each timing a batch of ``a`` right after a batch of ``b`` (alternating which
    goes first), so that both see the same machine load."""
    a()
    b()
    ta, tb, ratios = [], [], []
    for i in range(REPEATS):
        if i % 2:
            x, y = _batch(a, n), _batch(b, n)
        else:
            y, x = _batch(b, n), _batch(a, n)
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def count(t: Target, fn: Callable[[], None], n: int = 50) -> float:
    """FUSE requests per call, as counted by the daemon (the counter read itself removed)."""
    fn()
    a = t.requests()
    b = t.requests()
    overhead = b - a
    for _ in range(n):
        fn()
    c = t.requests()
    return round((c - b - overhead) / n, 2)


def _client(path: str, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
        n += 1
    out.put(n)


def concurrent(t: Target, clients: int = 4, seconds: float = 2.0) -> float:
    """Total open+read+close per second with ``clients`` processes at once."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_client, args=(t.file, seconds, queue))
             for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return round(total / seconds)


def main() -> int:
    started = time.monotonic()
    results: dict[str, object] = {"repeats": REPEATS, "statistic": "median of paired rounds",
                                  "unit": "microseconds per operation"}
    with mounted() as m:
        with open(os.path.join(m.cgroup, "cgroup.subtree_control"), "w") as f:
            f.write("+dmem")
        os.mkdir(os.path.join(m.cgroup, "a"))
        with floor_mount(len(os.listdir(m.cgroup))) as floor:
            run_all(m, floor, results)
            with mounted(["--page-cache"]) as pc:
                results["page_cache_mode"] = run_page_cache(pc, floor)
            with tempfile.TemporaryDirectory(dir=os.environ.get("DMEMFS_BENCH_STATE_DIR")
                                             ) as tmp:
                state = os.path.join(tmp, "state")
                with mounted(["--state", state]) as st:
                    results["state_mode"] = run_state(m, st, tmp)
    results["total_runtime_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=1))
    return 0


def run_all(m: Mounted, floor: str, results: dict[str, object]) -> None:
    dmemfs = Target(
        "dmemfs", os.path.join(m.cgroup, "a", "dmem.current"),
        os.path.join(m.cgroup, "a", "dmem.max"), f"{REGION} 1G".encode(), m.cgroup,
        os.path.join(m.debug, "requests"), os.path.join(m.dri, "renderD128"),
        (b"GEM_CREATE size=64K placement=vram0", b"GEM_CLOSE handle=1"),
    )
    floor_t = Target("floor", os.path.join(floor, "value"), os.path.join(floor, "value"),
                     b"x 1", floor, os.path.join(floor, "requests"),
                     os.path.join(floor, "value"), (b"x", b"y"))
    per_op: dict[str, dict[str, object]] = {}
    for name, (factory, n, held) in OPS.items():
        fn_d = _fresh_handles(dmemfs) if name == "gem_create_close" else factory(dmemfs)
        fn_f = factory(floor_t)
        us_d, us_f, ratio = measure_pair(fn_d, fn_f, n)
        row: dict[str, object] = {
            "dmemfs_us": round(us_d, 1), "floor_us": round(us_f, 1),
            "dmemfs_requests": count(dmemfs, fn_d), "floor_requests": count(floor_t, fn_f),
            "ratio": round(ratio, 2),
        }
        if held:
            row["meets_target"] = ratio <= TARGET_RATIO
        per_op[name] = row
    results["operations"] = per_op
    d4, f4 = concurrent(dmemfs), concurrent(floor_t)
    results["concurrent_4_clients_open_read_close_per_s"] = {
        "dmemfs": d4, "floor": f4, "ratio": round(f4 / d4, 2)}
    cat = per_op["cat"]["dmemfs_requests"]
    results["cat_requests"] = cat
    results["cat_requests_target"] = 3
    results["cat_requests_stretch"] = 2
    results["target_ratio"] = TARGET_RATIO
    results["sendfile"] = run_sendfile(dmemfs)


def run_sendfile(t: Target) -> dict[str, object]:
    """What a sendfile/splice reader costs against a read() reader of the same file, on
    dmemfs (the floor reports size 0, so sendfile reads nothing there). On a kernel that
    splices direct-I/O files from the page cache, each costs a page-cache READ and a
    notification from a worker thread (dmemfs/fs/splice.py)."""
    sendfile, read = op_sendfile(t), op_open_read_close(t)
    us_s, us_r, ratio = measure_pair(sendfile, read, 1000)
    return {"open_sendfile_close_us": round(us_s, 1), "open_read_close_us": round(us_r, 1),
            "ratio": round(ratio, 2), "sendfile_requests": count(t, sendfile),
            "read_requests": count(t, op_open_read_close(t))}


def run_page_cache(m: Mounted, floor: str) -> dict[str, object]:
    """The read operations again on a --page-cache mount (same floor)."""
    d = Target("dmemfs", os.path.join(m.cgroup, "dmem.current"), "", b"", m.cgroup,
               os.path.join(m.debug, "requests"), "", (b"", b""))
    f = Target("floor", os.path.join(floor, "value"), "", b"", floor,
               os.path.join(floor, "requests"), "", (b"", b""))
    out: dict[str, object] = {}
    for name in ("open_read_close", "cat", "stat"):
        factory, n, _ = OPS[name]
        fn_d, fn_f = factory(d), factory(f)
        us_d, us_f, ratio = measure_pair(fn_d, fn_f, n)
        out[name] = {"dmemfs_us": round(us_d, 1), "floor_us": round(us_f, 1),
                     "ratio": round(ratio, 2), "dmemfs_requests": count(d, fn_d),
                     "floor_requests": count(f, fn_f)}
    return out


def run_state(plain: Mounted, st: Mounted, state_dir: str) -> dict[str, object]:
    """What durability costs: a limit write that returns once it is on disk (--state,
    fdatasync per write, or one per group of concurrent writes) against the same write on a
    mount without --state. The state directory is a temporary directory (set
    DMEMFS_BENCH_STATE_DIR to measure another filesystem)."""
    with open(os.path.join(st.cgroup, "cgroup.subtree_control"), "w") as f:
        f.write("+dmem")
    os.mkdir(os.path.join(st.cgroup, "a"))
    values = [f"{REGION} {n}M".encode() for n in (1, 2)]

    def writer(m: Mounted) -> Callable[[], None]:
        path = os.path.join(m.cgroup, "a", "dmem.max")
        i = [0]

        def run() -> None:  # a different value each time: every write changes the state
            i[0] ^= 1
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, values[i[0]])
            os.close(fd)
        return run

    us_s, us_p, ratio = measure_pair(writer(st), writer(plain), 500)
    return {"limit_write_durable_us": round(us_s, 1), "limit_write_plain_us": round(us_p, 1),
            "ratio": round(ratio, 2), "state_dir": state_dir,
            "state_fs": _fstype(state_dir)}


def _fstype(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mounts)."""
    best, fstype = "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            _, point, kind, *_ = line.split()
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(
                    point) > len(best):
                best, fstype = point, kind
    return fstype


def _fresh_handles(t: Target) -> Callable[[], None]:
    """GEM_CREATE + read the reply + GEM_CLOSE of the handle just created."""
    fd = os.open(t.device, os.O_RDWR)

    def run() -> None:
        os.write(fd, t.device_ops[0])
        reply = os.read(fd, 4096)
        handle = reply.split(b" ", 1)[0]  # b"handle=N"
        os.write(fd, b"GEM_CLOSE " + handle)
    return run


if __name__ == "__main__":
    sys.exit(main())
