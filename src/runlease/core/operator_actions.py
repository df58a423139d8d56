"""Operator actions on runs and the scheduler: cancel, retry, recover, force release/fail,
pause, and the start and end of a drain.

Force operations override a live lease, so each needs a reason and is rate limited per
actor and task (FORCE_RATE_LIMIT in FORCE_RATE_WINDOW_SECONDS); a retry spends from the
same allowance, since a retry loop hammers a task as surely as a force loop does. A bulk
force applies the single operation to each run and reports every run's outcome instead of
failing whole.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from runlease.core import lifecycle, validate
from runlease.core.commands import (
    BulkForceRuns,
    CancelRun,
    FinishDrain,
    ForceFailRun,
    ForceReleaseRun,
    PauseScheduler,
    RecoverRun,
    ResumeScheduler,
    RetryRun,
    StartDrain,
)
from runlease.core.ids import hash_prefix
from runlease.core.model import (
    FAILURE_KIND_OPERATOR_FORCED,
    FORCE_RATE_LIMIT,
    FORCE_RATE_WINDOW_SECONDS,
    LEASED_RUN_STATUSES,
    MAX_BULK_RUN_IDS,
    MAX_REASON_CHARS,
    MAX_RETRY_CHAIN,
    REASON_RECOVERED,
    BulkItem,
    BulkResult,
    Event,
    RetryResult,
    Run,
    SchedulerState,
    Task,
)
from runlease.core.outcome import Outcome
from runlease.core.registry import handles
from runlease.core.state import State, snapshot_run
from runlease.core.tasks import check_new_run_id, check_startable
from runlease.errors import (
    ATTEMPTS_EXHAUSTED,
    BULK_TOO_LARGE,
    FORCE_RATE_LIMITED,
    FORCE_REASON_REQUIRED,
    INVALID_TRANSITION,
    RETRY_CHAIN_TOO_DEEP,
    InvalidInput,
    RunleaseError,
)

ForceAction = Literal["force_release", "force_fail"]


# --------------------------------------------------------------------- cancel, retry
@handles(CancelRun)
def cancel_run(m: State, cmd: CancelRun) -> Outcome[Run]:
    run = m.get_run(cmd.run_id)
    reason = validate.optional_text(cmd.reason, "reason") or "canceled"
    session_id = run.session_id if run.status in LEASED_RUN_STATUSES else None
    m.stop_run(run, "cancel", reason, cmd.now)
    task = m.tasks[run.task_id]
    m.settle(task, m.runs[task.current_run_id or run.id], cmd.now)
    event = m.run_event(
        "run_canceled",
        cmd.now,
        run,
        session_id=session_id,
        data={"reason": reason},
    )
    return Outcome(reply=snapshot_run(run), events=[event])


@handles(RetryRun)
def retry_run(m: State, cmd: RetryRun) -> Outcome[RetryResult]:
    run = m.get_run(cmd.run_id)
    task = m.tasks[run.task_id]
    lifecycle.next_run_status(run, "retry")
    if task.current_run_id != run.id:
        raise InvalidInput(
            f"run {run.id} is not the latest run of task {task.id} "
            f"({task.current_run_id}); retry that one",
            code=INVALID_TRANSITION,
        )
    chain = sum(1 for _ in m.run_chain(task))
    if chain + 1 > MAX_RETRY_CHAIN:
        raise InvalidInput(
            f"task {task.id} already has a chain of {chain} runs; "
            f"a retry would exceed {MAX_RETRY_CHAIN}",
            code=RETRY_CHAIN_TOO_DEEP,
        )
    if run.attempt + 1 > task.max_attempts:
        raise InvalidInput(
            f"task {task.id} has used all {task.max_attempts} attempts",
            code=ATTEMPTS_EXHAUSTED,
        )
    check_startable(task)
    check_new_run_id(m, cmd.new_run_id)
    key, stamps = _check_rate(m, task, cmd.now)
    events = [m.enqueue(task, run, cmd.new_run_id, cmd.now)]
    _record_force(task, key, stamps, cmd.now)
    new = m.runs[cmd.new_run_id]
    events.append(
        m.run_event(
            "run_retried",
            cmd.now,
            new,
            data={"previous_run_id": run.id, "attempt": new.attempt},
        )
    )
    return Outcome(
        reply=RetryResult(previous_run=snapshot_run(run), run=snapshot_run(new)),
        events=events,
        queued=new.id in m.index,
    )


# ------------------------------------------------------------------------- recover
@handles(RecoverRun)
def recover_run(m: State, cmd: RecoverRun) -> Outcome[Run]:
    """Put a parked run back in the queue, whatever parked it (a block, lost leases, or
    starvation). It keeps its attempt and its place in the queue; its lease-loss count
    starts again, so a run parked for losing too many leases gets its full budget back."""
    run = m.get_run(cmd.run_id)
    reason = validate.optional_text(cmd.reason, "reason")
    task = m.tasks[run.task_id]
    lifecycle.next_run_status(run, "recover")
    if task.current_run_id != run.id:
        raise InvalidInput(
            f"run {run.id} was replaced by run {task.current_run_id} of task {task.id}; "
            f"recover that one, or close this one with `runlease run cancel {run.id}`",
            code=INVALID_TRANSITION,
        )
    check_startable(task)
    parked = {"error": run.error, "reason": run.reason, "recovery_count": run.recovery_count}
    lifecycle.move_run(run, "recover")
    m.record_requeue(run, "recover", cmd.now)
    run.error = None
    run.recovery_count = 0
    run.reason = REASON_RECOVERED
    m.index_run(task, run)
    m.settle(task, run, cmd.now)
    event = m.run_event("run_recovered", cmd.now, run, data={"reason": reason, "parked": parked})
    return Outcome(reply=snapshot_run(run), events=[event], queued=run.id in m.index)


# --------------------------------------------------------------------------- force
def _check_force(m: State, run: Run, reason: str, now: float) -> tuple[Task, str, list[float]]:
    """Reason and rate limit of a force operation; returns the stamps to store."""
    _check_force_reason(reason)
    validate.text(reason, "reason", max_chars=MAX_REASON_CHARS)
    task = m.tasks[run.task_id]
    key, stamps = _check_rate(m, task, now)
    return task, key, stamps


def _check_rate(m: State, task: Task, now: float) -> tuple[str, list[float]]:
    """Refuse a force or a retry past the actor's allowance on this task; otherwise the
    actor's key and its stamps still inside the window (to store with the new one)."""
    actor = m.actor
    key = "unknown" if actor is None else f"{actor.kind}:{actor.ref}"
    window_start = now - FORCE_RATE_WINDOW_SECONDS
    stamps = [t for t in (task.force_ops or {}).get(key, ()) if t > window_start]
    if len(stamps) >= FORCE_RATE_LIMIT:
        raise InvalidInput(
            f"{key} already forced or retried {FORCE_RATE_LIMIT} runs of task {task.id} in "
            f"the last {FORCE_RATE_WINDOW_SECONDS:.0f} s; wait and try again",
            code=FORCE_RATE_LIMITED,
        )
    return key, stamps


def _check_force_reason(reason: object) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("a force operation needs a reason", code=FORCE_REASON_REQUIRED)


def _record_force(task: Task, key: str, stamps: list[float], now: float) -> None:
    window_start = now - FORCE_RATE_WINDOW_SECONDS
    previous = task.force_ops or {}
    kept = {k: v for k, v in previous.items() if k != key and v and v[-1] > window_start}
    kept[key] = [*stamps, now]
    task.force_ops = kept


@handles(ForceReleaseRun)
def force_release(m: State, cmd: ForceReleaseRun) -> Outcome[Run]:
    return _force_one(m, m.get_run(cmd.run_id), "force_release", cmd.reason, cmd.now)


@handles(ForceFailRun)
def force_fail(m: State, cmd: ForceFailRun) -> Outcome[Run]:
    return _force_one(m, m.get_run(cmd.run_id), "force_fail", cmd.reason, cmd.now)


def _force_one(m: State, run: Run, action: ForceAction, reason: str, now: float) -> Outcome[Run]:
    """Take a run from its holder (or its parked state) whatever its lease says: back to
    the queue (force_release) or failed for good (force_fail)."""
    task, key, stamps = _check_force(m, run, reason, now)
    session_id = run.session_id if run.status in LEASED_RUN_STATUSES else None
    previous_hash = m.stop_run(run, action, reason, now)
    data: dict[str, Any] = {"reason": reason}
    if action == "force_release":
        kind = "run_force_released"
        run.ended_at = None
        m.index_run(task, run)
    else:
        kind = "run_force_failed"
        run.error = reason
        run.failure_kind = FAILURE_KIND_OPERATOR_FORCED
        data["failure_kind"] = FAILURE_KIND_OPERATOR_FORCED
    data["previous_claim_hash_prefix"] = hash_prefix(previous_hash)
    m.settle(task, run, now)
    _record_force(task, key, stamps, now)
    event = m.run_event(kind, now, run, session_id=session_id, data=data)
    return Outcome(reply=snapshot_run(run), events=[event], queued=run.id in m.index)


@handles(BulkForceRuns)
def bulk_force(m: State, cmd: BulkForceRuns) -> Outcome[BulkResult]:
    if cmd.action not in ("release", "fail"):
        raise InvalidInput(f"bulk action must be release or fail, not {cmd.action!r}")
    if len(cmd.run_ids) > MAX_BULK_RUN_IDS:
        raise InvalidInput(
            f"{len(cmd.run_ids)} runs in one bulk request; the limit is {MAX_BULK_RUN_IDS}",
            code=BULK_TOO_LARGE,
        )
    if not cmd.run_ids:
        raise InvalidInput("a bulk request needs at least one run id")
    _check_force_reason(cmd.reason)
    action: ForceAction = "force_release" if cmd.action == "release" else "force_fail"
    reply = BulkResult()
    events: list[Event] = []
    queued = False
    for run_id in cmd.run_ids:
        try:
            done = _force_one(m, m.get_run(run_id), action, cmd.reason, cmd.now)
        except RunleaseError as exc:
            reply.items.append(
                BulkItem(run_id=run_id, ok=False, code=exc.code, message=exc.message)
            )
            continue
        events.extend(done.events)
        queued |= done.queued
        reply.items.append(BulkItem(run_id=run_id, ok=True, run=done.reply))
    return Outcome(reply=reply, events=events, queued=queued)


# ----------------------------------------------------------------------- scheduler
@handles(PauseScheduler)
def pause_scheduler(m: State, cmd: PauseScheduler) -> Outcome[SchedulerState]:
    reason = validate.optional_text(cmd.reason, "reason")
    if m.scheduler.paused:
        raise InvalidInput("the scheduler is already paused", code=INVALID_TRANSITION)
    m.scheduler = SchedulerState(
        paused=True,
        paused_by=m.actor.ref if m.actor is not None else None,
        paused_at=cmd.now,
        reason=reason,
        updated_at=cmd.now,
    )
    event = m.event("scheduler_paused", cmd.now, data={"reason": reason})
    return Outcome(reply=msgspec.structs.replace(m.scheduler), events=[event])


@handles(ResumeScheduler)
def resume_scheduler(m: State, cmd: ResumeScheduler) -> Outcome[SchedulerState]:
    reason = validate.optional_text(cmd.reason, "reason")
    if not m.scheduler.paused:
        raise InvalidInput("the scheduler is not paused", code=INVALID_TRANSITION)
    m.scheduler = SchedulerState(paused=False, updated_at=cmd.now)
    event = m.event("scheduler_resumed", cmd.now, data={"reason": reason})
    return Outcome(
        reply=msgspec.structs.replace(m.scheduler),
        events=[event],
        queued=len(m.index) > 0,
    )


@handles(StartDrain)
def start_drain(m: State, cmd: StartDrain) -> Outcome[SchedulerState]:
    """Pause the scheduler for a drain (a scheduler paused already stays as it is) and
    record that the drain began, with the leases it waits for."""
    reason = validate.optional_text(cmd.reason, "reason")
    events: list[Event] = []
    if not m.scheduler.paused:
        events = pause_scheduler(m, PauseScheduler(now=cmd.now, reason=reason)).events
    events.append(
        m.event(
            "scheduler_drain_started",
            cmd.now,
            data={"reason": reason, "active_claims": m.leased_count()},
        )
    )
    return Outcome(reply=msgspec.structs.replace(m.scheduler), events=events)


@handles(FinishDrain)
def finish_drain(m: State, cmd: FinishDrain) -> Outcome[SchedulerState]:
    """Record how a drain ended: every lease gone, or the wait over with some remaining.
    The scheduler stays paused either way; resuming it is a separate decision."""
    remaining = m.leased_count()
    event = m.event(
        "scheduler_drain_completed",
        cmd.now,
        data={
            "completed": remaining == 0,
            # Leases still held mean the wait ran out before they ended.
            "timed_out": remaining > 0,
            "remaining_claims": remaining,
            "started_at": cmd.started_at,
        },
    )
    return Outcome(reply=msgspec.structs.replace(m.scheduler), events=[event])
