"""The pytest plugin, tested the way another project uses it (pytester, a separate run)."""

from __future__ import annotations

import pytest

from tests.conftest import _require_fuse

pytest_plugins = ["pytester"]

EXAMPLE = '''
import os

import pytest

REGION = "drm/0000:03:00.0/vram0"


def test_limit_and_allocation(dmemfs):
    dmemfs.root.write("cgroup.subtree_control", "+dmem")
    job = dmemfs.root.child("job")
    job.write("dmem.max", f"{REGION} 1G")
    assert job.limits("dmem.max") == {REGION: "1073741824"}
    with dmemfs.device() as gpu:
        bo = gpu.gem_create(64 << 20, placement=("vram0",))
        assert bo.placement == "vram0"
        assert dmemfs.root.limits("dmem.current") == {REGION: str(64 << 20)}
    assert dmemfs.root.limits("dmem.current") == {REGION: "0"}


@pytest.mark.dmemfs(devices=["xe,pci=0000:0a:00.0,vram0=2G,vram1=2G"], profile="6.14")
def test_marker_configures_the_mount(dmemfs):
    assert dmemfs.root.read("dmem.capacity").splitlines() == [
        "drm/0000:0a:00.0/vram0 2147483648", "drm/0000:0a:00.0/vram1 2147483648"]
    assert not os.path.exists(os.path.join(dmemfs.cgroup_root, "x"))
    os.mkdir(os.path.join(dmemfs.cgroup_root, "x"))
    dmemfs.root.write("cgroup.subtree_control", "+dmem")
    assert "dmem.peak" not in os.listdir(os.path.join(dmemfs.cgroup_root, "x"))


@pytest.mark.parametrize("dmemfs", [{"pinning": "posted"}], indirect=True)
def test_indirect_parametrization(dmemfs):
    with dmemfs.device() as gpu, pytest.raises(OSError) as info:
        gpu.gem_create(64 << 20, placement=("vram0",), flags=("PINNED",))
    assert info.value.strerror == "No space left on device"


def test_each_test_gets_a_fresh_mount(dmemfs):
    assert os.listdir(dmemfs.cgroup_root).count("job") == 0
'''


def test_plugin_fixture_in_another_project(pytester: pytest.Pytester) -> None:
    _require_fuse()
    pytester.makepyfile(test_example=EXAMPLE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_plugin_skips_without_fuse(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DMEMFS_REQUIRE_FUSE", raising=False)
    pytester.makepyfile(test_skip="def test_needs_fuse(dmemfs):\n    pass\n")
    pytester.makeconftest(
        "import dmemfs.pytest_plugin as p\n"
        "p.fuse_available = lambda: '/dev/fuse is missing'\n"
    )
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*dmemfs: FUSE unavailable: /dev/fuse is missing*"])


def test_plugin_fails_without_fuse_when_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMEMFS_REQUIRE_FUSE", "1")
    pytester.makepyfile(test_skip="def test_needs_fuse(dmemfs):\n    pass\n")
    pytester.makeconftest(
        "import dmemfs.pytest_plugin as p\n"
        "p.fuse_available = lambda: '/dev/fuse is missing'\n"
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
