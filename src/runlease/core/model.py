"""Records, statuses and limits of the task domain.

Records are msgspec Structs with explicit, stable tags so that the journal and the wire can
store them as tagged unions. Persisted records only ever gain fields with defaults.
Times are float seconds since the Unix epoch; the pure core never reads a clock itself.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

# ---------------------------------------------------------------------------- limits
DEFAULT_LEASE_SECONDS: Final = 300.0
MAX_LEASE_SECONDS: Final = 24 * 60 * 60.0
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_RESULT_BYTES: Final = 64 * 1024
MAX_PAYLOAD_BYTES: Final = 64 * 1024
DEFAULT_MAX_ATTEMPTS: Final = 3
MAX_MAX_ATTEMPTS: Final = 10
MAX_TITLE_CHARS: Final = 512
MAX_DESCRIPTION_CHARS: Final = 16 * 1024
MAX_NAME_CHARS: Final = 200
MAX_CAPABILITIES: Final = 32
MAX_REASON_CHARS: Final = 2048

# ------------------------------------------------------------------------- statuses
Priority = Literal["low", "medium", "high", "urgent"]
PRIORITY_RANK: Final[dict[str, int]] = {"low": 10, "medium": 20, "high": 30, "urgent": 40}

Scope = Literal["global", "workspace"]

RunStatus = Literal[
    "queued", "claimed", "running", "completed", "failed", "canceled", "needs_attention"
]
LEASED_RUN_STATUSES: Final = frozenset({"claimed", "running"})
# A parked run (needs_attention) is out of the queue and holds no lease, like a terminal one.
SETTLED_RUN_STATUSES: Final = frozenset({"completed", "failed", "canceled", "needs_attention"})

TaskStatus = Literal[
    "pending",
    "ready",
    "in_progress",
    "completed",
    "failed",
    "canceled",
    "blocked",
    "needs_attention",
]

SessionState = Literal["live", "stopped"]

# Why a lease ended without the holder finishing the run.
ReleaseReason = str
REASON_LEASE_EXPIRED: Final = "lease_expired"
REASON_TTL_EXPIRED: Final = "ttl_expired"
REASON_PARENT_STOPPED: Final = "parent_stopped"
REASON_SESSION_STOPPED: Final = "session_stopped"
REASON_ORPHANED_ON_BOOT: Final = "orphaned_on_boot"
ERROR_LEASE_RECOVERY_EXHAUSTED: Final = "lease_recovery_exhausted"
SESSION_RELEASE_REASONS: Final = frozenset(
    {REASON_TTL_EXPIRED, REASON_PARENT_STOPPED, REASON_SESSION_STOPPED}
)


# -------------------------------------------------------------------------- records
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


class Event(msgspec.Struct, kw_only=True, tag="event", omit_defaults=True):
    """One immutable fact the core emitted. Never carries a raw claim token."""

    seq: int
    kind: str
    at: float
    task_id: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    data: dict[str, Any] = {}


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
