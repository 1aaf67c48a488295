"""Print docs/cli.md, the reference of every ``edgetune`` command's flags, generated from the CLI's parsers.

    python scripts/cli_reference.py > docs/cli.md

The parsers are themselves generated from the option fields (help, default, choices), so this page and
``--help`` cannot disagree; tests/test_config.py fails when the committed page differs from a fresh one.
"""

from __future__ import annotations

import argparse

from edgetune.cli import build_parser

HEADER = """# Command-line reference

Every command and flag of `edgetune`, generated from the parsers by `python scripts/cli_reference.py > docs/cli.md`
(a test fails when this page is stale). `tune` reads the same options from a YAML `--config` file, one key per
flag with underscores (`--batch-size 8` is `batch_size: 8`); flags given on the command line win over the file.
"""


def reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole page: one section per command, one table per group of flags."""
    parser = parser or build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {action.dest: action.help for action in subparsers._choices_actions}
    sections = [HEADER]
    for name, command in subparsers.choices.items():
        sections.append(_command(name, summaries.get(name) or "", command))
    return "\n".join(sections)


def _command(name: str, summary: str, parser: argparse.ArgumentParser) -> str:
    lines = [f"## edgetune {name}", "", f"{summary[:1].upper()}{summary[1:]}.", ""]
    formatter = parser._get_formatter()
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = "Options" if group.title in ("options", "optional arguments") else group.title
        lines += [f"**{title}**", "", "| flag | value | meaning |", "|---|---|---|"]
        for action in actions:
            lines.append(_row(action, formatter))
        lines.append("")
    return "\n".join(lines)


def _row(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    flag = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
    if action.nargs == 0:
        value = ""
    elif action.choices is not None:
        value = "`{" + ",".join(map(str, action.choices)) + "}`"
    else:
        value = f"`{action.metavar or action.dest.upper()}`"
    meaning = formatter._expand_help(action) if action.help else ""
    if action.required:
        meaning = f"required; {meaning}" if meaning else "required"
    return f"| {flag} | {value} | {meaning.replace('|', '&#124;')} |"


if __name__ == "__main__":
    print(reference(), end="")
