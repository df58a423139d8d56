"""The ``runlease`` command line (cyclopts). ``main`` is the console-script entry point."""

from runlease.cli.app import app, main, run

__all__ = ["app", "main", "run"]
