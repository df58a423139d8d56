"""The claim rules through the embedded runtime and the trio client: the workspace scope
(for waiting claims too), owned work first at equal priority, and claims by id."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import runlease
from runlease import Ownership
from runlease.errors import (
    AUTONOMY_LEASE_ALREADY_HELD,
    NO_CLAIMABLE_RUN,
    RUN_NOT_FOUND,
    RunleaseError,
)
from runlease.runtime.client import open_client
from socket_helpers import Served


async def test_own_work_goes_first_at_equal_priority() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="builder")
        older = await rt.create_task("unowned, older", start=True)
        pooled = await rt.create_task(
            "the pool's", owner=Ownership(kind="pool", ref="builder"), start=True
        )
        mine = await rt.create_task(
            "the session's",
            owner=Ownership(kind="agent_session", ref=agent.id),
            start=True,
        )
        urgent = await rt.create_task("unowned, urgent", priority="urgent", start=True)
        order = []
        for _ in range(4):
            claim = await agent.claim_next()
            order.append(claim.task.id)
            await agent.complete(claim.run.id)
        # Priority first; then owned work (session or pool alike, in queue order).
        assert order == [urgent.id, pooled.id, mine.id, older.id]


async def test_a_waiting_claim_without_a_workspace_is_not_woken_by_workspace_work() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        got: list[str] = []

        async def wait_for_work() -> None:
            claim = await agent.claim_next(wait=True)
            got.append(claim.task.title)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_work)
            await trio.testing.wait_all_tasks_blocked()
            await rt.create_task("scoped", workspace="w", start=True)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            await rt.create_task("global", start=True)
        assert got == ["global"]


async def test_claim_by_id_embedded() -> None:
    async with runlease.open_runtime() as rt:
        first = await rt.create_task("first", priority="urgent", start=True)
        second = await rt.create_task("second", start=True)
        agent = await rt.open_session(agent="a")
        other = await rt.open_session(agent="b")
        claim = await agent.claim_task(second.id, lease_seconds=60)
        assert (claim.task.id, claim.run.session_id) == (second.id, agent.id)
        with pytest.raises(RunleaseError) as info:
            await agent.claim_run(first.current_run_id or "")
        assert info.value.code == AUTONOMY_LEASE_ALREADY_HELD
        with pytest.raises(RunleaseError) as info:
            await other.claim_run(claim.run.id)
        assert info.value.code == NO_CLAIMABLE_RUN
        assert f"by session {agent.id}" in info.value.message
        with pytest.raises(RunleaseError) as info:
            await other.claim_run("run_nope")
        assert info.value.code == RUN_NOT_FOUND
        await rt.pause_scheduler(reason="deploy")
        with pytest.raises(RunleaseError) as info:
            await other.claim_task(first.id)
        assert info.value.code == NO_CLAIMABLE_RUN
        assert "paused" in info.value.message
        await rt.resume_scheduler()
        taken = await other.claim_task(first.id, priority_min="high")
        assert taken.run.id == first.current_run_id
        events = rt.timeline(first.id)
        assert [e.kind for e in events if e.kind == "run_claimed"] == ["run_claimed"]


async def test_claim_by_id_over_the_trio_client(served: Served) -> None:
    async with open_client(served.path) as client:
        _, token = await client.open_session(agent="remote")
        task = await client.create_task("chosen", workspace="w", start=True)
        with pytest.raises(RunleaseError) as info:
            await client.claim_task(task.id, token=token)
        assert info.value.code == NO_CLAIMABLE_RUN
        assert "names no workspace" in info.value.message
        claim = await client.claim_run(task.current_run_id or "", token=token, workspace="w")
        assert claim.task.id == task.id
        assert claim.run.status == "claimed"
