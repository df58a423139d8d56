"""The operator's overview: counts, queue depth by workspace and priority, the leases that
run out first and the most recently active sessions, embedded and over the socket."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import runlease
from runlease.errors import InvalidInput
from runlease.runtime.client import open_client
from runlease.runtime.server import serve_socket


async def test_queue_depth_counts_claimable_runs_by_workspace_and_priority(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        for _ in range(3):
            await rt.create_task("urgent one", priority="urgent", start=True)
        await rt.create_task("low one", priority="low", start=True)
        await rt.create_task("in ws", workspace="ws1", start=True)
        held = await rt.create_task("paused", start=True)
        await rt.pause_task(held.id, reason="hold")
        view = rt.overview()
        depth = {(q.workspace_id, q.priority): q.claimable for q in view.queue}
        assert depth == {(None, "urgent"): 3, (None, "low"): 1, ("ws1", "medium"): 1}
        # Highest priority first within a workspace.
        assert [q.priority for q in view.queue if q.workspace_id is None] == ["urgent", "low"]
        assert (view.claimable_runs, view.held_runs, view.queued_runs) == (5, 1, 6)
        assert view.tasks == 6
        assert view.leased_runs == 0
        assert view.leases == []

        agent = await rt.open_session(agent="a")
        await agent.claim_next()
        depth = {(q.workspace_id, q.priority): q.claimable for q in rt.overview().queue}
        assert depth[(None, "urgent")] == 2


async def test_leases_come_soonest_expiry_first_and_sessions_latest_activity_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        for i in range(3):
            await rt.create_task(f"t{i}", start=True)
        long = await rt.open_session(agent="long")
        short = await rt.open_session(agent="short")
        idle = await rt.open_session(agent="idle")
        long_claim = await long.claim_next(lease_seconds=300)
        await trio.sleep(5)
        short_claim = await short.claim_next(lease_seconds=30)
        view = rt.overview()
        assert [row.run_id for row in view.leases] == [short_claim.run.id, long_claim.run.id]
        first = view.leases[0]
        assert (first.agent, first.session_id, first.title) == ("short", short.id, "t1")
        assert first.lease_until == short_claim.run.lease_until
        assert view.leased_runs == 2
        assert view.live_sessions == 3
        assert [row.session_id for row in view.sessions][:1] == [short.id]
        assert {row.session_id for row in view.sessions} == {long.id, short.id, idle.id}
        assert view.sessions[0].lease_run_id == short_claim.run.id

        # ``limit`` bounds the rows, never the counts.
        small = rt.overview(limit=1)
        assert len(small.leases) == 1
        assert len(small.sessions) == 1
        assert small.leased_runs == 2
        assert small.live_sessions == 3
        with pytest.raises(InvalidInput, match="limit"):
            rt.overview(limit=-1)


async def test_the_overview_over_the_socket_matches_the_embedded_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with runlease.open_runtime() as rt, trio.open_nursery() as nursery:
        server = await nursery.start(serve_socket, rt, tmp_path / "s.sock")
        await rt.create_task("t", priority="high", start=True)
        agent = await rt.open_session(agent="a")
        await rt.create_task("u", start=True)
        claim = await agent.claim_next()
        async with open_client(tmp_path / "s.sock") as client:
            remote = await client.overview(limit=10)
        local = rt.overview(limit=10)
        assert remote.leases == local.leases
        assert remote.queue == local.queue
        assert [row.session_id for row in remote.sessions] == [agent.id]
        assert remote.leases[0].run_id == claim.run.id
        assert "claim_token" not in repr(remote.leases[0])
        server.shutdown()
