"""Commands the state machine accepts.

A command carries every input the transition needs, including the ids and the claim-token
hash the shell generated, so applying the same commands in the same order always yields the
same state; that makes the command stream itself a faithful journal. Commands never carry a
raw claim token: the shell makes the token, hashes it and drops it, so the journal holds
nothing a reader could present as a lease. The tags are stable: they are written to disk and
sent over the wire.

``Command[R]`` names the reply type: the machine answers a ``PauseTask`` with a ``Task``, so
``Machine.apply`` and everything built on it are typed by the command they are given. The
type parameter exists only for the type checker; it changes nothing on disk or the wire.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from runlease.core.model import (
    AccessToken,
    Actor,
    ApprovalPolicy,
    BulkResult,
    Claim,
    Finished,
    Heartbeat,
    Origin,
    Ownership,
    Priority,
    RetryResult,
    Role,
    Run,
    SchedulerState,
    Scope,
    Session,
    SessionReleased,
    Task,
)

# Covariant: a command answered with a Task is a command answered with some object, which
# lets a union of commands (a decoded journal record) be applied as one.
R_co = TypeVar("R_co", covariant=True)


class Command(msgspec.Struct, Generic[R_co], kw_only=True, tag_field="op", omit_defaults=True):
    """Base of every command; ``now`` is the time the shell read when it issued it.

    ``actor`` and ``origin`` say who asked and through which surface; every event the
    command emits carries them (the core derives a default from the session, if any).
    """

    now: float
    actor: Actor | None = None
    origin: Origin | None = None


class CreateTask(Command[Task], tag="create_task"):
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
    parent_task_id: str | None = None
    preferred_capabilities: list[str] = []
    owner: Ownership | None = None
    draft: bool = False
    approval_policy: ApprovalPolicy = "none"
    required_artifacts: list[str] = []
    auto_enqueue_on_ready: bool = False
    stale_after: float | None = None
    # The same key with the same request answers the task it first made (see
    # runlease.core.create_keys); the shell stamps the window the key is kept for, so a
    # replay decides expiry exactly as the first run did.
    idempotency_key: str | None = None
    idempotency_window: float | None = None
    tags: list[str] = []


class StartTask(Command[Run], tag="start_task"):
    task_id: str
    run_id: str
    # Same key on the same task -> the run it first created, and nothing new is queued.
    idempotency_key: str | None = None


class PublishTask(Command[Task], tag="publish_task"):
    """Turn a draft into a real task; with ``run_id`` also enqueue its first run."""

    task_id: str
    run_id: str | None = None


class ApproveTask(Command[Run], tag="approve_task"):
    """Approve a manual-approval task and enqueue its run."""

    task_id: str
    run_id: str


class RejectTask(Command[Task], tag="reject_task"):
    task_id: str
    reason: str | None = None


class UpdateTask(Command[Task], tag="update_task"):
    """Change mutable fields; ``changes`` maps field name to new value."""

    task_id: str
    changes: dict[str, Any]


class DeleteTask(Command[Task], tag="delete_task"):
    task_id: str


class AddDependency(Command[Task], tag="add_dependency"):
    """``task_id`` cannot run until ``blocked_by`` completes (edge kind ``blocks``)."""

    task_id: str
    blocked_by: str


class RemoveDependency(Command[Task], tag="remove_dependency"):
    task_id: str
    blocked_by: str


class PauseTask(Command[Task], tag="pause_task"):
    task_id: str
    reason: str


class ResumeTask(Command[Task], tag="resume_task"):
    task_id: str


class CancelTask(Command[Task], tag="cancel_task"):
    task_id: str
    reason: str | None = None


class CancelRun(Command[Run], tag="cancel_run"):
    run_id: str
    reason: str | None = None


class RetryRun(Command[RetryResult], tag="retry_run"):
    run_id: str
    new_run_id: str


class ForceReleaseRun(Command[Run], tag="force_release"):
    run_id: str
    reason: str


class ForceFailRun(Command[Run], tag="force_fail"):
    run_id: str
    reason: str


class BulkForceRuns(Command[BulkResult], tag="bulk_force"):
    action: str  # "release" or "fail"
    run_ids: list[str]
    reason: str


class RecoverRun(Command[Run], tag="recover_run"):
    """An operator puts a parked (needs_attention) run back in the queue."""

    run_id: str
    reason: str | None = None


class UnblockTask(Command[Run], tag="unblock_task"):
    """An operator clears the block a session placed on the task's run: back to the queue."""

    task_id: str
    reason: str | None = None


class ReopenTask(Command[Run], tag="reopen_task"):
    """A completed or failed task gets a new queued run (``run_id``), with fresh attempts."""

    task_id: str
    run_id: str
    reason: str | None = None


class StarveRun(Command[Run | None], tag="starve_run"):
    """The starvation watch saw a queued run no live session could take for
    ``waited_seconds``; parked unless that is no longer true when applied."""

    run_id: str
    waited_seconds: float


class PauseScheduler(Command[SchedulerState], tag="pause_scheduler"):
    reason: str | None = None


class ResumeScheduler(Command[SchedulerState], tag="resume_scheduler"):
    reason: str | None = None


class StartDrain(Command[SchedulerState], tag="start_drain"):
    """A drain begins: pause the scheduler unless it is paused already."""

    reason: str | None = None


class FinishDrain(Command[SchedulerState], tag="finish_drain"):
    """A drain ended: every lease gone, or its wait over; ``started_at`` is when it began."""

    started_at: float


class CheckpointTask(Command[Task], tag="checkpoint"):
    task_id: str
    note: str
    author: str | None = None


class StealRun(Command[Claim], tag="steal"):
    """Give a task's current run to ``session_id``.

    ``force=False`` (``--if-expired``): only if the lease is expired at ``now`` (or the run
    was requeued by an expiry and nobody has claimed it since). ``force=True``: take a live
    lease too (operators).
    """

    task_id: str
    session_id: str | None
    # sha256:<hex> of the fresh claim token. ``claim_token`` is only read from journals
    # written before hashes were journaled; the machine hashes it and keeps only the hash.
    claim_token_hash: str | None = None
    claim_token: str | None = None
    force: bool = False
    lease_seconds: float | None = None
    reason: str | None = None


class OpenSession(Command[Session], tag="open_session"):
    session_id: str
    agent: str
    parent_id: str | None = None
    ttl_seconds: float | None = None
    auto_stop_on_parent: bool = True
    capabilities: list[str] = []
    # sha256 of the bearer token handed to socket clients; the token itself is never kept.
    session_token_hash: str | None = None
    # The access token of the connection that opened it (see Session.token_id).
    token_id: str | None = None


class StopSession(Command[SessionReleased], tag="stop_session"):
    session_id: str
    reason: str | None = None


class ReleaseSessionLeases(Command[SessionReleased], tag="release_session_leases"):
    """Daemon-owned release of a session's lease, without stopping the session."""

    session_id: str
    reason: str


class ExpireSession(Command[SessionReleased | None], tag="expire_session"):
    """The lease clock saw a session's TTL deadline pass."""

    session_id: str


class ExpireIdleSession(Command[SessionReleased | None], tag="expire_idle_session"):
    """The runtime found a live session without a lease idle for its idle timeout: no
    request since ``last_active_at``. The shell decides idleness (activity is kept in
    memory, not journaled); the state machine stops the session only if it is still live
    and holds no lease, so replaying the record does the same."""

    session_id: str
    last_active_at: float
    idle_timeout: float


class ClaimNext(Command[Claim], tag="claim_next"):
    session_id: str | None
    # As on StealRun: the hash of the new lease's token; ``claim_token`` only in old journals.
    claim_token_hash: str | None = None
    claim_token: str | None = None
    lease_seconds: float | None = None
    workspace_id: str | None = None
    # Which tasks the claim looks at: those of ``workspace_id`` if it names one, else only
    # tasks with no workspace. ``scope`` may say the same explicitly ("global" without a
    # workspace, "workspace" with one).
    scope: Scope | None = None
    # Lowest priority rank accepted (PRIORITY_RANK values: low 10 ... urgent 40).
    priority_min: int | None = None
    # Only runs whose task carries every one of these tags.
    tags: list[str] = []


class ClaimRun(Command[Claim], tag="claim_run"):
    """Claim one chosen run: ``run_id``, or the current run of ``task_id`` (exactly one).

    The rules and filters are those of :class:`ClaimNext`; the run must be one that claim
    could hand to this session, else NO_CLAIMABLE_RUN says why it cannot.
    """

    session_id: str | None
    run_id: str | None = None
    task_id: str | None = None
    claim_token_hash: str | None = None
    claim_token: str | None = None
    lease_seconds: float | None = None
    workspace_id: str | None = None
    scope: Scope | None = None
    priority_min: int | None = None


class HeartbeatRun(Command[Heartbeat], tag="heartbeat"):
    session_id: str | None
    run_id: str
    lease_seconds: float | None = None


class CompleteRun(Command[Run], tag="complete"):
    session_id: str | None
    run_id: str
    result: Any = None
    # Filled by the runtime from the filesystem (the core does no IO): the contract paths it
    # checked and those it did not find. None means nothing was checked.
    checked_artifacts: list[str] | None = None
    missing_artifacts: list[str] = []


class FailRun(Command[Run], tag="fail"):
    session_id: str | None
    run_id: str
    error: str
    metadata: dict[str, Any] | None = None


class ReleaseRun(Command[Run], tag="release"):
    session_id: str | None
    run_id: str
    reason: str | None = None


class BlockRun(Command[Run], tag="block"):
    session_id: str | None
    run_id: str
    reason: str


class FinishAndClaim(Command[Finished], tag="finish_and_claim"):
    """Finish the session's run, then claim its next one: one step, one journal record.

    The machine first checks the claim part's own inputs, then applies the finish exactly
    as on its own; a refused finish raises and changes nothing. Once the finish is applied
    the claim is tried under the rules of :class:`ClaimNext`, at this command's ``now`` (the
    parts' own ``now`` is ignored). Finding nothing to claim is not a refusal: the reply
    says so and the finish stands. Both parts must name the same session.
    """

    finish: CompleteRun | FailRun | ReleaseRun
    claim: ClaimNext


class ExpireLease(Command[Run | None], tag="expire_lease"):
    """The lease clock saw a run's lease deadline pass (or boot found it passed)."""

    run_id: str
    reason: str = "lease_expired"


class CreateToken(Command[AccessToken], tag="create_token"):
    """Make an access token; the shell drew the id and the secret and passes its hash."""

    token_id: str
    name: str
    role: Role
    token_hash: str
    ttl_seconds: float | None = None


class RevokeToken(Command[AccessToken], tag="revoke_token"):
    """Revoke a token, named by its id or by the name of a live token."""

    ref: str


AnyCommand = (
    CreateTask
    | CreateToken
    | RevokeToken
    | StartTask
    | OpenSession
    | StopSession
    | ReleaseSessionLeases
    | ExpireSession
    | ExpireIdleSession
    | ClaimNext
    | ClaimRun
    | HeartbeatRun
    | CompleteRun
    | FailRun
    | ReleaseRun
    | BlockRun
    | ExpireLease
    | FinishAndClaim
    | PublishTask
    | ApproveTask
    | RejectTask
    | UpdateTask
    | DeleteTask
    | AddDependency
    | RemoveDependency
    | PauseTask
    | ResumeTask
    | CancelTask
    | CancelRun
    | RetryRun
    | ForceReleaseRun
    | ForceFailRun
    | BulkForceRuns
    | PauseScheduler
    | ResumeScheduler
    | StartDrain
    | FinishDrain
    | CheckpointTask
    | StealRun
    | RecoverRun
    | UnblockTask
    | ReopenTask
    | StarveRun
)

# Commands that act on one run on behalf of the session holding its lease.
RUN_SCOPED = (HeartbeatRun, CompleteRun, FailRun, ReleaseRun, BlockRun)
