"""Every shell example in README.md runs, in order, and prints what the README says.

``console`` blocks hold ``$ command`` lines followed by their expected output (stdout and
stderr together); ``...`` in an expected line matches anything. The examples use /mnt/dmem;
the test substitutes a private temporary mountpoint (and moves /tmp/… files next to it).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dmemfs.testing import is_mounted
from tests.conftest import _require_fuse

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The README's test command; it is this suite, so CI runs it (see test_ci_runs_readme_command).
TEST_COMMAND = "scripts/test"


def console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


def _matches(expected: list[str], actual: list[str]) -> bool:
    if len(expected) != len(actual):
        return False
    for e, a in zip(expected, actual, strict=True):
        pattern = ".*".join(re.escape(part) for part in e.split("..."))
        if not re.fullmatch(pattern, a):
            return False
    return True


class Shell:
    """One bash session: commands share the working directory and variables."""

    MARK = "__dmemfs_readme_done__"

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )

    def run(self, command: str, timeout: float = 300) -> list[str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{command}\necho {self.MARK}\n".encode())
        self.proc.stdin.flush()
        out = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not out.endswith(f"{self.MARK}\n".encode()):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out: {command}\n{out.decode()}"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, f"shell died during: {command}\n{out.decode()}"
                out += chunk
        text = out.decode()[: -len(self.MARK) - 1]
        return text.splitlines()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout:
            self.proc.stdout.close()


#: Commands that need the interop tools (cgroup-tools), which scripts/bootstrap installs only
#: when asked (CI asks, and sets DMEMFS_REQUIRE_TOOLS=1).
TOOLS = re.compile(r"\bcg(create|set|get|exec|delete)\b")


@pytest.mark.timeout(900)  # every example twice, pip installs included, on a busy machine
def test_readme_examples_run_twice() -> None:
    """Every example, in order, and then all of them again: each can be run twice (state
    files and mountpoints left by the first run are reused by the second)."""
    _require_fuse()
    blocks = console_blocks(README.read_text())
    assert len(blocks) >= 4
    have_tools = shutil.which("cgcreate") is not None
    if not have_tools and os.environ.get("DMEMFS_REQUIRE_TOOLS") == "1":
        pytest.fail("cgroup-tools is required (DMEMFS_REQUIRE_TOOLS=1) but not installed")
    tmp = tempfile.mkdtemp(prefix="dmemfs-readme-")
    os.chmod(tmp, 0o755)  # the non-root examples reach the mount as another user
    mnt = os.path.join(tmp, "dmem")
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")

    def private(text: str) -> str:
        """The examples' /tmp/… files and /mnt/dmem, moved into this test's directory."""
        return text.replace("/tmp/", f"{tmp}/").replace("/mnt/dmem", mnt)

    skipped = 0
    shell = Shell(env)
    try:
        for run in (1, 2):
            for steps in blocks:
                if not have_tools and any(TOOLS.search(c) for c, _ in steps):
                    skipped += 1
                    continue
                for command, expected in steps:
                    if command == TEST_COMMAND:
                        continue  # this suite itself: .ci/run executes it
                    cmd = private(command)
                    want = [private(line) for line in expected]
                    got = shell.run(cmd)
                    assert _matches(want, got), (
                        f"README example `{command}` (run {run}) printed:\n" + "\n".join(got)
                        + "\nexpected:\n" + "\n".join(want)
                    )
    finally:
        shell.close()
        left_behind = is_mounted(mnt)
        if left_behind:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    assert not left_behind, "a README example left the mount behind"
    if skipped:
        pytest.skip(f"ran every README example twice except {skipped // 2} block(s) that need "
                    "cgroup-tools (not installed; scripts/bootstrap --interop installs it)")


def test_readme_has_two_command_quick_start() -> None:
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = console_blocks(quick)
    assert [len(b) for b in blocks[:2]] == [1, 1]  # two commands, each on one line
    assert blocks[0][0][0].startswith("scripts/bootstrap && ")
    assert blocks[1][0][0] == TEST_COMMAND


def test_ci_runs_readme_command() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert TEST_COMMAND in lines
