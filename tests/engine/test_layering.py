"""The engine is pure Python: no FUSE, no trio, no operating system, no I/O (STYLE.md)."""

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
