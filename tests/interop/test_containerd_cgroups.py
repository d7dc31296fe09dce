"""containerd/cgroups (Go, Debian's golang-github-containerd-cgroups-dev) against dmemfs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dmemfs.testing import Mounted
from tests.conftest import REGION

SOURCE = Path(__file__).parent / "containerd_cgroups" / "main.go"
GOPATH = "/usr/share/gocode"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> str:
    missing = [what for what, ok in (
        ("golang-go", shutil.which("go") is not None),
        ("golang-github-containerd-cgroups-dev",
         os.path.isdir(f"{GOPATH}/src/github.com/containerd/cgroups/v2")),
    ) if not ok]
    if missing:
        reason = f"{', '.join(missing)} not installed (scripts/bootstrap installs them)"
        if os.environ.get("DMEMFS_REQUIRE_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("go")
    env = dict(os.environ, GOPATH=GOPATH, GO111MODULE="off", GOCACHE=str(out / "cache"),
               GOFLAGS="")
    subprocess.run(["go", "build", "-o", str(out / "client"), str(SOURCE)], env=env,
                   check=True, cwd=out, timeout=600)
    return str(out / "client")


def test_containerd_cgroups_manager(mnt: Mounted, client: str) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        res = subprocess.run([client, mnt.cgroup, str(proc.pid), REGION],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.splitlines() == [
            "root controllers: dmem",
            "controllers: dmem",
            f"procs: [{proc.pid}]",
            "stat: ok (*stats.Metrics)",
            f"dmem.max: {REGION} 1073741824",
            "deleted: true",
        ]
    finally:
        proc.kill()
        proc.wait()
    # What the library did is visible through the files: dmem enabled on the way down,
    # the group gone, the process back in the root.
    assert mnt.read("cgroup.subtree_control") == "dmem\n"
    assert mnt.read("interop/cgroup.subtree_control") == "dmem\n"
    assert not os.path.exists(os.path.join(mnt.cgroup, "interop", "job"))
