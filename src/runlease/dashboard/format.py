"""How the dashboard writes times and durations; the browser's script writes the ticking
ones the same way (static/dashboard.js), so a refreshed fragment does not change style."""

from __future__ import annotations

from datetime import UTC, datetime


def timestamp(at: float | None) -> str:
    """UTC, to the second: ``2026-11-28 14:20:01Z``; an em dash for none."""
    if at is None:
        return "—"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(seconds: float) -> str:
    """A whole-second duration: ``42s``, ``9m 05s``, ``2h 03m``."""
    whole = max(int(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def time_left(until: float | None, now: float) -> str:
    """A lease's time left, or ``expired`` once it ran out."""
    if until is None:
        return "—"
    left = until - now
    return span(left) if left >= 1 else "expired"


def ago(at: float | None, now: float) -> str:
    if at is None:
        return "—"
    return f"{span(now - at)} ago"


__all__ = ["ago", "span", "time_left", "timestamp"]
