"""Shell completion generated from the argparse parser, so it can never disagree with it."""

from __future__ import annotations

import argparse
import shlex


def _words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def _options(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str] | None]]:
    """(every option string, option taking a value → its choices or None)."""
    flags: list[str] = []
    values: dict[str, list[str] | None] = {}
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flags += action.option_strings
        if action.nargs != 0:
            choices = [str(c) for c in action.choices] if action.choices else None
            for opt in action.option_strings:
                values[opt] = choices
    return flags, values


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_case(name: str, sub: argparse.ArgumentParser) -> list[str]:
    flags, values = _options(sub)
    positionals = [a for a in sub._actions if not a.option_strings]
    lines = [f"        {name})"]
    value_cases = []
    for opt, choices in values.items():
        if choices:
            value_cases.append(f"                {opt}) COMPREPLY=($(compgen -W {_words(choices)}"
                               ' -- "$cur")); return;;')
        else:
            value_cases.append(f'                {opt}) COMPREPLY=($(compgen -f -- "$cur")); '
                               "return;;")
    if value_cases:
        lines += ['            case "$prev" in', *value_cases, "            esac"]
    if any(a.nargs == argparse.REMAINDER for a in positionals):
        lines += ['            if [[ $dashdash -gt 0 ]]; then',
                  '                if [[ $dashdash -eq $((COMP_CWORD - 1)) ]]; then',
                  '                    COMPREPLY=($(compgen -c -- "$cur"))',
                  "                else",
                  '                    COMPREPLY=($(compgen -f -- "$cur"))',
                  "                fi",
                  "                return",
                  "            fi"]
    lines += ['            if [[ "$cur" == -* ]]; then',
              f'                COMPREPLY=($(compgen -W {_words(flags)} -- "$cur")); return',
              "            fi"]
    choices = [str(c) for a in positionals if a.choices for c in a.choices]
    if positionals and len(choices) and all(a.choices for a in positionals):
        lines.append(f'            COMPREPLY=($(compgen -W {_words(choices)} -- "$cur"));;')
    elif positionals:
        lines.append('            COMPREPLY=($(compgen -f -- "$cur"));;')
    else:
        lines.append("            ;;")
    return lines


def bash(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser``'s program: ``source <(dmemfs completion bash)``
    or save it as ``/etc/bash_completion.d/dmemfs``."""
    prog = parser.prog
    func = "_" + prog.replace("-", "_")
    flags, _ = _options(parser)
    subs = _subcommands(parser)
    lines = [
        f"# bash completion for {prog}, generated from its argument parser "
        f"by `{prog} completion bash`",
        f"{func}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local i cmd="" dashdash=0',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        if [[ -z "$cmd" && "${COMP_WORDS[i]}" != -* ]]; then',
        '            cmd="${COMP_WORDS[i]}"',
        '        elif [[ -n "$cmd" && "${COMP_WORDS[i]}" == "--" && $dashdash -eq 0 ]]; then',
        "            dashdash=$i",
        "        fi",
        "    done",
        '    case "$cmd" in',
        '        "")',
        f'            COMPREPLY=($(compgen -W {_words(flags + list(subs))} -- "$cur"));;',
    ]
    for name, sub in subs.items():
        lines += _command_case(name, sub)
    lines += ["    esac", "}", f"complete -o filenames -o bashdefault -F {func} {prog}", ""]
    return "\n".join(lines)
