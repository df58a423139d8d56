"""The task-graph and operator requests over a real socket: both clients, stamping, odd input.

Whatever a client puts in a well-formed request of these kinds, the server answers with a reply or
an error with a stable code (never INTERNAL), and the connection keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial

import msgspec
import pytest
import trio

from runlease import protocol as p
from runlease.errors import INTERNAL, RunleaseError
from runlease.runtime.client import open_client
from socket_helpers import STEP, Served


async def test_trio_client_drives_the_graph_and_writes_are_stamped(served: Served) -> None:
    async with open_client(served.path) as client:
        blocker = await client.create_task("blocker", workspace="w")
        waiter = await client.create_task("waiter", workspace="w", draft=True)
        await client.add_dependency(waiter.id, blocker.id)
        published = await client.publish_task(waiter.id)
        assert published.draft is False
        assert list(published.blocked_by) == [blocker.id]
        view = await client.inspect_task(waiter.id)
        assert view.open_dependencies == [blocker.id]
        status = await client.pause_scheduler(reason="look")
        assert status.paused
        assert (await client.scheduler_status()).paused
        backlog = await client.backlog(workspace="w")
        assert [row.task.id for row in backlog.runs] == [waiter.id]
        assert backlog.runs[0].gate == "blocked"
        drained = await client.drain_scheduler(timeout=0.1)
        assert drained.completed
        assert not (await client.resume_scheduler()).paused
        note = await client.checkpoint(waiter.id, "noted")
        assert note.checkpoints[-1].note == "noted"
        assert await client.stuck(threshold=0) == []
        events = await client.timeline(waiter.id)
        assert events
        for event in events:
            assert event.origin is not None
            assert event.origin.kind == "socket"
            assert event.actor is not None
            assert event.actor.ref == "operator"
        canceled = await client.cancel_task(waiter.id, reason="done")
        assert canceled.canceled


async def _expect_refusal(call: Callable[[], Awaitable[object]]) -> str:
    with pytest.raises(RunleaseError) as info:
        await call()
    assert info.value.code != INTERNAL, info.value
    return info.value.code


async def test_odd_input_gets_a_stable_error_and_the_connection_lives_on(served: Served) -> None:
    async with open_client(served.path) as client:
        task = await client.create_task("t", workspace="w", start=True)
        run_id = task.current_run_id
        assert run_id is not None
        odd_changes: list[dict[str, object]] = [
            {},
            {"owner": 5},
            {"owner": {"kind": "nobody", "ref": "x"}},
            {"priority": "nope"},
            {"max_attempts": "x"},
            {"max_attempts": 11},
            {"title": None},
            {"title": ""},
            {"metadata": [1]},
            {"not_a_field": 1},
            {"required_capabilities": "gpu"},
            {"preferred_capabilities": [1, 2]},
        ]
        codes = []
        for changes in odd_changes:
            codes.append(await _expect_refusal(partial(client.update_task, task.id, changes)))
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: client.bulk_force_release([], reason="x"),
            lambda: client.bulk_force_fail([run_id], reason=""),
            lambda: client.force_release(run_id, reason=""),
            lambda: client.force_fail("run_missing", reason="x"),
            lambda: client.drain_scheduler(timeout=math.nan),
            lambda: client.drain_scheduler(timeout=-1),
            lambda: client.backlog(limit=0),
            lambda: client.stuck(threshold=math.nan),
            lambda: client.stuck(threshold=-1),
            lambda: client.timeline(task.id, after_seq=-1),
            lambda: client.steal(task.id),
            lambda: client.steal(task.id, token="rl_session_bogus"),
            lambda: client.claim_next(priority_min="bogus", token="rl_session_bogus"),
            lambda: client.checkpoint(task.id, "", token=None),
            lambda: client.checkpoint(task.id, "x", token="rl_session_bogus"),
            lambda: client.add_dependency(task.id, task.id),
            lambda: client.add_dependency(task.id, "tsk_missing"),
            lambda: client.pause_task(task.id, reason=""),
            lambda: client.create_task("c", parent="tsk_missing"),
            lambda: client.create_task("c", workspace="w", required_artifacts=["../escape"]),
            lambda: client.retry_run(run_id),
            lambda: client.inspect_run("run_missing"),
            lambda: client.approve_task(task.id),
        ]
        for call in calls:
            codes.append(await _expect_refusal(call))
        assert INTERNAL not in codes
        # The connection still answers.
        assert (await client.get_task(task.id)).id == task.id


async def test_bad_field_types_in_issue_6_requests_are_bad_request(served: Served) -> None:
    raw = await trio.open_unix_socket(str(served.path))
    buffer = p.FrameBuffer()

    async def ask(body: bytes) -> p.AnyReply:
        await raw.send_all(p.frame_bytes(body))
        with trio.fail_after(STEP):
            while (frame := buffer.next_frame()) is None:
                buffer.feed(await raw.receive_some(65536))
        return p.decode_reply(frame)

    welcome = await ask(msgspec.msgpack.encode({"op": "hello", "id": 1, "versions": [1]}))
    assert isinstance(welcome, p.Welcome)
    bad = [
        {"op": "bulk_force", "id": 2, "action": "explode", "run_ids": [], "reason": "x"},
        {"op": "update_task", "id": 3, "task_id": "t", "changes": [1, 2]},
        {"op": "steal", "id": 4, "task_id": 5},
        {"op": "backlog", "id": 5, "limit": "ten"},
        {"op": "create_task", "id": 6, "title": "t", "owner": {"kind": "x", "ref": "y"}},
        {"op": "claim_next", "id": 7, "scope": "galaxy"},
    ]
    for body in bad:
        reply = await ask(msgspec.msgpack.encode(body))
        assert isinstance(reply, p.ErrorReply)
        assert reply.id == body["id"]
        assert reply.code == "BAD_REQUEST"
    status = await ask(msgspec.msgpack.encode({"op": "scheduler_status", "id": 8}))
    assert isinstance(status, p.SchedulerReply)
    await raw.aclose()
