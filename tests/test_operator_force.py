"""Force operations are operator actions: a session asking for one is refused.

``steal --force``, ``force-release``, ``force-fail`` and their bulk forms override another
holder's lease. A session gets FORBIDDEN_OPERATOR_ACTION (LeaseRefused) unless the host
opened the runtime with ``allow_agent_force=True`` (``runlease serve --allow-agent-force``).
Requests without a session token over the owner-only socket act as the operator, and
``steal --if-expired`` stays an agent's own action. The check runs before the machine, so
replaying an accepted command never depends on the setting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from runlease import Actor, open_runtime
from runlease.errors import (
    FORBIDDEN_OPERATOR_ACTION,
    LeaseRefused,
    RunleaseError,
    error_for_code,
)
from runlease.runtime import Runtime
from runlease.runtime.client import open_client
from runlease.runtime.runtime import OPERATOR
from runlease.runtime.server import SocketServer, serve_socket


def agent(session_id: str) -> Actor:
    return Actor(kind="agent_session", ref=session_id)


async def holder_and_thief(rt: Runtime) -> tuple[str, str, str, str]:
    """A task whose run ``holder`` leases for an hour; ``thief`` is idle. Ids returned."""
    task = await rt.create_task("contested", start=True)
    holder = await rt.open_session(agent="holder")
    thief = await rt.open_session(agent="thief")
    claim = await holder.claim_next(lease_seconds=3600)
    return task.id, claim.run.id, holder.id, thief.id


async def refused(call: Awaitable[Any]) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        await call
    return info.value


# ---------------------------------------------------------------------- embedded
async def test_a_session_cannot_force_and_nothing_changes() -> None:
    async with open_runtime() as rt:
        task_id, run_id, holder_id, thief_id = await holder_and_thief(rt)
        before = (rt.get_run(run_id), rt.status().last_event_seq)
        attempts: list[Callable[[], Awaitable[Any]]] = [
            lambda: rt.session(thief_id).steal(task_id, force=True, reason="mine"),
            lambda: rt.session(thief_id).acting_as(agent(thief_id)).steal(task_id, force=True),
            lambda: rt.acting_as(agent(thief_id)).force_release(run_id, reason="x"),
            lambda: rt.acting_as(agent(thief_id)).force_fail(run_id, reason="x"),
            lambda: rt.acting_as(agent(thief_id)).bulk_force_release([run_id], reason="x"),
            lambda: rt.acting_as(agent(thief_id)).bulk_force_fail([run_id], reason="x"),
        ]
        for attempt in attempts:
            error = await refused(attempt())
            assert isinstance(error, LeaseRefused)
            assert error.code == FORBIDDEN_OPERATOR_ACTION
            assert "operator" in error.message
            assert "--allow-agent-force" in error.message
            assert "allow_agent_force=True" in error.message
        assert error_for_code(FORBIDDEN_OPERATOR_ACTION, "").exit_code == 5
        # The holder keeps its lease; no event was emitted.
        assert (rt.get_run(run_id), rt.status().last_event_seq) == before
        assert rt.get_session(holder_id).lease_run_id == run_id


async def test_if_expired_steal_stays_an_agent_action(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime() as rt:
        task_id, run_id, _, thief_id = await holder_and_thief(rt)
        thief = rt.session(thief_id)
        await trio.sleep(3601)  # the holder's lease ran out
        stolen = await thief.steal(task_id)
        assert (stolen.run.id, stolen.run.session_id) == (run_id, thief_id)


async def test_the_operator_may_force_on_behalf_of_a_session() -> None:
    async with open_runtime() as rt:
        task_id, run_id, holder_id, thief_id = await holder_and_thief(rt)
        stolen = (
            await rt.session(thief_id)
            .acting_as(OPERATOR)
            .steal(task_id, force=True, reason="rebalance")
        )
        assert stolen.run.session_id == thief_id
        released = await rt.force_release(run_id, reason="operator says")  # default: operator
        assert released.status == "queued"
        assert rt.get_session(holder_id).lease_run_id is None


async def test_allow_agent_force_lets_a_session_force() -> None:
    async with open_runtime(allow_agent_force=True) as rt:
        task_id, run_id, _, thief_id = await holder_and_thief(rt)
        stolen = await rt.session(thief_id).steal(task_id, force=True)
        assert stolen.run.session_id == thief_id
        failed = await rt.acting_as(agent(thief_id)).force_fail(run_id, reason="agent decided")
        assert failed.status == "failed"


async def test_an_accepted_agent_force_replays_whatever_the_setting(tmp_path: Path) -> None:
    async with open_runtime(data_dir=tmp_path, allow_agent_force=True) as rt:
        task_id, run_id, _, thief_id = await holder_and_thief(rt)
        await rt.session(thief_id).steal(task_id, force=True)
    # Reopened without the permission: the journaled steal still replays.
    async with open_runtime(data_dir=tmp_path) as rt:
        assert rt.get_run(run_id).session_id == thief_id
        assert rt.get_session(thief_id).lease_run_id == run_id


# ------------------------------------------------------------------------ socket
@asynccontextmanager
async def served(path: Path, **options: Any) -> AsyncIterator[Runtime]:
    async with open_runtime(**options) as rt, trio.open_nursery() as nursery:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        try:
            yield rt
        finally:
            server.shutdown()
            await server.wait_stopped()


async def test_over_the_socket_a_token_is_an_agent_and_no_token_is_the_operator(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with served(path) as rt, open_client(path) as client:
        task = await client.create_task("contested", start=True)
        holder_session, holder = await client.open_session(agent="holder")
        _, thief = await client.open_session(agent="thief")
        claim = await client.claim_next(lease_seconds=3600, token=holder)
        error = await refused(client.steal(task.id, force=True, reason="mine", token=thief))
        assert error.code == FORBIDDEN_OPERATOR_ACTION
        assert isinstance(error, LeaseRefused)
        assert rt.get_session(holder_session.id).lease_run_id == claim.run.id
        # No session token: the operator, who may force.
        released = await client.force_release(claim.run.id, reason="operator")
        assert released.status == "queued"


async def test_a_server_that_allows_agent_force_lets_a_session_steal(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with served(path, allow_agent_force=True), open_client(path) as client:
        task = await client.create_task("contested", start=True)
        _, holder = await client.open_session(agent="holder")
        thief_session, thief = await client.open_session(agent="thief")
        await client.claim_next(lease_seconds=3600, token=holder)
        stolen = await client.steal(task.id, force=True, token=thief)
        assert stolen.run.session_id == thief_session.id
