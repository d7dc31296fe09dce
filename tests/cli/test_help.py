"""`--help` of every command, and bash completion generated from the same parser."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from dmemfs.cli import parser
from tests.cli.conftest import dmemfs

SUBCOMMANDS = next(a for a in parser()._actions
                   if isinstance(a, argparse._SubParsersAction)).choices


def test_top_level_help_lists_every_command_with_its_summary() -> None:
    res = dmemfs("--help")
    assert res.returncode == 0
    assert {"mount", "umount", "list", "status", "exec", "cgroup-of", "xe", "as-cgroup2",
            "completion"} <= set(SUBCOMMANDS)
    text = " ".join(res.stdout.split())
    for name, sub in SUBCOMMANDS.items():
        summary = " ".join(sub.description.split(". ")[0].split())
        assert name in text and summary.lower() in text.lower(), name
    assert "-V, --version" in text


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_each_command_has_a_description_and_documents_its_options(name: str) -> None:
    sub = SUBCOMMANDS[name]
    res = dmemfs(name, "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    description = " ".join(sub.description.split())
    assert len(description) > 40 and description in text
    for action in sub._actions:
        if action.help == argparse.SUPPRESS:
            assert not any(opt in res.stdout for opt in action.option_strings)
            continue
        for opt in action.option_strings:
            assert opt in res.stdout, (name, opt)
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert action.help, (name, action.option_strings)


def complete(*words: str) -> list[str]:
    """What bash completes for the command line ``words`` (the last one being typed)."""
    script = dmemfs("completion", "bash").stdout
    line = " ".join(f"'{w}'" for w in words)
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c",
         f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _dmemfs; '
         'printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and not res.stderr, res.stderr
    return res.stdout.split()


def test_completion_offers_commands_options_and_choices() -> None:
    assert set(complete("dmemfs", "")) >= set(SUBCOMMANDS)
    assert complete("dmemfs", "um") == ["umount"]
    assert complete("dmemfs", "--v") == ["--version"]
    assert complete("dmemfs", "mount", "/mnt", "--pro") == ["--profile"]
    profile = next(a for a in SUBCOMMANDS["mount"]._actions if "--profile" in a.option_strings)
    assert complete("dmemfs", "mount", "/mnt", "--profile", "") == list(profile.choices)
    assert complete("dmemfs", "umount", "--l") == ["--lazy"]
    assert complete("dmemfs", "completion", "") == ["bash"]
    assert "--ready-fd" not in complete("dmemfs", "mount", "/mnt", "--")
    # After `--`, exec and as-cgroup2 complete the command to run.
    assert "bash" in complete("dmemfs", "exec", "/x", "--", "bas")


def test_completion_covers_every_option_of_the_parser() -> None:
    for name, sub in SUBCOMMANDS.items():
        offered = set(complete("dmemfs", name, "-"))
        for action in sub._actions:
            if action.help != argparse.SUPPRESS:
                assert set(action.option_strings) <= offered, (name, action.option_strings)
