"""Hooks: programs outside the process hear about events, at least once.

A hook is a set of event kinds and a target: an HTTP(S) URL that gets each event POSTed as
JSON, signed with a shared secret, or ``exec:CMD``, a command that gets the event on its
standard input. This module is the pure part, shared by the server, the clients and the
CLI: the configuration, the body and its signature, the retry schedule and the records of
the delivery log. The trio side (dispatchers, senders, the log's writer) is
:mod:`runlease.runtime.hooks`.
"""

from __future__ import annotations

import hashlib
import hmac
import shlex
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import msgspec

from runlease.core.event_kinds import EVENT_KINDS
from runlease.core.model import Event
from runlease.errors import InvalidInput

# Headers of an HTTP delivery. The signature covers the body exactly as sent.
SIGNATURE_HEADER: Final = "X-Runlease-Signature"
TIMESTAMP_HEADER: Final = "X-Runlease-Timestamp"
DELIVERY_HEADER: Final = "X-Runlease-Delivery"
EVENT_HEADER: Final = "X-Runlease-Event"
EXEC_PREFIX: Final = "exec:"
ALL_KINDS: Final = "*"

DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: Final[tuple[DeliveryStatus, ...]] = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class Hook:
    """Where events of some kinds go. ``kinds`` None means every kind.

    ``secret`` signs HTTP deliveries and is required for them; it is never shown (left out
    of ``repr`` and of every record). The hook's ``name``, its key in the delivery log,
    comes from its kinds and target only, so a restart with the same configuration resumes
    where the last run stopped, and a changed secret does not start over.
    """

    kinds: frozenset[str] | None
    target: str
    secret: str | None = field(default=None, repr=False)
    # Seconds: to connect (HTTP) and for the whole delivery (HTTP or command).
    connect_timeout: float = 5.0
    timeout: float = 15.0

    def __post_init__(self) -> None:
        if self.kinds is not None:
            if not self.kinds:
                raise InvalidInput("a hook needs at least one event kind, or * for all")
            unknown = sorted(self.kinds - EVENT_KINDS)
            if unknown:
                raise InvalidInput(
                    f"unknown event kind {', '.join(unknown)}; the kinds are "
                    f"{', '.join(sorted(EVENT_KINDS))}, or * for all"
                )
        if self.is_exec:
            if not self.command:
                raise InvalidInput("an exec: hook needs a command after exec:")
        else:
            parts = urlsplit(self.target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidInput(
                    f"a hook target is an http:// or https:// URL or exec:COMMAND, "
                    f"not {self.shown_target!r}"
                )
            if not self.secret:
                raise InvalidInput(
                    "an HTTP hook needs a secret to sign its deliveries "
                    "(--hook-secret-file or RUNLEASE_HOOK_SECRET)"
                )
        if not (0 < self.connect_timeout <= self.timeout):
            raise InvalidInput("a hook's timeouts must be positive, connect within the total")

    @property
    def is_exec(self) -> bool:
        return self.target.startswith(EXEC_PREFIX)

    @property
    def command(self) -> list[str]:
        """The exec hook's argument list (split like a shell would, never run by one)."""
        return shlex.split(self.target[len(EXEC_PREFIX) :])

    @property
    def name(self) -> str:
        kinds = ALL_KINDS if self.kinds is None else ",".join(sorted(self.kinds))
        digest = hashlib.sha256(f"{kinds}\n{self.target}".encode()).hexdigest()
        return f"hook_{digest[:12]}"

    @property
    def shown_target(self) -> str:
        """The target as it may be shown: a URL loses its credentials and query."""
        if self.is_exec:
            return self.target
        parts = urlsplit(self.target)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


def parse_hook(spec: str, secret: str | None = None) -> Hook:
    """A hook from ``KINDS=TARGET`` (``run_completed,run_failed=https://...``, ``*=exec:CMD``)."""
    kinds_text, sep, target = spec.partition("=")
    if not sep or not kinds_text.strip() or not target.strip():
        raise InvalidInput(f"a hook is KINDS=URL or KINDS=exec:COMMAND, got {spec!r}")
    names = {name.strip() for name in kinds_text.split(",") if name.strip()}
    kinds = None if ALL_KINDS in names else frozenset(names)
    return Hook(kinds=kinds, target=target.strip(), secret=secret)


# ---------------------------------------------------------------------- the request body
def event_body(event: Event) -> bytes:
    """What a hook receives: the event as JSON, the fields the socket carries."""
    return msgspec.json.encode(event)


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_matches(secret: str | bytes, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` (compared in constant time)."""
    return hmac.compare_digest(sign(secret, body), header)


def delivery_id(hook_name: str, seq: int) -> str:
    """One id per hook and event: a re-sent delivery keeps it, so receivers drop repeats."""
    return f"{hook_name}.{seq}"


# ------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed delivery again, and when to give up on it.

    After the n-th failed attempt the wait is ``first_delay * factor**(n-1)``, at most
    ``max_delay``, less a random share of up to ``jitter`` of it so hooks that failed
    together do not retry together. With the defaults, 8 attempts spread over about an
    hour; then the delivery is recorded as failed and the hook moves on.
    """

    max_attempts: int = 8
    first_delay: float = 10.0
    factor: float = 2.5
    max_delay: float = 1800.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.first_delay < 0 or self.factor < 1:
            raise InvalidInput("a retry policy needs an attempt, a delay >= 0 and a factor >= 1")
        if not 0 <= self.jitter < 1 or self.max_delay < self.first_delay:
            raise InvalidInput("a retry policy's jitter is in [0, 1), max_delay >= first_delay")

    def nominal(self, failed: int) -> float:
        """The longest wait after ``failed`` failed attempts (1 for the first)."""
        return min(self.first_delay * self.factor ** (failed - 1), self.max_delay)

    def delay(self, failed: int, draw: float) -> float:
        """The wait after ``failed`` failed attempts, for a uniform ``draw`` in [0, 1)."""
        return self.nominal(failed) * (1.0 - self.jitter * draw)


# ------------------------------------------------------------------ the delivery log
class HookDelivery(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event's delivery to one hook: where it stands and how it went.

    ``pending`` while it is being tried or waits for its next attempt (at
    ``next_attempt_at``); ``delivered`` once the target accepted it; ``failed`` once every
    attempt failed (``runlease hook retry`` tries it again).
    """

    id: str
    hook: str
    seq: int
    kind: str
    status: DeliveryStatus
    attempts: int = 0
    task_id: str | None = None
    run_id: str | None = None
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    delivered_at: float | None = None
    next_attempt_at: float | None = None


class HookInfo(msgspec.Struct, kw_only=True):
    """A configured hook and how far it got (``cursor``: the last event seq it is done
    with, delivered or given up)."""

    name: str
    kinds: list[str]
    target: str
    cursor: int
    pending: int = 0
    failed: int = 0


class HookReport(NamedTuple):
    """``hook list``: the configured hooks and the deliveries asked for, newest first."""

    hooks: list[HookInfo]
    deliveries: list[HookDelivery]


__all__ = [
    "ALL_KINDS",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryStatus",
    "Hook",
    "HookDelivery",
    "HookInfo",
    "HookReport",
    "RetryPolicy",
    "delivery_id",
    "event_body",
    "parse_hook",
    "sign",
    "signature_matches",
]
