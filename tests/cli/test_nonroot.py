"""dmemfs used by a user other than root (uid 65534), for real: mounting through fusermount3,
/dev/fuse's mode, user_allow_other, what the mounting user may do in the root-owned tree, and
what others see of that mount.

System files are never changed: the scenario runs in a private mount namespace (root, then
setpriv to uid 65534) where /dev/fuse and /etc/fuse.conf are replaced by bind mounts, and
where directories only root may enter on the way to this interpreter and this checkout (e.g.
/root for a pyenv Python, a 0700 temporary clone in CI) are made passable the same way, by
binding open views over them.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _require_fuse

ROOT = Path(__file__).resolve().parents[2]
USER = 65534
FUSE_MAJOR, FUSE_MINOR = 10, 229


def _passable(paths: list[str], views: Path) -> list[str]:
    """Shell commands that let others reach ``paths`` (directories): over each directory on
    the way that others may not pass, bind a 0755 directory holding what lies beyond it
    (the next directory on the way; every entry when it is one of ``paths`` itself)."""
    whole: set[str] = set()  # closed directories to show entirely
    partly: dict[str, set[str]] = {}  # closed directories to show some entries of
    for path in paths:
        parts = Path(path).parts
        for i in range(1, len(parts)):
            directory = str(Path(*parts[:i + 1]))
            if os.stat(directory).st_mode & 0o001:
                continue
            if i == len(parts) - 1:
                whole.add(directory)
            else:
                partly.setdefault(directory, set()).add(parts[i + 1])
    cmds = []
    for n, directory in enumerate(sorted(whole | partly.keys())):
        entries = os.listdir(directory) if directory in whole else partly[directory]
        view = views / f"view{n}"
        cmds.append(f"mkdir -p {shlex.quote(str(view))}")
        for name in sorted(entries):
            source, target = os.path.join(directory, name), str(view / name)
            if os.path.islink(source):
                cmds.append(f"ln -s {shlex.quote(os.readlink(source))} {shlex.quote(target)}")
                continue
            make = "mkdir -p" if os.path.isdir(source) else "touch"
            cmds += [f"{make} {shlex.quote(target)}",
                     f"mount --bind {shlex.quote(source)} {shlex.quote(target)}"]
        cmds += [f"chmod 755 {shlex.quote(str(view))}",
                 f"mount --rbind {shlex.quote(str(view))} {shlex.quote(directory)}"]
    return cmds


@pytest.fixture
def scene() -> Iterator[Path]:
    _require_fuse()
    if os.geteuid() != 0:
        pytest.skip("needs root to set up another user's view")
    tmp = Path(tempfile.mkdtemp(prefix="dmemfs-nonroot-"))
    os.chmod(tmp, 0o755)
    (tmp / "pids").write_text("")  # the user's daemons, killed at the end whatever happens
    os.chmod(tmp / "pids", 0o666)
    try:
        yield tmp
    finally:
        for pid in (tmp / "pids").read_text().split():
            try:  # only a daemon of this test (the pid may have been reused meanwhile)
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    ours = str(tmp).encode() in f.read()
                if ours:
                    os.kill(int(pid), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def run_as_user(tmp: Path, steps: list[tuple[str, str]], *, fuse_mode: int,
                fuse_conf: str) -> dict[str, tuple[int, str]]:
    """Run ``steps`` ((name, bash command)) in a private mount namespace, each as uid 65534
    unless its name starts with ``root:``; return name → (exit status, stdout+stderr)."""
    setup = [
        f"rm -f {tmp}/fuse {tmp}/fuse.conf",
        f"mknod -m {fuse_mode:o} {tmp}/fuse c {FUSE_MAJOR} {FUSE_MINOR}",
        f"mount --bind {tmp}/fuse /dev/fuse",
        f"printf %s {shlex.quote(fuse_conf)} > {tmp}/fuse.conf",
        f"mount --bind {tmp}/fuse.conf /etc/fuse.conf",
        f"mkdir -p {tmp}/mnt {tmp}/run {tmp}/views",
        f"chown {USER}:{USER} {tmp}/mnt {tmp}/run",
        f"chmod 700 {tmp}/run",
        *_passable([os.path.realpath(sys.base_prefix), str(ROOT)], tmp / "views"),
    ]
    env = f"env HOME=/nonexistent XDG_RUNTIME_DIR={tmp}/run PATH={os.environ['PATH']}"
    as_user = f"setpriv --reuid={USER} --regid={USER} --clear-groups {env}"
    lines = ["set -u", *(f"{c} || exit 90" for c in setup), f"cd {tmp}"]
    for name, command in steps:
        prefix = "" if name.startswith("root:") else as_user + " "
        lines += [f"echo '=== {name}'",
                  f"{prefix}bash -c {shlex.quote(command)} 2>&1; echo \"=== rc $?\""]
    # Whatever happened: no mount of ours outlives the namespace, no daemon of ours lives on.
    lines += [f"fusermount3 -u -z {tmp}/mnt 2>/dev/null", "true"]
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                          "\n".join(lines)], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    results = {}
    for match in re.finditer(r"=== (\S+)\n(.*?)=== rc (\d+)\n", res.stdout, re.S):
        results[match.group(1)] = (int(match.group(3)), match.group(2))
    assert list(results) == [name for name, _ in steps], res.stdout + res.stderr
    return results


def dmemfs(*args: str) -> str:
    return " ".join([shlex.quote(sys.executable), "-m", "dmemfs", *map(shlex.quote, args)])


def listed(mnt: str, key: str) -> str:
    """A command printing ``key`` of ``mnt``'s row in `dmemfs list --json` (only that mount:
    the namespace also sees the machine's other mounts)."""
    code = ("import json, sys; print(*[r[sys.argv[2]] for r in json.load(sys.stdin) "
            "if r['mountpoint'] == sys.argv[1]])")
    return (f"{dmemfs('list', '--json')} | {shlex.quote(sys.executable)} -c "
            f"{shlex.quote(code)} {shlex.quote(mnt)} {key}")


def test_user_mounts_uses_and_unmounts_its_own_dmemfs(scene: Path) -> None:
    mnt = str(scene / "mnt")
    out = run_as_user(scene, [
        ("mount", dmemfs("mount", mnt)),
        ("pid", f"{listed(mnt, 'pid')} | tee -a {scene}/pids"),
        ("read", f"cat {mnt}/cgroup/dmem.capacity"),
        ("owner", f"stat -c '%u %a' {mnt}/cgroup {mnt}/cgroup/cgroup.subtree_control"),
        ("enable", f"echo +dmem > {mnt}/cgroup/cgroup.subtree_control"),
        ("mkdir", f"mkdir {mnt}/cgroup/mine"),
        ("device", dmemfs("xe", f"{mnt}/dev/dri/renderD128", "GEM_CREATE", "size=1M",
                          "placement=vram0")),
        ("status", f"{dmemfs('status', mnt)} | head -1"),
        ("root:status", dmemfs("status", mnt)),
        ("root:list", listed(mnt, "health")),
        ("as-cgroup2", dmemfs("as-cgroup2", mnt, "--", "true")),
        ("log", f"ls {scene}/run/dmemfs && cat {scene}/run/dmemfs/*.log"),
        ("umount", dmemfs("umount", mnt)),
        ("after", f"grep -c ' {mnt} ' /proc/self/mountinfo"),
    ], fuse_mode=0o666, fuse_conf="")
    assert out["mount"][0] == 0, out["mount"]
    assert re.fullmatch(rf"dmemfs: mounted {mnt} \(daemon pid \d+, log {scene}/run/dmemfs/"
                        r"\S+\.log\)\n", out["mount"][1])
    assert out["read"] == (0, f"drm/0000:03:00.0/vram0 {16 << 30}\n")
    # The tree is root's, whoever mounted it; the device file is everyone's.
    assert out["owner"] == (0, "0 555\n0 644\n")
    assert out["enable"][0] != 0 and "Permission denied" in out["enable"][1]
    assert out["mkdir"][0] != 0 and "Permission denied" in out["mkdir"][1]
    assert out["device"][0] == 0 and out["device"][1].startswith("handle=1 size=1048576 ")
    assert re.fullmatch(r"\d+\n", out["pid"][1])
    assert out["status"] == (0, f"dmemfs at {mnt}: profile 7.3, pinning intended, daemon "
                                f"pid {out['pid'][1]}")
    # Root itself cannot enter a FUSE mount made without --allow-other, and is told why.
    assert out["root:status"] == (1, f"dmemfs: {mnt} was mounted by uid {USER} without "
                                     "--allow-other: only that user can use it\n")
    assert out["root:list"] == (0, "no-access\n")
    assert out["as-cgroup2"][0] == 1
    assert out["as-cgroup2"][1].startswith("dmemfs: as-cgroup2: unshare(CLONE_NEWNS): ")
    assert "(needs root)" in out["as-cgroup2"][1]
    assert "INFO dmemfs.mount: mounted" in out["log"][1]
    assert "INFO dmemfs.commands: ready: serving" in out["log"][1]
    assert out["umount"] == (0, "")
    assert out["after"][1] == "0\n"


def test_mount_failures_say_why(scene: Path) -> None:
    mnt = str(scene / "mnt")
    out = run_as_user(scene, [
        ("allow-other", dmemfs("mount", mnt, "--allow-other")),
    ], fuse_mode=0o666, fuse_conf="# no user_allow_other\n")
    status, text = out["allow-other"]
    assert status == 1 and text.count("\n") == 1, text
    assert text.startswith(f"dmemfs: cannot mount at {mnt}: fusermount3: option allow_other "
                           "only allowed if 'user_allow_other' is set in /etc/fuse.conf (log: ")
    out = run_as_user(scene, [
        ("dev-fuse", dmemfs("mount", mnt)),
    ], fuse_mode=0o600, fuse_conf="")
    status, text = out["dev-fuse"]
    assert status == 1 and text.count("\n") == 1, text
    assert text.startswith(f"dmemfs: cannot mount at {mnt}: fuse: failed to open /dev/fuse: "
                           "Permission denied (log: ")


def test_allow_other_with_user_allow_other(scene: Path) -> None:
    mnt = str(scene / "mnt")
    out = run_as_user(scene, [
        ("mount", dmemfs("mount", mnt, "--allow-other")),
        ("pid", f"{listed(mnt, 'pid')} | tee -a {scene}/pids"),
        ("root:read", f"cat {mnt}/cgroup/cgroup.controllers"),
        ("root:list", listed(mnt, "allow_other")),
        ("root:umount", dmemfs("umount", mnt)),
    ], fuse_mode=0o666, fuse_conf="user_allow_other\n")
    assert out["mount"][0] == 0, out["mount"]
    assert out["root:read"] == (0, "dmem\n")
    assert out["root:list"] == (0, "True\n")
    assert out["root:umount"] == (0, "")
