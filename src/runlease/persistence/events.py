"""How long the event history is kept."""

from __future__ import annotations

import msgspec


class HistoryRetention(msgspec.Struct, frozen=True, kw_only=True):
    """How long events are kept: an event goes once it breaks a limit that is set."""

    max_age: float | None = 30 * 86400.0  # seconds; None = no age limit
    max_events: int | None = None  # newest N kept; None = no count limit
