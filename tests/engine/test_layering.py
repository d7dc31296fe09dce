"""Layering: the engine is pure Python (no FUSE, no trio, no OS, no I/O); the device and fs
layers import nothing above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dmemfs.engine

ENGINE_DIR = Path(dmemfs.engine.__file__).parent
ENGINE_FILES = sorted(ENGINE_DIR.rglob("*.py"))

#: Top-level modules the engine must never import.
FORBIDDEN_MODULES = frozenset(
    {"pyfuse3", "trio", "os", "subprocess", "socket", "pathlib", "psutil", "shutil"}
)
#: Builtins that do I/O or import behind the checker's back.
FORBIDDEN_CALLS = frozenset({"open", "__import__", "exec", "eval", "input", "print"})
#: dmemfs modules the engine may use: itself and the two leaf modules below it.
ALLOWED_DMEMFS = ("dmemfs.engine", "dmemfs.errors", "dmemfs.profile")


def violations(source: str, package: str = "dmemfs.engine") -> list[str]:
    """Every forbidden import or call in ``source``, as readable strings."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the engine package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                modules = [".".join([*base, node.module] if node.module else base)]
            else:
                modules = [node.module or ""]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"line {node.lineno}: call to {func.id}()")
            if isinstance(func, ast.Attribute) and func.attr == "import_module":
                found.append(f"line {node.lineno}: importlib.import_module()")
        for mod in modules:
            top = mod.split(".")[0]
            if top in FORBIDDEN_MODULES or top == "importlib":
                found.append(f"line {node.lineno}: import of {mod}")
            elif top == "dmemfs" and not mod.startswith(ALLOWED_DMEMFS):
                found.append(f"line {node.lineno}: upward import of {mod}")
    return found


def test_engine_files_found() -> None:
    names = {p.name for p in ENGINE_FILES}
    assert {"page_counter.py", "dmem.py", "cgroup.py", "files.py", "parse.py"} <= names


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: p.name)
def test_engine_module_is_pure(path: Path) -> None:
    assert violations(path.read_text()) == []


LEAF_FILES = [ENGINE_DIR.parent / "errors.py", ENGINE_DIR.parent / "profile.py"]


@pytest.mark.parametrize("path", LEAF_FILES, ids=lambda p: p.name)
def test_leaf_modules_are_pure(path: Path) -> None:
    assert violations(path.read_text(), package="dmemfs") == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import os",
        "import os.path",
        "from os import path",
        "from os.path import join",
        "import trio",
        "import pyfuse3 as fuse",
        "from trio import lowlevel",
        "import subprocess",
        "import socket",
        "from pathlib import Path",
        "import psutil",
        "import importlib\nimportlib.import_module('os')",
        "x = open('/etc/passwd')",
        "def f():\n    with open('x') as fh:\n        return fh.read()",
        "__import__('os')",
        "from dmemfs.fs import operations",
        "from dmemfs import device",
        "from ..device import xe",
        "import dmemfs.mount",
    ],
)
def test_checker_catches(snippet: str) -> None:
    assert violations(snippet) != []


@pytest.mark.parametrize(
    "snippet",
    [
        "import logging",
        "from dmemfs.errors import DmemError",
        "from dmemfs.engine import page_counter",
        "from . import parse",
        "from .dmem import Dmem",
        "import dmemfs.profile",
        "x.open()",  # a method called open is not the builtin
        "import ostruct",  # only the exact module name counts
    ],
)
def test_checker_allows(snippet: str) -> None:
    assert violations(snippet) == []


# -- the layers above the engine ------------------------------------------------------------
# Data flows one way (docs/architecture.md): cli → mount → fs → device → engine. The device
# layer is the simulated driver: it knows no FUSE, no event loop and nothing above it; the fs
# layer turns requests into engine and device calls and knows nothing of the command line.

PACKAGE_DIR = ENGINE_DIR.parent
#: Modules above the fs layer: the command line, the composition root, the test helpers.
UPPER = ("dmemfs.cli", "dmemfs.commands", "dmemfs.completion", "dmemfs.lifecycle",
         "dmemfs.mounts", "dmemfs.mount", "dmemfs.testing", "dmemfs.pytest_plugin",
         "dmemfs.__main__")
LAYERS = {
    "device": (frozenset({"pyfuse3", "trio"}), ("dmemfs.fs", *UPPER)),
    "fs": (frozenset(), UPPER),
}


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every import; ``from X import y`` counts as X and X.y."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def layer_violations(source: str, layer: str) -> list[str]:
    forbidden_top, forbidden_dmemfs = LAYERS[layer]
    out = []
    for line, mod in imported_modules(source, f"dmemfs.{layer}"):
        if mod.split(".")[0] in forbidden_top:
            out.append(f"line {line}: import of {mod}")
        elif any(mod == f or mod.startswith(f + ".") for f in forbidden_dmemfs):
            out.append(f"line {line}: upward import of {mod}")
    return out


LAYER_FILES = [(layer, path) for layer in LAYERS
               for path in sorted((PACKAGE_DIR / layer).rglob("*.py"))]


def test_layer_files_found() -> None:
    names = {(layer, p.name) for layer, p in LAYER_FILES}
    assert {("device", "xe.py"), ("device", "config.py"), ("fs", "operations.py"),
            ("fs", "handles.py")} <= names


@pytest.mark.parametrize("layer, path", LAYER_FILES, ids=lambda x: getattr(x, "name", x))
def test_layer_imports_nothing_above_it(layer: str, path: Path) -> None:
    assert layer_violations(path.read_text(), layer) == []


@pytest.mark.parametrize("layer, snippet", [
    ("device", "import pyfuse3"),
    ("device", "from trio import lowlevel"),
    ("device", "from dmemfs.fs.handles import Opener"),
    ("device", "from dmemfs import fs"),
    ("device", "from ..fs import operations"),
    ("device", "import dmemfs.mount"),
    ("device", "from dmemfs.cli import UserError"),
    ("fs", "from dmemfs.cli import UserError"),
    ("fs", "from dmemfs import commands"),
    ("fs", "import dmemfs.mount"),
    ("fs", "from ..lifecycle import spawn"),
    ("fs", "from dmemfs.testing import mounted"),
])
def test_layer_checker_catches(layer: str, snippet: str) -> None:
    assert layer_violations(snippet, layer) != []


@pytest.mark.parametrize("layer, snippet", [
    ("device", "from dmemfs.engine.dmem import DmemCss"),
    ("device", "from dmemfs.errors import InvalidArgument"),
    ("device", "from . import ttm"),
    ("device", "import tomllib"),
    ("fs", "import pyfuse3"),
    ("fs", "from dmemfs.device.protocol import Session"),
    ("fs", "from dmemfs.procs import HostProcesses"),
    ("fs", "import dmemfs.mountain"),  # only the exact module name counts
])
def test_layer_checker_allows(layer: str, snippet: str) -> None:
    assert layer_violations(snippet, layer) == []
