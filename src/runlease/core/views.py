"""Read-only projections of the machine for operators: inspect, status, backlog, stuck, show.

Pure functions over the machine's :class:`~runlease.core.state.State` and a ``now`` the caller
passes in; nothing here changes state, reads a clock or does IO. Every projection copies
what it returns. Inspect shows claim-token hashes only as their first 8 hex characters, in
its recent events too.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from typing import Final, Literal

import msgspec

from runlease.core.claims import could_claim
from runlease.core.ids import hash_prefix, is_token_hash
from runlease.core.lifecycle import is_closed
from runlease.core.model import (
    ERROR_LEASE_RECOVERY_EXHAUSTED,
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
DiagnosticKind = Literal["stuck", "stale_lease", "orphaned", "stranded", "crashed"]

RECENT_RUNS: Final = 5
RECENT_EVENTS: Final = 20
MAX_PAGE: Final = 1000
# A holder silent for longer than this is presumed gone, whatever its lease still says.
HEARTBEAT_STALE_SECONDS: Final = 120.0
# A queued run nobody could take for longer than this will not move without a person.
STRANDED_AFTER_SECONDS: Final = 300.0
# The reason a starved run is parked with (the starvation backstop).
REASON_STARVED: Final = "starved"


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


class QueueDepth(msgspec.Struct, kw_only=True, tag="queue_depth"):
    """How many queued runs a claimer could take now, for one workspace and priority."""

    # None: tasks with no workspace.
    workspace_id: str | None
    priority: str
    claimable: int


class LeaseRow(msgspec.Struct, kw_only=True, tag="lease_row", omit_defaults=True):
    """One live lease as an operator watches it run down (no claim token, not even hashed)."""

    run_id: str
    task_id: str
    title: str
    status: str
    attempt: int
    priority: str
    workspace_id: str | None = None
    session_id: str | None = None
    agent: str | None = None
    claimed_at: float | None = None
    heartbeat_at: float | None = None
    lease_until: float | None = None


class SessionRow(msgspec.Struct, kw_only=True, tag="session_row", omit_defaults=True):
    """One live session: who it is, what it holds and when it was last heard from."""

    session_id: str
    agent: str
    opened_at: float
    last_active_at: float
    lease_run_id: str | None = None
    parent_id: str | None = None
    capabilities: tuple[str, ...] = ()


class Overview(msgspec.Struct, kw_only=True, tag="overview"):
    """The figures an operator watches at a glance (dashboard, ``runlease top``, metrics).

    ``leases`` are the live leases that run out first and ``sessions`` the most recently
    active live sessions, at most ``limit`` of each; the counts cover everything."""

    as_of: float
    scheduler: SchedulerStatus
    tasks: int
    queued_runs: int
    claimable_runs: int
    # Queued runs held back by a draft, a pause or an open dependency.
    held_runs: int
    leased_runs: int
    live_sessions: int
    waiting_claimers: int
    last_event_seq: int
    queue: list[QueueDepth]
    leases: list[LeaseRow]
    sessions: list[SessionRow]


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


class Diagnostic(msgspec.Struct, kw_only=True, tag="diagnostic", omit_defaults=True):
    """One problem inspect found, and the command line that remedies it."""

    kind: DiagnosticKind
    message: str
    # A runlease command line; UPPER-CASE words are for the operator to fill in.
    remedy: str
    run_id: str | None = None
    session_id: str | None = None
    # Since when the problem holds (lease end, last heartbeat, entering the queue, ...).
    since: float | None = None


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
    # Problems found, each with its remedy; empty when nothing needs a person.
    diagnostics: list[Diagnostic] = []
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


DEFAULT_OVERVIEW_ROWS: Final = 50
_PRIORITY_NAMES: Final = {rank: name for name, rank in PRIORITY_RANK.items()}


def overview(
    machine: State,
    now: float,
    *,
    limit: int = DEFAULT_OVERVIEW_ROWS,
    last_active: Callable[[Session], float],
    waiting_claimers: int = 0,
    last_event_seq: int = 0,
) -> Overview:
    """Counts, queue depth by workspace and priority, the ``limit`` leases that run out
    first and the ``limit`` most recently active live sessions.

    Queue depth is read off the claim index's lanes (no scan of the queue); leases and
    sessions cost one pass over the live ones (an operator read, polled about once a
    second, not a hot path). ``last_active`` tells when a session last made a request
    (the runtime keeps that, not the state)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be a whole number from 0 to {MAX_PAGE}")
    queue = [
        QueueDepth(
            workspace_id=view or None,
            priority=_PRIORITY_NAMES.get(rank, str(rank)),
            claimable=count,
        )
        for (view, rank), count in machine.index.depth().items()
    ]
    queue.sort(key=lambda q: (q.workspace_id or "", -PRIORITY_RANK.get(q.priority, 0)))
    soonest = heapq.nsmallest(
        limit,
        machine.leased_runs(),
        key=lambda run: (run.lease_until if run.lease_until is not None else now, run.id),
    )
    sessions = machine.sessions
    leases = []
    for run in soonest:
        task = machine.tasks[run.task_id]
        holder = sessions.get(run.session_id) if run.session_id is not None else None
        leases.append(
            LeaseRow(
                run_id=run.id,
                task_id=task.id,
                title=task.title,
                status=run.status,
                attempt=run.attempt,
                priority=task.priority,
                workspace_id=task.workspace_id,
                session_id=run.session_id,
                agent=None if holder is None else holder.agent,
                claimed_at=run.claimed_at,
                heartbeat_at=run.heartbeat_at,
                lease_until=run.lease_until,
            )
        )
    live = [(last_active(s), s) for s in sessions.values() if s.state == "live"]
    newest = heapq.nlargest(limit, live, key=lambda pair: (pair[0], pair[1].id))
    return Overview(
        as_of=now,
        scheduler=scheduler_status(machine, now),
        tasks=len(machine.tasks),
        queued_runs=len(machine.index) + len(machine.held),
        claimable_runs=len(machine.index),
        held_runs=len(machine.held),
        leased_runs=machine.leased_count(),
        live_sessions=len(live),
        waiting_claimers=waiting_claimers,
        last_event_seq=last_event_seq,
        queue=queue,
        leases=leases,
        sessions=[
            SessionRow(
                session_id=s.id,
                agent=s.agent,
                opened_at=s.opened_at,
                last_active_at=active,
                lease_run_id=s.lease_run_id,
                parent_id=s.parent_id,
                capabilities=s.capabilities,
            )
            for active, s in newest
        ],
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


def _eligible_sessions(machine: State, task: Task) -> tuple[int, int]:
    """Live sessions that may take the task's run: how many, and how many hold no lease."""
    eligible = idle = 0
    for session in machine.sessions.values():
        if could_claim(machine, session, task):
            eligible += 1
            idle += session.lease_run_id is None
    return eligible, idle


def _waiting_since(run: Run) -> float:
    """When a queued run last entered the queue, as closely as the record tells: a run
    put back after a lease entered it no earlier than its last sign of life."""
    return max(t for t in (run.queued_at, run.claimed_at, run.heartbeat_at) if t is not None)


def _silent_since(run: Run) -> float:
    """The last heartbeat of a leased run (the claim counts as the first)."""
    return run.heartbeat_at if run.heartbeat_at is not None else run.claimed_at or run.queued_at


def next_action(machine: State, task: Task, now: float) -> NextAction:
    """What has to happen next for this task, decided by the first rule that matches:

    ``terminal``
        The task is closed: completed, canceled, or failed with no attempt left.
    ``recovery_required``
        Someone must act on the current run: it is claimed but its lease ran out or its
        holder has not heartbeat for more than two minutes, it is parked in
        needs_attention, or it failed with attempts left (retry or start it).
    ``running``
        Its current run is under a live lease with a recent heartbeat.
    ``waiting_for_session``
        Nothing to do yet: the task was never started (or is a draft, or awaits approval:
        its status says which), the scheduler is paused, or its queued run waits for a
        session that can take it and has waited less than five minutes.
    ``claim_available``
        The current run is queued, claimable, and a live session holding no lease
        matches its capabilities and owner: the next matching claim takes it.
    ``stranded``
        The current run has been queued for more than five minutes and no live session
        could take it: none matches it, or it is held back by a pause or a dependency.
    """
    if is_closed(task):
        return "terminal"
    run = machine.runs.get(task.current_run_id) if task.current_run_id else None
    if run is None:
        return "waiting_for_session"
    if run.status in LEASED_RUN_STATUSES:
        assert run.lease_until is not None
        if run.lease_until <= now or now - _silent_since(run) > HEARTBEAT_STALE_SECONDS:
            return "recovery_required"
        return "running"
    if run.status == "completed":
        return "terminal"
    if run.status != "queued":
        return "recovery_required"
    if machine.scheduler.paused:
        return "waiting_for_session"
    eligible, idle = _eligible_sessions(machine, task)
    claimable = run.id in machine.index
    if claimable and idle:
        return "claim_available"
    if (not claimable or not eligible) and now - _waiting_since(run) > STRANDED_AFTER_SECONDS:
        return "stranded"
    return "waiting_for_session"


def diagnostics(machine: State, task: Task, now: float) -> list[Diagnostic]:
    """What is wrong with the task's current run, each finding with its remedy.

    ``stale_lease``
        The lease ran out and the lease clock has not put the run back yet.
    ``orphaned``
        The run is leased by a session that is no longer live, or it is queued for a
        session (its owner) that is no longer live, so nobody may take it.
    ``stuck``
        The holder has not heartbeat for more than two minutes though its lease still
        runs, or the holder parked the run for a person (block).
    ``crashed``
        The run lost its lease as often as the task allows attempts (its holders kept
        vanishing) and was parked.
    ``stranded``
        The run has been queued for more than five minutes and no live session could take
        it (or the starvation backstop parked it for that).
    """
    run = machine.runs.get(task.current_run_id) if task.current_run_id else None
    if run is None or is_closed(task):
        return []
    if run.status in LEASED_RUN_STATUSES:
        return _leased_diagnostics(machine, task, run, now)
    if run.status == "needs_attention":
        return [_parked_diagnostic(task, run)]
    if run.status == "queued":
        return _queued_diagnostics(machine, task, run, now)
    return []


def _leased_diagnostics(machine: State, task: Task, run: Run, now: float) -> list[Diagnostic]:
    assert run.lease_until is not None
    holder = machine.sessions.get(run.session_id or "")
    force_release = f'runlease run force-release {run.id} --reason "REASON"'
    if run.lease_until <= now:
        return [
            Diagnostic(
                kind="stale_lease",
                message=(
                    f"the lease of session {run.session_id} ran out "
                    f"{now - run.lease_until:.0f} s ago and the run is not back in the queue"
                ),
                remedy=f"runlease task steal {task.id} --if-expired",
                run_id=run.id,
                session_id=run.session_id,
                since=run.lease_until,
            )
        ]
    if holder is None or holder.state != "live":
        why = "is gone" if holder is None else f"stopped ({holder.stop_reason})"
        return [
            Diagnostic(
                kind="orphaned",
                message=f"the run is leased by session {run.session_id}, which {why}",
                remedy=force_release,
                run_id=run.id,
                session_id=run.session_id,
                since=holder.stopped_at if holder is not None else None,
            )
        ]
    silent = _silent_since(run)
    if now - silent > HEARTBEAT_STALE_SECONDS:
        return [
            Diagnostic(
                kind="stuck",
                message=(
                    f"session {run.session_id} has not heartbeat for {now - silent:.0f} s "
                    f"(more than {HEARTBEAT_STALE_SECONDS:.0f}); its lease runs "
                    f"{run.lease_until - now:.0f} s more"
                ),
                remedy=force_release,
                run_id=run.id,
                session_id=run.session_id,
                since=silent,
            )
        ]
    return []


def _parked_diagnostic(task: Task, run: Run) -> Diagnostic:
    if run.error == ERROR_LEASE_RECOVERY_EXHAUSTED:
        return Diagnostic(
            kind="crashed",
            message=(
                f"the run lost its lease {run.recovery_count} times without being finished "
                f"and was parked ({run.reason})"
            ),
            remedy=f"runlease run recover {run.id}",
            run_id=run.id,
            session_id=run.session_id,
        )
    if run.reason == REASON_STARVED:
        return Diagnostic(
            kind="stranded",
            message="no live session could claim the run for too long, so it was parked",
            remedy=f"runlease run recover {run.id}",
            run_id=run.id,
        )
    return Diagnostic(
        kind="stuck",
        message=f"session {run.session_id} blocked the run for a person: {run.reason}",
        remedy=f"runlease task unblock {task.id}",
        run_id=run.id,
        session_id=run.session_id,
    )


def _queued_diagnostics(machine: State, task: Task, run: Run, now: float) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    owner = task.owner
    if owner is not None and owner.kind == "agent_session":
        session = machine.sessions.get(owner.ref)
        if session is None or session.state != "live":
            found.append(
                Diagnostic(
                    kind="orphaned",
                    message=(
                        f"the task is assigned to session {owner.ref}, which is no longer "
                        "live; no other session may claim it"
                    ),
                    remedy=f"runlease task update {task.id} --no-owner",
                    run_id=run.id,
                    session_id=owner.ref,
                )
            )
    if found or machine.scheduler.paused:
        return found  # an orphaned owner is the cause; a paused scheduler is no fault
    eligible, _ = _eligible_sessions(machine, task)
    claimable = run.id in machine.index
    since = _waiting_since(run)
    if (claimable and eligible) or now - since <= STRANDED_AFTER_SECONDS:
        return found
    why, remedy = _stranded_cause(machine, task)
    found.append(
        Diagnostic(
            kind="stranded",
            message=f"queued for {now - since:.0f} s and {why}",
            remedy=remedy,
            run_id=run.id,
            since=since,
        )
    )
    return found


def _stranded_cause(machine: State, task: Task) -> tuple[str, str]:
    """Why no session can take the task's queued run, and the command that changes it."""
    gate = machine.gate(task)
    if gate == "draft":
        return "the task is a draft", f"runlease task publish {task.id}"
    if gate == "paused":
        pauser = machine.pauser_of(task) or task.id
        return f"task {pauser} is paused", f"runlease task resume {pauser}"
    if gate == "blocked":
        blocker = machine.open_dependencies(task)[0]
        return (
            f"it waits for task {blocker} to complete",
            f"runlease task undepend {task.id} --on {blocker}",
        )
    owner = task.owner
    if owner is not None and owner.kind == "agent_session":
        return (
            f"only session {owner.ref} may claim it",
            f"runlease task update {task.id} --no-owner",
        )
    agent = owner.ref if owner is not None else "AGENT"
    capabilities = "".join(f" --capability {c}" for c in task.required_capabilities)
    needs = f" with {', '.join(task.required_capabilities)}" if capabilities else ""
    return (
        f"no live session{needs} may claim it",
        f"runlease session open --agent {agent}{capabilities}",
    )


def _redacted(event: Event) -> Event:
    """An event for inspect: any claim-token hash in its data shortened to 8 hex digits,
    under the key with ``_prefix`` added."""
    if not any(is_token_hash(value) for value in event.data.values()):
        return event
    data = {
        (f"{key}_prefix" if is_token_hash(value) else key): (
            hash_prefix(value) if is_token_hash(value) else value
        )
        for key, value in event.data.items()
    }
    return msgspec.structs.replace(event, data=data)


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
    recent = [_redacted(event) for event in list(events)[-RECENT_EVENTS:]]
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
        diagnostics=diagnostics(machine, task, now),
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
