"""How the CLI prints: stable JSON for scripts, rich tables for people.

JSON mode prints one JSON document per command on stdout (NDJSON, one event per line, when
following events). Records become plain objects with every field present, times become
RFC 3339 UTC strings, and user payloads (metadata, results) pass through untouched. Errors
print ``{"error": {"code": ..., "message": ...}}`` on stdout in JSON mode and one line on
stderr in table mode.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

import msgspec

Output = Literal["json", "table"]

# Fields holding epoch seconds; shown as RFC 3339 wherever they appear in a record.
TIME_FIELDS: Final = frozenset(
    {
        "at",
        "created_at",
        "updated_at",
        "closed_at",
        "queued_at",
        "claimed_at",
        "heartbeat_at",
        "ended_at",
        "lease_until",
        "previous_lease_until",
        "opened_at",
        "stopped_at",
        "ttl_deadline",
        "started_at",
        # Task graph, operator and inspect records.
        "paused_at",
        "checkpoint_at",
        "completed_at",
        "since",
        "as_of",
        # Session activity and the context bundle.
        "last_active_at",
        "generated_at",
        # Hook deliveries.
        "delivered_at",
        "next_attempt_at",
    }
)
# Internal bookkeeping of the core, never shown (the force-operation rate window, whether
# a task ever had a dependency).
# ``already`` is a flag of a reply (a repeated finish, start, approve or publish), shown
# once at the top of that reply instead.
HIDDEN_FIELDS: Final = frozenset({"force_ops", "had_dependencies", "already"})
# Caller-owned JSON: passed through exactly as stored, never reinterpreted.
OPAQUE_FIELDS: Final = frozenset({"metadata", "result", "failure_metadata"})


def rfc3339(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """A record (or anything holding records) as JSON-ready builtins."""
    if isinstance(value, msgspec.Struct):
        return {
            name: _field(name, getattr(value, name))
            for name in value.__struct_fields__
            if name not in HIDDEN_FIELDS
        }
    if isinstance(value, Mapping):
        return {str(key): _field(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def _field(name: str, value: Any) -> Any:
    if name in OPAQUE_FIELDS:
        return value
    if (
        name in TIME_FIELDS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and value == value  # not NaN
    ):
        return rfc3339(float(value))
    return plain(value)


def default_output(stream: TextIO | None = None) -> Output:
    stream = stream or sys.stdout
    try:
        return "table" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def dumps(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def emit(document: dict[str, Any], output: Output) -> None:
    """Print a command's result."""
    if output == "json":
        sys.stdout.write(dumps(document) + "\n")
        sys.stdout.flush()
        return
    _render_table(document)


def emit_event(event: dict[str, Any], output: Output) -> None:
    """One followed event: an NDJSON line, or one row of text on a terminal."""
    if output == "json":
        sys.stdout.write(dumps(event) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.markup import escape

    where = " ".join(
        f"{key}={event[key]}" for key in ("task_id", "run_id", "session_id") if event.get(key)
    )
    data = dumps(event["data"]) if event.get("data") else ""
    Console(soft_wrap=True).print(
        f"[dim]{event.get('seq')} {event.get('at')}[/dim] [bold]{escape(str(event.get('kind')))}"
        f"[/bold] {escape(where)} {escape(data)}".rstrip()
    )


def emit_error(code: str, message: str, output: Output) -> None:
    if output == "json":
        sys.stdout.write(dumps({"error": {"code": code, "message": message}}) + "\n")
        sys.stdout.flush()
    else:
        one_line = " ".join(message.split())
        sys.stderr.write(f"runlease: error: {code}: {one_line}\n")
        sys.stderr.flush()


# ----------------------------------------------------------------------------- tables
# Columns shown for lists of records, by the key the list sits under.
LIST_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "tasks": ("id", "title", "status", "priority", "workspace_id", "current_run_id", "created_at"),
    "runs": ("id", "status", "attempt", "session_id", "lease_until", "reason", "error"),
    "sessions": (
        "id",
        "agent",
        "state",
        "lease_run_id",
        "parent_id",
        "opened_at",
        "ttl_deadline",
        "age_seconds",
        "last_active_at",
    ),
    "events": ("seq", "at", "kind", "task_id", "run_id", "session_id", "data"),
    "checkpoints": ("at", "author", "run_id", "note"),
    "stuck": ("task_id", "run_id", "session_id", "kind", "since", "seconds"),
    "items": ("run_id", "ok", "code", "message"),
    "backlog": ("gate", "effective_paused", "task", "run"),
    # Inspect.
    "diagnostics": ("kind", "run_id", "message", "remedy"),
    "recent_runs": (
        "run_id",
        "status",
        "attempt",
        "bound_session_id",
        "lease_until",
        "heartbeat_age_seconds",
        "claim_token_hash_prefix",
    ),
    "recent_events": ("seq", "at", "kind", "run_id", "session_id", "data"),
    # Context bundle.
    "prior_attempts": (
        "run_id",
        "status",
        "attempt",
        "claimed_by",
        "ended_at",
        "error",
        "result_summary",
    ),
    "cuts": ("field", "kept", "dropped"),
    # Hooks.
    "hooks": ("name", "kinds", "target", "cursor", "pending", "failed"),
    "deliveries": ("id", "status", "attempts", "kind", "updated_at", "last_error"),
}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    return dumps(value)


def _render_table(document: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    scalars = Table(show_header=False, box=None, pad_edge=False)
    scalars.add_column(style="bold")
    scalars.add_column(overflow="fold")
    has_scalars = False
    for key, value in document.items():
        if isinstance(value, dict):
            table = Table(title=key, title_justify="left", show_header=False)
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for field, item in value.items():
                if item is not None and item != [] and item != {}:
                    table.add_row(field, _cell(item))
            console.print(table)
        elif isinstance(value, list) and (not value or isinstance(value[0], dict)):
            columns = LIST_COLUMNS.get(key) or (tuple(value[0]) if value else ("(none)",))
            table = Table(title=f"{key} ({len(value)})", title_justify="left")
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in value:
                table.add_row(*(_cell(row.get(column)) for column in columns))
            console.print(table)
        else:
            scalars.add_row(key, _cell(value))
            has_scalars = True
    if has_scalars:
        console.print(scalars)
