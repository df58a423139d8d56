"""Durations on the command line: ``90``, ``90s``, ``5m``, ``2h``, ``1d``, ``1h30m``.

Every option that takes seconds reads its value with :func:`parse_duration`, through
:func:`duration` (its ``Param``), so the forms accepted and the message for a wrong one are
the same everywhere. A bare number is seconds, read as before (``1.5``, ``1e3``); otherwise
the value is one or more NUMBER+UNIT parts with units d, h, m, s, largest first and each at
most once, so a typo such as ``5m1h`` is refused instead of guessed at.
"""

from __future__ import annotations

import re
from typing import Any, Final

from runlease.cli.params import Param

UNIT_SECONDS: Final[dict[str, int]] = {"d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_FORMS: Final = "seconds (90, 1.5) or a duration such as 90s, 5m, 2h, 1d, 1h30m"

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([dhms])")


def parse_duration(text: str) -> float:
    """Seconds from ``text``; ``ValueError`` naming the accepted forms otherwise."""
    try:
        # Read as before: each option judges its own range (inf included).
        return float(text)
    except ValueError:
        pass
    total = 0.0
    position = 0
    previous_rank = -1
    units = tuple(UNIT_SECONDS)
    while position < len(text):
        found = _PART.match(text, position)
        if found is None:
            break
        rank = units.index(found.group(2))
        if rank <= previous_rank:
            break
        total += float(found.group(1)) * UNIT_SECONDS[found.group(2)]
        previous_rank = rank
        position = found.end()
    else:
        if text:
            return total
    raise ValueError(f"expected {DURATION_FORMS}, got {text!r}")


def format_duration(seconds: int) -> str:
    """Whole seconds in the unit form, largest unit first (``5400`` is ``1h30m``)."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def duration(**options: Any) -> Param:
    """The ``Param`` of an option that takes seconds: ``options`` as for any ``Param``, and
    the value read by :func:`parse_duration` (on both the fast path and cyclopts')."""
    help_text = options.pop("help", "")
    forms = "Seconds, or a duration: 90s, 5m, 2h, 1d, 1h30m."
    return Param(parse=parse_duration, help=f"{help_text} {forms}".strip(), **options)
