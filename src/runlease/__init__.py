"""runlease: hand task runs to agent sessions under leases, safely.

Embed it in a trio program::

    async with runlease.open_runtime() as rt:
        task = await rt.create_task("index the repo", start=True)
        session = await rt.open_session(agent="indexer")
        claim = await session.claim_next()
        await session.complete(claim.run.id, result={"files": 120})

The runtime (and trio with it) is imported on first use, so the CLI and the synchronous
client start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runlease import errors
from runlease.core.model import (
    Actor,
    Claim,
    Event,
    Heartbeat,
    LeaseView,
    Origin,
    Ownership,
    Run,
    Session,
    Task,
)

if TYPE_CHECKING:
    from runlease.runtime import (
        EventHistory,
        GcTuning,
        HistoryRetention,
        Runtime,
        RuntimeStatus,
        SessionHandle,
        open_runtime,
    )

_RUNTIME_NAMES = frozenset(
    {
        "EventHistory",
        "GcTuning",
        "HistoryRetention",
        "Runtime",
        "RuntimeStatus",
        "SessionHandle",
        "open_runtime",
    }
)


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_NAMES:
        from runlease import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'runlease' has no attribute {name!r}")


__all__ = [
    "Actor",
    "Claim",
    "Event",
    "EventHistory",
    "GcTuning",
    "Heartbeat",
    "HistoryRetention",
    "LeaseView",
    "Origin",
    "Ownership",
    "Run",
    "Runtime",
    "RuntimeStatus",
    "Session",
    "SessionHandle",
    "Task",
    "errors",
    "open_runtime",
]
