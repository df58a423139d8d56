"""Records, statuses and limits of the task domain.

Records are msgspec Structs with explicit, stable tags so that the journal and the wire can
store them as tagged unions. Persisted records only ever gain fields with defaults.
Times are float seconds since the Unix epoch; the pure core never reads a clock itself.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

import msgspec

# ---------------------------------------------------------------------------- limits
DEFAULT_LEASE_SECONDS: Final = 300.0
MAX_LEASE_SECONDS: Final = 24 * 60 * 60.0
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_RESULT_BYTES: Final = 64 * 1024
# How deeply JSON payloads (result, metadata) may nest objects and arrays. Checked without
# recursion before anything encodes them, so depth never reaches Python's recursion limit.
MAX_PAYLOAD_DEPTH: Final = 64
DEFAULT_MAX_ATTEMPTS: Final = 3
MAX_MAX_ATTEMPTS: Final = 10
MAX_TITLE_CHARS: Final = 512
MAX_DESCRIPTION_CHARS: Final = 16 * 1024
MAX_NAME_CHARS: Final = 200
MAX_CAPABILITIES: Final = 32
MAX_TAGS: Final = 32
# How long a ``task list --search`` text may be.
MAX_SEARCH_CHARS: Final = 200
MAX_REASON_CHARS: Final = 2048
# Task graph and operator limits.
MAX_HIERARCHY_DEPTH: Final = 8
MAX_DIRECT_CHILDREN: Final = 64
MAX_DEPENDENCIES: Final = 32
MAX_RETRY_CHAIN: Final = 10
MAX_BULK_RUN_IDS: Final = 50
FORCE_RATE_LIMIT: Final = 10
FORCE_RATE_WINDOW_SECONDS: Final = 60.0
MAX_REQUIRED_ARTIFACTS: Final = 32
MAX_CHECKPOINTS_KEPT: Final = 50
MAX_NOTE_CHARS: Final = 4096
FAILURE_KIND_OPERATOR_FORCED: Final = "operator_forced"

# ------------------------------------------------------------------------- statuses
Priority = Literal["low", "medium", "high", "urgent"]
PRIORITY_RANK: Final[dict[str, int]] = {"low": 10, "medium": 20, "high": 30, "urgent": 40}

Scope = Literal["global", "workspace"]

RunStatus = Literal[
    "queued", "claimed", "running", "completed", "failed", "canceled", "needs_attention"
]
# The status sets below are the only spelling of these groups; core/lifecycle.py holds the
# moves between statuses and its tests check that the sets agree with them.
LEASED_RUN_STATUSES: Final = frozenset({"claimed", "running"})
# A run in a final status never changes status again.
FINAL_RUN_STATUSES: Final = frozenset({"completed", "failed", "canceled"})
# A parked run (needs_attention) is out of the queue and holds no lease, like a final one.
SETTLED_RUN_STATUSES: Final = FINAL_RUN_STATUSES | {"needs_attention"}

TaskStatus = Literal[
    "draft",
    "pending",
    "ready",
    "in_progress",
    "completed",
    "failed",
    "canceled",
    "blocked",
    "needs_attention",
]

# A closed task takes no new run, dependency, pause or attempt budget.
CLOSED_TASK_STATUSES: Final = frozenset({"completed", "failed", "canceled"})

SessionState = Literal["live", "stopped"]

ApprovalPolicy = Literal["none", "manual"]
ApprovalState = Literal["not_required", "pending", "approved", "rejected"]
# Who a task is assigned to: one session, or a pool of sessions sharing an agent name.
OwnerKind = Literal["agent_session", "pool"]
OWNER_KINDS: Final = frozenset(get_args(OwnerKind))
# Mutable through UpdateTask; every other field is fixed at creation or owned by the core.
MUTABLE_TASK_FIELDS: Final = frozenset(
    {
        "title",
        "description",
        "priority",
        "max_attempts",
        "metadata",
        "required_capabilities",
        "preferred_capabilities",
        "owner",
        "auto_enqueue_on_ready",
        "stale_after",
        "approval_policy",
        "tags",
    }
)
IMMUTABLE_TASK_FIELDS: Final = frozenset(
    {"id", "scope", "workspace_id", "parent_task_id", "required_artifacts"}
)

# Why a lease ended without the holder finishing the run.
REASON_LEASE_EXPIRED: Final = "lease_expired"
REASON_TTL_EXPIRED: Final = "ttl_expired"
REASON_PARENT_STOPPED: Final = "parent_stopped"
REASON_SESSION_STOPPED: Final = "session_stopped"
REASON_ORPHANED_ON_BOOT: Final = "orphaned_on_boot"
# A live session with no lease made no request for the runtime's idle timeout.
REASON_IDLE: Final = "idle"
ERROR_LEASE_RECOVERY_EXHAUSTED: Final = "lease_recovery_exhausted"
# A queued run no live session could take for the configured time is parked with this error
# and reason, so an operator sees it instead of it waiting in the queue forever.
ERROR_STARVED: Final = "starved"
# Why an operator put a parked run back in the queue.
REASON_RECOVERED: Final = "recovered"
REASON_UNBLOCKED: Final = "unblocked"
SESSION_RELEASE_REASONS: Final = frozenset(
    {REASON_TTL_EXPIRED, REASON_PARENT_STOPPED, REASON_SESSION_STOPPED}
)
# How a session can lose a run it held (LeaseLoss.cause). The lease ran out on its own: its
# deadline passed (also while the runtime was down) or its session's lifetime ended.
LOSS_BY_TIME: Final = frozenset({REASON_LEASE_EXPIRED, REASON_ORPHANED_ON_BOOT})
LOSS_BY_SESSION_END: Final = SESSION_RELEASE_REASONS
# Someone else took it: another session stole it, or an operator forced or canceled it.
LOSS_STOLEN: Final = "stolen"


# -------------------------------------------------------------------------- records
class Actor(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Who did something: kind is agent_session, human, daemon, automation, ..."""

    kind: str
    ref: str


class Origin(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Through which surface it arrived: embedded, uds, cli, daemon, ..."""

    kind: str
    ref: str = ""


class Ownership(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A task's assignee. ``agent_session``: only that session may claim it; ``pool``: only
    sessions whose agent name equals ``ref``."""

    kind: OwnerKind
    ref: str


class Checkpoint(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True):
    at: float
    note: str
    author: str | None = None
    run_id: str | None = None


class LeaseLoss(msgspec.Struct, kw_only=True, frozen=True, gc=False, omit_defaults=True):
    """The last time a session lost a run without finishing it itself.

    Kept on the run so that a late call from that session is told exactly what happened
    (its lease ran out, or who took the run and when) from the run alone. A later loss
    replaces it; a new lease for the same session clears it.
    """

    session_id: str
    at: float
    # A reason of LOSS_BY_TIME or LOSS_BY_SESSION_END, LOSS_STOLEN, or the operator action
    # (force_release, force_fail, cancel; recover and unblock when they requeue a parked run).
    cause: str
    # Who took it: the stealing session's id, or the operator's actor ("kind:ref").
    by: str | None = None
    # The deadline the lost lease had (None if the run was no longer leased).
    lease_until: float | None = None


class Task(msgspec.Struct, kw_only=True, tag="task", gc=False, omit_defaults=True):
    id: str
    title: str
    description: str = ""
    priority: Priority = "medium"
    scope: Scope = "global"
    workspace_id: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    metadata: dict[str, Any] | None = None
    required_capabilities: tuple[str, ...] = ()
    status: TaskStatus = "pending"
    current_run_id: str | None = None
    created_at: float
    updated_at: float
    closed_at: float | None = None
    # --- task graph and lifecycle (all defaulted: older records decode unchanged)
    parent_task_id: str | None = None
    # Dependency edges of kind "blocks": this task waits until each of these completes.
    blocked_by: tuple[str, ...] = ()
    # Set once the task gains a dependency and never cleared: with no run, a task whose
    # dependencies are all satisfied (completed or removed) is ready, not pending.
    had_dependencies: bool = False
    preferred_capabilities: tuple[str, ...] = ()
    owner: Ownership | None = None
    draft: bool = False
    approval_policy: ApprovalPolicy = "none"
    approval_state: ApprovalState = "not_required"
    # Completion contract: paths relative to the workspace root that must exist to complete.
    required_artifacts: tuple[str, ...] = ()
    canceled: bool = False
    cancel_reason: str | None = None
    paused: bool = False
    paused_by: str | None = None
    paused_at: float | None = None
    paused_reason: str | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    # Force-operation times inside the rate window, by actor key ("kind:ref").
    force_ops: dict[str, list[float]] | None = None
    # Start a run by itself when its last open dependency completes (or stops blocking it).
    auto_enqueue_on_ready: bool = False
    # Seconds without a heartbeat or checkpoint after which ``stuck`` reports its leased
    # run; None leaves it to the threshold the caller of ``stuck`` gives.
    stale_after: float | None = None
    # Labels to find and claim it by (sorted, distinct; the rules of capability names).
    tags: tuple[str, ...] = ()
    # Only ever true on a reply: a repeated publish found the task already published and
    # changed nothing. Records in the state keep the default, so it is never persisted.
    already: bool = False


class Run(msgspec.Struct, kw_only=True, tag="run", gc=False, omit_defaults=True):
    id: str
    task_id: str
    status: RunStatus = "queued"
    attempt: int = 1
    recovery_count: int = 0
    session_id: str | None = None
    claimed_by: str | None = None
    claim_token_hash: str | None = None
    lease_until: float | None = None
    heartbeat_at: float | None = None
    queued_at: float
    claimed_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    result: Any | None = None
    failure_metadata: dict[str, Any] | None = None
    previous_run_id: str | None = None
    # Why the last lease on this run ended early (release, expiry, session) or why it parked.
    reason: str | None = None
    failure_kind: str | None = None
    idempotency_key: str | None = None
    checkpoint_at: float | None = None
    # Place in the queue: the machine's enqueue counter when this run was first queued. The
    # claim order uses it, not queued_at, so a wall clock stepped back cannot reorder the
    # queue. 0 only in records written before it existed (restore numbers those).
    queue_seq: int = 0
    # The last time a session lost this run without finishing it (see LeaseLoss).
    lease_loss: LeaseLoss | None = None
    # Only ever true on a reply: the request repeats one already done and nothing changed
    # (a finish the session already made, a retry after a lost reply; a start or approve
    # of a task that already has this run, AGH's existing-run result). The run in memory
    # never carries it.
    already: bool = False


class Session(msgspec.Struct, kw_only=True, tag="session", gc=False, omit_defaults=True):
    id: str
    agent: str
    parent_id: str | None = None
    ttl_deadline: float | None = None
    auto_stop_on_parent: bool = True
    capabilities: tuple[str, ...] = ()
    state: SessionState = "live"
    lease_run_id: str | None = None
    opened_at: float
    stopped_at: float | None = None
    stop_reason: str | None = None
    token_hash: str | None = None
    # Only ever set in a listing of live sessions, never in the state (so never
    # persisted): when it last made a request (activity is kept in memory; a restart
    # counts as activity) and how long ago it opened.
    last_active_at: float | None = None
    age_seconds: float | None = None
    # The access token the session was opened with (its id), if any: an agent token may
    # act only with the sessions it opened.
    token_id: str | None = None


# What a caller may do: read, act as an agent, or everything. Ordered: each role may do
# what the ones before it may.
Role = Literal["reader", "agent", "operator"]
ROLES: Final[tuple[Role, ...]] = ("reader", "agent", "operator")
ROLE_RANK: Final[dict[str, int]] = {role: rank for rank, role in enumerate(ROLES)}


class AccessToken(msgspec.Struct, kw_only=True, tag="access_token", gc=False, omit_defaults=True):
    """A named credential a connection presents in its handshake to act with ``role``.

    Only the hash of the secret is kept (like a session token's); the secret is shown
    once, when the token is made."""

    id: str
    name: str
    role: Role
    token_hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        """Neither revoked nor past its expiry at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class Event(msgspec.Struct, kw_only=True, tag="event", gc=False, omit_defaults=True):
    """One immutable fact the core emitted. Never carries a raw claim token."""

    seq: int
    kind: str
    at: float
    task_id: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    data: dict[str, Any] = {}
    actor: Actor | None = None
    origin: Origin | None = None


class SchedulerState(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True):
    """The scheduler-wide pause switch (claims stop; lease expiry keeps running)."""

    paused: bool = False
    paused_by: str | None = None
    paused_at: float | None = None
    reason: str | None = None
    updated_at: float | None = None


# ---------------------------------------------------------------------------- views
class LeaseView(msgspec.Struct, kw_only=True, tag="lease", omit_defaults=True):
    """The safe, public summary of a lease: only the token's hash, never the token."""

    run_id: str
    session_id: str
    lease_until: float
    claim_token_hash: str
    lease_seconds: float
    lease_seconds_clamped: bool = False


class Claim(msgspec.Struct, kw_only=True, tag="claim"):
    task: Task
    run: Run
    lease: LeaseView


class Heartbeat(msgspec.Struct, kw_only=True, tag="heartbeat"):
    run: Run
    lease: LeaseView


class SessionReleased(msgspec.Struct, kw_only=True, tag="session_released"):
    """What releasing a session's leases did: the runs put back (or parked) and why."""

    session_id: str
    reason: str
    released_run_ids: list[str] = []
    stopped_session_ids: list[str] = []


class BulkItem(msgspec.Struct, kw_only=True, tag="bulk_item", omit_defaults=True):
    """One run's outcome in a bulk force operation."""

    run_id: str
    ok: bool
    run: Run | None = None
    code: str | None = None
    message: str | None = None


class BulkResult(msgspec.Struct, kw_only=True, tag="bulk_result"):
    items: list[BulkItem] = []


class RetryResult(msgspec.Struct, kw_only=True, tag="retry_result"):
    previous_run: Run
    run: Run


class NoClaim(msgspec.Struct, kw_only=True, tag="no_claim"):
    """Why the claim part of a finish-and-claim took nothing (normally NO_CLAIMABLE_RUN)."""

    code: str
    message: str


class Finished(msgspec.Struct, kw_only=True, tag="finished", omit_defaults=True):
    """The reply to a finish-and-claim: the finished run, then the claim or why there is none.

    Exactly one of ``claim`` and ``no_claim`` is set. ``run`` shows the finished run as the
    finish left it, before the claim part ran.
    """

    run: Run
    claim: Claim | None = None
    no_claim: NoClaim | None = None
