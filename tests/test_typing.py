"""The package is type-checked with `mypy --strict` (scripts/test runs mypy on it); this
checks that the configuration really is strict, in every layer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", ["dmemfs.cli", "dmemfs.fs.handles", "dmemfs.engine.dmem",
                                    "dmemfs.device.xe"])
def test_strict_everywhere(module: str, tmp_path: Path) -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    assert mypy, "mypy is a test dependency"
    # A module of that name with an unannotated function, checked with the project's config.
    pkg = tmp_path.joinpath(*module.split(".")[:-1])
    pkg.mkdir(parents=True)
    for d in [tmp_path.joinpath(*module.split(".")[:i]) for i in range(1, module.count(".") + 1)]:
        (d / "__init__.py").write_text("")
    (pkg / f"{module.rsplit('.', 1)[1]}.py").write_text("def f(x):\n    return x\n")
    res = subprocess.run([mypy, "--config-file", str(ROOT / "pyproject.toml"),
                          "--no-incremental", "-p", module], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert "Function is missing a type annotation" in res.stdout, res.stdout + res.stderr
