"""Sessions: open, stop (with their auto-stopping children), TTL expiry, lease release.

Stopping a session releases its lease first, so a stopped session never holds one; its
children that asked to stop with their parent stop too, depth first.
"""

from __future__ import annotations

import msgspec

from runlease.core import validate
from runlease.core.commands import (
    ExpireIdleSession,
    ExpireSession,
    OpenSession,
    ReleaseSessionLeases,
    StopSession,
)
from runlease.core.ids import is_token_hash
from runlease.core.model import (
    REASON_IDLE,
    REASON_PARENT_STOPPED,
    REASON_SESSION_STOPPED,
    REASON_TTL_EXPIRED,
    SESSION_RELEASE_REASONS,
    Event,
    Session,
    SessionReleased,
)
from runlease.core.outcome import SESSION_DEADLINE, Deadline, Outcome
from runlease.core.registry import handles
from runlease.core.state import State
from runlease.errors import SESSION_STOPPED, InvalidInput, LeaseRefused


@handles(OpenSession)
def open_session(m: State, cmd: OpenSession) -> Outcome[Session]:
    if cmd.session_id in m.sessions:
        raise InvalidInput(f"session {cmd.session_id!r} already exists")
    agent = validate.name(cmd.agent, "agent")
    caps = validate.capabilities(cmd.capabilities, "capabilities")
    ttl_deadline = None
    if cmd.ttl_seconds is not None:
        ttl_deadline = cmd.now + validate.positive_seconds(cmd.ttl_seconds, "ttl")
    if cmd.parent_id is not None:
        parent = m.get_session(cmd.parent_id)
        if parent.state != "live":
            raise LeaseRefused(
                f"parent session {parent.id} is stopped; open the child under a live one",
                code=SESSION_STOPPED,
            )
    token_hash = cmd.session_token_hash
    if token_hash is not None and (
        not is_token_hash(token_hash) or token_hash in m.session_by_token_hash
    ):
        raise InvalidInput("session token hash is malformed or already in use")
    session = Session(
        id=cmd.session_id,
        token_hash=token_hash,
        agent=agent,
        parent_id=cmd.parent_id,
        ttl_deadline=ttl_deadline,
        auto_stop_on_parent=cmd.auto_stop_on_parent,
        capabilities=caps,
        opened_at=cmd.now,
        token_id=cmd.token_id,
    )
    m.sessions[session.id] = session
    if token_hash is not None:
        m.session_by_token_hash[token_hash] = session.id
    if cmd.parent_id is not None:
        m.children.setdefault(cmd.parent_id, []).append(session.id)
    event = m.event(
        "session_opened",
        cmd.now,
        session_id=session.id,
        data={"agent": agent, "parent_id": cmd.parent_id, "ttl_deadline": ttl_deadline},
    )
    deadlines: list[Deadline] = (
        [] if ttl_deadline is None else [(ttl_deadline, SESSION_DEADLINE, session.id)]
    )
    return Outcome(reply=msgspec.structs.replace(session), events=[event], deadlines=deadlines)


@handles(StopSession)
def stop_session(m: State, cmd: StopSession) -> Outcome[SessionReleased]:
    session = m.get_session(cmd.session_id)
    reason = validate.optional_text(cmd.reason, "reason") or REASON_SESSION_STOPPED
    return _stop_tree(m, session, reason, REASON_SESSION_STOPPED, cmd.now)


@handles(ExpireSession)
def expire_session(m: State, cmd: ExpireSession) -> Outcome[SessionReleased | None]:
    session = m.get_session(cmd.session_id)
    if session.state != "live" or session.ttl_deadline is None or session.ttl_deadline > cmd.now:
        return Outcome(reply=None)  # stopped already, or the deadline is not reached yet
    stopped = _stop_tree(m, session, REASON_TTL_EXPIRED, REASON_TTL_EXPIRED, cmd.now)
    return Outcome(reply=stopped.reply, events=stopped.events, queued=stopped.queued)


@handles(ExpireIdleSession)
def expire_idle_session(m: State, cmd: ExpireIdleSession) -> Outcome[SessionReleased | None]:
    session = m.get_session(cmd.session_id)
    if session.state != "live" or session.lease_run_id is not None:
        return Outcome(reply=None)  # stopped already, or it took a lease: not idle
    stopped = _stop_tree(m, session, REASON_IDLE, REASON_IDLE, cmd.now)
    # The session's own stop event says how long it had been idle.
    stopped.events[0].data.update(last_active_at=cmd.last_active_at, idle_timeout=cmd.idle_timeout)
    return Outcome(reply=stopped.reply, events=stopped.events, queued=stopped.queued)


@handles(ReleaseSessionLeases)
def release_session_leases(m: State, cmd: ReleaseSessionLeases) -> Outcome[SessionReleased]:
    session = m.get_session(cmd.session_id)
    if cmd.reason not in SESSION_RELEASE_REASONS:
        raise InvalidInput(
            f"reason must be one of {', '.join(sorted(SESSION_RELEASE_REASONS))}; "
            f"got {cmd.reason!r}"
        )
    reply = SessionReleased(session_id=session.id, reason=cmd.reason)
    events: list[Event] = []
    queued = _drop_lease(m, session, cmd.reason, cmd.now, events, reply)
    return Outcome(reply=reply, events=events, queued=queued)


def _stop_tree(
    m: State, root: Session, stop_reason: str, lease_reason: str, now: float
) -> Outcome[SessionReleased]:
    """Stop a session and, depth first, its live auto-stopping descendants."""
    reply = SessionReleased(session_id=root.id, reason=lease_reason)
    events: list[Event] = []
    queued = False
    stack: list[tuple[Session, str, str]] = [(root, stop_reason, lease_reason)]
    while stack:
        session, why_stop, why_release = stack.pop()
        if session.state != "live":
            continue
        queued |= _drop_lease(m, session, why_release, now, events, reply)
        session.state = "stopped"
        session.stopped_at = now
        session.stop_reason = why_stop
        reply.stopped_session_ids.append(session.id)
        events.append(
            m.event("session_stopped", now, session_id=session.id, data={"reason": why_stop})
        )
        for child_id in m.children.get(session.id, ()):
            child = m.sessions[child_id]
            if child.state == "live" and child.auto_stop_on_parent:
                stack.append((child, REASON_PARENT_STOPPED, REASON_PARENT_STOPPED))
    return Outcome(reply=reply, events=events, queued=queued)


def _drop_lease(
    m: State,
    session: Session,
    reason: str,
    now: float,
    events: list[Event],
    reply: SessionReleased,
) -> bool:
    """Put the session's leased run (if any) back in the queue; True if it had one."""
    if session.lease_run_id is None:
        return False
    run = m.runs[session.lease_run_id]
    previous_hash = run.claim_token_hash
    m.record_loss(run, reason, now)
    m.end_lease(run, session)
    m.requeue(run, "release", reason, now)
    reply.released_run_ids.append(run.id)
    events.append(
        m.run_event(
            "lease_released",
            now,
            run,
            session_id=session.id,
            data={"reason": reason, "previous_claim_token_hash": previous_hash},
        )
    )
    return True
