"""Host tools the interop tests drive (installed by scripts/bootstrap)."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip the test (fail it in CI, where DMEMFS_REQUIRE_TOOLS=1)."""
    if os.environ.get("DMEMFS_REQUIRE_TOOLS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The path of ``name``, or the test is skipped (failed in CI)."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed (scripts/bootstrap installs {package})")
    return path
