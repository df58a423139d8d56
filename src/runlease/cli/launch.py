"""The ``runlease`` entry point: run one command line and return its exit code.

A plain command line runs through :mod:`runlease.cli.fast` and never loads cyclopts; help,
usage errors and anything unusual go to the cyclopts application in :mod:`runlease.cli.app`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from runlease.cli import fast
from runlease.cli.context import execute


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the command line and exit with its code."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        invocation = fast.parse(tokens, os.environ)
        if invocation is None:
            from runlease.cli.app import run_cyclopts

            return run_cyclopts(tokens)
        return execute(invocation.command, invocation.args, invocation.kwargs, **invocation.options)
    except KeyboardInterrupt:
        return 130
