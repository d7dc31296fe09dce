"""Permissions as a non-root user on an --allow-other mount: delegation and migration checks."""

from __future__ import annotations

import os
import subprocess

import pytest

from dmemfs.testing import Mounted

NOBODY = 65534
pytestmark = pytest.mark.dmemfs_args("--allow-other")


def as_nobody(script: str) -> subprocess.CompletedProcess[str]:
    """Run a bash script as uid/gid 65534 with no supplementary groups.

    bash, not sh: dash prints "I/O error" for every failed echo, hiding the errno.
    """
    return subprocess.run(["bash", "-c", script], user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, timeout=30)


def delegate(mnt: Mounted, name: str) -> str:
    """mkdir cgroup/<name> and chown it (dir, cgroup.procs/threads/subtree_control) to nobody."""
    path = os.path.join(mnt.cgroup, name)
    os.mkdir(path)
    for entry in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        os.chown(os.path.join(path, entry), NOBODY, NOBODY)
    return path


def test_unprivileged_user_cannot_write_root_files(mnt: Mounted) -> None:
    res = as_nobody(f"echo +dmem > {mnt.cgroup}/cgroup.subtree_control")
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = as_nobody(f"mkdir {mnt.cgroup}/x")
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = as_nobody(f"cat {mnt.cgroup}/cgroup.controllers")
    assert res.returncode == 0 and res.stdout == "dmem\n"


def test_delegated_subtree(mnt: Mounted) -> None:
    a = delegate(mnt, "a")
    mnt.write("cgroup.subtree_control", "+dmem")
    # The delegatee may build its own subtree and enable controllers in it ...
    res = as_nobody(f"mkdir {a}/c1 {a}/c2 && echo +dmem > {a}/cgroup.subtree_control")
    assert res.returncode == 0, res.stderr
    st = os.stat(os.path.join(a, "c1"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    st = os.stat(os.path.join(a, "c1", "dmem.max"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    # ... but not change the limits the delegator gives it.
    st = os.stat(os.path.join(a, "dmem.max"))
    assert st.st_uid == 0
    res = as_nobody(f"echo 'drm/0000:03:00.0/vram0 1' > {a}/dmem.max")
    assert res.returncode != 0 and "Permission denied" in res.stderr


def test_migration_needs_write_access_to_common_ancestor(mnt: Mounted) -> None:
    a = delegate(mnt, "a")
    os.mkdir(os.path.join(a, "c1"))
    os.chown(os.path.join(a, "c1"), NOBODY, NOBODY)
    os.chown(os.path.join(a, "c1", "cgroup.procs"), NOBODY, NOBODY)
    # From the root cgroup into its delegated cgroup: the common ancestor is the root,
    # whose cgroup.procs nobody cannot write → EACCES ("Permission denied").
    res = as_nobody(f"echo $$ > {a}/cgroup.procs")
    assert res.returncode != 0 and "Permission denied" in res.stderr
    # Once the delegator placed it in a/, moves inside the delegated subtree work.
    res = as_nobody(
        "sleep 0.2 & pid=$!; "
        f"echo $pid > {a}/cgroup.procs 2>/dev/null && echo moved-by-nobody; "
        "wait"
    )
    assert "moved-by-nobody" not in res.stdout
    proc = subprocess.Popen(["sleep", "30"], user=NOBODY, group=NOBODY, extra_groups=[])
    try:
        mnt.write("a/cgroup.procs", str(proc.pid))
        res = as_nobody(f"echo {proc.pid} > {a}/c1/cgroup.procs && cat {a}/c1/cgroup.procs")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [str(proc.pid)]
        # Out of the delegated subtree into a root-owned sibling, even if that sibling's
        # cgroup.procs is writable: the common ancestor is the root → EACCES.
        os.mkdir(os.path.join(mnt.cgroup, "b"))
        os.chmod(os.path.join(mnt.cgroup, "b", "cgroup.procs"), 0o666)
        res = as_nobody(f"echo {proc.pid} > {mnt.cgroup}/b/cgroup.procs")
        assert res.returncode != 0 and "Permission denied" in res.stderr
        assert mnt.read("a/c1/cgroup.procs").split() == [str(proc.pid)]
    finally:
        proc.kill()
        proc.wait()
