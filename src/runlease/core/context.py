"""The context bundle: what an agent holding a run's lease needs to pick the work up.

An agent that claims a run (often one another session lost) starts knowing nothing about
it. The bundle gathers, from the state alone, the task, the run, the task's earlier runs
(status, error, a summary of the result, times, who held them), the task's last
checkpoints, its recent events and the limits the agent works under (lease, attempts,
payload caps).

It is meant to be pasted into an agent's prompt, so its size is bounded: its JSON encoding
never exceeds ``max_bytes`` (:data:`CONTEXT_MAX_BYTES` by default). To fit, lists lose their
oldest items first and long strings and payloads are shortened with a visible marker; every
cut is recorded in the bundle (``cuts`` for lists, ``shortened`` for fields), so an agent
can tell a short history from a truncated one.

Only the session that holds a live lease on the run may read it; anyone else gets the
refusal a heartbeat would get (see :mod:`runlease.core.lease_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from runlease.core import lease_loss
from runlease.core.ids import hash_prefix
from runlease.core.leases import held_run
from runlease.core.model import (
    MAX_LEASE_SECONDS,
    MAX_METADATA_BYTES,
    MAX_NOTE_CHARS,
    MAX_REASON_CHARS,
    MAX_RESULT_BYTES,
    Checkpoint,
    Event,
    Run,
    Task,
)
from runlease.core.state import State, snapshot_run, snapshot_task
from runlease.core.views import _redacted as redacted_event
from runlease.errors import InvalidInput

# The JSON encoding of a bundle is at most this many bytes unless the caller asks for less.
CONTEXT_MAX_BYTES: Final = 64 * 1024
# Below this a bundle of the largest task and run the limits allow might not fit at all.
CONTEXT_MIN_BYTES: Final = 16 * 1024
# How many items each list starts with before the size bound cuts further.
MAX_PRIOR_ATTEMPTS: Final = 20
MAX_CONTEXT_CHECKPOINTS: Final = 20
MAX_CONTEXT_EVENTS: Final = 50
# Earlier runs are found by following previous_run_id; the walk stops after this many.
MAX_RUN_CHAIN_WALK: Final = 1000
# What a shortened string ends with: the marker and how much was left out.
SHORTENED_MARK: Final = "…[shortened: {} more chars]"

_encode = msgspec.json.Encoder().encode


class PriorAttempt(msgspec.Struct, kw_only=True, tag="prior_attempt", omit_defaults=True):
    """One earlier run of the task, as the agent needs it: how it ended and who had it."""

    run_id: str
    status: str
    attempt: int
    recovery_count: int = 0
    session_id: str | None = None
    claimed_by: str | None = None
    queued_at: float
    claimed_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    reason: str | None = None
    failure_kind: str | None = None
    # The result (or the failure metadata) as JSON text, shortened when long.
    result_summary: str | None = None


class ContextLimits(msgspec.Struct, kw_only=True, tag="context_limits"):
    """What the agent works under: its lease, the attempts, the payload caps."""

    lease_until: float
    lease_seconds: float
    seconds_left: float
    max_lease_seconds: float
    attempt: int
    max_attempts: int
    recovery_count: int
    # Failures this run may still end with and leave the task another attempt.
    attempts_left: int
    # Lost leases the run may still survive before it is parked for a person.
    lease_losses_left: int
    max_result_bytes: int
    max_metadata_bytes: int
    max_note_chars: int
    max_reason_chars: int


class ListCut(msgspec.Struct, kw_only=True, tag="list_cut"):
    """A list of the bundle that lost its oldest ``dropped`` items (``kept`` remain)."""

    field: str
    kept: int
    dropped: int


class ContextBundle(msgspec.Struct, kw_only=True, tag="context_bundle", omit_defaults=True):
    """The context of one leased run for the session holding it (see the module doc)."""

    task: Task
    run: Run
    prior_attempts: list[PriorAttempt] = []
    checkpoints: list[Checkpoint] = []
    recent_events: list[Event] = []
    limits: ContextLimits
    generated_at: float
    max_bytes: int
    # Whether anything was left out or shortened; ``cuts`` and ``shortened`` say what.
    truncated: bool = False
    cuts: list[ListCut] = []
    # The fields whose text or payload was shortened (marked SHORTENED_MARK inside).
    shortened: list[str] = []


def holder_run(m: State, session_id: str | None, run_id: str, now: float) -> Run:
    """The run, if ``session_id`` holds a live lease on it; otherwise the refusal a lease
    call gets (RUN_NOT_FOUND, AUTONOMY_LEASE_EXPIRED, AUTONOMY_FOREIGN_RUN, ...)."""
    session = m.live_session(session_id)
    run = held_run(m, session, run_id, now)
    if run is None:
        raise lease_loss.refusal(m, session, run_id, now, "context")
    return run


def build_bundle(
    m: State,
    run: Run,
    now: float,
    events: Sequence[Event],
    *,
    max_bytes: int = CONTEXT_MAX_BYTES,
) -> ContextBundle:
    """The bundle of ``run`` (leased) at ``now``; ``events`` are the task's retained events,
    oldest first. Its JSON encoding fits in ``max_bytes``."""
    if max_bytes < CONTEXT_MIN_BYTES:
        raise InvalidInput(f"max_bytes must be at least {CONTEXT_MIN_BYTES}, got {max_bytes}")
    task = m.tasks[run.task_id]
    earlier = _earlier_runs(m, run)
    checkpoints = list(task.checkpoints)
    # The lists the size bound may cut, oldest item first, and how many items each had
    # before any cut (earlier runs: as far back as the chain walk goes).
    lists: dict[str, list[Any]] = {
        "prior_attempts": [_attempt(r) for r in earlier[-MAX_PRIOR_ATTEMPTS:]],
        "checkpoints": checkpoints[-MAX_CONTEXT_CHECKPOINTS:],
        "recent_events": [redacted_event(e) for e in events[-MAX_CONTEXT_EVENTS:]],
    }
    totals = {
        "prior_attempts": len(earlier),
        "checkpoints": len(checkpoints),
        "recent_events": len(events),
    }
    return _fitted(task, run, now, lists, totals, max_bytes)


def _fitted(
    task: Task,
    run: Run,
    now: float,
    lists: dict[str, list[Any]],
    totals: dict[str, int],
    max_bytes: int,
) -> ContextBundle:
    # Shorten at growing strength until the bundle fits: each level clips long strings and
    # payloads tighter, after dropping list items has been tried at the level before.
    for level, text_limit in enumerate(_TEXT_LIMITS):
        shortened: list[str] = []
        bundle = ContextBundle(
            task=_task_view(task, text_limit, shortened, tight=level == len(_TEXT_LIMITS) - 1),
            run=_run_view(run, text_limit, shortened),
            limits=_limits(task, run, now),
            generated_at=now,
            max_bytes=max_bytes,
        )
        kept = {name: _shorten_items(name, items, text_limit) for name, items in lists.items()}
        if _fit(bundle, kept, totals, shortened, max_bytes):
            return bundle
    raise AssertionError("a bundle with empty lists and the tightest clipping always fits")


# The longest a string of the bundle may be, tried in turn; the last level also clips
# every short field of the task and run (names, ids, capabilities).
_TEXT_LIMITS: Final = (2048, 512, 64)
# Lists are cut in this order, down to the number of items given, then on to empty.
_CUT_ORDER: Final = (
    ("recent_events", 10),
    ("checkpoints", 5),
    ("prior_attempts", 3),
    ("recent_events", 0),
    ("checkpoints", 0),
    ("prior_attempts", 0),
)


def _fit(
    bundle: ContextBundle,
    kept: dict[str, list[_Marked]],
    totals: dict[str, int],
    shortened: list[str],
    max_bytes: int,
) -> bool:
    """Drop the oldest list items until ``bundle`` encodes within ``max_bytes``; False if it
    does not fit even with every list empty.

    The whole bundle is encoded once; dropping an item saves what it and its marks take,
    and the records of the cuts cost at most :data:`_CUTS_OVERHEAD`, so the size is
    estimated from there and checked by encoding again."""
    cost = {
        name: [len(_encode(item)) + 1 + sum(len(m) + 3 for m in marks) for item, marks in items]
        for name, items in kept.items()
    }
    start = {name: 0 for name in kept}  # how many of the oldest are dropped
    _assemble(bundle, kept, start, totals, shortened)
    size = len(_encode(bundle))
    if size <= max_bytes:
        return True
    estimate = size + _CUTS_OVERHEAD
    steps = iter(_CUT_ORDER)
    name, floor = next(steps)
    while True:
        while estimate > max_bytes and len(kept[name]) - start[name] > floor:
            estimate -= cost[name][start[name]]
            start[name] += 1
        if estimate <= max_bytes:
            _assemble(bundle, kept, start, totals, shortened)
            actual = len(_encode(bundle))
            if actual <= max_bytes:
                return True
            estimate = actual + _CUTS_OVERHEAD  # an estimate too low: go on from here
            continue
        step = next(steps, None)
        if step is None:
            _assemble(bundle, kept, start, totals, shortened)
            return len(_encode(bundle)) <= max_bytes
        name, floor = step


# What recording cuts may add to a bundle: "truncated", and one ListCut per list.
_CUTS_OVERHEAD: Final = 3 * 64 + 48


def _assemble(
    bundle: ContextBundle,
    kept: dict[str, list[_Marked]],
    start: dict[str, int],
    totals: dict[str, int],
    shortened: list[str],
) -> None:
    """Fill the bundle's lists with the items not dropped, and say what was cut."""
    marks = list(shortened)
    cuts: list[ListCut] = []
    remaining: dict[str, list[Any]] = {}
    for name in ("prior_attempts", "checkpoints", "recent_events"):
        items = kept[name][start[name] :]
        remaining[name] = [item for item, _ in items]
        marks.extend(mark for _, item_marks in items for mark in item_marks)
        if len(items) < totals[name]:
            cuts.append(ListCut(field=name, kept=len(items), dropped=totals[name] - len(items)))
    bundle.prior_attempts = remaining["prior_attempts"]
    bundle.checkpoints = remaining["checkpoints"]
    bundle.recent_events = remaining["recent_events"]
    bundle.cuts = cuts
    bundle.shortened = marks
    bundle.truncated = bool(cuts or marks)


def _earlier_runs(m: State, run: Run) -> list[Run]:
    """The runs before ``run`` in its chain, oldest first."""
    chain: list[Run] = []
    previous = run.previous_run_id
    while previous is not None and len(chain) < MAX_RUN_CHAIN_WALK:
        earlier = m.runs.get(previous)
        if earlier is None:
            break
        chain.append(earlier)
        previous = earlier.previous_run_id
    chain.reverse()
    return chain


def _attempt(run: Run) -> PriorAttempt:
    payload = run.result if run.result is not None else run.failure_metadata
    return PriorAttempt(
        run_id=run.id,
        status=run.status,
        attempt=run.attempt,
        recovery_count=run.recovery_count,
        session_id=run.session_id,
        claimed_by=run.claimed_by,
        queued_at=run.queued_at,
        claimed_at=run.claimed_at,
        ended_at=run.ended_at,
        error=run.error,
        reason=run.reason,
        failure_kind=run.failure_kind,
        result_summary=None if payload is None else _encode(payload).decode(),
    )


def _limits(task: Task, run: Run, now: float) -> ContextLimits:
    assert run.lease_until is not None
    granted_at = max(run.claimed_at or 0.0, run.heartbeat_at or 0.0)
    return ContextLimits(
        lease_until=run.lease_until,
        lease_seconds=max(0.0, run.lease_until - granted_at),
        seconds_left=max(0.0, run.lease_until - now),
        max_lease_seconds=MAX_LEASE_SECONDS,
        attempt=run.attempt,
        max_attempts=task.max_attempts,
        recovery_count=run.recovery_count,
        attempts_left=max(0, task.max_attempts - run.attempt),
        lease_losses_left=max(0, task.max_attempts - run.attempt - run.recovery_count),
        max_result_bytes=MAX_RESULT_BYTES,
        max_metadata_bytes=MAX_METADATA_BYTES,
        max_note_chars=MAX_NOTE_CHARS,
        max_reason_chars=MAX_REASON_CHARS,
    )


# ------------------------------------------------------------------------ shortening
def clip(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and the marker."""
    if len(text) <= limit:
        return text
    return text[:limit] + SHORTENED_MARK.format(len(text) - limit)


def _clip_field(value: str | None, limit: int, name: str, shortened: list[str]) -> str | None:
    if value is None or len(value) <= limit:
        return value
    shortened.append(name)
    return clip(value, limit)


def _clip_payload(value: Any, limit: int, name: str, shortened: list[str]) -> Any:
    """A JSON payload, or, when its JSON text is longer than ``limit`` characters, a
    one-key object holding the start of that text with the marker."""
    if value is None:
        return None
    text = _encode(value).decode()
    if len(text) <= limit:
        return value
    shortened.append(name)
    return {"shortened_json": clip(text, limit)}


def _task_view(task: Task, limit: int, shortened: list[str], *, tight: bool) -> Task:
    """The task for the bundle: its checkpoints are listed beside it, its rate-limit
    bookkeeping left out, long text shortened."""
    view = snapshot_task(task)
    view.checkpoints = ()
    view.force_ops = None
    view.title = _clip_field(task.title, limit, "task.title", shortened) or ""
    view.description = _clip_field(task.description, limit, "task.description", shortened) or ""
    metadata = _clip_payload(task.metadata, limit, "task.metadata", shortened)
    if metadata is not task.metadata:
        view.metadata = metadata
    view.cancel_reason = _clip_field(task.cancel_reason, limit, "task.cancel_reason", shortened)
    view.paused_reason = _clip_field(task.paused_reason, limit, "task.paused_reason", shortened)
    if tight:
        for field in ("required_capabilities", "preferred_capabilities", "required_artifacts"):
            items: tuple[str, ...] = getattr(task, field)
            clipped = tuple(clip(item, limit) for item in items)
            if clipped != items:
                shortened.append(f"task.{field}")
                setattr(view, field, clipped)
    return view


def _run_view(run: Run, limit: int, shortened: list[str]) -> Run:
    """The run for the bundle: its claim-token hash as an 8-hex prefix, payloads clipped."""
    view = snapshot_run(run)
    view.claim_token_hash = hash_prefix(run.claim_token_hash)
    view.error = _clip_field(run.error, limit, "run.error", shortened)
    view.reason = _clip_field(run.reason, limit, "run.reason", shortened)
    result = _clip_payload(run.result, limit, "run.result", shortened)
    if result is not run.result:
        view.result = result
    failure = _clip_payload(run.failure_metadata, limit, "run.failure_metadata", shortened)
    if failure is not run.failure_metadata:
        view.failure_metadata = failure
    return view


# A list item of the bundle and the names of its fields that were shortened.
_Marked = tuple[Any, tuple[str, ...]]


def _shorten_items(name: str, items: list[Any], limit: int) -> list[_Marked]:
    out: list[_Marked] = []
    for item in items:
        marks: list[str] = []
        if isinstance(item, PriorAttempt):
            where = f"{name}[{item.run_id}]"
            item = msgspec.structs.replace(
                item,
                error=_clip_field(item.error, limit, f"{where}.error", marks),
                reason=_clip_field(item.reason, limit, f"{where}.reason", marks),
                result_summary=_clip_field(
                    item.result_summary, limit, f"{where}.result_summary", marks
                ),
            )
        elif isinstance(item, Checkpoint):
            note = _clip_field(item.note, limit, f"{name}[at {item.at}].note", marks)
            item = msgspec.structs.replace(item, note=note or "")
        elif isinstance(item, Event):
            data = _clip_payload(item.data, limit, f"{name}[seq {item.seq}].data", marks)
            if data is not item.data:
                item = msgspec.structs.replace(item, data=data)
        out.append((item, tuple(marks)))
    return out
