"""The synchronous client across a server restart: it connects again and carries on.

A real ``runlease serve`` (durable data dir) is killed or stopped and started again; the
cases where a request reached the server but its answer did not come back use a fake
server in this process (:class:`AnswerDroppingProxy`) that drops one answer.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconnect_helpers import RECONNECT_TIMEOUT, AnswerDroppingProxy, Serving
from runlease import protocol as p
from runlease.client import Client
from runlease.errors import SERVER_UNAVAILABLE, Unavailable


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    served = Serving(tmp_path)
    try:
        yield served
    finally:
        served.server.kill()


def client_of(serving: Serving, path: Path | None = None, **options: Any) -> Client:
    options.setdefault("reconnect_timeout", RECONNECT_TIMEOUT)
    return Client(path or serving.socket, **options).connect()


@pytest.fixture
def proxy(serving: Serving, tmp_path: Path) -> Iterator[AnswerDroppingProxy]:
    fake = AnswerDroppingProxy(tmp_path / "proxy.sock", serving.socket)
    try:
        yield fake
    finally:
        fake.close()


def leased_run(operator: Client, agent: Client, workspace: str = "w") -> str:
    operator.create_task("work", workspace=workspace, start=True)
    return agent.claim_next(workspace=workspace).run.id


def test_an_agent_session_carries_on_after_the_server_crashes(serving: Serving) -> None:
    operator = client_of(serving)
    opened = operator.open_session(agent="worker")
    agent = client_of(serving, session_token=opened.token)
    run_id = leased_run(operator, agent)

    serving.restart(signal.SIGKILL)

    # The same client, the same session token, on a new connection.
    assert agent.heartbeat(run_id).run.id == run_id
    assert agent.whoami().id == opened.session.id
    done = agent.complete(run_id, result={"ok": True})
    assert done.status == "completed"
    assert not done.already
    assert operator.get_run(run_id).status == "completed"


def test_a_call_made_while_the_server_is_down_waits_for_it(serving: Serving) -> None:
    client = client_of(serving)
    task = client.create_task("before")
    # Not waiting for the new server: the call finds no socket, then a starting server,
    # and keeps trying until it answers.
    serving.restart(signal.SIGTERM, wait=False)
    assert client.get_task(task.id).title == "before"


@pytest.mark.parametrize("op", ["list_tasks", "heartbeat"])
def test_a_resendable_request_whose_answer_was_lost_is_sent_again(
    serving: Serving, proxy: AnswerDroppingProxy, op: str
) -> None:
    operator = client_of(serving)
    opened = operator.open_session()
    agent = client_of(serving, proxy.listen, session_token=opened.token)
    run_id = leased_run(operator, agent)

    proxy.arm(op)
    if op == "heartbeat":
        assert agent.heartbeat(run_id).run.id == run_id
    else:
        assert [t.title for t in agent.list_tasks(workspace="w")] == ["work"]
    assert len(proxy.dropped) == 1
    assert proxy.connections == 2


def test_a_finish_whose_answer_was_lost_is_answered_already(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    operator = client_of(serving)
    opened = operator.open_session()
    agent = client_of(serving, proxy.listen, session_token=opened.token)
    run_id = leased_run(operator, agent)

    proxy.arm("complete")
    done = agent.complete(run_id, result=1)
    # The first one was applied (its answer was dropped); the second says so.
    [first] = proxy.dropped
    assert isinstance(first, p.RunReply)
    assert not first.run.already
    assert done.already
    assert done.status == "completed"


def test_a_create_without_a_key_whose_answer_was_lost_says_what_is_known(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    client = client_of(serving, proxy.listen)
    proxy.arm("create_task")
    with pytest.raises(Unavailable) as raised:
        client.create_task("maybe", workspace="w")
    error = raised.value
    assert error.code == SERVER_UNAVAILABLE
    assert error.exit_code == 6
    assert "create_task was sent" in error.message
    assert "may have been applied" in error.message
    assert str(proxy.listen) in error.message
    # It was applied once, and not sent again; the client carries on.
    assert [t.title for t in client.list_tasks(workspace="w")] == ["maybe"]


def test_a_create_with_a_key_whose_answer_was_lost_answers_the_same_task(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    client = client_of(serving, proxy.listen)
    proxy.arm("create_task")
    task = client.create_task("once", workspace="w", idempotency_key="k-1")
    [first] = proxy.dropped
    assert isinstance(first, p.TaskReply)
    assert task.id == first.task.id
    assert task.already
    assert [t.id for t in client.list_tasks(workspace="w")] == [task.id]


def test_followed_events_resume_after_a_restart_without_gap_or_repeat(
    serving: Serving,
) -> None:
    writer = client_of(serving)
    writer.create_task("one", workspace="w")
    follower = client_of(serving)
    with follower.follow_events() as events:
        seen = [next(events)]
        serving.restart(signal.SIGTERM)
        # Made while the follower is cut off; it must get them after it reconnects.
        last = writer.create_task("two", workspace="w")
        while not any(e.task_id == last.id for e in seen):
            seen.append(next(events))
    everything = [e for e in client_of(serving).events() if e.seq <= seen[-1].seq]
    assert [e.seq for e in seen] == [e.seq for e in everything]


def test_gives_up_after_the_bounded_wait_naming_the_address(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    client = client_of(
        serving, proxy.listen, reconnect_timeout=20.0, sleep=sleep, clock=lambda: now[0]
    )
    proxy.close()
    with pytest.raises(Unavailable) as raised:
        client.list_tasks()
    error = raised.value
    assert error.code == SERVER_UNAVAILABLE
    assert error.exit_code == 6
    assert str(proxy.listen) in error.message
    assert "did not come back within 20 seconds" in error.message
    assert sum(waits) == pytest.approx(20.0)
    assert len(waits) > 3  # it kept trying, backing off
    assert max(waits) <= 2.0 * 1.5


def test_without_reconnecting_a_lost_connection_is_reported_at_once(
    serving: Serving, proxy: AnswerDroppingProxy
) -> None:
    client = client_of(serving, proxy.listen, reconnect_timeout=0)
    proxy.arm("list_tasks")
    with pytest.raises(Unavailable) as raised:
        client.list_tasks()
    assert raised.value.code == SERVER_UNAVAILABLE
    assert proxy.connections == 1


def test_following_begins_while_the_server_is_down(serving: Serving) -> None:
    client = client_of(serving)
    task = client.create_task("before", workspace="w")
    serving.restart(signal.SIGTERM, wait=False)
    with client.follow_events(task_id=task.id) as events:
        first = next(events)
    assert first.task_id == task.id
