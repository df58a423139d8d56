"""How a command declares its flags without importing cyclopts.

Commands annotate their parameters with ``Annotated[T, Param(...)]``; ``Param`` takes the
keyword arguments of ``cyclopts.Parameter`` (``name``, ``help``, ``negative``, ``env_var``,
``group``, ...) and only stores them. One keyword is this module's own: ``parse``, a
function from the option's text to its value that raises ``ValueError`` for a wrong one
(cyclopts gets it as its ``converter``; the fast path calls it directly).

Both readers of a command work from that one signature: :mod:`runlease.cli.app` turns
each ``Param`` into a ``cyclopts.Parameter`` when it builds the cyclopts application
(help, usage errors, every unusual command line), and :mod:`runlease.cli.fast` reads the
names and types itself to run an ordinary command line without loading cyclopts, whose
import alone costs several times Python's own start-up.
"""

from __future__ import annotations

from typing import Any, Final

# Options that the fast parser understands; a Param using any other keyword makes it leave
# the command line to cyclopts.
FAST_OPTIONS: Final = frozenset(
    {"name", "help", "negative", "env_var", "group", "show", "allow_leading_hyphen", "parse"}
)


class Param:
    """The keyword arguments of a ``cyclopts.Parameter``, kept until cyclopts is loaded."""

    __slots__ = ("options",)

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = options

    def names(self, parameter: str) -> tuple[str, ...]:
        """The flags of a keyword parameter: ``name`` if given, else ``--the-name``."""
        given = self.options.get("name")
        if given is None:
            return (default_flag(parameter),)
        return (given,) if isinstance(given, str) else tuple(given)

    def __repr__(self) -> str:
        return f"Param({self.options!r})"


def default_flag(parameter: str) -> str:
    """cyclopts' default flag for a parameter: ``lease_seconds`` is ``--lease-seconds``."""
    return "--" + parameter.strip("_").replace("_", "-")
