"""Leases: claim, heartbeat, finish (complete, fail, release, block), expiry and steal.

A session holds at most one lease; a lease is found from the calling session and the run
id, never from a token. A claim whose session still holds a lease already past its
deadline first expires that lease, then answers; if it then finds nothing, the outcome
carries the expiry's event and the error (see :func:`refused_after_changes`).
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from runlease.core import lease_loss, lifecycle, validate
from runlease.core.commands import (
    BlockRun,
    ClaimNext,
    ClaimRun,
    CompleteRun,
    ExpireLease,
    FailRun,
    FinishAndClaim,
    HeartbeatRun,
    ReleaseRun,
    StealRun,
)
from runlease.core.graph import auto_start
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_prefix, hash_token, is_token_hash
from runlease.core.model import (
    ERROR_LEASE_RECOVERY_EXHAUSTED,
    LEASED_RUN_STATUSES,
    LOSS_STOLEN,
    MAX_METADATA_BYTES,
    MAX_REASON_CHARS,
    MAX_RESULT_BYTES,
    REASON_LEASE_EXPIRED,
    REASON_ORPHANED_ON_BOOT,
    Claim,
    Event,
    Finished,
    Heartbeat,
    NoClaim,
    Run,
    Session,
)
from runlease.core.outcome import LEASE_DEADLINE, Outcome, refused_after_changes
from runlease.core.registry import dispatch, handles
from runlease.core.state import State, snapshot_run, snapshot_task
from runlease.errors import (
    AUTONOMY_LEASE_ALREADY_HELD,
    AUTONOMY_LEASE_EXPIRED,
    COMPLETION_CONTRACT_UNMET,
    INVALID_TRANSITION,
    LEASE_NOT_EXPIRED,
    NO_CLAIMABLE_RUN,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
)

MAX_ERROR_CHARS = 8 * 1024
_NO_TAGS: frozenset[str] = frozenset()


# ------------------------------------------------------------------- claim inputs
class ClaimInputs(NamedTuple):
    """A claim's inputs once checked: lease length, where to look, the new lease's hash."""

    seconds: float
    clamped: bool
    # The claim index view: "" tasks with no workspace, else that workspace's tasks.
    where: str
    token_hash: str


def check_claim(cmd: ClaimNext | ClaimRun) -> ClaimInputs:
    """Check what a claim asks for, before anything changes."""
    seconds, clamped = validate.lease_seconds(cmd.lease_seconds)
    if cmd.workspace_id is not None:
        validate.name(cmd.workspace_id, "workspace_id")
    where = _workspace_key(cmd.scope, cmd.workspace_id)
    if cmd.priority_min is not None and (
        isinstance(cmd.priority_min, bool) or not isinstance(cmd.priority_min, int)
    ):
        raise InvalidInput("priority_min must be a priority rank (10, 20, 30 or 40)")
    return ClaimInputs(seconds, clamped, where, lease_hash(cmd))


def _workspace_key(scope: str | None, workspace_id: str | None) -> str:
    if scope is None:
        return workspace_id or ""
    if scope == "global":
        if workspace_id is not None:
            raise InvalidInput("a global-scope claim cannot name a workspace")
        return ""
    if scope == "workspace":
        if workspace_id is None:
            raise InvalidInput("a workspace-scope claim needs a workspace_id")
        return workspace_id
    raise InvalidInput(f"scope must be global or workspace, not {scope!r}")


def lease_hash(cmd: ClaimNext | ClaimRun | StealRun) -> str:
    """The token hash a claim or steal grants its lease under.

    New commands carry the hash. Journals written before that carry the raw token, which
    is hashed here, so replaying them yields the same state and the token goes no further.
    """
    if cmd.claim_token_hash is not None:
        if not is_token_hash(cmd.claim_token_hash):
            raise InvalidInput("claim token hash has the wrong form (a runtime bug)")
        return cmd.claim_token_hash
    token = cmd.claim_token
    if not isinstance(token, str) or not token.startswith(CLAIM_TOKEN_PREFIX):
        raise InvalidInput("claim token has the wrong form (a runtime bug)")
    return hash_token(token)


# -------------------------------------------------------------------------- claim
@handles(ClaimNext)
def claim_next(m: State, cmd: ClaimNext) -> Outcome[Claim]:
    session = m.live_session(cmd.session_id)
    inputs = check_claim(cmd)
    tags = m.capability_set(validate.tags(cmd.tags)) if cmd.tags else _NO_TAGS
    events, queued = expire_stale_lease(m, session, cmd.now)
    run_id = (
        None
        if m.scheduler.paused
        else m.index.take(
            workspace_id=inputs.where,
            offered=m.capability_set(session.capabilities),
            owners=(f"s:{session.id}", f"p:{session.agent}"),
            min_rank=cmd.priority_min,
            tags=tags,
        )
    )
    if run_id is None:
        where = (
            f" in workspace {cmd.workspace_id}"
            if cmd.workspace_id
            else " among tasks with no workspace (name a workspace to take its tasks)"
        )
        if tags:
            where += f" tagged {', '.join(sorted(tags))}"
        if m.scheduler.paused:
            where += " (the scheduler is paused)"
        error = NotFound(
            f"no queued run{where} that session {session.id} can take "
            f"(capabilities: {', '.join(session.capabilities) or 'none'})",
            code=NO_CLAIMABLE_RUN,
        )
        if events:
            return refused_after_changes(error, events, queued=queued)
        raise error
    return grant_claim(m, session, m.runs[run_id], inputs, cmd.now, events, queued)


def expire_stale_lease(m: State, session: Session, now: float) -> tuple[list[Event], bool]:
    """Before a claim: refuse if the session still holds a live lease; expire one whose
    deadline passed but which the clock has not reached yet. Returns the expiry's events and
    whether it queued the run."""
    if session.lease_run_id is None:
        return [], False
    held = m.runs[session.lease_run_id]
    assert held.lease_until is not None
    if held.lease_until > now:
        raise LeaseRefused(
            f"session {session.id} already holds the lease on run {held.id}; "
            "complete, fail, release or block it before claiming another",
            code=AUTONOMY_LEASE_ALREADY_HELD,
        )
    expired = expire(m, held, REASON_LEASE_EXPIRED, now)
    return list(expired.events), expired.queued


def grant_claim(
    m: State,
    session: Session,
    run: Run,
    inputs: ClaimInputs,
    now: float,
    events: list[Event],
    queued: bool,
    *,
    chosen: bool = False,
) -> Outcome[Claim]:
    """Lease ``run`` (already out of the queue) to ``session``: the reply, its event after
    ``events``, and the lease's deadline. ``chosen`` marks a claim by id in the event."""
    lease = m.grant(run, session, "claim", inputs.token_hash, inputs.seconds, inputs.clamped, now)
    data: dict[str, object] = {
        "attempt": run.attempt,
        "lease_until": lease.lease_until,
        "claim_token_hash": lease.claim_token_hash,
        "agent": session.agent,
    }
    if chosen:
        data["chosen"] = True
    events.append(m.run_event("run_claimed", now, run, session_id=session.id, data=data))
    return Outcome(
        reply=Claim(task=snapshot_task(m.tasks[run.task_id]), run=snapshot_run(run), lease=lease),
        events=events,
        deadlines=[(lease.lease_until, LEASE_DEADLINE, run.id)],
        queued=queued,
    )


# ---------------------------------------------------------------- the lease holder
def held_run(m: State, session: Session, run_id: str, now: float) -> Run | None:
    """The run if ``session`` holds a live lease on it, else None (then
    :mod:`runlease.core.lease_loss` says why)."""
    if session.lease_run_id != run_id:
        return None
    run = m.runs[run_id]
    assert run.lease_until is not None
    if run.lease_until <= now:
        return None
    if run_id not in m.leased or run.session_id != session.id:
        # Defence in depth: both sides must agree on the lease; never act otherwise.
        raise LeaseRefused(
            f"the lease on {run_id} no longer matches session {session.id}",
            code=AUTONOMY_LEASE_EXPIRED,
        )
    return run


def resolve_lease(m: State, session_id: str | None, run_id: str, now: float) -> tuple[Session, Run]:
    """Find the lease a session holds on a run, or say exactly why it does not."""
    session = m.live_session(session_id)
    run = held_run(m, session, run_id, now)
    if run is None:
        raise lease_loss.refusal(m, session, run_id, now, "heartbeat")
    return session, run


@handles(HeartbeatRun)
def heartbeat(m: State, cmd: HeartbeatRun) -> Outcome[Heartbeat]:
    seconds, clamped = validate.lease_seconds(cmd.lease_seconds)
    session, run = resolve_lease(m, cmd.session_id, cmd.run_id, cmd.now)
    lease_until = cmd.now + seconds
    run.lease_until = lease_until
    run.heartbeat_at = cmd.now
    lifecycle.move_run(run, "heartbeat")
    event = m.run_event(
        "lease_renewed",
        cmd.now,
        run,
        session_id=session.id,
        data={"lease_until": lease_until},
    )
    lease = m.lease_view(run, seconds, clamped)
    return Outcome(
        reply=Heartbeat(run=snapshot_run(run), lease=lease),
        events=[event],
        deadlines=[(lease_until, LEASE_DEADLINE, run.id)],
    )


@handles(CompleteRun)
def complete(m: State, cmd: CompleteRun) -> Outcome[Run]:
    result = (
        None
        if cmd.result is None
        else validate.json_payload(cmd.result, "result", max_bytes=MAX_RESULT_BYTES)
    )
    session = m.live_session(cmd.session_id)
    run = held_run(m, session, cmd.run_id, cmd.now)
    if run is None:
        return lease_loss.repeated_finish(
            m, session, cmd.run_id, cmd.now, "complete", lambda done: done.result == result
        )
    task = m.tasks[run.task_id]
    if task.required_artifacts:
        checked = cmd.checked_artifacts
        if checked is None or sorted(checked) != sorted(task.required_artifacts):
            raise InvalidInput(
                f"task {task.id} has a completion contract "
                f"({', '.join(task.required_artifacts)}) that was not checked",
                code=COMPLETION_CONTRACT_UNMET,
            )
        missing = [p for p in task.required_artifacts if p in set(cmd.missing_artifacts)]
        if missing:
            raise InvalidInput(
                f"task {task.id} cannot complete: required artifacts missing: {', '.join(missing)}",
                code=COMPLETION_CONTRACT_UNMET,
            )
    m.end_lease(run, session)
    lifecycle.move_run(run, "complete")
    run.ended_at = cmd.now
    run.result = result
    m.settle(task, run, cmd.now)
    events = [m.run_event("run_completed", cmd.now, run, session_id=session.id)]
    queued = _unblock_dependents(m, task.id, cmd.now, events)
    return Outcome(reply=snapshot_run(run), events=events, queued=queued)


def _unblock_dependents(m: State, task_id: str, now: float, events: list[Event]) -> bool:
    """After a task completed: settle its dependents and open the ones now free."""
    waiting = m.dependents.get(task_id)
    if not waiting:
        return False  # the common case: nothing depends on it
    dependents = sorted(waiting)
    for dependent_id in dependents:
        dependent = m.tasks[dependent_id]
        before = dependent.status
        m.resettle(dependent, now)
        if not m.open_dependencies(dependent):
            events.append(
                m.event(
                    "task_unblocked",
                    now,
                    task_id=dependent_id,
                    data={"resolved": task_id, "previous_status": before},
                )
            )
    queued = m.regate(dependents)
    return auto_start(m, dependents, now, events) or queued


@handles(FailRun)
def fail(m: State, cmd: FailRun) -> Outcome[Run]:
    error = validate.text(cmd.error, "error", max_chars=MAX_ERROR_CHARS)
    metadata = validate.json_object(cmd.metadata, "metadata", max_bytes=MAX_METADATA_BYTES)
    session = m.live_session(cmd.session_id)
    run = held_run(m, session, cmd.run_id, cmd.now)
    if run is None:
        return lease_loss.repeated_finish(
            m,
            session,
            cmd.run_id,
            cmd.now,
            "fail",
            lambda done: done.error == error and done.failure_metadata == metadata,
        )
    m.end_lease(run, session)
    lifecycle.move_run(run, "fail")
    run.ended_at = cmd.now
    run.error = error
    run.failure_metadata = metadata
    task = m.tasks[run.task_id]
    m.settle(task, run, cmd.now)
    event = m.run_event(
        "run_failed",
        cmd.now,
        run,
        session_id=session.id,
        data={"error": error, "attempts_left": max(task.max_attempts - run.attempt, 0)},
    )
    return Outcome(reply=snapshot_run(run), events=[event])


@handles(ReleaseRun)
def release(m: State, cmd: ReleaseRun) -> Outcome[Run]:
    reason = validate.optional_text(cmd.reason, "reason") or "released"
    session = m.live_session(cmd.session_id)
    run = held_run(m, session, cmd.run_id, cmd.now)
    if run is None:
        return lease_loss.repeated_finish(
            m, session, cmd.run_id, cmd.now, "release", lambda done: done.reason == reason
        )
    previous_hash = run.claim_token_hash
    m.end_lease(run, session)
    m.requeue(run, "release", reason, cmd.now)
    event = m.run_event(
        "lease_released",
        cmd.now,
        run,
        session_id=session.id,
        data={"reason": reason, "previous_claim_token_hash": previous_hash},
    )
    return Outcome(reply=snapshot_run(run), events=[event], queued=True)


@handles(BlockRun)
def block(m: State, cmd: BlockRun) -> Outcome[Run]:
    reason = validate.text(cmd.reason, "reason", max_chars=MAX_REASON_CHARS)
    session = m.live_session(cmd.session_id)
    run = held_run(m, session, cmd.run_id, cmd.now)
    if run is None:
        return lease_loss.repeated_finish(
            m, session, cmd.run_id, cmd.now, "block", lambda done: done.reason == reason
        )
    m.end_lease(run, session)
    lifecycle.move_run(run, "block")
    run.reason = reason
    m.settle(m.tasks[run.task_id], run, cmd.now)
    event = m.run_event(
        "run_blocked",
        cmd.now,
        run,
        session_id=session.id,
        data={"reason": reason},
    )
    return Outcome(reply=snapshot_run(run), events=[event])


@handles(FinishAndClaim)
def finish_and_claim(m: State, cmd: FinishAndClaim) -> Outcome[Finished]:
    claim = cmd.claim
    finish = cmd.finish
    if not isinstance(finish, CompleteRun | FailRun | ReleaseRun):
        raise InvalidInput("only complete, fail and release can be followed by a claim")
    if claim.session_id != finish.session_id:
        raise InvalidInput("the finish and the claim must be made by the same session")
    # The claim part's own inputs are checked before the finish changes anything, so a
    # bad claim part refuses the whole step instead of leaving half of it applied.
    check_claim(claim)
    # Both parts happen at this command's time, whatever the parts carry.
    if finish.now != cmd.now:
        finish = msgspec.structs.replace(finish, now=cmd.now)
    if claim.now != cmd.now:
        claim = msgspec.structs.replace(claim, now=cmd.now)
    done = dispatch(m, finish)  # a refusal raises here, having changed nothing
    events = list(done.events)
    queued = done.queued
    try:
        claimed = claim_next(m, claim)
    except RunleaseError as exc:
        claimed = refused_after_changes(exc, [], queued=False)
    if claimed.error is not None:
        # After a finish made now the session holds no lease, so this is NO_CLAIMABLE_RUN.
        # After a repeated finish (``already``) the session may hold a lease again
        # (AUTONOMY_LEASE_ALREADY_HELD), or one past its deadline that the claim expired
        # first (that expiry stands). The finish stands either way and the reply says
        # why nothing was claimed.
        error = claimed.error
        return Outcome(
            reply=Finished(
                run=done.reply, no_claim=NoClaim(code=error.code, message=error.message)
            ),
            events=[*events, *claimed.events],
            deadlines=done.deadlines,
            queued=queued or claimed.queued,
        )
    events.extend(claimed.events)
    return Outcome(
        reply=Finished(run=done.reply, claim=claimed.reply),
        events=events,
        deadlines=[*done.deadlines, *claimed.deadlines],
        queued=done.queued or claimed.queued,
    )


# ------------------------------------------------------------------------- expiry
@handles(ExpireLease)
def expire_lease(m: State, cmd: ExpireLease) -> Outcome[Run | None]:
    run = m.get_run(cmd.run_id)
    if run.status not in LEASED_RUN_STATUSES:
        return Outcome(reply=None)  # finished or released before the clock fired
    assert run.lease_until is not None
    if run.lease_until > cmd.now:
        return Outcome(reply=None)  # renewed since this deadline was scheduled
    reason = validate.text(cmd.reason, "reason", max_chars=MAX_REASON_CHARS)
    return expire(m, run, reason, cmd.now)


def expire(m: State, run: Run, reason: str, now: float) -> Outcome[Run | None]:
    """End a lease whose deadline passed: requeue the run, or park it once the lease has
    been lost as often as its task allows attempts."""
    assert run.session_id is not None
    session = m.sessions[run.session_id]
    previous = {
        "previous_session_id": session.id,
        "previous_lease_until": run.lease_until,
        "previous_claim_token_hash": run.claim_token_hash,
    }
    m.record_loss(run, reason, now)
    m.end_lease(run, session)
    run.recovery_count += 1
    task = m.tasks[run.task_id]
    if run.attempt + run.recovery_count >= task.max_attempts:
        # Give up instead of handing a poison run out forever; a human decides.
        lifecycle.move_run(run, "give_up")
        run.error = ERROR_LEASE_RECOVERY_EXHAUSTED
        run.reason = reason
        m.settle(task, run, now)
        outcome = "needs_attention"
        queued = False
    else:
        m.requeue(run, "expire", reason, now)
        outcome = "requeued"
        queued = True
    event = m.run_event(
        "lease_expired",
        now,
        run,
        session_id=session.id,
        data={
            **previous,
            "reason": reason,
            "recovery_count": run.recovery_count,
            "outcome": outcome,
        },
    )
    return Outcome(reply=snapshot_run(run), events=[event], queued=queued)


# -------------------------------------------------------------------------- steal
@handles(StealRun)
def steal(m: State, cmd: StealRun) -> Outcome[Claim]:
    session = m.live_session(cmd.session_id)
    seconds, clamped = validate.lease_seconds(cmd.lease_seconds)
    reason = validate.optional_text(cmd.reason, "reason")
    token_hash = lease_hash(cmd)
    task = m.get_task(cmd.task_id)
    run = m.current_run(task)
    if run is None:
        raise InvalidInput(f"task {task.id} has no run to steal", code=INVALID_TRANSITION)
    lifecycle.next_run_status(run, "steal")
    if session.lease_run_id is not None:
        raise LeaseRefused(
            f"session {session.id} already holds the lease on run {session.lease_run_id}",
            code=AUTONOMY_LEASE_ALREADY_HELD,
        )
    missing = set(task.required_capabilities) - set(session.capabilities)
    if missing:
        raise InvalidInput(
            f"session {session.id} lacks capabilities {', '.join(sorted(missing))} "
            f"that task {task.id} requires",
            code=INVALID_TRANSITION,
        )
    previous_session_id = run.session_id if run.status != "queued" else None
    if run.status == "queued":
        gate = m.gate(task)
        if gate is not None:
            raise InvalidInput(
                f"task {task.id} is {gate}; its run cannot be taken now",
                code=INVALID_TRANSITION,
            )
        if not cmd.force and run.reason not in (REASON_LEASE_EXPIRED, REASON_ORPHANED_ON_BOOT):
            raise LeaseRefused(
                f"run {run.id} is queued but did not lose a lease to expiry; claim it",
                code=LEASE_NOT_EXPIRED,
            )
        previous_hash = None
        m.unqueue(run)
    else:
        assert run.lease_until is not None
        assert run.session_id is not None
        if not cmd.force and run.lease_until > cmd.now:
            raise LeaseRefused(
                f"the lease on run {run.id} is live until {run.lease_until:.3f}; "
                "only an expired lease can be stolen without --force",
                code=LEASE_NOT_EXPIRED,
            )
        previous_hash = run.claim_token_hash
        # A lease past its deadline had run out before anyone took it; a live one was taken.
        cause = LOSS_STOLEN if run.lease_until > cmd.now else REASON_LEASE_EXPIRED
        m.record_loss(run, cause, cmd.now, by=session.id)
        m.end_lease(run, m.sessions[run.session_id])
    lease = m.grant(run, session, "steal", token_hash, seconds, clamped, cmd.now)
    event = m.run_event(
        "run_stolen",
        cmd.now,
        run,
        session_id=session.id,
        data={
            "mode": "force" if cmd.force else "if_expired",
            "reason": reason,
            "previous_session_id": previous_session_id,
            "previous_claim_hash_prefix": hash_prefix(previous_hash),
            "lease_until": lease.lease_until,
            "agent": session.agent,
        },
    )
    return Outcome(
        reply=Claim(task=snapshot_task(task), run=snapshot_run(run), lease=lease),
        events=[event],
        deadlines=[(lease.lease_until, LEASE_DEADLINE, run.id)],
    )
