"""Where a new process lands: the cgroup of the task that forked it, at fork time.

With fork events (the default as root, --lineage trace) neither a double fork (the child is
reparented to init before it is first seen) nor CLONE_PARENT (the child's parent is its
forker's parent, as for runc's container init) lets a process leave a limited cgroup.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmemfs.lineage import Exit, Fork, Lost, parse_line
from dmemfs.testing import Mounted
from tests.conftest import REGION

CLONE_PARENT_EXEC = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static char stack[1 << 16];
static char **cmd;
static int run(void *arg) { execvp(cmd[0], cmd); perror("execvp"); return 127; }
/* Clone a child with CLONE_PARENT (its parent is our parent) running argv[1..]; wait until
   it exits (the pipe closes) without being able to reap it. */
int main(int argc, char **argv) {
    int fds[2];
    char c;
    cmd = argv + 1;
    if (argc < 2 || pipe(fds)) return 2;
    if (clone(run, stack + sizeof stack, CLONE_PARENT | SIGCHLD, NULL) < 0) {
        perror("clone");
        return 1;
    }
    close(fds[1]);
    while (read(fds[0], &c, 1) > 0) ;
    return 0;
}
"""


def _limited(mnt: Mounted) -> str:
    mnt.write("cgroup.subtree_control", "+dmem")
    os.mkdir(os.path.join(mnt.cgroup, "lim"))
    mnt.write("lim/dmem.max", f"{REGION} 64M")
    return os.path.join(mnt.cgroup, "lim")


def _xe(mnt: Mounted) -> str:
    dev = os.path.join(mnt.dri, "renderD128")
    return f"{sys.executable} -m dmemfs xe {dev} GEM_CREATE size=1G placement=vram0"


def _lineage(mnt: Mounted) -> str:
    text = Path(mnt.debug, "daemon").read_text()
    return next(line for line in text.splitlines() if line.startswith("lineage "))


def test_fork_events_are_used_as_root(mnt: Mounted) -> None:
    if os.geteuid() != 0:
        pytest.skip("fork events need root")
    assert _lineage(mnt) == "lineage fork events"


@pytest.mark.dmemfs_args("--lineage", "trace")
def test_a_double_fork_does_not_escape_the_limit(mnt: Mounted, tmp_path: Path) -> None:
    lim = _limited(mnt)
    out = tmp_path / "out"
    # The subshell outlives its parent: it is reparented before it forks the client.
    script = (f"echo $$ > {lim}/cgroup.procs; "
              f"(sleep 1; {_xe(mnt)} > {out} 2>&1; echo rc=$? >> {out}) &")
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while "rc=" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "the client never finished"
        time.sleep(0.1)
    text = out.read_text()
    assert "rc=1" in text and "Cannot allocate memory" in text, text
    assert mnt.read("dmem.current") == f"{REGION} 0\n"


@pytest.mark.dmemfs_args("--lineage", "trace")
def test_clone_parent_lands_in_the_forkers_cgroup(mnt: Mounted, tmp_path: Path) -> None:
    lim = _limited(mnt)
    exe = tmp_path / "clone-parent-exec"
    src = tmp_path / "clone-parent-exec.c"
    src.write_text(CLONE_PARENT_EXEC)
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    # sh joins lim, then its clone-parent child is created by it but parented to this test.
    res = subprocess.run(["sh", "-c", f"echo $$ > {lim}/cgroup.procs; exec {exe} {_xe(mnt)}"],
                         capture_output=True, text=True, timeout=60)
    assert "Cannot allocate memory" in res.stderr, res.stdout + res.stderr
    assert mnt.read("dmem.current") == f"{REGION} 0\n"
    with contextlib.suppress(ChildProcessError):  # reap the clone-parent child (ours)
        os.waitpid(-1, os.WNOHANG)


@pytest.mark.dmemfs_args("--lineage", "trace")
def test_children_follow_the_forker_and_members_leave_on_exit(mnt: Mounted) -> None:
    a, b = os.path.join(mnt.cgroup, "a"), os.path.join(mnt.cgroup, "b")
    os.mkdir(a)
    os.mkdir(b)
    script = (f"echo $$ > {a}/cgroup.procs; sleep 60 & echo $!; "
              f"echo $$ > {b}/cgroup.procs; sleep 60 & echo $!; wait")
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    children = []
    try:
        assert proc.stdout is not None
        children = [int(proc.stdout.readline()), int(proc.stdout.readline())]
        assert mnt.read("a/cgroup.procs") == f"{children[0]}\n"
        assert sorted(mnt.read("b/cgroup.procs").split()) == sorted(
            [str(proc.pid), str(children[1])])
    finally:
        for pid in children:
            os.kill(pid, 9)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert mnt.read("a/cgroup.procs") == mnt.read("b/cgroup.procs") == ""
    os.rmdir(a)
    os.rmdir(b)


def test_trace_lines_are_parsed_from_the_right() -> None:
    """A process chooses its own command name: it cannot forge the fields dmemfs reads."""
    fork = ("  x-1 (1) [000] . 1.0: a-1234   (   1200) [001] .....   946.683824: "
            "task_newtask: pid=1240 comm=x clone_flags=1200000 oom_score_adj=0")
    assert parse_line(fork) == Fork(946683824000, 1200, 1234, 1240, False)
    thread = ("python-7 (  7) [000] ..... 1.000001: task_newtask: pid=9 comm=t "
              "clone_flags=3d0f00 oom_score_adj=0")
    assert parse_line(thread) == Fork(1000001000, 7, 7, 9, True)
    exit_ = ("sh-42 (  40) [000] ..... 2.5: sched_process_exit: comm=a b pid=42 prio=120 "
             "group_dead=true")
    assert parse_line(exit_) == Exit(2500000000, 42, 40, True)
    assert parse_line("CPU:1 [LOST 12 EVENTS]") == Lost()
    assert parse_line("garbage") is None
