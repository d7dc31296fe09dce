"""The kernel is the oracle: one script of ~600 cgroupfs operations on the host's real cgroup2
and on a dmemfs mount, every outcome compared (errno, content, mode, owner, link count,
listing order, times, xattrs).

Outcomes are normalised only where the two must differ: PIDs (each side runs its own test
processes), the controller (a domain controller of the host's cgroup2, ``hugetlb`` here, and
``dmem`` on dmemfs: its name and files become ``CTL``), measured figures (CPU time, pressure,
freezing time: their format is compared), the order of ``listxattr`` (a hash table's in the
kernel) and the size of a readable file (one page on dmemfs, so that sendfile/splice readers
get its content: README.md, "Files"). Every remaining difference must be in
:data:`ALLOWED`, each with the reason FUSE or the emulation cannot do what the kernel does;
README.md ("Deviations from the kernel") lists the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dmemfs.testing import Mounted
from tests.fs import differential as d
from tests.fs.differential import USER, Script, Side

_THREADED = ("threaded cgroups are not emulated: dmemfs keeps membership per process, not per "
             "thread (dmem, its only controller, is a domain controller, which a threaded "
             "subtree cannot use anyway)")

#: Step label → why dmemfs cannot do what the kernel does. Each entry must still differ, and
#: README.md ("Deviations from the kernel") names each reason.
ALLOWED: dict[str, str] = {
    "xattr/count-create-flag": "pyfuse3 answers XATTR_CREATE/XATTR_REPLACE itself (EEXIST/"
                               "ENODATA) before the filesystem sees the request, so kernfs's "
                               "earlier limit check (ENOSPC) cannot come first",
    "notify/inotify-populate": "a FUSE daemon cannot raise inotify events: kernfs_notify() "
                               "sends IN_MODIFY on cgroup.events, FUSE has nothing like it "
                               "(poll() works)",
    "frozen/ticks-frozen": "cgroup.freeze does not stop processes: a FUSE daemon has no "
                           "freezer, and SIGSTOP would be seen by the processes' parents; "
                           "the state is recorded and reported",
    "system/proc-cgroup-p1": "/proc/PID/cgroup is the kernel's own; `dmemfs cgroup-of` prints "
                             "the emulated membership",
    "system/statfs": "statfs() of a FUSE mount reports FUSE_SUPER_MAGIC; `dmemfs as-cgroup2` "
                     "answers CGROUP2_SUPER_MAGIC to the programs it runs",
    "threaded/make": _THREADED,
    "threaded/type": _THREADED,
    "threaded/root-type": _THREADED,
    "threaded/sibling-type": _THREADED,
    "threaded/move-thread": _THREADED,
    "threaded/threads-t1": _THREADED,
    "threaded/procs-t1": _THREADED,
}

CORE_ALL = [
    "cgroup.controllers", "cgroup.max.depth", "cgroup.max.descendants", "cgroup.pressure",
    "cgroup.procs", "cgroup.stat", "cgroup.subtree_control", "cgroup.threads", "cpu.pressure",
    "cpu.stat", "cpu.stat.local", "io.pressure", "memory.pressure",
]
CORE_CHILD = sorted([*CORE_ALL, "cgroup.events", "cgroup.freeze", "cgroup.kill",
                     "cgroup.stat.local", "cgroup.type"])
NOT_ON_ROOT = ["cgroup.events", "cgroup.freeze", "cgroup.kill", "cgroup.stat.local",
               "cgroup.type"]
READABLE_CHILD = [n for n in CORE_CHILD if n != "cgroup.kill"]

OPEN_FLAGS = {
    "r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "wtrunc": os.O_WRONLY | os.O_TRUNC,
    "rwcreat": os.O_RDWR | os.O_CREAT, "excl": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "append": os.O_WRONLY | os.O_APPEND,
}


def build_script() -> Script:
    s = Script()
    add = s.add

    # -- the root (shared with the host: only its files are compared) --------------------
    add("root/mode", "mode", "^")
    add("root/files", "listfiles", "^")
    for name in CORE_ALL:
        add(f"root/stat/{name}", "stat", f"^/{name}")
    for name in ("cgroup.controllers", "cgroup.subtree_control", "cgroup.max.depth",
                 "cgroup.max.descendants", "cgroup.pressure", "cpu.stat", "cpu.stat.local",
                 "cpu.pressure", "io.pressure", "memory.pressure"):
        add(f"root/read/{name}", "read", f"^/{name}")
    for name in NOT_ON_ROOT:
        add(f"root/missing/{name}", "stat", f"^/{name}")
    add("root/write/cgroup.type", "write", "^/cgroup.type", "threaded")
    add("root/write/max.depth-garbage", "write", "^/cgroup.max.depth", "x")

    # -- a fresh cgroup ----------------------------------------------------------------------
    add("setup/mkdir", "mkdir", "$")
    add("base/stat", "stat", "$")
    add("base/list", "listdir", "$")
    for name in CORE_CHILD:
        add(f"base/stat/{name}", "stat", f"$/{name}")
    for name in READABLE_CHILD:
        add(f"base/read/{name}", "read", f"$/{name}")
    add("base/read/cgroup.kill", "read", "$/cgroup.kill")

    # -- link counts ---------------------------------------------------------------------------
    add("nlink/mkdir-a", "mkdir", "$/a")
    add("nlink/base-1", "stat", "$")
    add("nlink/mkdir-b", "mkdir", "$/b")
    add("nlink/base-2", "stat", "$")
    add("nlink/a", "stat", "$/a")
    add("nlink/mkdir-b-c", "mkdir", "$/b/c")
    add("nlink/b-1", "stat", "$/b")
    add("nlink/rmdir-b-c", "rmdir", "$/b/c")
    add("nlink/b-0", "stat", "$/b")
    add("nlink/fd-b", "fd_open", "b#dir", "$/b", os.O_RDONLY | os.O_DIRECTORY)
    add("nlink/rmdir-b", "rmdir", "$/b")
    add("nlink/base-after-rmdir", "stat", "$")
    add("nlink/removed-fstat", "fd_fstat", "b#dir")
    add("nlink/removed-list", "fd_listdir", "b#dir")
    add("nlink/removed-openat", "fd_openat", "b#dir", "cgroup.procs", os.O_RDONLY)
    add("nlink/removed-mkdir", "mkdir", "$/b/x")
    add("nlink/fd-b-close", "fd_close", "b#dir")

    # -- mkdir names -------------------------------------------------------------------------
    add("mkdir/again", "mkdir", "$/a")
    for name in CORE_CHILD:
        add(f"mkdir/core/{name}", "mkdir", f"$/a/{name}")
    free = ["{CTLMAX}", "{CTLCUR}", "memory.max", "dmem.max", "dmem.capacity", "cgroup.x",
            "cpu.max", "io.weight", "with space", "é", "x" * 255, "x" * 256, "x" * 1025]
    for i, name in enumerate(free):
        add(f"mkdir/free/{i}", "mkdir", f"$/a/{name}")
        add(f"mkdir/free/{i}/rmdir", "rmdir", f"$/a/{name}")
    add("mkdir/newline", "mkdir", "$/a/x\ny")
    add("mkdir/dot", "mkdir", "$/a/.")
    add("mkdir/dotdot", "mkdir", "$/a/..")
    add("mkdir/missing-parent", "mkdir", "$/nope/x")
    add("mkdir/under-file", "mkdir", "$/a/cgroup.procs/x")
    add("mkdir/mode-0700", "mkdir", "$/m700", 0o700)
    add("mkdir/mode-0700-stat", "stat", "$/m700")
    add("mkdir/mode-0777", "mkdir", "$/m777", 0o777)
    add("mkdir/mode-0777-stat", "stat", "$/m777")
    add("mkdir/mode-01777", "mkdir", "$/m1777", 0o1777)
    add("mkdir/mode-01777-stat", "stat", "$/m1777")
    for name in ("m700", "m777", "m1777"):
        add(f"mkdir/rmdir-{name}", "rmdir", f"$/{name}")

    # -- cgroup.procs: every shape ---------------------------------------------------------
    shapes = ["{P1}", "{P1}\n", " {P1} ", "+{P1}", "{P1.HEX}", "{P1.OCT}", "{P1}abc", "abc",
              "-1", "-0", "1 2", "{P1} {P2}", "{P1}\n{P2}", "2147483647", "2147483648",
              "4194304", "99999999999999999999", "\n", " ", "\t{P1}\t", "{P1}\0"]
    for i, shape in enumerate(shapes):
        add(f"procs/shape/{i}", "write", "$/a/cgroup.procs", shape)
        add(f"procs/shape/{i}/read", "read", "$/a/cgroup.procs")
    add("procs/empty-write", "write", "$/a/cgroup.procs", "")
    add("procs/events-a", "read", "$/a/cgroup.events")
    add("procs/events-base", "read", "$/cgroup.events")
    add("procs/base-procs", "read", "$/cgroup.procs")
    add("procs/rmdir-populated", "rmdir", "$/a")
    add("procs/self", "write", "$/a/cgroup.procs", "0")
    add("procs/self-read", "read", "$/a/cgroup.procs")
    add("procs/self-back", "write", "^/cgroup.procs", "0")
    add("procs/self-read-2", "read", "$/a/cgroup.procs")
    add("procs/p2", "write", "$/a/cgroup.procs", "{P2}")
    add("procs/p2-read", "read", "$/a/cgroup.procs")
    add("procs/zombie", "write", "$/a/cgroup.procs", "{Z}")
    add("procs/zombie-read", "read", "$/a/cgroup.procs")
    add("procs/zombie-threads", "write", "$/a/cgroup.threads", "{Z}")
    add("procs/nosuch", "write", "$/a/cgroup.procs", "4194303")
    add("procs/bound-kthread", "write", "$/a/cgroup.procs", "{KT}")
    add("procs/bound-kthread-read", "read", "$/a/cgroup.procs")

    # -- cgroup.threads -------------------------------------------------------------------------
    add("threads/cross-domain", "write", "$/a/cgroup.threads", "{T.1}")
    add("threads/leader-cross", "write", "$/a/cgroup.threads", "{T}")
    add("threads/tid-to-procs", "write", "$/a/cgroup.procs", "{T.1}")
    add("threads/procs-read", "read", "$/a/cgroup.procs")
    add("threads/read", "read", "$/a/cgroup.threads")
    add("threads/same-domain", "write", "$/a/cgroup.threads", "{T.2}")
    add("threads/self", "write", "$/a/cgroup.threads", "0")
    add("threads/garbage", "write", "$/a/cgroup.threads", "x")
    add("threads/negative", "write", "$/a/cgroup.threads", "-5")
    add("threads/base-read", "read", "$/cgroup.threads")

    # -- no internal processes, controllers -----------------------------------------------
    add("ctl/base-controllers", "read", "$/cgroup.controllers")
    add("ctl/a-controllers", "read", "$/a/cgroup.controllers")
    add("ctl/enable-base", "write", "$/cgroup.subtree_control", "+{CTL}")
    add("ctl/base-sc", "read", "$/cgroup.subtree_control")
    add("ctl/a-controllers-after", "read", "$/a/cgroup.controllers")
    add("ctl/a-list", "listdir", "$/a")
    add("ctl/a-ctlmax-stat", "stat", "$/a/{CTLMAX}")
    add("ctl/a-ctlcur-stat", "stat", "$/a/{CTLCUR}")
    add("ctl/enable-a-populated", "write", "$/a/cgroup.subtree_control", "+{CTL}")
    add("ctl/mkdir-c", "mkdir", "$/c")
    add("ctl/mkdir-c-d", "mkdir", "$/c/d")
    add("ctl/enable-c", "write", "$/c/cgroup.subtree_control", "+{CTL}")
    add("ctl/p3-into-c", "write", "$/c/cgroup.procs", "{P3}")
    add("ctl/p3-into-c-d", "write", "$/c/d/cgroup.procs", "{P3}")
    add("ctl/p3-into-c-d-again", "write", "$/c/d/cgroup.procs", "{P3}")
    add("ctl/zombie-into-c", "write", "$/c/cgroup.procs", "{Z}")
    add("ctl/zombie-threads-into-c", "write", "$/c/cgroup.threads", "{Z}")
    add("ctl/enable-c-d-populated", "write", "$/c/d/cgroup.subtree_control", "+{CTL}")
    add("ctl/mkdir-c-e", "mkdir", "$/c/e")
    add("ctl/enable-c-e", "write", "$/c/e/cgroup.subtree_control", "+{CTL}")
    add("ctl/disable-c-busy", "write", "$/c/cgroup.subtree_control", "-{CTL}")
    add("ctl/disable-c-e", "write", "$/c/e/cgroup.subtree_control", "-{CTL}")
    add("ctl/c-e-list", "listdir", "$/c/e")
    add("ctl/disable-c", "write", "$/c/cgroup.subtree_control", "-{CTL}")
    add("ctl/c-d-list", "listdir", "$/c/d")
    add("ctl/enable-c-again", "write", "$/c/cgroup.subtree_control", "+{CTL}")
    add("ctl/enable-c-e-f-noparent", "mkdir", "$/c/e/f")
    add("ctl/enoent", "write", "$/c/e/f/cgroup.subtree_control", "+{CTL}")
    sc_shapes = ["+{CTL}", "-{CTL}", "+{CTL} -{CTL}", "-{CTL} +{CTL}", "+{CTL}  +{CTL}",
                 "+{CTL}\t", "+{CTL}\n", " +{CTL} ", "{CTL}", "+nosuch", "+", "-", "",
                 "+{CTL} +nosuch", "-nosuch", "+{CTL}\n-{CTL}", "+{CTL},-{CTL}"]
    add("sc/mkdir", "mkdir", "$/s")
    for i, shape in enumerate(sc_shapes):
        add(f"sc/shape/{i}", "write", "$/s/cgroup.subtree_control", shape)
        add(f"sc/shape/{i}/read", "read", "$/s/cgroup.subtree_control")
    add("sc/clash-mkdir", "mkdir", "$/s/y")
    add("sc/clash-mkdir-2", "mkdir", "$/s/y/{CTLMAX}")
    add("sc/clash-disable", "write", "$/s/cgroup.subtree_control", "-{CTL}")
    add("sc/clash-enable", "write", "$/s/cgroup.subtree_control", "+{CTL}")
    add("sc/clash-read", "read", "$/s/cgroup.subtree_control")
    add("sc/clash-list", "listdir", "$/s/y")
    add("sc/clash-rmdir", "rmdir", "$/s/y/{CTLMAX}")
    add("sc/clash-enable-2", "write", "$/s/cgroup.subtree_control", "+{CTL}")
    add("sc/clash-list-2", "listdir", "$/s/y")
    add("sc/clash-mkdir-over-file", "mkdir", "$/s/y/{CTLMAX}")
    add("sc/stat-settled", "read_settled", "$/s/cgroup.stat")

    # -- cgroup.type ---------------------------------------------------------------------------
    for i, shape in enumerate(["domain", "x", "", "domain threaded", "threaded\n"]):
        add(f"type/mkdir-{i}", "mkdir", f"$/t{i}")
        add(f"type/write-{i}", "write", f"$/t{i}/cgroup.type", shape)
        add(f"type/read-{i}", "read", f"$/t{i}/cgroup.type")

    # -- hierarchy limits ----------------------------------------------------------------------
    limit_shapes = ["max", "0", "1", "-1", "x", " 5\n", "2147483647", "2147483648", "0x10",
                    "010", "max\n", "MAX", "1 2", "+3", "", "4294967296"]
    add("limits/mkdir", "mkdir", "$/m")
    for file in ("cgroup.max.depth", "cgroup.max.descendants"):
        for i, shape in enumerate(limit_shapes):
            add(f"limits/{file}/{i}", "write", f"$/m/{file}", shape)
            add(f"limits/{file}/{i}/read", "read", f"$/m/{file}")
    add("limits/depth-1", "write", "$/m/cgroup.max.depth", "1")
    add("limits/descendants-max", "write", "$/m/cgroup.max.descendants", "max")
    add("limits/mkdir-x", "mkdir", "$/m/x")
    add("limits/mkdir-x-y", "mkdir", "$/m/x/y")
    add("limits/descendants-1", "write", "$/m/cgroup.max.descendants", "1")
    add("limits/mkdir-z", "mkdir", "$/m/z")
    add("limits/depth-0-base", "write", "$/m/x/cgroup.max.depth", "0")
    add("limits/rmdir-x", "rmdir", "$/m/x")
    add("limits/mkdir-z-2", "mkdir", "$/m/z")
    add("limits/stat", "read_settled", "$/m/cgroup.stat")

    # -- freeze -----------------------------------------------------------------------------
    add("freeze/mkdir", "mkdir", "$/f")
    for i, shape in enumerate(["1", "0", "2", "-1", "x", " 1 \n", "0x1", "", "01"]):
        add(f"freeze/shape/{i}", "write", "$/f/cgroup.freeze", shape)
        add(f"freeze/shape/{i}/read", "read", "$/f/cgroup.freeze")
    add("freeze/events", "read", "$/f/cgroup.events")
    add("freeze/mkdir-child", "mkdir", "$/f/c")
    add("freeze/child-events", "read", "$/f/c/cgroup.events")
    add("freeze/child-freeze", "read", "$/f/c/cgroup.freeze")
    add("freeze/child-stat-local", "read", "$/f/c/cgroup.stat.local")
    add("freeze/thaw", "write", "$/f/cgroup.freeze", "0")
    add("freeze/child-events-thawed", "read", "$/f/c/cgroup.events")
    add("freeze/with-procs", "write", "$/a/cgroup.freeze", "1")
    add("freeze/with-procs-events", "read_until", "$/a/cgroup.events",
        "populated 1\nfrozen 1\n")
    add("freeze/with-procs-thaw", "write", "$/a/cgroup.freeze", "0")
    add("freeze/with-procs-events-2", "read_until", "$/a/cgroup.events",
        "populated 1\nfrozen 0\n")

    # -- kill ----------------------------------------------------------------------------------
    add("kill/mkdir", "mkdir", "$/k")
    for i, shape in enumerate(["0", "2", "-1", "x", "", "1 2"]):
        add(f"kill/shape/{i}", "write", "$/k/cgroup.kill", shape)
    add("kill/empty-cgroup", "write", "$/k/cgroup.kill", "1\n")
    add("kill/move-p3", "write", "$/k/cgroup.procs", "{P3}")
    add("kill/read-before", "read", "$/k/cgroup.procs")
    add("kill/kill", "write", "$/k/cgroup.kill", " 1 ")
    add("kill/wait", "@wait_gone", "P3")
    add("kill/read-after", "read", "$/k/cgroup.procs")
    add("kill/events-after", "read", "$/k/cgroup.events")
    add("kill/read-kill", "session", "$/k/cgroup.kill", os.O_RDWR, [["r", 10], ["w", "1"]])

    # -- opens of every file with every access mode ------------------------------------------
    add("open/mkdir", "mkdir", "$/o")
    for name in CORE_CHILD:
        for mode, flags in OPEN_FLAGS.items():
            add(f"open/{name}/{mode}", "open", f"$/o/{name}", flags)
    add("open/new-file", "open", "$/o/newfile", os.O_WRONLY | os.O_CREAT)
    add("open/new-file-excl", "open", "$/o/newfile", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    add("open/dir-write", "open", "$/o", os.O_WRONLY)
    add("open/dir-read", "open", "$/o", os.O_RDONLY | os.O_DIRECTORY)
    add("open/file-as-dir", "open", "$/o/cgroup.procs", os.O_RDONLY | os.O_DIRECTORY)
    for name in ("cgroup.controllers", "cgroup.events", "cgroup.stat", "cpu.stat",
                 "cgroup.stat.local"):
        add(f"open-io/{name}/write", "session", f"$/o/{name}", os.O_WRONLY,
            [["w", "1"], ["w", ""], ["w", "x" * 5000]])
    add("open-io/kill/read", "session", "$/o/cgroup.kill", os.O_RDONLY, [["r", 100]])
    add("open-io/kill/rdwr", "session", "$/o/cgroup.kill", os.O_RDWR,
        [["r", 100], ["w", ""], ["w", "x"]])
    add("open-io/wronly-read", "session", "$/o/cgroup.procs", os.O_WRONLY, [["r", 10]])
    add("open-io/rdonly-write", "session", "$/o/cgroup.procs", os.O_RDONLY, [["w", "1"]])
    add("open-io/chmod-000", "chmod", "$/o/cgroup.max.depth", 0)
    add("open-io/after-chmod", "session", "$/o/cgroup.max.depth", os.O_RDWR,
        [["r", 100], ["w", "7"], ["pr", 100, 0]])
    add("open-io/chmod-444-procs", "chmod", "$/o/cgroup.procs", 0o444)
    add("open-io/after-chmod-444", "write", "$/o/cgroup.procs", "0")
    add("open-io/as-user-r", "open", "$/o/cgroup.procs", os.O_RDONLY, uid=USER)
    add("open-io/as-user-w", "open", "$/o/cgroup.max.descendants", os.O_WRONLY, uid=USER)
    add("open-io/as-user-kill", "open", "$/o/cgroup.kill", os.O_RDONLY, uid=USER)
    add("open-io/as-user-0000", "open", "$/o/cgroup.max.depth", os.O_RDONLY, uid=USER)
    add("open-io/too-big", "write", "$/o/cgroup.max.depth", "1" + " " * 4096)
    add("open-io/page", "write", "$/o/cgroup.max.depth", "1" + " " * 4095)

    # -- offsets -------------------------------------------------------------------------------
    add("offset/depth", "session", "$/o/cgroup.max.depth", os.O_RDWR,
        [["w", "12"], ["r", 1], ["r", 1], ["r", 10], ["r", 10], ["pr", 10, 1], ["pw", "34", 100],
         ["pr", 10, 0], ["seek", 0], ["r", 100], ["seek", 1000], ["r", 10], ["w", "max"],
         ["pr", 2, 1]])
    add("offset/events", "session", "$/a/cgroup.events", os.O_RDONLY,
        [["r", 3], ["r", 3], ["r", 100], ["pr", 5, 2], ["pr", 5, 1000]])
    add("offset/procs", "session", "$/a/cgroup.procs", os.O_RDWR,
        [["pw", "{P2}", 5], ["r", 1000]])
    add("offset/append", "session", "$/o/cgroup.max.descendants", os.O_WRONLY | os.O_APPEND,
        [["w", "3"], ["w", "4"]])
    add("offset/append-read", "read", "$/o/cgroup.max.descendants")

    # -- chmod / chown ------------------------------------------------------------------------
    add("own/mkdir", "mkdir", "$/w")
    for i, mode in enumerate([0o600, 0o777, 0o4755, 0o1644, 0o000, 0o7777]):
        add(f"own/chmod-file-{i}", "chmod", "$/w/cgroup.procs", mode)
        add(f"own/chmod-file-{i}/stat", "stat", "$/w/cgroup.procs")
        add(f"own/chmod-dir-{i}", "chmod", "$/w", mode)
        add(f"own/chmod-dir-{i}/stat", "stat", "$/w")
    add("own/chmod-dir-back", "chmod", "$/w", 0o755)
    add("own/chown-file", "chown", "$/w/cgroup.threads", USER, USER)
    add("own/chown-file-stat", "stat", "$/w/cgroup.threads")
    add("own/chown-gid-only", "chown", "$/w/cgroup.threads", -1, 0)
    add("own/chown-gid-only-stat", "stat", "$/w/cgroup.threads")
    add("own/chown-dir", "chown", "$/w", USER, -1)
    add("own/chown-dir-stat", "stat", "$/w")
    add("own/chown-ctl-file", "chown", "$/w/{CTLMAX}", USER, USER)
    add("own/chown-ctl-file-stat", "stat", "$/w/{CTLMAX}")
    add("own/user-chmod-own-dir", "chmod", "$/w", 0o700, uid=USER)
    add("own/user-chmod-root-file", "chmod", "$/w/cgroup.procs", 0o666, uid=USER)
    add("own/user-chown", "chown", "$/w", 0, 0, uid=USER)
    add("own/dir-stat-final", "stat", "$/w")

    # -- times --------------------------------------------------------------------------------
    add("times/mkdir", "mkdir", "$/u")
    add("times/parent-untouched", "mtime_after_mkdir", "$/u", "$/u/c1")
    add("times/utime-file", "utime", "$/u/cgroup.procs", [1000, 2000])
    add("times/utime-file-times", "times", "$/u/cgroup.procs")
    add("times/utime-dir", "utime", "$/u", [3000, 4000])
    add("times/utime-dir-times", "times", "$/u")
    add("times/parent-touched", "mtime_after_mkdir", "$/u", "$/u/c2")
    add("times/utime-now", "utime", "$/u/cgroup.threads", None)
    add("times/utime-now-times", "times", "$/u/cgroup.threads")
    add("times/ctl-file", "utime", "$/u/{CTLMAX}", [5000, 6000])
    add("times/ctl-file-times", "times", "$/u/{CTLMAX}")
    add("times/as-user", "utime", "$/u/cgroup.procs", [7000, 8000], uid=USER)
    add("times/as-user-now", "utime", "$/u/cgroup.procs", None, uid=USER)
    add("times/chmod-then", "chmod", "$/u/cgroup.stat", 0o400)
    add("times/chmod-then-times", "times", "$/u/cgroup.stat")

    # -- xattrs --------------------------------------------------------------------------------
    add("xattr/mkdir", "mkdir", "$/x")
    targets = {"dir": "$/x", "file": "$/x/cgroup.procs", "ro-file": "$/x/cgroup.stat",
               "ctl-file": "$/x/{CTLMAX}"}
    names = ["user.a", "trusted.a", "security.a", "system.a", "other.a", "user.",
             "security.capability", "system.posix_acl_access"]
    for tname, path in targets.items():
        for name in names:
            label = f"xattr/{tname}/{name}"
            add(f"{label}/set", "setxattr", path, name, "v")
            add(f"{label}/get", "getxattr", path, name)
        add(f"xattr/{tname}/list", "listxattr", path)
        for name in names:
            label = f"xattr/{tname}/{name}"
            add(f"{label}/remove", "removexattr", path, name)
            add(f"{label}/get-after", "getxattr", path, name)
    add("xattr/create-existing", "setxattr", "$/x", "user.k", "1")
    add("xattr/create-flag", "setxattr", "$/x", "user.k", "2", os.XATTR_CREATE)
    add("xattr/replace-missing", "setxattr", "$/x", "user.missing", "2", os.XATTR_REPLACE)
    add("xattr/replace-flag", "setxattr", "$/x", "user.k", "3", os.XATTR_REPLACE)
    add("xattr/replace-get", "getxattr", "$/x", "user.k")
    add("xattr/empty-value", "setxattr", "$/x", "user.e", "")
    add("xattr/empty-value-get", "getxattr", "$/x", "user.e")
    add("xattr/name-255", "setxattr", "$/x", "user." + "n" * 250, "1")
    add("xattr/name-256", "setxattr", "$/x", "user." + "n" * 251, "1")
    add("xattr/value-64k", "setxattr", "$/x/cgroup.threads", "user.big", "v" * 65536)
    add("xattr/value-64k+1", "setxattr", "$/x/cgroup.threads", "user.big2", "v" * 65537)
    add("xattr/size-2", "setxattr", "$/x/cgroup.threads", "user.big2", "v" * 65536)
    add("xattr/size-over", "setxattr", "$/x/cgroup.threads", "user.more", "v")
    add("xattr/size-replace", "setxattr", "$/x/cgroup.threads", "user.big", "w" * 10)
    add("xattr/size-trusted", "setxattr", "$/x/cgroup.threads", "trusted.big", "v" * 65536)
    add("xattr/size-list", "listxattr", "$/x/cgroup.threads")
    add("xattr/count-mkdir", "mkdir", "$/x/n")
    add("xattr/count-fill", "many_xattrs", "$/x/n", "user.k", 129, 1)
    add("xattr/count-replace", "setxattr", "$/x/n", "user.k0", "2")
    add("xattr/count-create-flag", "setxattr", "$/x/n", "user.k0", "2", os.XATTR_CREATE)
    add("xattr/count-trusted", "setxattr", "$/x/n", "trusted.t", "1")
    add("xattr/count-security", "many_xattrs", "$/x/n", "security.s", 200, 1)
    add("xattr/count-remove", "removexattr", "$/x/n", "user.k5")
    add("xattr/count-add", "setxattr", "$/x/n", "user.new", "1")
    add("xattr/count-list-len", "getxattr", "$/x/n", "user.new")
    add("xattr/user-own", "chown", "$/x", USER, USER)
    add("xattr/user-set-own", "setxattr", "$/x", "user.u", "1", uid=USER)
    add("xattr/user-set-root-file", "setxattr", "$/x/cgroup.procs", "user.u", "1", uid=USER)
    add("xattr/user-trusted", "setxattr", "$/x", "trusted.u", "1", uid=USER)
    add("xattr/user-security", "setxattr", "$/x", "security.u", "1", uid=USER)
    add("xattr/user-get-trusted", "getxattr", "$/x/cgroup.threads", "trusted.big", uid=USER)
    add("xattr/user-list", "listxattr", "$/x/cgroup.threads", uid=USER)
    add("xattr/root-dir-set", "setxattr", "^", "user.dmemfs-differential", "1")
    add("xattr/root-dir-get", "getxattr", "^", "user.dmemfs-differential")
    add("xattr/root-dir-remove", "removexattr", "^", "user.dmemfs-differential")

    # -- creating, renaming, removing ---------------------------------------------------------
    add("vfs/mknod-reg", "mknod", "$/o/node", stat.S_IFREG | 0o644)
    add("vfs/mknod-default", "mknod", "$/o/node2", 0o644)
    add("vfs/mkfifo", "mknod", "$/o/fifo", stat.S_IFIFO | 0o644)
    add("vfs/mknod-chr", "mknod", "$/o/chr", stat.S_IFCHR | 0o644)
    add("vfs/symlink", "symlink", "cgroup.procs", "$/o/sym")
    add("vfs/link", "link", "$/o/cgroup.procs", "$/o/hard")
    add("vfs/rename-dir", "rename", "$/o", "$/o2")
    add("vfs/rename-file", "rename", "$/o/cgroup.procs", "$/o/procs2")
    add("vfs/rename-onto", "rename", "$/m", "$/a")
    add("vfs/unlink-file", "unlink", "$/o/cgroup.procs")
    add("vfs/unlink-missing", "unlink", "$/o/missing")
    add("vfs/unlink-dir", "unlink", "$/o")
    add("vfs/rmdir-file", "rmdir", "$/o/cgroup.procs")
    add("vfs/rmdir-missing", "rmdir", "$/o/missing")
    add("vfs/rmdir-nonempty", "rmdir", "$/m")
    add("vfs/truncate-file", "truncate", "$/o/cgroup.procs", 0)
    add("vfs/truncate-file-10", "truncate", "$/o/cgroup.procs", 10)
    add("vfs/truncate-stat", "stat", "$/o/cgroup.procs")
    add("vfs/truncate-dir", "truncate", "$/o", 0)
    add("vfs/access-x-file", "access", "$/o/cgroup.procs", os.X_OK)
    add("vfs/access-w-ro", "access", "$/o/cgroup.stat", os.W_OK)
    add("vfs/access-user-w", "access", "$/o/cgroup.threads", os.W_OK, uid=USER)

    # -- pressure -------------------------------------------------------------------------
    add("psi/mkdir", "mkdir", "$/p")
    add("psi/fd-cpu", "fd_open", "cpu.pressure#kept", "$/p/cpu.pressure", os.O_RDWR)
    for i, shape in enumerate(["0", "1", "2", "-1", "x", " 1\n", "1 ", "0x0", "0\n", "", "1"]):
        add(f"psi/enable/{i}", "write", "$/p/cgroup.pressure", shape)
        add(f"psi/enable/{i}/read", "read", "$/p/cgroup.pressure")
        add(f"psi/enable/{i}/list", "listdir", "$/p")
    add("psi/hide", "write", "$/p/cgroup.pressure", "0")
    add("psi/hidden-open", "open", "$/p/io.pressure", os.O_RDONLY)
    add("psi/hidden-stat", "stat", "$/p/memory.pressure")
    add("psi/hidden-mkdir", "mkdir", "$/p/cpu.pressure")
    add("psi/hidden-fd-read", "fd_read", "cpu.pressure#kept")
    add("psi/hidden-fd-write", "fd_write", "cpu.pressure#kept", "some 150000 2000000")
    add("psi/show", "write", "$/p/cgroup.pressure", "1")
    add("psi/shown-fd-read", "fd_read", "cpu.pressure#kept")
    add("psi/fd-close", "fd_close", "cpu.pressure#kept")
    add("psi/read-cpu", "read", "$/p/cpu.pressure")
    add("psi/read-io", "read", "$/p/io.pressure")
    add("psi/read-memory", "read", "$/p/memory.pressure")
    triggers = ["some 150000 2000000", "full 150000 2000000", "some 150000 1000000",
                "some 150000 10000000", "some 150000 10000001", "some 0 2000000",
                "some 2000001 2000000", "some 2000000 2000000", "some 1 4000000",
                "some 150000 0", "bad 1 2000000", "some 1", "some", "some 1 2000000 x",
                "some  1  2000000", "some1 2000000", " some 1 2000000", "some\t1\t2000000",
                "some 1 2000000\n", "some -1 2000000", "some +1 2000000", "some 1 0x1E8480",
                "some 1 4296967296", "some 1 02000000", "SOME 1 2000000", "full 1 2000000\0x",
                "1", "0"]
    for res in ("cpu", "io", "memory"):
        for i, shape in enumerate(triggers):
            add(f"psi/trigger/{res}/{i}", "session", f"$/p/{res}.pressure", os.O_RDWR,
                [["w", shape], ["w", shape], ["pr", 200, 0]])
    add("psi/trigger/wronly", "session", "$/p/cpu.pressure", os.O_WRONLY,
        [["w", "some 150000 2000000"]])
    add("psi/trigger/root", "session", "^/memory.pressure", os.O_RDWR,
        [["w", "some 500000 2000000"], ["w", "x"]])
    add("psi/trigger/as-user", "session", "$/p/cpu.pressure", os.O_RDONLY, [["r", 1]],
        uid=USER)

    # -- statistics formats -------------------------------------------------------------
    add("stats/cpu-a", "read", "$/a/cpu.stat")
    add("stats/cpu-base", "read", "$/cpu.stat")
    add("stats/cpu-local-a", "read", "$/a/cpu.stat.local")
    add("stats/stat-local-a", "read", "$/a/cgroup.stat.local")
    add("stats/cgroup-stat-base", "read_settled", "$/cgroup.stat")
    add("stats/cgroup-stat-c", "read_settled", "$/c/cgroup.stat")

    # -- delegation --------------------------------------------------------------------------
    add("dg/mkdir", "mkdir", "$/dg")
    for name in ("", "/cgroup.procs", "/cgroup.threads", "/cgroup.subtree_control"):
        add(f"dg/chown{name or '/dir'}", "chown", f"$/dg{name}", USER, USER)
    add("dg/user-mkdir-c1", "mkdir", "$/dg/c1", uid=USER)
    add("dg/user-mkdir-c2", "mkdir", "$/dg/c2", uid=USER)
    add("dg/c1-stat", "stat", "$/dg/c1")
    add("dg/c1-procs-stat", "stat", "$/dg/c1/cgroup.procs")
    add("dg/c1-list", "listdir", "$/dg/c1")
    add("dg/user-move-u1-from-root", "write", "$/dg/c1/cgroup.procs", "{U1}", uid=USER)
    add("dg/root-move-u1", "write", "$/dg/c1/cgroup.procs", "{U1}")
    add("dg/user-move-u1-c2", "write", "$/dg/c2/cgroup.procs", "{U1}", uid=USER)
    add("dg/c2-procs", "read", "$/dg/c2/cgroup.procs")
    add("dg/user-move-u1-out", "write", "$/a/cgroup.procs", "{U1}", uid=USER)
    add("dg/user-move-self", "write", "$/dg/c1/cgroup.procs", "0", uid=USER)
    add("dg/user-move-root-proc", "write", "$/dg/c1/cgroup.procs", "{P1}", uid=USER)
    add("dg/user-ctl-file", "open", "$/dg/{CTLMAX}", os.O_WRONLY, uid=USER)
    add("dg/dg-ctl-stat", "stat", "$/dg/{CTLMAX}")
    add("dg/user-enable", "write", "$/dg/cgroup.subtree_control", "+{CTL}", uid=USER)
    add("dg/c1-ctl-stat", "stat", "$/dg/c1/{CTLMAX}")
    add("dg/user-c1-ctl-write", "open", "$/dg/c1/{CTLMAX}", os.O_WRONLY, uid=USER)
    add("dg/user-c1-ctl-read", "open", "$/dg/c1/{CTLCUR}", os.O_RDONLY, uid=USER)
    add("dg/user-mkdir-outside", "mkdir", "$/nope-user", uid=USER)
    add("dg/user-write-root-file", "write", "$/cgroup.max.depth", "5", uid=USER)
    add("dg/user-freeze-c1", "write", "$/dg/c1/cgroup.freeze", "1", uid=USER)
    add("dg/user-freeze-c1-thaw", "write", "$/dg/c1/cgroup.freeze", "0", uid=USER)
    add("dg/user-kill-dg", "write", "$/dg/cgroup.kill", "1", uid=USER)
    add("dg/user-rmdir-c1", "rmdir", "$/dg/c1", uid=USER)
    add("dg/user-rmdir-c2", "rmdir", "$/dg/c2", uid=USER)
    add("dg/user-disable", "write", "$/dg/cgroup.subtree_control", "-{CTL}", uid=USER)
    add("dg/user-rmdir-dg", "rmdir", "$/dg", uid=USER)
    add("dg/dg-stat-final", "stat", "$/dg")

    # -- notifications: poll() and inotify on cgroup.events ------------------------------------
    add("notify/mkdir", "mkdir", "$/ev")
    add("notify/open", "fd_open", "cgroup.events#ev", "$/ev/cgroup.events", os.O_RDONLY)
    add("notify/inotify", "inotify_watch", "inotify#ev", "$/ev/cgroup.events")
    add("notify/poll-fresh", "fd_poll", "cgroup.events#ev")
    add("notify/populate", "write", "$/ev/cgroup.procs", "{P2}")
    add("notify/poll-changed", "fd_poll", "cgroup.events#ev")
    add("notify/inotify-populate", "inotify_count", "inotify#ev", 0.5)
    add("notify/read", "fd_read", "cgroup.events#ev")
    add("notify/poll-read", "fd_poll", "cgroup.events#ev")
    add("notify/freeze", "write", "$/ev/cgroup.freeze", "1")
    add("notify/poll-frozen", "fd_poll_wait", "cgroup.events#ev")
    add("notify/read-frozen", "fd_read", "cgroup.events#ev")
    add("notify/thaw", "write", "$/ev/cgroup.freeze", "0")
    add("notify/poll-thawed", "fd_poll_wait", "cgroup.events#ev")
    add("notify/read-thawed", "fd_read", "cgroup.events#ev")
    add("notify/kill-p2", "@kill", "P2")
    add("notify/poll-exited", "fd_poll_wait", "cgroup.events#ev")
    add("notify/read-exited", "fd_read", "cgroup.events#ev")
    add("notify/close", "fd_close", "cgroup.events#ev")
    add("notify/inotify-close", "fd_close", "inotify#ev")
    add("notify/other-file", "fd_open", "cgroup.procs#ev", "$/ev/cgroup.procs", os.O_RDONLY)
    add("notify/other-file-poll", "fd_poll", "cgroup.procs#ev")
    add("notify/other-file-close", "fd_close", "cgroup.procs#ev")
    add("notify/psi-open", "fd_open", "cpu.pressure#ev", "$/ev/cpu.pressure", os.O_RDWR)
    add("notify/psi-poll", "fd_poll", "cpu.pressure#ev")
    add("notify/psi-trigger", "fd_write", "cpu.pressure#ev", "some 500000 2000000")
    add("notify/psi-poll-trigger", "fd_poll", "cpu.pressure#ev")
    add("notify/psi-close", "fd_close", "cpu.pressure#ev")

    # -- what freezing does to a process ---------------------------------------------------------
    add("frozen/mkdir", "mkdir", "$/fz")
    add("frozen/move-ticker", "write", "$/fz/cgroup.procs", "{TK}")
    add("frozen/ticks-thawed", "@ticking", "TK")
    add("frozen/freeze", "write", "$/fz/cgroup.freeze", "1")
    add("frozen/settle", "read_until", "$/fz/cgroup.events", "populated 1\nfrozen 1\n")
    add("frozen/ticks-frozen", "@ticking", "TK")
    add("frozen/thaw", "write", "$/fz/cgroup.freeze", "0")
    add("frozen/settle-thawed", "read_until", "$/fz/cgroup.events", "populated 1\nfrozen 0\n")
    add("frozen/ticks-again", "@ticking", "TK")

    # -- who "the writer" is ---------------------------------------------------------------
    add("writer/mkdir", "mkdir", "$/wr")
    add("writer/fd-passed-to-child", "write_from_child", "$/wr/cgroup.procs", "0")
    add("writer/back", "write", "^/cgroup.procs", "0")

    # -- what the rest of the system sees ------------------------------------------------------
    add("system/proc-cgroup-p1", "@proc_cgroup", "P1")
    add("system/statfs", "statfs_type", "$")

    # -- listings at the end ------------------------------------------------------------
    add("end/list-base", "listdir", "$")
    add("end/list-a", "listdir", "$/a")
    add("end/list-c", "listdir", "$/c")
    add("end/base-stat", "stat", "$")
    add("end/rmdir-base", "rmdir", "$")

    # -- threaded subtrees (last: a thread root changes what its ancestors may enable) ------
    add("threaded/mkdir", "mkdir", "$/tz")
    add("threaded/mkdir-t1", "mkdir", "$/tz/t1")
    add("threaded/mkdir-t2", "mkdir", "$/tz/t2")
    add("threaded/make", "write", "$/tz/t1/cgroup.type", "threaded")
    add("threaded/type", "read", "$/tz/t1/cgroup.type")
    add("threaded/root-type", "read", "$/tz/cgroup.type")
    add("threaded/sibling-type", "read", "$/tz/t2/cgroup.type")
    add("threaded/move-process", "write", "$/tz/cgroup.procs", "{T}")
    add("threaded/move-thread", "write", "$/tz/t1/cgroup.threads", "{T.1}")
    add("threaded/threads-t1", "read", "$/tz/t1/cgroup.threads")
    add("threaded/procs-t1", "read", "$/tz/t1/cgroup.procs")
    return s


# -- the harness ---------------------------------------------------------------------------


def _harness() -> dict[str, Any]:
    def wait_gone(side: Side, name: str) -> d.Outcome:
        side.wait_gone(name)
        return ["ok", None]

    def kill(side: Side, name: str) -> d.Outcome:
        side.kill(name)
        return ["ok", None]

    def proc_cgroup(side: Side, name: str) -> d.Outcome:
        """The process's cgroup2 line in /proc (path made relative to the scratch cgroup)."""
        with open(f"/proc/{side.tokens[name]}/cgroup") as f:
            line = next(x for x in f.read().splitlines() if x.startswith("0::"))
        return ["ok", line.replace("/" + side.scratch, "/$")]

    def ticking(side: Side, name: str) -> d.Outcome:
        """Whether the ticker runs (printed lines within 0.3 s)."""
        return ["ok", side.ticks(name, 0.3) > 0]

    return {"wait_gone": wait_gone, "kill": kill, "proc_cgroup": proc_cgroup,
            "ticking": ticking}


@contextlib.contextmanager
def _side(name: str, root: str, ctl: str, ctl_max: str, ctl_current: str,
          scratch: str) -> Iterator[Side]:
    side = Side(name, root, scratch, ctl, ctl_max, ctl_current)
    try:
        side.start()
        yield side
    finally:
        side.stop()
        d.remove_tree(side.base)


def _run(side: Side, script: Script) -> dict[str, d.Outcome]:
    return d.run_script(side, script, _harness())


@pytest.mark.timeout(600)
@pytest.mark.dmemfs_args("--allow-other")
def test_dmemfs_behaves_like_the_kernels_cgroupfs(mnt: Mounted) -> None:
    ctl = d.kernel_controller()
    if ctl is None:
        pytest.skip(f"no cgroup2 with a spare domain controller at {d.KERNEL_ROOT}")
    script = build_script()
    assert len(script) >= 500
    scratch = f"dmemfs-differential-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with d.host_lock():
        root_sc = d.KERNEL_ROOT + "/cgroup.subtree_control"
        with open(root_sc) as f:
            had_ctl = ctl in f.read().split()
        try:
            if not had_ctl:
                d.write_one(root_sc, f"+{ctl}")
            kmax, kcur = d.kernel_controller_files(ctl)
            with _side("kernel", d.KERNEL_ROOT, ctl, kmax, kcur, scratch) as side:
                kernel = _run(side, script)
        finally:
            if not had_ctl:
                with contextlib.suppress(OSError):
                    d.write_one(root_sc, f"-{ctl}")
    mnt.write("cgroup.subtree_control", "+dmem")
    with _side("dmemfs", mnt.cgroup, "dmem", "dmem.max", "dmem.current", scratch) as side:
        dmemfs = _run(side, script)
    diffs = d.compare(kernel, dmemfs)
    report = d.table(diffs, ALLOWED)
    if os.environ.get("DMEMFS_DIFFERENTIAL_DUMP"):  # every outcome, for a look
        with open(os.environ["DMEMFS_DIFFERENTIAL_DUMP"], "w") as f:
            json.dump({label: {"kernel": k, "dmemfs": dmemfs[label]}
                       for label, k in kernel.items()}, f, indent=1)
    print(f"{len(script)} steps, {len(kernel) - len(diffs)} identical outcomes")
    print(report)
    unexplained = sorted(set(diffs) - set(ALLOWED))
    stale = sorted(set(ALLOWED) - set(diffs))
    assert not unexplained, "outcomes differ from the kernel's:\n" + report
    assert not stale, f"allowed differences that no longer differ: {stale}"


def test_script_is_large_and_labels_are_unique() -> None:
    script = build_script()
    assert len(script) >= 500
    assert len({s.label for s in script.steps}) == len(script)
    assert ALLOWED.keys() <= {s.label for s in script.steps}


def test_normalisation_maps_pids_and_controller() -> None:
    side = Side("x", "/r", "s", "hugetlb", "hugetlb.2MB.max", "hugetlb.2MB.current",
                symbols={11: "P1", 12: "T.1"})
    assert side.normalise_content("cgroup.procs", "12\n11\n99\n") == "? P1 T.1"
    assert side.normalise_content("cgroup.controllers", "hugetlb\n") == "CTL\n"
    assert side.normalise_content(
        "cgroup.stat", "nr_descendants 1\nnr_subsys_perf_event 1\nnr_subsys_hugetlb 2\n"
    ) == "nr_descendants 1\nnr_subsys_CTL 2\n"
    assert side.normalise_listing(["a", "hugetlb.2MB.max", "cgroup.procs"]) == [
        "a", "cgroup.procs", "<CTL files>"]
    assert side.expand("$/a/{CTLMAX}") == "/r/s/a/{CTLMAX}"  # tokens come from start()
    side.tokens["CTLMAX"] = "hugetlb.2MB.max"
    assert side.expand(["^/x", "$/{CTLMAX}", 3]) == ["/r/x", "/r/s/hugetlb.2MB.max", 3]
    assert time.time() > 0
