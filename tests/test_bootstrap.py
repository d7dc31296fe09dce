"""scripts/bootstrap: says what it did, installs the interop tools only when asked, and waits
for a dpkg lock held by someone else instead of failing."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "scripts" / "bootstrap"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DMEMFS_REQUIRE_TOOLS", "DMEMFS_INTEROP")}
    env.update(extra)
    return env


def test_bootstrap_on_a_set_up_tree_says_it_has_nothing_to_do() -> None:
    """What scripts/test (and so every test run) does first."""
    interop = os.environ.get("DMEMFS_REQUIRE_TOOLS") == "1"
    res = subprocess.run([str(BOOTSTRAP)], capture_output=True, text=True, timeout=600,
                         env=_env(DMEMFS_REQUIRE_TOOLS="1") if interop else _env())
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    tail = (", interop tools included" if interop else
            "; interop tools not requested (scripts/bootstrap --interop adds them)")
    assert res.stderr == ("bootstrap: nothing to do: system packages and .venv are up to "
                          f"date{tail}\n")


def _fake_apt(tmp_path: Path, missing: str) -> dict[str, str]:
    """A PATH where dpkg-query reports ``missing`` as not installed and apt-get only records
    what it was asked to do."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg-query").write_text(
        "#!/bin/sh\nfor p; do :; done\n"
        f'[ "$p" = {missing} ] && exit 1\necho "install ok installed"\n')
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/apt.log\n')
    for tool in ("dpkg-query", "apt-get"):
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_interop_tools_only_when_asked(tmp_path: Path) -> None:
    env = _fake_apt(tmp_path, "golang-go")
    res = subprocess.run([str(BOOTSTRAP)], capture_output=True, text=True, timeout=600,
                         env=_env(**env))
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "apt.log").exists()
    for how in (["--interop"], []):
        extra = {} if how else {"DMEMFS_REQUIRE_TOOLS": "1"}  # what .ci/run sets
        res = subprocess.run([str(BOOTSTRAP), *how], capture_output=True, text=True,
                             timeout=600, env=_env(**env, **extra))
        assert res.returncode == 0, res.stderr
        assert res.stderr.splitlines() == [
            "bootstrap: installing golang-go with apt ...",
            "bootstrap: done: installed golang-go, interop tools included"]
        calls = (tmp_path / "apt.log").read_text().splitlines()
        assert calls == ["-o DPkg::Lock::Timeout=600 update -qq",
                         "-o DPkg::Lock::Timeout=600 install -y -qq golang-go"]
        (tmp_path / "apt.log").unlink()


def test_waits_for_the_dpkg_lock_and_says_who_holds_it(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    lock.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"f = open({str(lock)!r}, 'r+'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); time.sleep(2.5)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        start = time.monotonic()
        res = subprocess.run(
            ["bash", "-c", f"source {BOOTSTRAP}; DPKG_LOCKS=({lock}); LOCK_POLL=1; "
             "wait_for_dpkg && echo free"],
            capture_output=True, text=True, timeout=60)
        waited = time.monotonic() - start
    finally:
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    assert res.returncode == 0 and res.stdout == "free\n", res.stderr
    name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert res.stderr == (f"bootstrap: waiting for the dpkg lock, held by {name} "
                          f"(pid {holder.pid}) ...\n")
    assert waited >= 1.5
    # A free lock is not waited for.
    with open(lock) as f:
        fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # nobody holds it now
    res = subprocess.run(["bash", "-c", f"source {BOOTSTRAP}; DPKG_LOCKS=({lock}); "
                          "wait_for_dpkg && echo free"], capture_output=True, text=True,
                         timeout=60)
    assert res.stdout == "free\n" and res.stderr == ""
