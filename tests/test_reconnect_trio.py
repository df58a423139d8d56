"""The trio client across a server restart: it connects again and carries on.

As for the synchronous client: a real ``runlease serve`` (durable data dir) is killed or
stopped and started again, and a fake server in this process drops one answer for the
cases where the request was applied but its answer never came back.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from reconnect_helpers import RECONNECT_TIMEOUT, AnswerDroppingProxy, Serving
from runlease import protocol as p
from runlease.client import open_client
from runlease.errors import SERVER_UNAVAILABLE, Unavailable
from runlease.runtime.client import AsyncClient


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    served = Serving(tmp_path)
    try:
        yield served
    finally:
        served.server.kill()


@pytest.fixture
def proxy(serving: Serving, tmp_path: Path) -> Iterator[AnswerDroppingProxy]:
    fake = AnswerDroppingProxy(tmp_path / "proxy.sock", serving.socket)
    try:
        yield fake
    finally:
        fake.close()


@asynccontextmanager
async def client_of(
    serving: Serving, path: Path | None = None, **options: Any
) -> AsyncIterator[AsyncClient]:
    options.setdefault("reconnect_timeout", RECONNECT_TIMEOUT)
    async with open_client(path or serving.socket, **options) as client:
        yield client


async def restart(serving: Serving, how: signal.Signals = signal.SIGKILL) -> None:
    await trio.to_thread.run_sync(lambda: serving.restart(how))


async def leased_run(operator: AsyncClient, agent: AsyncClient) -> str:
    await operator.create_task("work", workspace="w", start=True)
    return (await agent.claim_next(workspace="w")).run.id


async def test_an_agent_session_carries_on_after_the_server_crashes(serving: Serving) -> None:
    async with client_of(serving) as operator:
        opened = await operator.open_session(agent="worker")
        async with client_of(serving, session_token=opened.token) as agent:
            run_id = await leased_run(operator, agent)
            first = agent.welcome

            await restart(serving, signal.SIGKILL)

            # The same client and session token, on a new connection.
            assert (await agent.heartbeat(run_id)).run.id == run_id
            assert agent.welcome is not first
            assert (await agent.whoami()).id == opened.session.id
            done = await agent.complete(run_id, result={"ok": True})
            assert done.status == "completed"
            assert not done.already
            assert (await operator.get_run(run_id)).status == "completed"


@pytest.mark.parametrize("op", ["list_tasks", "heartbeat"])
async def test_a_resendable_request_whose_answer_was_lost_is_sent_again(
    serving: Serving, proxy: AnswerDroppingProxy, op: str
) -> None:
    async with client_of(serving) as operator:
        opened = await operator.open_session()
        async with client_of(serving, proxy.listen, session_token=opened.token) as agent:
            run_id = await leased_run(operator, agent)
            proxy.arm(op)
            if op == "heartbeat":
                assert (await agent.heartbeat(run_id)).run.id == run_id
            else:
                assert [t.title for t in await agent.list_tasks(workspace="w")] == ["work"]
    assert len(proxy.dropped) == 1
    assert proxy.connections == 2


async def test_calls_in_flight_together_share_one_reconnect(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    async with client_of(serving) as operator:
        await operator.create_task("work", workspace="w")
    titles: list[list[str]] = []
    async with client_of(serving, proxy.listen) as client:

        async def read() -> None:
            titles.append([t.title for t in await client.list_tasks(workspace="w")])

        proxy.arm("list_tasks")
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(read)
    assert titles == [["work"]] * 4
    assert proxy.connections == 2


async def test_a_finish_whose_answer_was_lost_is_answered_already(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    async with client_of(serving) as operator:
        opened = await operator.open_session()
        async with client_of(serving, proxy.listen, session_token=opened.token) as agent:
            run_id = await leased_run(operator, agent)
            proxy.arm("complete")
            done = await agent.complete(run_id, result=1)
    [first] = proxy.dropped
    assert isinstance(first, p.RunReply)
    assert not first.run.already
    assert done.already
    assert done.status == "completed"


async def test_a_create_without_a_key_whose_answer_was_lost_says_what_is_known(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    async with client_of(serving, proxy.listen) as client:
        proxy.arm("create_task")
        with pytest.raises(Unavailable) as raised:
            await client.create_task("maybe", workspace="w")
        error = raised.value
        assert error.code == SERVER_UNAVAILABLE
        assert error.exit_code == 6
        assert "create_task was sent" in error.message
        assert "may have been applied" in error.message
        assert str(proxy.listen) in error.message
        # Applied once and not sent again; the client carries on on a new connection.
        assert [t.title for t in await client.list_tasks(workspace="w")] == ["maybe"]


async def test_a_create_with_a_key_whose_answer_was_lost_answers_the_same_task(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    async with client_of(serving, proxy.listen) as client:
        proxy.arm("create_task")
        task = await client.create_task("once", workspace="w", idempotency_key="k-1")
        [first] = proxy.dropped
        assert isinstance(first, p.TaskReply)
        assert task.id == first.task.id
        assert task.already
        assert [t.id for t in await client.list_tasks(workspace="w")] == [task.id]


async def test_followed_events_resume_after_a_restart_without_gap_or_repeat(
    serving: Serving,
) -> None:
    async with client_of(serving) as writer:
        await writer.create_task("one", workspace="w")
        async with client_of(serving) as follower, follower.follow_events() as events:
            seen = [await events.__anext__()]
            await restart(serving, signal.SIGTERM)
            # Made while the follower is cut off; it gets them after it reconnects.
            last = await writer.create_task("two", workspace="w")
            while not any(e.task_id == last.id for e in seen):
                seen.append(await events.__anext__())
        everything = [e for e in await writer.events() if e.seq <= seen[-1].seq]
    assert [e.seq for e in seen] == [e.seq for e in everything]


async def test_gives_up_after_the_bounded_wait_naming_the_address(
    serving: Serving, proxy: AnswerDroppingProxy, autojump_clock: trio.testing.MockClock
) -> None:
    async with client_of(serving, proxy.listen, reconnect_timeout=20.0) as client:
        await client.status()
        proxy.close()
        started = trio.current_time()
        with pytest.raises(Unavailable) as raised:
            await client.list_tasks()
        waited = trio.current_time() - started
    error = raised.value
    assert error.code == SERVER_UNAVAILABLE
    assert error.exit_code == 6
    assert str(proxy.listen) in error.message
    assert "did not come back within 20 seconds" in error.message
    assert waited == pytest.approx(20.0)


async def test_following_begins_on_a_new_connection_after_a_restart(serving: Serving) -> None:
    async with client_of(serving) as client:
        task = await client.create_task("before", workspace="w")
        # The reader sees the old connection end while the server restarts, so the stream
        # is asked for on a link already lost (and, were it not, it is lost right after).
        await restart(serving, signal.SIGKILL)
        async with client.follow_events(task_id=task.id) as events:
            first = await events.__anext__()
    assert first.task_id == task.id
