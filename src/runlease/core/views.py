"""Read-only projections of the machine for operators: inspect, status, backlog, stuck, show.

Pure functions over the machine's :class:`~runlease.core.state.State` and a ``now`` the caller
passes in; nothing here changes state, reads a clock or does IO. Every projection copies
what it returns, and claim-token hashes appear only as their first 8 hex characters.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from runlease.core.ids import hash_prefix
from runlease.core.lifecycle import is_closed
from runlease.core.model import (
    LEASED_RUN_STATUSES,
    PRIORITY_RANK,
    Checkpoint,
    Event,
    Run,
    Session,
    Task,
)
from runlease.core.state import State, snapshot_run, snapshot_task
from runlease.errors import InvalidInput

NextAction = Literal[
    "claim_available",
    "waiting_for_session",
    "running",
    "recovery_required",
    "stranded",
    "terminal",
]
# lease_expired: leased, past its deadline, not yet expired by the clock; expired_unclaimed:
# requeued when its lease ran out and claimed by nobody since; no_progress: leased, with no
# heartbeat or checkpoint for longer than the task's stale_after (or the caller's threshold).
StuckKind = Literal["lease_expired", "expired_unclaimed", "no_progress"]

RECENT_RUNS: Final = 5
RECENT_EVENTS: Final = 20
MAX_PAGE: Final = 1000


class PauseState(msgspec.Struct, kw_only=True, tag="pause_state", omit_defaults=True):
    """Direct and inherited pause of one task."""

    task_id: str
    paused: bool = False
    paused_by: str | None = None
    paused_at: float | None = None
    paused_reason: str | None = None
    effective_paused: bool = False
    # The task whose pause applies: itself, or the nearest paused ancestor.
    paused_by_task_id: str | None = None


class SchedulerStatus(msgspec.Struct, kw_only=True, tag="scheduler_status"):
    paused: bool
    paused_by: str | None
    paused_at: float | None
    paused_reason: str | None
    # Runs under a live lease (claimed or running).
    active_claim_count: int
    # Every queued run, claimable or held back by a draft, pause or dependency.
    queued_run_count: int
    # Queued runs a claimer could take now if the scheduler were running.
    claimable_run_count: int
    # Tasks paused directly (their descendants are paused too, but not counted here).
    paused_task_count: int
    as_of: float


class BacklogRun(msgspec.Struct, kw_only=True, tag="backlog_run", omit_defaults=True):
    task: Task
    run: Run
    effective_paused: bool = False
    paused_by_task_id: str | None = None
    # Why the run cannot be claimed now: draft, paused, blocked; None when claimable.
    gate: str | None = None


class Backlog(msgspec.Struct, kw_only=True, tag="backlog"):
    runs: list[BacklogRun]
    # Matching queued runs in all pages.
    total: int
    # Pass as ``after`` to get the next page; None on the last page.
    next_after: str | None = None


class DrainResult(msgspec.Struct, kw_only=True, tag="drain_result"):
    status: SchedulerStatus
    completed: bool
    timed_out: bool
    remaining_claims: int
    started_at: float
    completed_at: float


class StuckRun(msgspec.Struct, kw_only=True, tag="stuck_run", omit_defaults=True):
    """A run that needs a look: its lease ran out, or nothing happened for a while.

    ``session_id`` is the holder, or for expired_unclaimed the session that lost it."""

    task_id: str
    run_id: str
    session_id: str | None
    kind: StuckKind
    # When the lease ran out (lease_expired) or the last sign of progress (no_progress).
    since: float
    seconds: float
    lease_until: float | None = None
    # The idle limit that applied (no_progress): the task's stale_after or the threshold.
    threshold: float | None = None


class RunSummary(msgspec.Struct, kw_only=True, tag="run_summary", omit_defaults=True):
    """A run for inspect: only the first 8 hex characters of its claim hash."""

    run_id: str
    task_id: str
    status: str
    attempt: int
    recovery_count: int = 0
    claim_token_hash_prefix: str | None = None
    lease_until: float | None = None
    heartbeat_at: float | None = None
    heartbeat_age_seconds: float | None = None
    checkpoint_at: float | None = None
    bound_session_id: str | None = None
    queued_at: float
    claimed_at: float | None = None
    ended_at: float | None = None
    previous_run_id: str | None = None
    error: str | None = None
    failure_kind: str | None = None
    reason: str | None = None


class SessionSummary(msgspec.Struct, kw_only=True, tag="session_summary", omit_defaults=True):
    session_id: str
    state: str
    agent: str
    capabilities: tuple[str, ...] = ()
    opened_at: float
    stopped_at: float | None = None
    stop_reason: str | None = None
    lease_run_id: str | None = None


class InspectView(msgspec.Struct, kw_only=True, tag="inspect", omit_defaults=True):
    target: Literal["task", "run"]
    task: Task
    current_run: RunSummary | None = None
    # The run inspect was asked about, when that is not the current run.
    target_run: RunSummary | None = None
    bound_session: SessionSummary | None = None
    recent_runs: list[RunSummary] = []
    recent_events: list[Event] = []
    scheduler: SchedulerStatus
    pause: PauseState
    open_dependencies: list[str] = []
    gate: str | None = None
    next_action: NextAction
    as_of: float


class TaskDetail(msgspec.Struct, kw_only=True, tag="task_detail", omit_defaults=True):
    """``show``: a task with its whole history that runlease still holds."""

    task: Task
    # Every run, oldest first.
    runs: list[Run] = []
    checkpoints: list[Checkpoint] = []
    # Retained events of the task (see Runtime.timeline for the retention).
    events: list[Event] = []
    children: list[str] = []
    blocked_by: list[str] = []
    open_dependencies: list[str] = []
    dependents: list[str] = []
    pause: PauseState


# ---------------------------------------------------------------------------- builders
def run_summary(run: Run, now: float) -> RunSummary:
    leased = run.status in LEASED_RUN_STATUSES
    return RunSummary(
        run_id=run.id,
        task_id=run.task_id,
        status=run.status,
        attempt=run.attempt,
        recovery_count=run.recovery_count,
        claim_token_hash_prefix=hash_prefix(run.claim_token_hash),
        lease_until=run.lease_until,
        heartbeat_at=run.heartbeat_at,
        heartbeat_age_seconds=(
            max(now - run.heartbeat_at, 0.0) if leased and run.heartbeat_at is not None else None
        ),
        checkpoint_at=run.checkpoint_at,
        bound_session_id=run.session_id,
        queued_at=run.queued_at,
        claimed_at=run.claimed_at,
        ended_at=run.ended_at,
        previous_run_id=run.previous_run_id,
        error=run.error,
        failure_kind=run.failure_kind,
        reason=run.reason,
    )


def session_summary(session: Session) -> SessionSummary:
    return SessionSummary(
        session_id=session.id,
        state=session.state,
        agent=session.agent,
        capabilities=session.capabilities,
        opened_at=session.opened_at,
        stopped_at=session.stopped_at,
        stop_reason=session.stop_reason,
        lease_run_id=session.lease_run_id,
    )


def pause_state(machine: State, task: Task) -> PauseState:
    pauser = machine.pauser_of(task) if machine.paused_tasks else None
    return PauseState(
        task_id=task.id,
        paused=task.paused,
        paused_by=task.paused_by,
        paused_at=task.paused_at,
        paused_reason=task.paused_reason,
        effective_paused=pauser is not None,
        paused_by_task_id=pauser,
    )


def scheduler_status(machine: State, now: float) -> SchedulerStatus:
    state = machine.scheduler
    return SchedulerStatus(
        paused=state.paused,
        paused_by=state.paused_by,
        paused_at=state.paused_at,
        paused_reason=state.reason,
        active_claim_count=machine.leased_count(),
        queued_run_count=len(machine.index) + len(machine.held),
        claimable_run_count=len(machine.index),
        paused_task_count=len(machine.paused_tasks),
        as_of=now,
    )


def backlog(
    machine: State,
    *,
    workspace_id: str | None = None,
    include_paused: bool = True,
    after: str | None = None,
    limit: int = 100,
) -> Backlog:
    """Queued runs with their task, in the order the runs were created; page with ``after``.

    A scan of the run table (O(runs)): an operator read, not a hot path. Runs held back by a
    pause are left out when ``include_paused`` is false; drafts and blocked runs stay in.
    """
    from runlease.core.machine import snapshot_run, snapshot_task

    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_PAGE}")
    rows: list[BacklogRun] = []
    total = 0
    seen_after = after is None
    next_after = None
    for run in machine.runs.values():
        if run.status != "queued":
            continue
        task = machine.tasks[run.task_id]
        if workspace_id is not None and task.workspace_id != workspace_id:
            continue
        pauser = machine.pauser_of(task) if machine.paused_tasks else None
        if pauser is not None and not include_paused:
            continue
        total += 1
        if not seen_after:
            seen_after = run.id == after
            continue
        if len(rows) >= limit:
            next_after = rows[-1].run.id
            continue
        rows.append(
            BacklogRun(
                task=snapshot_task(task),
                run=snapshot_run(run),
                effective_paused=pauser is not None,
                paused_by_task_id=pauser,
                gate=None if run.id in machine.index else machine.gate(task),
            )
        )
    return Backlog(runs=rows, total=total, next_after=next_after)


def _eligible_session(machine: State, task: Task) -> bool:
    """A live session holding no lease that may take this task's run (caps, owner)."""
    required = set(task.required_capabilities)
    owner = task.owner
    for session in machine.sessions.values():
        if session.state != "live" or session.lease_run_id is not None:
            continue
        if not required <= set(session.capabilities):
            continue
        if owner is not None:
            if owner.kind == "agent_session" and owner.ref != session.id:
                continue
            if owner.kind == "pool" and owner.ref != session.agent:
                continue
        return True
    return False


def next_action(machine: State, task: Task, now: float) -> NextAction:
    """What has to happen next for this task, decided by the first rule that matches:

    ``terminal``
        The task is closed: completed, canceled, or failed with no attempt left.
    ``running``
        Its current run is claimed or running under a lease that has not run out.
    ``recovery_required``
        Someone must act on the current run: its lease ran out and the clock has not
        requeued it yet (steal --if-expired or wait for expiry), it is parked in
        needs_attention, or it failed with attempts left (retry or start it).
    ``stranded``
        Nothing will move on its own: the task has no run (draft, awaiting approval, never
        started), or its queued run is held back by a pause (own, ancestor's, or the
        scheduler's) or by a dependency that has not completed.
    ``claim_available``
        The current run is queued, claimable, and some live session holding no lease
        matches its capabilities and owner: the next matching claim takes it.
    ``waiting_for_session``
        The current run is queued and claimable, but no live idle session matches it.
    """
    if is_closed(task):
        return "terminal"
    run = machine.runs.get(task.current_run_id) if task.current_run_id else None
    if run is None:
        return "stranded"
    if run.status in LEASED_RUN_STATUSES:
        assert run.lease_until is not None
        return "running" if run.lease_until > now else "recovery_required"
    if run.status in ("needs_attention", "failed", "canceled"):
        return "recovery_required"
    if run.status == "completed":
        return "terminal"
    # queued
    if machine.scheduler.paused or run.id not in machine.index:
        return "stranded"
    return "claim_available" if _eligible_session(machine, task) else "waiting_for_session"


def inspect(
    machine: State,
    task: Task,
    now: float,
    events: Iterable[Event],
    *,
    target_run: Run | None = None,
) -> InspectView:
    chain = list(itertools.islice(machine.run_chain(task), RECENT_RUNS))
    current = chain[0] if chain else None
    bound = None
    if current is not None and current.session_id is not None:
        session = machine.sessions.get(current.session_id)
        if session is not None:
            bound = session_summary(session)
    recent = list(events)[-RECENT_EVENTS:]
    gate = None
    if current is not None and current.status == "queued" and current.id not in machine.index:
        gate = machine.gate(task)
    return InspectView(
        target="task" if target_run is None else "run",
        task=snapshot_task(task),
        current_run=None if current is None else run_summary(current, now),
        target_run=(
            None if target_run is None or target_run is current else run_summary(target_run, now)
        ),
        bound_session=bound,
        recent_runs=[run_summary(r, now) for r in chain],
        recent_events=recent,
        scheduler=scheduler_status(machine, now),
        pause=pause_state(machine, task),
        open_dependencies=machine.open_dependencies(task),
        gate=gate,
        next_action=next_action(machine, task, now),
        as_of=now,
    )


def task_detail(machine: State, task: Task, events: Iterable[Event]) -> TaskDetail:
    chain = [snapshot_run(run) for run in machine.run_chain(task)]
    chain.reverse()
    return TaskDetail(
        task=snapshot_task(task),
        runs=chain,
        checkpoints=[msgspec.structs.replace(c) for c in task.checkpoints],
        events=list(events),
        children=list(machine.subtasks.get(task.id, ())),
        blocked_by=list(task.blocked_by),
        open_dependencies=machine.open_dependencies(task),
        dependents=sorted(machine.dependents.get(task.id, ())),
        pause=pause_state(machine, task),
    )


def priority_rank(priority: str | int | None) -> int | None:
    """A priority name or rank as a rank (for ``priority_min``)."""
    if priority is None:
        return None
    if isinstance(priority, str):
        if priority not in PRIORITY_RANK:
            raise InvalidInput(f"priority must be one of {', '.join(PRIORITY_RANK)}")
        return PRIORITY_RANK[priority]
    return priority
