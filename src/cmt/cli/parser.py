"""The `cmt` argument parser: the user's commands and the pipeline's, listed apart in `cmt --help`."""

from __future__ import annotations

import argparse
import textwrap

from cmt import __version__
from cmt.cli import pipeline, reports, tools
from cmt.cli.common import Parser

DESCRIPTION = (
    "cmt: the consistency-training misalignment pipeline. You run the user commands by hand; the Snakemake "
    "rules run the pipeline commands (`snakemake --cores all results/tables/main.csv` runs them all). "
    "`cmt COMMAND --help` describes a command."
)
USER_TITLE = "user commands"
PIPELINE_TITLE = "pipeline commands (the Snakemake rules run these; each writes one job's outputs)"


def _section(title: str, commands: list[tuple[str, str]], width: int = 100) -> str:
    """A help section in argparse's style: the title, then each command with its one-line help."""
    name_width = max(len(name) for name, _ in commands) + 4
    lines = [f"{title}:"]
    for name, text in commands:
        wrapped = textwrap.wrap(text, width - name_width - 2) or [""]
        lines.append(f"  {name:<{name_width}}{wrapped[0]}")
        lines += [" " * (name_width + 2) + more for more in wrapped[1:]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cmt",
        usage="cmt [-h] [--version] COMMAND ...",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cmt {__version__}")
    # The subcommands are listed in the epilog, in two groups, instead of argparse's one flat list.
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog="cmt"
    )
    user = tools.add_commands(sub)
    rules = pipeline.add_commands(sub) + reports.add_commands(sub)
    parser.description = "\n".join(textwrap.wrap(DESCRIPTION, 100))
    parser.epilog = _section(USER_TITLE, user) + "\n\n" + _section(PIPELINE_TITLE, rules)
    return parser
