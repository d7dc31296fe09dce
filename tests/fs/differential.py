"""One script of cgroupfs operations, run on the host's real cgroup2 and on a dmemfs mount.

The operations run in worker processes (one per uid: root, and an unprivileged user for
delegation), so that writing ``0`` to ``cgroup.procs`` moves a worker, never pytest. Each side
has its own test processes; their PIDs are replaced by symbolic names in the outcomes. The
controller used for ``subtree_control`` is a domain controller the host's cgroup2 offers
(``hugetlb`` here) on the kernel side and ``dmem`` on dmemfs: its name and its files are
normalised to ``CTL``.

An outcome is ``["ok", value]`` or ``["err", "ERRNO"]``; :func:`run_script` returns one per
step, and :func:`compare` the steps whose outcomes differ.

``python differential.py worker`` is a worker: JSON requests on stdin, outcomes on stdout.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import select
import shutil
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: The host's cgroup2 used as the oracle.
KERNEL_ROOT = "/sys/fs/cgroup/unified"
#: Domain controllers a scratch subtree may enable (never one a host service relies on).
CANDIDATE_CONTROLLERS = ("hugetlb", "misc", "rdma")
#: The unprivileged user of the delegation steps.
USER = 1000
#: Serialises differential runs on this host: they enable a controller on the shared root.
LOCK = "/run/lock/dmemfs-differential.lock"

Outcome = list[Any]

_POLL_NAMES = ("POLLIN", "POLLOUT", "POLLPRI", "POLLERR", "POLLHUP", "POLLRDNORM",
               "POLLWRNORM")
_IN_MODIFY = 0x2


# -- the worker (runs in a subprocess, as root or as USER) -------------------------------------


def _ok(value: Any = None) -> Outcome:
    return ["ok", value]


def _text(data: bytes) -> str:
    return data.decode("latin-1")


class Worker:
    """Operations executed in the worker process. Every method returns an outcome."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def mkdir(self, path: str, mode: int = 0o777) -> Outcome:
        os.mkdir(path, mode)
        return _ok()

    def rmdir(self, path: str) -> Outcome:
        os.rmdir(path)
        return _ok()

    def read(self, path: str, size: int = 65536) -> Outcome:
        with open(path, "rb", buffering=0) as f:
            return _ok(_text(f.read(size)))

    def read_settled(self, path: str) -> Outcome:
        """``cgroup.stat`` once removed cgroups are released (the kernel frees them after an
        RCU grace period; a read right after rmdir may still count them)."""
        deadline = time.monotonic() + 5
        while True:
            with open(path, "rb", buffering=0) as f:
                text = _text(f.read())
            dying = re.findall(r"^nr_dying_\S+ (\d+)$", text, re.M)
            if all(n == "0" for n in dying) or time.monotonic() > deadline:
                return _ok(text)
            time.sleep(0.02)

    def write(self, path: str, data: str, flags: int = os.O_WRONLY) -> Outcome:
        try:
            fd = os.open(path, flags)
        except OSError as e:
            return ["err", "open:" + errno.errorcode[e.errno]]
        try:
            return _ok(os.write(fd, data.encode("latin-1")))
        finally:
            os.close(fd)

    def open(self, path: str, flags: int, mode: int = 0o644) -> Outcome:
        os.close(os.open(path, flags, mode))
        return _ok()

    def session(self, path: str, flags: int, actions: list[list[Any]]) -> Outcome:
        """Open once, then each action: ["r", n], ["pr", n, off], ["w", data],
        ["pw", data, off], ["seek", off]; each gives its own outcome."""
        fd = os.open(path, flags)
        out = []
        try:
            for action in actions:
                try:
                    kind = action[0]
                    if kind == "r":
                        out.append(_ok(_text(os.read(fd, action[1]))))
                    elif kind == "pr":
                        out.append(_ok(_text(os.pread(fd, action[1], action[2]))))
                    elif kind == "w":
                        out.append(_ok(os.write(fd, action[1].encode("latin-1"))))
                    elif kind == "pw":
                        out.append(_ok(os.pwrite(fd, action[1].encode("latin-1"), action[2])))
                    elif kind == "seek":
                        out.append(_ok(os.lseek(fd, action[1], os.SEEK_SET)))
                except OSError as e:
                    out.append(["err", errno.errorcode[e.errno]])
        finally:
            os.close(fd)
        return _ok(out)

    def fd_open(self, name: str, path: str, flags: int) -> Outcome:
        self.fds[name] = os.open(path, flags)
        return _ok()

    def fd_read(self, name: str, size: int = 65536, offset: int = 0) -> Outcome:
        return _ok(_text(os.pread(self.fds[name], size, offset)))

    def fd_write(self, name: str, data: str) -> Outcome:
        return _ok(os.write(self.fds[name], data.encode("latin-1")))

    def fd_close(self, name: str) -> Outcome:
        os.close(self.fds.pop(name))
        return _ok()

    def read_until(self, path: str, want: str, timeout: float = 5.0) -> Outcome:
        """The content once it is ``want`` (or whatever it is after ``timeout``): for states
        the kernel reaches asynchronously (frozen tasks, exited processes)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(path, "rb", buffering=0) as f:
                text = _text(f.read())
            if text == want or time.monotonic() > deadline:
                return _ok(text)
            time.sleep(0.02)

    def fd_poll_wait(self, name: str, timeout: float = 5.0) -> Outcome:
        """poll() for POLLPRI for up to ``timeout`` seconds; the event names then."""
        poller = select.poll()
        poller.register(self.fds[name], select.POLLPRI)
        poller.poll(int(timeout * 1000))
        return self.fd_poll(name)

    def fd_poll(self, name: str) -> Outcome:
        """What poll() reports right now (the event names, sorted)."""
        poller = select.poll()
        poller.register(self.fds[name], select.POLLIN | select.POLLOUT | select.POLLPRI)
        revents = dict(poller.poll(0)).get(self.fds[name], 0)
        return _ok(sorted(n for n in _POLL_NAMES if revents & getattr(select, n)))

    def inotify_watch(self, name: str, path: str) -> Outcome:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.fds[name] = fd
        return _ok()

    def inotify_count(self, name: str, timeout: float) -> Outcome:
        """IN_MODIFY events that arrive within ``timeout`` seconds."""
        count = 0
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fds[name]], [], [], left)[0]:
                break
            data = os.read(self.fds[name], 4096)
            count += sum(1 for i in range(0, len(data), 16) if struct.unpack_from(
                "iIII", data, i)[1] & _IN_MODIFY)
        return _ok(count)

    def statfs_type(self, path: str) -> Outcome:
        """``f_type`` of statfs(2) (the filesystem's magic number)."""
        buf = ctypes.create_string_buffer(256)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.statfs(os.fsencode(path), buf) != 0:
            raise OSError(ctypes.get_errno(), "statfs")
        return _ok(hex(struct.unpack_from("l", buf.raw)[0]))

    def fd_listdir(self, name: str) -> Outcome:
        return _ok(os.listdir(self.fds[name]))

    def fd_fstat(self, name: str) -> Outcome:
        st = os.fstat(self.fds[name])
        return _ok([oct(st.st_mode), st.st_nlink])

    def fd_openat(self, name: str, rel: str, flags: int) -> Outcome:
        os.close(os.open(rel, flags, dir_fd=self.fds[name]))
        return _ok()

    def stat(self, path: str) -> Outcome:
        st = os.stat(path)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "?"
        return _ok([kind, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, st.st_nlink,
                    st.st_size])

    def times(self, path: str) -> Outcome:
        """atime and mtime in seconds when explicit (< 2^31), else "now" if within a minute
        of now; ctime as "now" or its value."""
        st = os.stat(path)
        now = time.time()

        def t(v: float) -> Any:
            return "now" if abs(v - now) < 60 else round(v, 3)

        return _ok([t(st.st_atime), t(st.st_mtime), t(st.st_ctime)])

    def mtime_after_mkdir(self, parent: str, child: str) -> Outcome:
        """Whether making ``child`` changes ``parent``'s mtime."""
        before = os.stat(parent).st_mtime_ns
        time.sleep(0.02)
        os.mkdir(child)
        return _ok(os.stat(parent).st_mtime_ns != before)

    def listdir(self, path: str) -> Outcome:
        return _ok(os.listdir(path))

    def listfiles(self, path: str) -> Outcome:
        """The entries that are not directories, in readdir order (a shared root also holds
        other cgroups)."""
        return _ok([n for n in os.listdir(path) if not os.path.isdir(os.path.join(path, n))])

    def mode(self, path: str) -> Outcome:
        st = os.stat(path)
        return _ok([oct(st.st_mode), st.st_uid, st.st_gid])

    def chmod(self, path: str, mode: int) -> Outcome:
        os.chmod(path, mode)
        return _ok()

    def chown(self, path: str, uid: int, gid: int) -> Outcome:
        os.chown(path, uid, gid)
        return _ok()

    def utime(self, path: str, times: list[float] | None) -> Outcome:
        os.utime(path, None if times is None else (times[0], times[1]))
        return _ok()

    def truncate(self, path: str, size: int) -> Outcome:
        os.truncate(path, size)
        return _ok()

    def setxattr(self, path: str, name: str, value: str, flags: int = 0) -> Outcome:
        os.setxattr(path, name, value.encode("latin-1"), flags)
        return _ok()

    def getxattr(self, path: str, name: str) -> Outcome:
        return _ok(_text(os.getxattr(path, name)))

    def listxattr(self, path: str) -> Outcome:
        return _ok(sorted(os.listxattr(path)))  # the kernel's order is a hash table's

    def removexattr(self, path: str, name: str) -> Outcome:
        os.removexattr(path, name)
        return _ok()

    def many_xattrs(self, path: str, prefix: str, count: int, size: int) -> Outcome:
        """Set ``count`` xattrs ``prefix0``… of ``size`` bytes; the index of the first failure
        and its errno, or ok."""
        for i in range(count):
            try:
                os.setxattr(path, f"{prefix}{i}", b"v" * size)
            except OSError as e:
                return ["err", f"{i}:{errno.errorcode[e.errno]}"]
        return _ok(count)

    def unlink(self, path: str) -> Outcome:
        os.unlink(path)
        return _ok()

    def rename(self, src: str, dst: str) -> Outcome:
        os.rename(src, dst)
        return _ok()

    def symlink(self, target: str, path: str) -> Outcome:
        os.symlink(target, path)
        return _ok()

    def link(self, src: str, dst: str) -> Outcome:
        os.link(src, dst)
        return _ok()

    def mknod(self, path: str, mode: int) -> Outcome:
        os.mknod(path, mode)
        return _ok()

    def access(self, path: str, mode: int) -> Outcome:
        return _ok(os.access(path, mode))

    def write_from_child(self, path: str, data: str) -> Outcome:
        """Open ``path`` here, write ``data`` from a forked child through the inherited
        descriptor; return who of the two is then listed in the ``cgroup.procs`` next to it."""
        fd = os.open(path, os.O_WRONLY)
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            os.close(r)
            try:
                os.write(fd, data.encode())
                os.write(w, b"ok")
            except OSError as e:
                os.write(w, errno.errorcode[e.errno].encode())
            time.sleep(0.5)
            os._exit(0)
        os.close(w)
        os.close(fd)
        result = os.read(r, 100).decode()
        os.close(r)
        with open(os.path.join(os.path.dirname(path), "cgroup.procs")) as f:
            pids = {int(x) for x in f.read().split()}
        os.waitpid(child, 0)
        who = [n for n, p in (("child", child), ("opener", os.getpid())) if p in pids]
        return _ok([result, who])

    def sleep(self, seconds: float) -> Outcome:
        time.sleep(seconds)
        return _ok()

    def pid(self) -> Outcome:
        return _ok(os.getpid())


def worker_main() -> None:
    os.umask(0o022)
    worker = Worker()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            outcome = getattr(worker, request["op"])(*request["args"])
        except OSError as e:
            outcome = ["err", errno.errorcode.get(e.errno or 0, str(e))]
        sys.stdout.write(json.dumps(outcome) + "\n")
        sys.stdout.flush()


# -- the harness (runs in pytest) ----------------------------------------------------------------


def user_python() -> str | None:
    """A Python interpreter an unprivileged user can run (the venv's may live under /root)."""
    return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")


class WorkerProcess:
    def __init__(self, uid: int) -> None:
        kwargs: dict[str, Any] = {}
        python = sys.executable
        if uid:
            kwargs = {"user": uid, "group": uid, "extra_groups": []}
            python = user_python() or sys.executable
        with open(__file__) as f:  # as source: the checkout may be unreadable to the user
            source = f.read()
        self.proc = subprocess.Popen([python, "-c", source, "worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/", **kwargs)
        self.pid = self.proc.pid

    def call(self, op: str, *args: Any) -> Outcome:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died during {op}{args}")
        return list(json.loads(line))

    def stop(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: A multi-threaded process: prints its thread ids once its two extra threads run.
_THREADED = (
    "import threading, time\n"
    "ready = threading.Barrier(3)\n"
    "def run():\n"
    "    ready.wait()\n"
    "    time.sleep(3600)\n"
    "for _ in range(2):\n"
    "    threading.Thread(target=run, daemon=True).start()\n"
    "ready.wait()\n"
    "print(' '.join(str(t.native_id) for t in threading.enumerate()), flush=True)\n"
    "time.sleep(3600)\n"
)


#: Prints a line every 20 ms: stops when frozen.
_TICKER = "import time\nwhile True:\n    print('.', flush=True)\n    time.sleep(0.02)\n"


@dataclass
class Side:
    """One filesystem under test: its cgroup root, the scratch cgroup, its controller."""

    name: str
    root: str
    scratch: str
    ctl: str
    #: A writable and a read-only file of the controller, as named on this side.
    ctl_max: str
    ctl_current: str
    symbols: dict[int, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    workers: dict[int, WorkerProcess] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return os.path.join(self.root, self.scratch)

    # -- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], uid: int = 0) -> subprocess.Popen[str]:
        kwargs: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid else {}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                **kwargs)
        self.procs.append(proc)
        self.symbols[proc.pid] = name
        self.tokens[name] = str(proc.pid)
        return proc

    def start(self) -> None:
        self.spawn("P1", ["sleep", "3600"])
        self.spawn("P2", ["sleep", "3600"])
        self.spawn("P3", ["sleep", "3600"])
        self.spawn("U1", ["sleep", "3600"], uid=USER)
        threaded = self.spawn("T", [sys.executable, "-c", _THREADED])
        assert threaded.stdout is not None
        tids = [int(t) for t in threaded.stdout.readline().split()]
        for i, tid in enumerate(t for t in tids if t != threaded.pid):
            self.symbols[tid] = f"T.{i + 1}"
            self.tokens[f"T.{i + 1}"] = str(tid)
        self.spawn("TK", [sys.executable, "-u", "-c", _TICKER])
        kthread = _bound_kthread()
        if kthread is not None:
            self.symbols[kthread] = "KT"
            self.tokens["KT"] = str(kthread)
        zombie = self.spawn("Z", ["true"])
        deadline = time.monotonic() + 10
        while _state(zombie.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        for uid, name in ((0, "W0"), (USER, "W1")):
            worker = WorkerProcess(uid)
            self.workers[uid] = worker
            self.symbols[worker.pid] = name
            self.tokens[name] = str(worker.pid)
        self.tokens.update(CTL=self.ctl, CTLMAX=self.ctl_max, CTLCUR=self.ctl_current)
        p1 = int(self.tokens["P1"])
        self.tokens.update({"P1.HEX": hex(p1), "P1.OCT": "0" + format(p1, "o")})

    def kill(self, name: str) -> None:
        """SIGKILL a test process and reap it."""
        for proc in self.procs:
            if self.symbols.get(proc.pid) == name and proc.poll() is None:
                proc.kill()
                proc.wait()

    def ticks(self, name: str, seconds: float) -> int:
        """Lines the ticker printed during ``seconds`` (after dropping what it printed
        before)."""
        proc = next(p for p in self.procs if self.symbols.get(p.pid) == name)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 65536):
                pass
        time.sleep(seconds)
        count = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 65536):
                count += chunk.count(b"\n")
        return count

    def wait_gone(self, name: str) -> None:
        for proc in self.procs:
            if self.symbols.get(proc.pid) == name:
                proc.wait(timeout=10)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    # -- expanding and normalising -------------------------------------------------------------

    def expand(self, value: Any) -> Any:
        """``$/x`` → the scratch cgroup's path, ``^/x`` → the cgroup root's; ``{NAME}`` → a
        pid or a controller name."""
        if isinstance(value, list):
            return [self.expand(v) for v in value]
        if not isinstance(value, str):
            return value
        value = re.sub(r"\{([A-Z][A-Z0-9.]*)\}", lambda m: self.tokens.get(m[1], m[0]), value)
        if value.startswith("$/") or value == "$":
            return self.base + value[1:]
        if value.startswith("^/") or value == "^":
            return self.root + value[1:]
        return value

    def normalise(self, op: str, args: list[Any], outcome: Outcome) -> Outcome:
        if outcome[0] != "ok":
            return outcome
        value = outcome[1]
        path = args[0] if args and isinstance(args[0], str) else ""
        name = os.path.basename(path)
        if op.startswith("fd_"):
            name = str(args[0]).split("#")[0]  # fds are named after their file: "cpu.pressure#1"
        if op in ("read", "read_settled", "fd_read") and isinstance(value, str):
            return ["ok", self.normalise_content(name, value)]
        if op in ("listdir", "fd_listdir"):
            return ["ok", self.normalise_listing(value)]
        if op == "stat" and self.name == "dmemfs" and value[0] == "file" and value[5] == 4096:
            # One page where cgroupfs says 0, so that sendfile/splice readers get the
            # content (README.md, "Files").
            return ["ok", [*value[:5], 0]]
        if op == "listfiles":  # the root: the controllers' root files differ entirely
            return ["ok", [n for n in value if not n.startswith(self.ctl + ".")]]
        if op == "write" and value == len(str(args[1]).encode("latin-1")):
            return ["ok", "all"]  # the length of a controller's name differs
        if op == "session":
            return ["ok", [["ok", self.normalise_content(name, r[1])]
                           if a[0] in ("r", "pr") and r[0] == "ok" else r
                           for a, r in zip(args[2], value, strict=True)]]
        return outcome

    def normalise_content(self, name: str, text: str) -> str:
        if name in ("cgroup.procs", "cgroup.threads"):
            ids = []
            for line in text.splitlines():
                ids.append(self.symbols.get(int(line), "?") if line.isdigit() else line)
            return " ".join(sorted(ids))
        if name == "cgroup.stat":
            text = "".join(line + "\n" for line in text.splitlines()
                           if "perf_event" not in line)
        if name in ("cpu.stat", "cgroup.stat.local") or name.endswith(".pressure"):
            text = re.sub(r"\d+(\.\d+)?", "#", text)
        return re.sub(rf"(?<![A-Za-z0-9]){re.escape(self.ctl)}(?![A-Za-z0-9.])", "CTL", text)

    def normalise_listing(self, names: list[str]) -> list[str]:
        prefix = self.ctl + "."
        out = [n for n in names if not n.startswith(prefix)]
        if len(out) != len(names):
            out.append("<CTL files>")
        return out


def _bound_kthread() -> int | None:
    """A kernel thread bound to its CPU (PF_NO_SETAFFINITY), e.g. ksoftirqd/0."""
    for name in ("ksoftirqd/0", "migration/0", "cpuhp/0"):
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            comm = text[text.index("(") + 1:text.rindex(")")]
            flags = int(text.rpartition(")")[2].split()[6])
            if comm == name and flags & 0x04000000:
                return pid
    return None


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "?"


# -- the script ------------------------------------------------------------------------------


@dataclass
class Step:
    label: str
    op: str
    args: list[Any]
    uid: int = 0


class Script:
    """Steps, built with helpers. ``harness`` steps (kill, spawn waits) have op ``@…``."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._labels: set[str] = set()

    def add(self, label: str, op: str, *args: Any, uid: int = 0) -> None:
        assert label not in self._labels, f"duplicate label {label}"
        self._labels.add(label)
        self.steps.append(Step(label, op, list(args), uid))

    def __len__(self) -> int:
        return len(self.steps)


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def kernel_controller() -> str | None:
    """A domain controller the host's cgroup2 root offers (None: no cgroup2 or none)."""
    try:
        with open(os.path.join(KERNEL_ROOT, "cgroup.controllers")) as f:
            offered = f.read().split()
    except OSError:
        return None
    return next((c for c in CANDIDATE_CONTROLLERS if c in offered), None)


def kernel_controller_files(ctl: str) -> tuple[str, str]:
    """A writable and a read-only file name of ``ctl`` in a child cgroup."""
    if ctl == "hugetlb":
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("Hugepagesize:"))
        size = f"{kib // 1024}MB" if kib < 1 << 20 else f"{kib >> 20}GB"
        return f"hugetlb.{size}.max", f"hugetlb.{size}.current"
    return f"{ctl}.max", f"{ctl}.current"


def write_one(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """rmdir a cgroup subtree bottom-up: thaw it, kill what is left in it, retry while the
    kernel still counts exiting processes."""
    if not os.path.isdir(path):
        return
    for dirpath, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            write_one(os.path.join(dirpath, "cgroup.freeze"), "0")
        with contextlib.suppress(OSError):
            write_one(os.path.join(dirpath, "cgroup.kill"), "1")
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def run_script(side: Side, script: Script, harness: dict[str, Callable[..., Any]]
               ) -> dict[str, Outcome]:
    """Run every step on ``side``; returns the normalised outcome by label."""
    results: dict[str, Outcome] = {}
    for step in script.steps:
        args = side.expand(step.args)
        if step.op.startswith("@"):
            outcome = harness[step.op[1:]](side, *args)
        else:
            outcome = side.workers[step.uid].call(step.op, *args)
        results[step.label] = side.normalise(step.op, args, outcome)
    return results


def compare(kernel: dict[str, Outcome], dmemfs: dict[str, Outcome]) -> dict[str, tuple[Any, Any]]:
    return {label: (kernel[label], dmemfs[label]) for label in kernel
            if kernel[label] != dmemfs[label]}


def table(diffs: dict[str, tuple[Any, Any]], reasons: dict[str, str]) -> str:
    lines = [f"{'step':<44} {'kernel':<34} dmemfs"]
    for label, (k, d) in diffs.items():
        note = "  (allowed)" if label in reasons else ""
        lines.append(f"{label:<44} {json.dumps(k)[:34]:<34} {json.dumps(d)[:60]}{note}")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    worker_main()
