"""Options from a TOML file, applied by cyclopts beneath the command line's flags.

``runlease --config FILE serve`` (or ``$RUNLEASE_CONFIG``) reads ``FILE`` as a table of the
command's options under their flag names, dashes or underscores alike::

    data-dir = "/srv/runlease"
    durability = "relaxed"
    listen = ["unix:/srv/runlease/runlease.sock", "tcp://0.0.0.0:7070"]

cyclopts converts and checks each value exactly as it would the same flag, so a new option
of the command works from the file with no change here; a flag given on the command line
wins over the file. Relative paths in it are taken from the working directory, as on the
command line. A missing or malformed file, a key the command does not take (a global
option such as ``socket`` included: say it with ``listen``) and a value of the wrong type
are usage errors naming the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from cyclopts import App, CycloptsError
from cyclopts.argument import ArgumentCollection, update_argument_collection

from runlease.cli.commands import CONFIGURABLE


class ConfigFile:
    """A cyclopts config source (``App(config=...)``) for the commands in ``CONFIGURABLE``."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()

    def __call__(self, app: App, commands: tuple[str, ...], arguments: ArgumentCollection) -> None:
        if commands not in CONFIGURABLE:
            return
        # No meta applications are passed: cyclopts would skip keys naming a global option,
        # and a key that does nothing must be refused like any unknown one.
        update_argument_collection(
            self.read(), str(self.path), arguments, None, root_keys=(), allow_unknown=False
        )

    def read(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as file:
                return tomllib.load(file)
        except OSError as exc:
            raise CycloptsError(
                msg=f"cannot read the config file {self.path}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise CycloptsError(
                msg=f"the config file {self.path} is not valid TOML: {exc}"
            ) from None
