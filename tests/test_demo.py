"""scripts/demo-pinning runs and shows the seed's scenario with the right numbers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import _require_fuse

ROOT = Path(__file__).resolve().parent.parent


def test_demo_pinning_numbers() -> None:
    _require_fuse()
    res = subprocess.run([str(ROOT / "scripts" / "demo-pinning")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    rows = {m["name"].strip(): m.groupdict() for m in re.finditer(
        r"^(?P<name>[AB] [^\n]*?)\s+(?P<size>\d+ MiB)\s+(?P<pinned>yes|no)\s+"
        r"(?P<before>\S+)\s+(?P<after>\S+)\s+(?P<evictions>\d+)$", out, re.M)}
    assert len(rows) == 10, out
    exported = rows["A exported (PINNED)"]
    assert (exported["pinned"], exported["before"], exported["after"],
            exported["evictions"]) == ("yes", "vram0", "vram0", "0")
    # A's oldest ordinary buffer is evicted to make room for B; the rest of A stays within
    # emin + pinned = 1.5 GiB.
    assert rows["A ordinary #1"]["after"] == "system"
    assert [rows[f"A ordinary #{i}"]["after"] for i in (2, 3)] == ["vram0", "vram0"]
    assert sum(r["after"] == "vram0" for r in rows.values()) == 8  # 8 x 512 MiB = 4 GiB
    usage = re.search(r"^A\s+2 GiB\s+1\.5 GiB\s+512 MiB$", out, re.M)
    assert usage, out
    assert re.search(r"^B\s+0 B\s+2\.5 GiB\s+0 B$", out, re.M), out
    assert "A pins 768 MiB more (1.25 GiB pinned > dmem.min 1 GiB): ENOSPC" in out
    assert "with --pinning posted (the RFC exactly as posted) A's first 512 MiB pin: ENOSPC" in out


def test_demo_p2p_numbers() -> None:
    """The peer-to-peer case under Linux 7.3: the RFC as intended, then as posted."""
    _require_fuse()
    res = subprocess.run([str(ROOT / "scripts" / "demo-p2p")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    blocks = res.stdout.split("kernel 7.3, --pinning ")[1:]
    assert [b.split("\n", 1)[0] for b in blocks] == ["intended", "posted"], res.stdout
    # The case column is 38 characters wide, after two spaces.
    rows = [{line[2:40].strip(): line[40:].split() for line in block.splitlines()
             if line.startswith(("  ordinary", "  PINNED"))} for block in blocks]
    assert all(len(r) == 4 for r in rows), res.stdout
    intended, posted = rows
    # importer, buffer placement, evictions, stalls, p2p, A's dmem.current, A's dmem.pinned
    dynamic = ["dynamic", "system", "1", "1", "0", "1", "GiB", "0", "B"]
    pinning = ["pin", "vram0", "0", "0", "1", "1", "GiB", "0", "B"]
    for r in (intended, posted):
        assert r["ordinary export, dynamic importer"] == dynamic
        assert r["ordinary export, pinning importer"] == pinning
        assert r["PINNED 1.5 GiB (beyond min)"] == ["-", "ENOSPC"]
    assert intended["PINNED 512 MiB (within min), dynamic"] == [
        "dynamic", "vram0", "0", "0", "1", "1.5", "GiB", "512", "MiB"]
    assert posted["PINNED 512 MiB (within min), dynamic"] == ["-", "ENOSPC"]
