"""Debian's runc and crun run a container on dmemfs under `dmemfs as-cgroup2`: the default
OCI config (`runc spec`, with its eBPF device rules), a busybox rootfs, dmem limits in
`linux.resources.unified`, a GPU client inside the container."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmemfs.testing import Mounted
from tests.conftest import REGION
from tests.interop.tools import require_tool

CLIENT = ('exec 3<>/dev/dri/renderD128; echo "GEM_CREATE size=64M placement=vram0" >&3; '
          "cat <&3; exec sleep 600")


class Runtime:
    def __init__(self, name: str, mnt: Mounted, bundle: Path, state: Path) -> None:
        self.name = name
        self.mnt = mnt
        self.bundle = bundle
        self.state = state

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``RUNTIME ARGS`` under as-cgroup2, stdio off the pipes a detached container
        would keep open."""
        log = self.bundle / "runtime.log"
        with open(log, "w") as out:
            res = subprocess.run(
                [sys.executable, "-m", "dmemfs", "as-cgroup2", "--at", "/sys/fs/cgroup",
                 self.mnt.path, "--", self.name, "--root", str(self.state), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.bundle, timeout=120)
        res.stdout = log.read_text()
        if check:
            assert res.returncode == 0, f"{self.name} {' '.join(args)}: {res.stdout}"
        return res

    def state_of(self, cid: str) -> dict[str, object]:
        return dict(json.loads(self("state", cid).stdout))


@pytest.fixture(params=["runc", "crun"])
def runtime(request: pytest.FixtureRequest, mnt: Mounted, tmp_path: Path
            ) -> Iterator[Runtime]:
    name = request.param
    require_tool(name, name)
    busybox = require_tool("busybox", "busybox-static")
    bundle = tmp_path / "bundle"
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(busybox, bundle / "rootfs" / "bin" / "busybox")
    for applet in ("sh", "cat", "sleep", "stat"):
        (bundle / "rootfs" / "bin" / applet).symlink_to("busybox")
    subprocess.run([name, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    assert config["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", CLIENT]
    config["linux"]["resources"]["unified"] = {"dmem.max": f"{REGION} 1G",
                                               "dmem.min": f"{REGION} 256M"}
    config["mounts"].append({"destination": "/dev/dri/renderD128", "type": "bind",
                             "source": os.path.join(mnt.dri, "renderD128"),
                             "options": ["bind"]})
    (bundle / "config.json").write_text(json.dumps(config))
    rt = Runtime(name, mnt, bundle, tmp_path / "state")
    try:
        yield rt
    finally:
        rt("delete", "--force", "job", check=False)


def _wait(predicate: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_container_lifecycle(runtime: Runtime, mnt: Mounted) -> None:
    # crun enables only the controllers it knows in the parents (runc enables every one in
    # cgroup.controllers), so dmem is enabled first, as a host would (systemd, say).
    mnt.write("cgroup.subtree_control", "+dmem")
    job = Path(mnt.cgroup, "job")
    runtime("run", "--detach", "job")
    state = runtime.state_of("job")
    assert state["status"] == "running"
    pid = state["pid"]
    assert isinstance(pid, int)
    # The container's init is in its cgroup, the limits landed, the GPU client inside the
    # container was charged there.
    assert (job / "cgroup.procs").read_text() == f"{pid}\n"
    assert (job / "dmem.max").read_text() == f"{REGION} 1073741824\n"
    assert (job / "dmem.min").read_text() == f"{REGION} 268435456\n"
    _wait(lambda: (job / "dmem.current").read_text() == f"{REGION} 67108864\n",
          "the GPU client's charge")
    # The default config's device rules became a recorded eBPF device program.
    programs = Path(mnt.debug, "cgroup-bpf").read_text().splitlines()
    assert len(programs) == 1 and programs[0].startswith("/job device id=")
    # Inside, /sys/fs/cgroup is the mount's hierarchy (the runtime's cgroup2 mount is refused,
    # and it binds the /sys/fs/cgroup it sees), and statfs says cgroup2 there too.
    res = runtime("exec", "job", "sh", "-c",
                  "cat /sys/fs/cgroup/job/dmem.max; stat -f -c %t /sys/fs/cgroup")
    assert res.stdout == f"{REGION} 1073741824\n63677270\n"
    # exec joins the container's cgroup.
    runtime("exec", "--detach", "job", "sleep", "600")
    _wait(lambda: len((job / "cgroup.procs").read_text().split()) == 2, "the exec'd process")
    # update rewrites the limit (and the device program, replacing the old one).
    update = runtime.bundle / "update.json"
    update.write_text(json.dumps({"unified": {"dmem.max": f"{REGION} 2G"}}))
    runtime("update", "--resources", str(update), "job")
    assert (job / "dmem.max").read_text() == f"{REGION} 2147483648\n"
    assert len(Path(mnt.debug, "cgroup-bpf").read_text().splitlines()) == 1
    # pause/resume go through cgroup.freeze and cgroup.events.
    runtime("pause", "job")
    assert runtime.state_of("job")["status"] == "paused"
    assert (job / "cgroup.freeze").read_text() == "1\n"
    runtime("resume", "job")
    assert runtime.state_of("job")["status"] == "running"
    assert (job / "cgroup.freeze").read_text() == "0\n"
    # kill, then delete removes the cgroup, its device program and frees the GPU memory.
    runtime("kill", "job", "KILL")
    _wait(lambda: runtime.state_of("job")["status"] == "stopped", "the container to stop")
    runtime("delete", "job")
    assert not job.exists()
    assert Path(mnt.debug, "cgroup-bpf").read_text() == ""
    assert Path(mnt.cgroup, "dmem.current").read_text() == f"{REGION} 0\n"
