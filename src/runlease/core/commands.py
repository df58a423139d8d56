"""Commands the state machine accepts.

A command carries every input the transition needs, including the ids and the claim token
the shell generated, so applying the same commands in the same order always yields the same
state. That makes the command stream itself a faithful journal. The tags are stable: they
are written to disk and sent over the wire.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runlease.core.model import Priority, Scope


class Command(msgspec.Struct, kw_only=True, tag_field="op", omit_defaults=True):
    """Base of every command; ``now`` is the time the shell read when it issued it."""

    now: float


class CreateTask(Command, tag="create_task"):
    task_id: str
    title: str
    description: str = ""
    priority: Priority = "medium"
    scope: Scope | None = None
    workspace_id: str | None = None
    max_attempts: int | None = None
    metadata: dict[str, Any] | None = None
    required_capabilities: list[str] = []
    # Enqueue the first run in the same step (``--start``).
    start_run_id: str | None = None


class StartTask(Command, tag="start_task"):
    task_id: str
    run_id: str


class OpenSession(Command, tag="open_session"):
    session_id: str
    agent: str
    parent_id: str | None = None
    ttl_seconds: float | None = None
    auto_stop_on_parent: bool = True
    capabilities: list[str] = []
    # sha256 of the bearer token handed to socket clients; the token itself is never kept.
    session_token_hash: str | None = None


class StopSession(Command, tag="stop_session"):
    session_id: str
    reason: str | None = None


class ReleaseSessionLeases(Command, tag="release_session_leases"):
    """Daemon-owned release of a session's lease, without stopping the session."""

    session_id: str
    reason: str


class ExpireSession(Command, tag="expire_session"):
    """The lease clock saw a session's TTL deadline pass."""

    session_id: str


class ClaimNext(Command, tag="claim_next"):
    session_id: str | None
    claim_token: str
    lease_seconds: float | None = None
    workspace_id: str | None = None


class HeartbeatRun(Command, tag="heartbeat"):
    session_id: str | None
    run_id: str
    lease_seconds: float | None = None


class CompleteRun(Command, tag="complete"):
    session_id: str | None
    run_id: str
    result: Any = None


class FailRun(Command, tag="fail"):
    session_id: str | None
    run_id: str
    error: str
    metadata: dict[str, Any] | None = None


class ReleaseRun(Command, tag="release"):
    session_id: str | None
    run_id: str
    reason: str | None = None


class BlockRun(Command, tag="block"):
    session_id: str | None
    run_id: str
    reason: str


class FinishAndClaim(Command, tag="finish_and_claim"):
    """Finish the session's run, then claim its next one: one step, one journal record.

    The machine first checks the claim part's own inputs, then applies the finish exactly
    as on its own; a refused finish raises and changes nothing. Once the finish is applied
    the claim is tried under the rules of :class:`ClaimNext`, at this command's ``now`` (the
    parts' own ``now`` is ignored). Finding nothing to claim is not a refusal: the reply
    says so and the finish stands. Both parts must name the same session.
    """

    finish: CompleteRun | FailRun | ReleaseRun
    claim: ClaimNext


class ExpireLease(Command, tag="expire_lease"):
    """The lease clock saw a run's lease deadline pass (or boot found it passed)."""

    run_id: str
    reason: str = "lease_expired"


AnyCommand = (
    CreateTask
    | StartTask
    | OpenSession
    | StopSession
    | ReleaseSessionLeases
    | ExpireSession
    | ClaimNext
    | HeartbeatRun
    | CompleteRun
    | FailRun
    | ReleaseRun
    | BlockRun
    | ExpireLease
    | FinishAndClaim
)

# Commands that act on one run on behalf of the session holding its lease.
RUN_SCOPED = (HeartbeatRun, CompleteRun, FailRun, ReleaseRun, BlockRun)
