"""Owners, modes and user.* xattrs of cgroup directories and interface files (docs/kernel-model.md
§14)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from dmemfs.testing import Mounted

NOBODY = 65534
#: kernfs: at most this many user.* xattrs per node, and this many bytes of values in total.
MAX_XATTRS = 128
MAX_XATTR_BYTES = 128 << 10


def _errno(fn, *args, **kwargs) -> int:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


def _owner_mode(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _as_nobody(script: str) -> subprocess.CompletedProcess[str]:
    """``bash -c script`` as uid/gid 65534 with no supplementary groups and umask 022."""
    return subprocess.run(["bash", "-c", script], user=NOBODY, group=NOBODY, extra_groups=[],
                          umask=0o022, capture_output=True, text=True, timeout=30)


def test_chmod_chown_of_dirs_and_files_persist(mnt: Mounted, dmem_child: str) -> None:
    a = dmem_child
    assert _owner_mode(a) == (0, 0, 0o755)
    os.chown(a, 1000, 2000)
    os.chmod(a, 0o750)
    assert _owner_mode(a) == (1000, 2000, 0o750)
    assert stat.S_ISDIR(os.stat(a).st_mode)
    procs, dmem_max = os.path.join(a, "cgroup.procs"), os.path.join(a, "dmem.max")
    os.chown(procs, 1000, 2000)
    os.chmod(dmem_max, 0o600)
    os.chown(dmem_max, -1, 3000)  # -1: leave the owner alone
    assert _owner_mode(procs) == (1000, 2000, 0o644)
    assert _owner_mode(dmem_max) == (0, 3000, 0o600)
    assert stat.S_ISREG(os.stat(dmem_max).st_mode)
    # Other files and other cgroups are unaffected.
    assert _owner_mode(os.path.join(a, "dmem.min")) == (0, 0, 0o644)
    assert _owner_mode(os.path.join(a, "cgroup.threads")) == (0, 0, 0o644)
    os.mkdir(os.path.join(mnt.cgroup, "b"))
    assert _owner_mode(os.path.join(mnt.cgroup, "b", "cgroup.procs")) == (0, 0, 0o644)
    # Still there after other requests.
    assert _owner_mode(a) == (1000, 2000, 0o750)
    assert _owner_mode(dmem_max) == (0, 3000, 0o600)
    # Disabling and re-enabling dmem recreates its files with default owner and mode.
    mnt.write("cgroup.subtree_control", "-dmem")
    mnt.write("cgroup.subtree_control", "+dmem")
    assert _owner_mode(dmem_max) == (0, 0, 0o644)
    assert _owner_mode(procs) == (1000, 2000, 0o644)


@pytest.mark.dmemfs_args("--allow-other")
def test_delegation_new_cgroups_and_files_belong_to_their_creator(mnt: Mounted) -> None:
    mnt.write("cgroup.subtree_control", "+dmem")
    a = os.path.join(mnt.cgroup, "a")
    os.mkdir(a)
    os.mkdir(os.path.join(a, "c"))  # made by root before the delegation
    for path in (a, *(os.path.join(a, n) for n in
                      ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control"))):
        os.chown(path, NOBODY, NOBODY)
    res = _as_nobody(f"mkdir {a}/b")
    assert res.returncode == 0, res.stderr
    b = os.path.join(a, "b")
    assert _owner_mode(b) == (NOBODY, NOBODY, 0o755)
    assert _owner_mode(os.path.join(b, "cgroup.procs")) == (NOBODY, NOBODY, 0o644)
    assert _owner_mode(os.path.join(b, "cgroup.max.depth")) == (NOBODY, NOBODY, 0o644)
    # The delegatee enables dmem for its children: those files are its own.
    res = _as_nobody(f"echo +dmem > {a}/cgroup.subtree_control")
    assert res.returncode == 0, res.stderr
    assert mnt.read("a/cgroup.subtree_control") == "dmem\n"
    for child in ("b", "c"):
        for name in ("dmem.max", "dmem.min", "dmem.current"):
            path = os.path.join(a, child, name)
            assert _owner_mode(path)[:2] == (NOBODY, NOBODY), path
    assert _owner_mode(os.path.join(a, "c", "cgroup.procs")) == (0, 0, 0o644)
    # a's own resource files distribute the parent's resource: they stay with the delegator.
    assert _owner_mode(os.path.join(a, "dmem.max")) == (0, 0, 0o644)
    res = _as_nobody("echo 'drm/0000:03:00.0/vram0 1G' > " + os.path.join(a, "dmem.max"))
    assert res.returncode != 0
    assert "Permission denied" in res.stderr
    res = _as_nobody(f"echo 'drm/0000:03:00.0/vram0 1G' > {b}/dmem.max && cat {b}/dmem.max")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "drm/0000:03:00.0/vram0 1073741824\n"
    # Migration needs write access to the common ancestor's cgroup.procs (docs/kernel-model.md
    # §14): the delegatee may move its processes inside a, not into a from outside.
    res = _as_nobody(f"echo 0 > {b}/cgroup.procs")
    assert res.returncode != 0
    assert "Permission denied" in res.stderr
    sleeper = subprocess.Popen(["sleep", "30"], user=NOBODY, group=NOBODY, extra_groups=[])
    try:
        mnt.write("a/b/cgroup.procs", str(sleeper.pid))
        os.mkdir(os.path.join(a, "b2"))
        os.chown(os.path.join(a, "b2", "cgroup.procs"), NOBODY, NOBODY)
        res = _as_nobody(f"echo {sleeper.pid} > {a}/b2/cgroup.procs")
        assert res.returncode == 0, res.stderr
        assert mnt.read("a/b2/cgroup.procs") == f"{sleeper.pid}\n"
        for dst in (f"{a}/c", mnt.cgroup):  # root-owned cgroup.procs
            res = _as_nobody(f"echo {sleeper.pid} > {dst}/cgroup.procs")
            assert "Permission denied" in res.stderr, dst
        assert mnt.read("a/b2/cgroup.procs") == f"{sleeper.pid}\n"
    finally:
        sleeper.kill()
        sleeper.wait()
    # Outside the delegated subtree nobody may create anything.
    res = _as_nobody(f"mkdir {mnt.cgroup}/x")
    assert res.returncode != 0
    assert "Permission denied" in res.stderr
    assert not os.path.exists(os.path.join(mnt.cgroup, "x"))


def test_mkdir_mode_honours_umask(mnt: Mounted) -> None:
    old = os.umask(0o027)
    try:
        os.mkdir(os.path.join(mnt.cgroup, "a"))
        os.mkdir(os.path.join(mnt.cgroup, "b"), 0o700)
        os.umask(0)
        os.mkdir(os.path.join(mnt.cgroup, "c"), 0o777)
        os.mkdir(os.path.join(mnt.cgroup, "c", "d"), 0o751)
    finally:
        os.umask(old)
    assert _owner_mode(os.path.join(mnt.cgroup, "a")) == (0, 0, 0o750)
    assert _owner_mode(os.path.join(mnt.cgroup, "b")) == (0, 0, 0o700)
    assert _owner_mode(os.path.join(mnt.cgroup, "c")) == (0, 0, 0o777)
    assert _owner_mode(os.path.join(mnt.cgroup, "c", "d")) == (0, 0, 0o751)
    # Interface files keep their cgroupfs modes whatever the umask.
    assert _owner_mode(os.path.join(mnt.cgroup, "a", "cgroup.procs"))[2] == 0o644


def test_user_xattrs_roundtrip(mnt: Mounted) -> None:
    a = os.path.join(mnt.cgroup, "a")
    b = os.path.join(mnt.cgroup, "b")
    os.mkdir(a)
    os.mkdir(b)
    assert os.listxattr(a) == []
    os.setxattr(a, "user.owner", b"team-1")
    os.setxattr(a, "user.empty", b"")
    assert os.getxattr(a, "user.owner") == b"team-1"
    assert os.getxattr(a, "user.empty") == b""
    assert sorted(os.listxattr(a)) == ["user.empty", "user.owner"]
    assert os.listxattr(b) == []
    os.setxattr(a, "user.owner", b"team-2")
    assert os.getxattr(a, "user.owner") == b"team-2"
    assert _errno(os.setxattr, a, "user.owner", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert _errno(os.setxattr, a, "user.new", b"x", os.XATTR_REPLACE) == errno.ENODATA
    assert os.getxattr(a, "user.owner") == b"team-2"
    os.removexattr(a, "user.owner")
    assert _errno(os.getxattr, a, "user.owner") == errno.ENODATA
    assert _errno(os.removexattr, a, "user.owner") == errno.ENODATA
    assert os.listxattr(a) == ["user.empty"]
    os.setxattr(mnt.cgroup, "user.root", b"1")  # the root cgroup too
    assert os.getxattr(mnt.cgroup, "user.root") == b"1"


def test_xattr_namespaces_and_missing_names(mnt: Mounted) -> None:
    a = os.path.join(mnt.cgroup, "a")
    os.mkdir(a)
    assert _errno(os.getxattr, a, "user.missing") == errno.ENODATA
    assert _errno(os.removexattr, a, "user.missing") == errno.ENODATA
    for name in ("system.x", "nouser.x"):  # kernfs keeps user.*, trusted.* and security.*
        assert _errno(os.setxattr, a, name, b"1") == errno.EOPNOTSUPP, name
        assert _errno(os.getxattr, a, name) == errno.EOPNOTSUPP, name
        assert _errno(os.removexattr, a, name) == errno.EOPNOTSUPP, name
    assert _errno(os.setxattr, a, "user.", b"1") == errno.EINVAL
    assert os.listxattr(a) == []


@pytest.mark.dmemfs_args("--allow-other")
def test_xattrs_of_every_namespace_on_dirs_and_files(mnt: Mounted) -> None:
    a = os.path.join(mnt.cgroup, "a")
    os.mkdir(a)
    targets = [a, os.path.join(a, "cgroup.procs"), os.path.join(a, "cgroup.stat"), mnt.cgroup]
    for i, path in enumerate(targets):
        for name in ("user.k", "trusted.k", "security.k"):
            os.setxattr(path, name, f"{name}={i}".encode())
        assert sorted(os.listxattr(path)) == ["security.k", "trusted.k", "user.k"]
        assert os.getxattr(path, "trusted.k") == f"trusted.k={i}".encode()
    os.removexattr(targets[1], "security.k")
    assert sorted(os.listxattr(targets[1])) == ["trusted.k", "user.k"]
    assert sorted(os.listxattr(targets[2])) == ["security.k", "trusted.k", "user.k"]
    # An unprivileged reader sees no trusted.* (simple_xattr_list()) and cannot read one.
    script = (f"import errno, os\nprint(sorted(os.listxattr({targets[2]!r})))\n"
              f"try:\n    os.getxattr({targets[2]!r}, 'trusted.k')\n"
              "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    res = _as_nobody(f"/usr/bin/python3 -c \"{script}\"")
    assert res.stdout.splitlines() == ["['security.k', 'user.k']", "ENODATA"], res
    # Files that vanish take their xattrs with them: dmem files of a -dmem/+dmem cycle.
    mnt.write("cgroup.subtree_control", "+dmem")
    dmem_max = os.path.join(a, "dmem.max")
    os.setxattr(dmem_max, "user.x", b"1")
    mnt.write("cgroup.subtree_control", "-dmem")
    mnt.write("cgroup.subtree_control", "+dmem")
    assert os.listxattr(dmem_max) == []


def test_xattr_limits(mnt: Mounted) -> None:
    a = os.path.join(mnt.cgroup, "a")
    os.mkdir(a)
    for i in range(MAX_XATTRS):
        os.setxattr(a, f"user.k{i}", b"v")
    assert len(os.listxattr(a)) == MAX_XATTRS
    assert _errno(os.setxattr, a, "user.one-too-many", b"v") == errno.ENOSPC
    assert _errno(os.getxattr, a, "user.one-too-many") == errno.ENODATA
    # kernfs counts the new value before dropping the old one: even replacing fails now.
    assert _errno(os.setxattr, a, "user.k0", b"replaced") == errno.ENOSPC
    os.setxattr(a, "trusted.t", b"v")  # only user.* is limited
    os.removexattr(a, "user.k1")
    os.setxattr(a, "user.k0", b"replaced")
    assert os.getxattr(a, "user.k0") == b"replaced"
    os.setxattr(a, "user.one-too-many", b"v")
    assert len(os.listxattr(a)) == MAX_XATTRS + 1
    # The total size of the values is limited too.
    b = os.path.join(mnt.cgroup, "b")
    os.mkdir(b)
    big = 60000
    os.setxattr(b, "user.big1", b"x" * big)
    os.setxattr(b, "user.big2", b"y" * big)
    assert big * 3 > MAX_XATTR_BYTES >= big * 2
    assert _errno(os.setxattr, b, "user.big3", b"z" * big) == errno.ENOSPC
    assert sorted(os.listxattr(b)) == ["user.big1", "user.big2"]
    assert os.getxattr(b, "user.big2") == b"y" * big
    # Replacing counts the new size before the old one goes: 2 x 60000 + 60000 > 128 KiB.
    assert _errno(os.setxattr, b, "user.big2", b"w" * big) == errno.ENOSPC
    assert _errno(os.setxattr, b, "user.big", b"v" * 65537) == errno.E2BIG  # the VFS's limit
