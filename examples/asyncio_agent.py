"""An asyncio agent loop with runlease embedded: claim, heartbeat while working, complete.

Run it with ``python examples/asyncio_agent.py [DATA_DIR]`` (in memory without one). The
runtime runs on this program's own asyncio loop; nothing here imports trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import runlease.aio
from runlease.aio import AsyncioSession
from runlease.errors import NO_CLAIMABLE_RUN, NotFound

LEASE_SECONDS = 30.0


async def keep_alive(agent: AsyncioSession, run_id: str) -> None:
    """Renew the lease at a third of its length for as long as the work goes on."""
    while True:
        await asyncio.sleep(LEASE_SECONDS / 3)
        await agent.heartbeat(run_id, lease_seconds=LEASE_SECONDS)


async def work(title: str) -> dict[str, int]:
    """Stands in for the agent's real work (an LLM call, a tool run...)."""
    await asyncio.sleep(0)
    return {"words": len(title.split())}


async def agent_loop(agent: AsyncioSession) -> list[str]:
    done: list[str] = []
    while True:
        try:
            claim = await agent.claim_next(wait=True, timeout=1, lease_seconds=LEASE_SECONDS)
        except NotFound as exc:
            if exc.code == NO_CLAIMABLE_RUN:
                return done  # the queue stayed empty for a second: stop
            raise
        heartbeat = asyncio.create_task(keep_alive(agent, claim.run.id))
        try:
            result = await work(claim.task.title)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await agent.complete(claim.run.id, result=result)
        done.append(claim.task.title)


async def main(data_dir: str | None) -> None:
    async with runlease.aio.open_runtime(data_dir=data_dir, fresh_store=True) as rt:
        for title in ("read the issue", "write the patch", "run the tests"):
            await rt.create_task(title, start=True)
        agent = await rt.open_session(agent="asyncio-agent", ttl=600)
        done = await agent_loop(agent)
        print(json.dumps({"completed": done, "leased_runs": rt.status().leased_runs}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
