"""runlease: hand task runs to agent sessions under leases, safely.

Embed it in a trio program::

    async with runlease.open_runtime() as rt:
        task = await rt.create_task("index the repo", start=True)
        session = await rt.open_session(agent="indexer")
        claim = await session.claim_next()
        await session.complete(claim.run.id, result={"files": 120})
"""

from runlease import errors
from runlease.core.model import Claim, Event, Heartbeat, LeaseView, Run, Session, Task
from runlease.runtime import Runtime, RuntimeStatus, SessionHandle, open_runtime

__all__ = [
    "Claim",
    "Event",
    "Heartbeat",
    "LeaseView",
    "Run",
    "Runtime",
    "RuntimeStatus",
    "Session",
    "SessionHandle",
    "Task",
    "errors",
    "open_runtime",
]
