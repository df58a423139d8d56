"""How the CLI prints: stable JSON for scripts, rich tables for people.

JSON mode prints one JSON document per command on stdout (NDJSON, one event per line, when
following events). Records become plain objects with every field present, times become
RFC 3339 UTC strings, and user payloads (metadata, results) pass through untouched. Errors
print ``{"error": {"code": ..., "message": ...}}`` on stdout in JSON mode and one line on
stderr in table mode.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

import msgspec

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

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


def emit(document: dict[str, Any], output: Output, table: TableLayout | None = None) -> None:
    """Print a command's result; ``table`` names the fields a table shows, by key."""
    if output == "json":
        sys.stdout.write(dumps(document) + "\n")
        sys.stdout.flush()
        return
    _render_table(document, table or {})


class NoSuchField(LookupError):
    """A --field path that leads nowhere in the answer; the message says what is there."""


def field_value(document: Any, path: str) -> Any:
    """The value at ``path`` (keys and list indexes joined by dots) of a JSON document;
    :class:`NoSuchField` when the path leads nowhere."""
    value = document
    walked: list[str] = []
    for step in path.split("."):
        where = ".".join(walked) or "the answer"
        if isinstance(value, dict):
            if step not in value:
                keys = ", ".join(value) or "none"
                raise NoSuchField(f"{where} has no key {step!r} (its keys: {keys})")
            value = value[step]
        elif isinstance(value, list):
            try:
                value = value[int(step)]
            except (ValueError, IndexError):
                raise NoSuchField(
                    f"{where} is a list of {len(value)}; {step!r} is not an index in it"
                ) from None
        else:
            raise NoSuchField(f"{where} is {dumps(value)}, not an object or a list")
        walked.append(step)
    return value


def field_text(value: Any) -> str:
    """One value as a script reads it: a string as is, null as nothing, else JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return dumps(value)


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
# The fields a table shows, by the key their record or list sits under; JSON keeps them all.
TableLayout = Mapping[str, tuple[str, ...]]

# Columns shown for lists of records, by the key the list sits under.
LIST_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "tasks": ("id", "title", "status", "priority", "workspace_id", "current_run_id", "created_at"),
    "runs": ("id", "status", "attempt", "session_id", "lease_until", "reason", "error"),
    # What an operator reads first; the parent, the ttl and when it opened stay in --json.
    "sessions": ("id", "agent", "state", "lease_run_id", "age_seconds", "last_active_at"),
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


# ``task inspect`` and ``run inspect``: what an operator reads first about the task, its
# runs and what holds them; the whole view stays in --json.
_RUN_FIELDS: Final = (
    "run_id",
    "status",
    "attempt",
    "bound_session_id",
    "lease_until",
    "heartbeat_age_seconds",
    "error",
    "reason",
)
INSPECT_TABLE: Final[TableLayout] = {
    "task": (
        "id",
        "title",
        "status",
        "priority",
        "workspace_id",
        "current_run_id",
        "tags",
        "updated_at",
    ),
    "current_run": _RUN_FIELDS,
    "target_run": _RUN_FIELDS,
    "bound_session": ("session_id", "agent", "state", "lease_run_id"),
    "scheduler": ("paused", "paused_reason", "claimable_run_count"),
    "pause": ("effective_paused", "paused_by_task_id", "paused_reason"),
    "recent_runs": ("run_id", "status", "attempt", "bound_session_id", "lease_until", "error"),
    "recent_events": ("seq", "at", "kind", "run_id", "session_id"),
    "diagnostics": ("kind", "run_id", "message", "remedy"),
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


# The width below which a table does not squeeze a column of ordinary text.
_NARROWEST_COLUMN: Final = 12


def is_id_field(name: str) -> bool:
    """Fields holding an id, which a table never wraps: a person copies them whole."""
    return name == "id" or name.endswith("_id")


def _id_width(cells: list[tuple[str, str]]) -> int | None:
    """The width of the longest id among (field, text) cells, if any: their column's
    minimum, so neither wrapping nor shrinking a too-wide table cuts an id."""
    widths = [len(text) for field, text in cells if is_id_field(field)]
    return max(widths) if widths else None


def _print_table(console: Console, table: Table) -> None:
    """Print a table at the console's width, or wider when its columns' minimum widths
    (whole ids) add up to more: the terminal then wraps whole lines, which cuts no id."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(1 << 16), table).minimum
    if needed > console.width:
        table.width = needed
    console.print(table, crop=False)


def _render_table(document: dict[str, Any], layout: TableLayout) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    print_table = functools.partial(_print_table, console)
    rows: list[tuple[str, str]] = []
    for key, value in document.items():
        if isinstance(value, dict):
            fields = layout.get(key)
            cells = [
                (field, _cell(item))
                for field, item in value.items()
                if item is not None and item != [] and item != {}
                if fields is None or field in fields
            ]
            if fields is not None:
                cells.sort(key=lambda cell: fields.index(cell[0]))
            table = Table(title=key, title_justify="left", show_header=False)
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold", min_width=_id_width(cells))
            for cell in cells:
                table.add_row(*cell)
            print_table(table)
        elif isinstance(value, list) and (not value or isinstance(value[0], dict)):
            if not value and layout and key not in layout:
                continue
            columns = (
                layout.get(key)
                or LIST_COLUMNS.get(key)
                or (tuple(value[0]) if value else ("(none)",))
            )
            table = Table(title=f"{key} ({len(value)})", title_justify="left")
            texts = [[_cell(row.get(column)) for column in columns] for row in value]
            for index, column in enumerate(columns):
                widest = max((len(row[index]) for row in texts), default=0)
                if is_id_field(column) or column in TIME_FIELDS:
                    table.add_column(column, no_wrap=True, min_width=max(widest, len(column)))
                else:
                    # Narrowed as needed, but never to a sliver: a table too wide for
                    # the console is printed wider instead.
                    narrowest = min(max(widest, len(column)), _NARROWEST_COLUMN)
                    table.add_column(column, overflow="fold", min_width=narrowest)
            for texts_of_row in texts:
                table.add_row(*texts_of_row)
            print_table(table)
        elif not layout or value not in (None, []):
            # A curated table leaves out what is empty; the JSON keeps every key.
            rows.append((key, _cell(value)))
    if rows:
        scalars = Table(show_header=False, box=None, pad_edge=False)
        scalars.add_column(style="bold", no_wrap=True)
        scalars.add_column(overflow="fold", min_width=_id_width(rows))
        for row in rows:
            scalars.add_row(*row)
        print_table(scalars)
