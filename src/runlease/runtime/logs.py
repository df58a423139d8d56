"""How runlease's log lines look: one JSON object, or one readable text line, per record.

Every line runlease logs is an event name (the record's message) plus a dict of fields
passed as ``extra={"fields": {...}}``. Both formats carry exactly the same fields, so a
person reading a terminal and a collector parsing JSON see the same facts:

- ``json``: ``{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}``
- ``text``: ``2026-01-02T03:04:05.678Z warning lease_expired run_id=run_1 reason=...``;
  a value is printed bare when it is one token (ids, numbers, names) and JSON-quoted
  otherwise, so a line still splits on spaces.

``auto`` picks text when the stream is a terminal and JSON otherwise (a pipe, a file, a
journal). Only the ``runlease`` logger tree is configured: an embedding host that sets up
logging itself keeps its own handlers and formats.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

LogFormat = Literal["json", "text", "auto"]
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("json", "text", "auto")
LOG_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# A text value that needs no quotes: no spaces, quotes, '=' or control characters.
_BARE = re.compile(r"[^\s\"'=\\]+")


def _timestamp(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a runlease record carries (``extra={"fields": ...}``); empty if none."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _traceback(record: logging.LogRecord) -> str | None:
    if not record.exc_info:
        return None
    return "".join(traceback.format_exception(*record.exc_info)).rstrip()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event name and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(record_fields(record))
        exc = _traceback(record)
        if exc is not None:
            line["exc"] = exc
        return json.dumps(line, default=str)


class TextLogFormatter(logging.Formatter):
    """One readable line: time, level, event name, then ``key=value`` for each field.

    Ids and numbers stand bare; anything with a space, a quote or an ``=`` is JSON-quoted,
    lists and dicts are compact JSON. A traceback follows on indented lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname.lower(), record.getMessage()]
        for key, value in record_fields(record).items():
            parts.append(f"{key}={text_value(value)}")
        line = " ".join(parts)
        exc = _traceback(record)
        if exc is not None:
            line += "\n" + "\n".join(f"    {each}" for each in exc.splitlines())
        return line


def text_value(value: object) -> str:
    """How a field's value is written in a text line (see :class:`TextLogFormatter`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value)
    return json.dumps(value, default=str, separators=(",", ":"))


def formatter_for(log_format: LogFormat, stream: IO[str]) -> logging.Formatter:
    """The formatter ``log_format`` asks for; ``auto``: text on a terminal, else JSON."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        log_format = "text" if isatty is not None and isatty() else "json"
    return TextLogFormatter() if log_format == "text" else JsonLogFormatter()


def log_level(level: int | str) -> int:
    """A logging level from a number or one of :data:`LOG_LEVELS`' names."""
    if isinstance(level, int):
        return level
    try:
        return LOG_LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}"
        ) from None


def configure_logging(
    stream: IO[str] | None = None,
    level: int | str = logging.INFO,
    log_format: LogFormat = "json",
) -> None:
    """Send runlease's log records at ``level`` and above to ``stream`` (stderr) in
    ``log_format`` (``json``, ``text``, or ``auto``: text on a terminal, else JSON).

    Replaces the handlers of the ``runlease`` logger tree only; nothing else is touched.
    """
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter_for(log_format, out))
    root = logging.getLogger("runlease")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level(level))
    root.propagate = False


__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonLogFormatter",
    "LogFormat",
    "LogLevel",
    "TextLogFormatter",
    "configure_logging",
    "formatter_for",
    "log_level",
    "record_fields",
    "text_value",
]
