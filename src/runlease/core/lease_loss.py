"""Why a session may not act on a run it names, and the finish repeated after a lost reply.

Only the refusal path comes here: a lease call whose session holds a live lease on the run
never does, so the common case pays nothing for the explanations. Every answer is read from
the run's own record (its holder fields, kept as history after a lease ends, and its
:class:`~runlease.core.model.LeaseLoss`), never from the event log, so it is the same after a
restart and on replay.

The codes, from the caller's side:

- the run does not exist: ``RUN_NOT_FOUND``;
- the session's lease on it ran out (its deadline, or the session's TTL or parent ended
  it): ``AUTONOMY_LEASE_EXPIRED``, saying when and what happened to the run since;
- another session holds it or ended it, or someone took it from this session (a steal, an
  operator's force or cancel): ``AUTONOMY_FOREIGN_RUN``, saying by whom and when;
- the session finished it itself: the same finish again is answered as the first one was,
  flagged ``already`` (a retry after a lost reply); anything else is
  ``RUN_ALREADY_FINISHED`` naming the recorded outcome (a released run is back in the
  queue, so there it is ``AUTONOMY_NO_ACTIVE_LEASE``: claim it again);
- otherwise the session simply holds no lease on it: ``AUTONOMY_NO_ACTIVE_LEASE``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Literal

from runlease.core.model import (
    LEASED_RUN_STATUSES,
    LOSS_BY_SESSION_END,
    LOSS_BY_TIME,
    LOSS_STOLEN,
    Run,
    Session,
)
from runlease.core.outcome import Outcome
from runlease.core.state import State, snapshot_run
from runlease.errors import (
    AUTONOMY_FOREIGN_RUN,
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    RUN_ALREADY_FINISHED,
    RUN_NOT_FOUND,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
)

# What a session can ask of the run it holds.
FinishKind = Literal["complete", "fail", "release", "block"]
Asked = Literal["heartbeat", "complete", "fail", "release", "block", "context"]
# How a refusal names what was asked, where the bare word does not read as a verb (and as
# a noun: "this context read is refused").
_ASKED_VERB: Final[dict[str, str]] = {"context": "read the context of"}
_ASKED_NOUN: Final[dict[str, str]] = {"context": "context read"}

_DONE: Final[dict[str, str]] = {
    "complete": "completed",
    "fail": "failed",
    "release": "released",
    "block": "blocked",
    "heartbeat": "heartbeat",
}
_TAKEN: Final[dict[str, str]] = {
    LOSS_STOLEN: "stolen",
    "force_release": "force-released",
    "force_fail": "force-failed",
    "cancel": "canceled",
    "recover": "put back in the queue (`run recover`)",
    "unblock": "put back in the queue (`task unblock`)",
}
_SESSION_END: Final[dict[str, str]] = {
    "ttl_expired": "the session's TTL ran out",
    "parent_stopped": "the session's parent stopped",
    "session_stopped": "the session's leases were released as it stopped",
}


def own_finish(run: Run, session_id: str) -> FinishKind | None:
    """How this session's last lease on the run ended, if the session ended it itself and
    the run still shows that finish (nobody has held or taken the run since)."""
    if run.session_id != session_id or run.status in LEASED_RUN_STATUSES:
        return None
    loss = run.lease_loss
    if loss is not None and loss.session_id == session_id:
        return None
    status = run.status
    if status == "completed":
        return "complete"
    if status == "failed":
        return "fail" if run.failure_kind is None else None
    if status == "needs_attention":
        return "block" if run.error is None else None
    if status == "queued":
        return "release"
    return None


def repeated_finish(
    m: State,
    session: Session,
    run_id: str,
    now: float,
    kind: FinishKind,
    same: Callable[[Run], bool],
) -> Outcome[Run]:
    """A finish from a session without a live lease on the run: if the session already made
    this very finish (same kind, ``same`` payload), answer it again, flagged ``already``,
    changing nothing; otherwise raise the refusal that says why."""
    run = m.runs.get(run_id)
    if run is not None and own_finish(run, session.id) == kind and same(run):
        reply = snapshot_run(run)
        reply.already = True
        return Outcome(reply=reply)
    raise refusal(m, session, run_id, now, kind)


def refusal(m: State, session: Session, run_id: str, now: float, asked: Asked) -> RunleaseError:
    """The error for a lease call (``asked``) from ``session`` on a run it holds no live
    lease on."""
    run = m.runs.get(run_id)
    if run is None:
        return NotFound(f"no run {run_id!r}", code=RUN_NOT_FOUND)
    sid = session.id
    if session.lease_run_id == run_id:
        # The deadline has passed; the lease clock is about to requeue or park the run.
        return LeaseRefused(
            f"the lease of session {sid} on run {run_id} expired at "
            f"{_when(run.lease_until, now)}; the run goes back to the queue (or is parked "
            "once it has lost too many leases): claim again to continue",
            code=AUTONOMY_LEASE_EXPIRED,
        )
    elsewhere = (
        f" (session {sid} holds run {session.lease_run_id} now)"
        if session.lease_run_id is not None
        else ""
    )
    loss = run.lease_loss
    if loss is not None and loss.session_id == sid:
        since = _since(run)
        if loss.cause in LOSS_BY_TIME or loss.cause in LOSS_BY_SESSION_END:
            how = (
                f"expired at {_when(loss.lease_until, now)}"
                if loss.cause in LOSS_BY_TIME
                else f"ended at {_when(loss.at, now)}: {_SESSION_END[loss.cause]}"
            )
            return LeaseRefused(
                f"the lease of session {sid} on run {run_id} {how}; since then {since}{elsewhere}",
                code=AUTONOMY_LEASE_EXPIRED,
            )
        by = _who(loss.by)
        return LeaseRefused(
            f"run {run_id} was {_TAKEN.get(loss.cause, loss.cause)} from session {sid} "
            f"by {by} at {_when(loss.at, now)}; since then {since}{elsewhere}",
            code=AUTONOMY_FOREIGN_RUN,
        )
    own = own_finish(run, sid)
    if own == "release":
        return LeaseRefused(
            f"session {sid} released run {run_id} ({run.reason}); it is back in the queue: "
            f"claim it again to {_ASKED_VERB.get(asked, asked)} it{elsewhere}",
            code=AUTONOMY_NO_ACTIVE_LEASE,
        )
    if own is not None:
        differs = f" (this call has a different {_payload(own)})" if own == asked else ""
        at = "" if run.ended_at is None else f" at {_when(run.ended_at, now)}"
        return InvalidInput(
            f"session {sid} already {_DONE[own]} run {run_id}{at}; that outcome stands, so "
            f"this {_ASKED_NOUN.get(asked, asked)} is refused{differs}{elsewhere}",
            code=RUN_ALREADY_FINISHED,
        )
    if run.status in LEASED_RUN_STATUSES:
        return LeaseRefused(
            f"run {run_id} is held by session {run.session_id} (agent {run.claimed_by}) "
            f"since {_when(run.claimed_at, now)}, not by session {sid}{elsewhere}",
            code=AUTONOMY_FOREIGN_RUN,
        )
    if run.status != "queued" and run.session_id is not None and run.session_id != sid:
        return LeaseRefused(
            f"run {run_id} is {run.status}, last held by session {run.session_id} (agent "
            f"{run.claimed_by}); session {sid} holds no lease on it{elsewhere}",
            code=AUTONOMY_FOREIGN_RUN,
        )
    return LeaseRefused(
        f"session {sid} holds no lease on run {run_id} (it is {run.status}); "
        f"claim it first{elsewhere}",
        code=AUTONOMY_NO_ACTIVE_LEASE,
    )


def _since(run: Run) -> str:
    """What became of a run after its holder lost it, as the rest of a sentence."""
    status = run.status
    if status == "queued":
        return "it is back in the queue"
    if status in LEASED_RUN_STATUSES:
        return f"session {run.session_id} (agent {run.claimed_by}) has held it"
    if status == "needs_attention":
        return f"it is parked in needs_attention ({run.error or run.reason})"
    if status == "canceled":
        return "it was canceled"
    return f"it is {status}"


def _who(by: str | None) -> str:
    if by is None:
        return "the runtime"
    return by if ":" in by else f"session {by}"


def _payload(kind: str) -> str:
    return {"complete": "result", "fail": "error", "release": "reason", "block": "reason"}[kind]


def _when(at: float | None, now: float) -> str:
    """A time for a person: UTC, to the millisecond, and how long before ``now``."""
    if at is None:
        return "an unknown time"
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    ago = now - at
    return f"{stamp.replace('+00:00', 'Z')} ({ago:.1f} s ago)"
