"""The small, flat set of errors runlease raises.

Every error carries a stable machine-readable ``code`` and a message a person can act on.
The classes split errors by who is at fault, and each class maps to one CLI exit code:

====================  =====  ============================================================
class                 exit   meaning
====================  =====  ============================================================
InternalError         1      a bug or an unexpected failure inside runlease
UsageError            2      the command line itself is wrong (CLI only)
InvalidInput          3      the request is malformed, too large, or not allowed now
NotFound              4      the named thing does not exist, or nothing is claimable
LeaseRefused          5      the session may not do this to that lease (AUTONOMY_* codes),
                             or the caller's role or token may not do this at all
Unavailable           6      the runtime is not serving (closed, recovering, unreachable)
====================  =====  ============================================================
"""

from __future__ import annotations

from typing import ClassVar, Final

# Lease refusals: the five reason codes of the reference contract, plus SESSION_STOPPED.
AUTONOMY_SESSION_REQUIRED: Final = "AUTONOMY_SESSION_REQUIRED"
AUTONOMY_NO_ACTIVE_LEASE: Final = "AUTONOMY_NO_ACTIVE_LEASE"
AUTONOMY_FOREIGN_RUN: Final = "AUTONOMY_FOREIGN_RUN"
AUTONOMY_LEASE_EXPIRED: Final = "AUTONOMY_LEASE_EXPIRED"
AUTONOMY_LEASE_ALREADY_HELD: Final = "AUTONOMY_LEASE_ALREADY_HELD"
SESSION_STOPPED: Final = "SESSION_STOPPED"

# Caller mistakes.
INVALID_INPUT: Final = "INVALID_INPUT"
PAYLOAD_TOO_LARGE: Final = "PAYLOAD_TOO_LARGE"
INVALID_TRANSITION: Final = "INVALID_TRANSITION"
USAGE: Final = "USAGE"

# Wire-protocol mistakes (the socket server's replies to a misbehaving client).
BAD_FRAME: Final = "BAD_FRAME"
FRAME_TOO_LARGE: Final = "FRAME_TOO_LARGE"
UNKNOWN_OP: Final = "UNKNOWN_OP"
BAD_REQUEST: Final = "BAD_REQUEST"
UNSUPPORTED_VERSION: Final = "UNSUPPORTED_VERSION"
HANDSHAKE_REQUIRED: Final = "HANDSHAKE_REQUIRED"
SOCKET_PATH_UNSAFE: Final = "SOCKET_PATH_UNSAFE"

# Missing things.
TASK_NOT_FOUND: Final = "TASK_NOT_FOUND"
RUN_NOT_FOUND: Final = "RUN_NOT_FOUND"
SESSION_NOT_FOUND: Final = "SESSION_NOT_FOUND"
NO_CLAIMABLE_RUN: Final = "NO_CLAIMABLE_RUN"
DEPENDENCY_NOT_FOUND: Final = "DEPENDENCY_NOT_FOUND"
# An event sequence that is not in the history: compacted away, or not written yet.
EVENT_NOT_FOUND: Final = "EVENT_NOT_FOUND"
# hook retry names a delivery the hook log does not hold.
HOOK_DELIVERY_NOT_FOUND: Final = "HOOK_DELIVERY_NOT_FOUND"

# Task graph, lifecycle and operator controls.
IMMUTABLE_FIELD: Final = "IMMUTABLE_FIELD"
INVALID_SCOPE_BINDING: Final = "INVALID_SCOPE_BINDING"
GRAPH_LIMIT_EXCEEDED: Final = "GRAPH_LIMIT_EXCEEDED"
DEPENDENCY_CYCLE: Final = "DEPENDENCY_CYCLE"
TASK_HAS_CHILDREN: Final = "TASK_HAS_CHILDREN"
TASK_HAS_ACTIVE_RUNS: Final = "TASK_HAS_ACTIVE_RUNS"
APPROVAL_REQUIRED: Final = "APPROVAL_REQUIRED"
TASK_IS_DRAFT: Final = "TASK_IS_DRAFT"
RETRY_CHAIN_TOO_DEEP: Final = "RETRY_CHAIN_TOO_DEEP"
ATTEMPTS_EXHAUSTED: Final = "ATTEMPTS_EXHAUSTED"
FORCE_REASON_REQUIRED: Final = "FORCE_REASON_REQUIRED"
FORCE_RATE_LIMITED: Final = "FORCE_RATE_LIMITED"
BULK_TOO_LARGE: Final = "BULK_TOO_LARGE"
COMPLETION_CONTRACT_UNMET: Final = "COMPLETION_CONTRACT_UNMET"
WORKSPACE_ROOT_UNKNOWN: Final = "WORKSPACE_ROOT_UNKNOWN"
LEASE_NOT_EXPIRED: Final = "LEASE_NOT_EXPIRED"
# The session already finished this run (a completion receipt exists) and asks for a
# different outcome; the one recorded first stands.
RUN_ALREADY_FINISHED: Final = "RUN_ALREADY_FINISHED"
# A session (an agent) asked for a force operation the host reserves for operators.
FORBIDDEN_OPERATOR_ACTION: Final = "FORBIDDEN_OPERATOR_ACTION"
# An idempotency key already made a task from a different request; the first task stands.
CONFLICT: Final = "CONFLICT"
# The caller's role may not run this operation, or its agent token may not act for that
# session.
PERMISSION_DENIED: Final = "PERMISSION_DENIED"
# The connection presented an unknown, revoked or expired token, or none where one is
# required (a connection that is not the owner-only local socket).
AUTH_TOKEN_REFUSED: Final = "AUTH_TOKEN_REFUSED"
# token revoke names no token (by id, or by the name of a live one).
TOKEN_NOT_FOUND: Final = "TOKEN_NOT_FOUND"

# Runtime availability and bugs.
RUNTIME_CLOSED: Final = "RUNTIME_CLOSED"
RECOVERING: Final = "RECOVERING"
SERVER_UNAVAILABLE: Final = "SERVER_UNAVAILABLE"
STORAGE_FAILED: Final = "STORAGE_FAILED"
# Boot found data it cannot verify (a checksum mismatch, a truncated file, a broken page).
STORAGE_CORRUPT: Final = "STORAGE_CORRUPT"
# The data directory says it has held data, but its store is missing or empty.
STORE_MISSING: Final = "STORE_MISSING"
# A transient shortage (file descriptors, memory): the request was refused, retry later.
RESOURCE_EXHAUSTED: Final = "RESOURCE_EXHAUSTED"
# The server is at its connection or buffer limit and refused this connection.
SERVER_BUSY: Final = "SERVER_BUSY"
# The server closed a connection that sent no hello in time, or sat idle too long.
CONNECTION_TIMEOUT: Final = "CONNECTION_TIMEOUT"
DATA_DIR_LOCKED: Final = "DATA_DIR_LOCKED"
SOCKET_IN_USE: Final = "SOCKET_IN_USE"
PEER_REFUSED: Final = "PEER_REFUSED"
SHUTTING_DOWN: Final = "SHUTTING_DOWN"
REQUEST_CANCELLED: Final = "REQUEST_CANCELLED"
INTERNAL: Final = "INTERNAL"


class RunleaseError(Exception):
    """Base class: ``code`` is stable across releases, ``message`` is for people."""

    exit_code: ClassVar[int] = 1
    default_code: ClassVar[str] = INTERNAL

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        self.message: str = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.code))


def _rebuild(cls: type[RunleaseError], message: str, code: str) -> RunleaseError:
    return cls(message, code=code)


class InternalError(RunleaseError):
    exit_code = 1
    default_code = INTERNAL


class UsageError(RunleaseError):
    exit_code = 2
    default_code = USAGE


class InvalidInput(RunleaseError):
    exit_code = 3
    default_code = INVALID_INPUT


class NotFound(RunleaseError):
    exit_code = 4
    default_code = TASK_NOT_FOUND


class LeaseRefused(RunleaseError):
    exit_code = 5
    default_code = AUTONOMY_NO_ACTIVE_LEASE


class Unavailable(RunleaseError):
    exit_code = 6
    default_code = RUNTIME_CLOSED


_CLASS_BY_CODE: dict[str, type[RunleaseError]] = {
    AUTONOMY_SESSION_REQUIRED: LeaseRefused,
    AUTONOMY_NO_ACTIVE_LEASE: LeaseRefused,
    AUTONOMY_FOREIGN_RUN: LeaseRefused,
    AUTONOMY_LEASE_EXPIRED: LeaseRefused,
    AUTONOMY_LEASE_ALREADY_HELD: LeaseRefused,
    SESSION_STOPPED: LeaseRefused,
    INVALID_INPUT: InvalidInput,
    PAYLOAD_TOO_LARGE: InvalidInput,
    INVALID_TRANSITION: InvalidInput,
    USAGE: UsageError,
    BAD_FRAME: InvalidInput,
    FRAME_TOO_LARGE: InvalidInput,
    UNKNOWN_OP: InvalidInput,
    BAD_REQUEST: InvalidInput,
    UNSUPPORTED_VERSION: InvalidInput,
    HANDSHAKE_REQUIRED: InvalidInput,
    SOCKET_PATH_UNSAFE: InvalidInput,
    TASK_NOT_FOUND: NotFound,
    RUN_NOT_FOUND: NotFound,
    SESSION_NOT_FOUND: NotFound,
    NO_CLAIMABLE_RUN: NotFound,
    DEPENDENCY_NOT_FOUND: NotFound,
    EVENT_NOT_FOUND: NotFound,
    HOOK_DELIVERY_NOT_FOUND: NotFound,
    IMMUTABLE_FIELD: InvalidInput,
    INVALID_SCOPE_BINDING: InvalidInput,
    GRAPH_LIMIT_EXCEEDED: InvalidInput,
    DEPENDENCY_CYCLE: InvalidInput,
    TASK_HAS_CHILDREN: InvalidInput,
    TASK_HAS_ACTIVE_RUNS: InvalidInput,
    APPROVAL_REQUIRED: InvalidInput,
    TASK_IS_DRAFT: InvalidInput,
    RETRY_CHAIN_TOO_DEEP: InvalidInput,
    ATTEMPTS_EXHAUSTED: InvalidInput,
    FORCE_REASON_REQUIRED: InvalidInput,
    FORCE_RATE_LIMITED: InvalidInput,
    BULK_TOO_LARGE: InvalidInput,
    COMPLETION_CONTRACT_UNMET: InvalidInput,
    WORKSPACE_ROOT_UNKNOWN: InvalidInput,
    LEASE_NOT_EXPIRED: LeaseRefused,
    RUN_ALREADY_FINISHED: InvalidInput,
    FORBIDDEN_OPERATOR_ACTION: LeaseRefused,
    CONFLICT: InvalidInput,
    PERMISSION_DENIED: LeaseRefused,
    AUTH_TOKEN_REFUSED: LeaseRefused,
    TOKEN_NOT_FOUND: NotFound,
    RUNTIME_CLOSED: Unavailable,
    RECOVERING: Unavailable,
    SERVER_UNAVAILABLE: Unavailable,
    STORAGE_FAILED: Unavailable,
    STORAGE_CORRUPT: Unavailable,
    STORE_MISSING: Unavailable,
    RESOURCE_EXHAUSTED: Unavailable,
    SERVER_BUSY: Unavailable,
    CONNECTION_TIMEOUT: Unavailable,
    DATA_DIR_LOCKED: Unavailable,
    SOCKET_IN_USE: Unavailable,
    PEER_REFUSED: Unavailable,
    SHUTTING_DOWN: Unavailable,
    REQUEST_CANCELLED: Unavailable,
    INTERNAL: InternalError,
}


def error_for_code(code: str, message: str) -> RunleaseError:
    """Rebuild the right error class from a code, e.g. one received over the socket."""
    return _CLASS_BY_CODE.get(code, InternalError)(message, code=code)
