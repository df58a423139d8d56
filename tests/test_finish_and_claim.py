"""Finish a run and claim the next in one call: embedded, durable, and over the socket.

The pure semantics are in the model test (``finish_and_claim`` rules); here the shells: the
scheduler applying the composite command, the wait for a claim after the finish, durable
replay of both journal shapes (one record, or the finish alone and a later claim), and the
one-request, one-reply exchange on the wire, including a cancelled or shut-down wait.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from runlease import open_runtime
from runlease import protocol as p
from runlease.client import Client
from runlease.core.commands import (
    ClaimNext,
    CompleteRun,
    CreateTask,
    FinishAndClaim,
    OpenSession,
)
from runlease.core.machine import Machine
from runlease.core.model import Finished, Priority
from runlease.errors import (
    AUTONOMY_FOREIGN_RUN,
    INVALID_INPUT,
    NO_CLAIMABLE_RUN,
    REQUEST_CANCELLED,
    RUN_ALREADY_FINISHED,
    SHUTTING_DOWN,
    RunleaseError,
)
from runlease.runtime import Runtime
from runlease.runtime.calls import Call
from runlease.runtime.client import open_client
from runlease.runtime.server import SocketServer, serve_socket
from socket_helpers import STEP, Raw
from test_machine_model import fingerprint


async def started(rt: Runtime, title: str, priority: Priority = "medium") -> str:
    task = await rt.create_task(title, start=True, priority=priority)
    return task.id


async def until_waiting(rt: Runtime) -> None:
    """Until a claimer is parked in the scheduler (a finish's claim part, here)."""
    with trio.fail_after(STEP):
        while rt.status().waiting_claimers == 0:
            await trio.testing.wait_all_tasks_blocked()


# ------------------------------------------------------------------------------ embedded
async def test_complete_and_next_finishes_then_claims_the_best_run() -> None:
    async with open_runtime() as rt:
        session = await rt.open_session(agent="loop")
        await started(rt, "first", priority="high")
        second = await started(rt, "second")
        run = (await session.claim_next()).run
        finished = await session.complete_and_next(run.id, result={"ok": 1}, lease_seconds=60)
        assert isinstance(finished, Finished)
        assert (finished.run.id, finished.run.status) == (run.id, "completed")
        assert finished.run.result == {"ok": 1}
        assert finished.no_claim is None
        assert finished.claim is not None
        assert finished.claim.task.id == second
        assert finished.claim.lease.lease_seconds == 60
        assert session.info().lease_run_id == finished.claim.run.id
        # Events: the finish first, then the claim, in one step.
        kinds = [e.kind for e in rt.events()][-2:]
        assert kinds == ["run_completed", "run_claimed"]


async def test_nothing_to_claim_is_reported_and_the_finish_stands() -> None:
    async with open_runtime() as rt:
        session = await rt.open_session()
        task_id = await started(rt, "only")
        run = (await session.claim_next()).run
        finished = await session.fail_and_next(run.id, error="broke")
        assert finished.run.status == "failed"
        assert finished.claim is None
        assert finished.no_claim is not None
        assert finished.no_claim.code == NO_CLAIMABLE_RUN
        assert rt.get_task(task_id).status == "ready"  # failed with attempts left
        assert session.info().lease_run_id is None


async def test_a_refused_finish_claims_nothing() -> None:
    async with open_runtime() as rt:
        mine = await rt.open_session(agent="mine")
        other = await rt.open_session(agent="other")
        await started(rt, "held")
        waiting = await started(rt, "waiting")
        run = (await mine.claim_next()).run
        with pytest.raises(RunleaseError) as info:
            await other.complete_and_next(run.id)
        assert info.value.code == AUTONOMY_FOREIGN_RUN
        theirs = (await other.claim_next()).run
        with pytest.raises(RunleaseError) as info:
            await mine.release_and_next(theirs.id)
        assert info.value.code == AUTONOMY_FOREIGN_RUN
        # A bad claim part refuses the whole step before the finish.
        with pytest.raises(RunleaseError) as info:
            await mine.complete_and_next(run.id, workspace="bad ws")
        assert info.value.code == INVALID_INPUT
        assert rt.get_run(run.id).status == "claimed"
        assert rt.get_task(waiting).status == "in_progress"  # other took it, nobody else
        with pytest.raises(RunleaseError) as info:
            await mine.complete_and_next(run.id, wait=True, timeout=-1)
        assert info.value.code == INVALID_INPUT


async def test_release_and_next_may_take_the_released_run_back() -> None:
    async with open_runtime() as rt:
        session = await rt.open_session()
        await started(rt, "sticky")
        run = (await session.claim_next()).run
        finished = await session.release_and_next(run.id, reason="retry")
        assert finished.run.status == "queued"
        assert finished.claim is not None
        assert finished.claim.run.id == run.id


async def test_waiting_claim_part_gets_later_work_after_the_finish_is_visible() -> None:
    async with open_runtime() as rt:
        session = await rt.open_session()
        first = await started(rt, "now")
        run = (await session.claim_next()).run
        got: list[Finished] = []

        async def loop() -> None:
            got.append(await session.complete_and_next(run.id, wait=True, timeout=STEP))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop)
            await until_waiting(rt)
            assert rt.get_task(first).status == "completed"  # finished before the wait
            later = await started(rt, "later")
        (finished,) = got
        assert finished.run.status == "completed"
        assert finished.claim is not None
        assert finished.claim.task.id == later


async def test_a_wait_that_times_out_still_reports_the_finish() -> None:
    async with open_runtime() as rt:
        session = await rt.open_session()
        await started(rt, "only")
        run = (await session.claim_next()).run
        finished = await session.complete_and_next(run.id, wait=True, timeout=0.05)
        assert finished.run.status == "completed"
        assert finished.no_claim is not None
        assert finished.no_claim.code == NO_CLAIMABLE_RUN
        # The abandoned waiter takes nothing: new work stays queued for others.
        later = await started(rt, "later")
        await trio.testing.wait_all_tasks_blocked()
        assert rt.get_task(later).status == "ready"
        assert session.info().lease_run_id is None
        # A zero timeout behaves like no wait at all.
        run = (await session.claim_next()).run
        finished = await session.complete_and_next(run.id, wait=True, timeout=0)
        assert finished.no_claim is not None


async def test_stop_waiting_ends_the_wait_but_reports_the_finish() -> None:
    async with open_runtime() as rt:
        session = await rt.open_session()
        await started(rt, "only")
        run = (await session.claim_next()).run
        scope = trio.CancelScope()
        got: list[Finished] = []

        async def loop() -> None:
            call = Call(rt, session_id=session.id, stop_waiting=scope)
            got.append(await p.CompleteRun(run.id).then_claim(call, p.ClaimNext(wait=True)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop)
            await until_waiting(rt)
            scope.cancel()
        (finished,) = got
        assert finished.run.status == "completed"
        assert finished.no_claim is not None
        assert finished.no_claim.code == REQUEST_CANCELLED


def test_any_bad_claim_part_refuses_before_the_finish() -> None:
    machine = Machine()
    now = 1_700_000_000.0
    machine.apply(OpenSession(now=now, session_id="ses_1", agent="a"))
    machine.apply(CreateTask(now=now, task_id="tsk_1", title="t", start_run_id="run_1"))
    machine.apply(ClaimNext(now=now, session_id="ses_1", claim_token="rl_claim_first"))
    before = fingerprint(machine)
    finish = CompleteRun(now=0.0, session_id="ses_1", run_id="run_1")
    bad_parts = [
        ClaimNext(now=0.0, session_id="ses_1", claim_token="rl_claim_x", lease_seconds=-1),
        ClaimNext(now=0.0, session_id="ses_1", claim_token="rl_claim_x", workspace_id="bad ws"),
        ClaimNext(
            now=0.0, session_id="ses_1", claim_token="rl_claim_x", scope="global", workspace_id="w"
        ),
        ClaimNext(now=0.0, session_id="ses_1", claim_token="rl_claim_x", priority_min=True),
        ClaimNext(now=0.0, session_id="ses_1", claim_token="not a token"),
        ClaimNext(now=0.0, session_id="ses_2", claim_token="rl_claim_x"),
    ]
    for claim in bad_parts:
        with pytest.raises(RunleaseError) as info:
            machine.apply(FinishAndClaim(now=now + 1, finish=finish, claim=claim))
        assert info.value.code == INVALID_INPUT, claim
        assert fingerprint(machine) == before, claim


# ------------------------------------------------------------------------------- durable
async def test_durable_finish_and_claim_is_one_record_and_replays_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with open_runtime(data_dir=data, durability="relaxed") as rt:
        session = await rt.open_session()
        for i in range(4):
            await started(rt, f"t{i}")
        run = (await session.claim_next()).run
        committer = rt._committer
        before = committer.submitted_seq
        finished = await session.complete_and_next(run.id)
        assert committer.submitted_seq == before + 1
        assert finished.claim is not None
        finished = await session.release_and_next(finished.claim.run.id)
        assert finished.claim is not None
        finished = await session.fail_and_next(finished.claim.run.id, error="e")
        assert finished.claim is not None
        run_id = finished.claim.run.id
        finished = await session.complete_and_next(run_id)
        assert finished.claim is not None
        # Nothing left: a waiting finish journals the finish alone, then the claim later.
        got: list[Finished] = []

        async def loop(run_id: str) -> None:
            got.append(await session.complete_and_next(run_id, wait=True, timeout=STEP))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop, finished.claim.run.id)
            await until_waiting(rt)
            await started(rt, "late")
        assert got[0].claim is not None
        # And one that times out: the finish alone is recorded.
        timed_out = await session.complete_and_next(got[0].claim.run.id, wait=True, timeout=0.01)
        assert timed_out.no_claim is not None
        expected = fingerprint(rt._machine)
    async with open_runtime(data_dir=data, durability="relaxed") as rt:
        assert fingerprint(rt._machine) == expected


# -------------------------------------------------------------------------------- socket
@pytest.fixture
async def socket_path(
    tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[tuple[Runtime, SocketServer, Path]]:
    path = tmp_path / "sock" / "s.sock"
    async with open_runtime() as rt:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        yield rt, server, path
        server.shutdown()
        await server.wait_stopped()


async def test_one_request_one_reply_on_the_wire(
    socket_path: tuple[Runtime, SocketServer, Path],
) -> None:
    rt, _, path = socket_path
    raw = await Raw.open(path)
    await raw.send(p.OpenSession(id=2, agent="w"))
    opened = await raw.reply()
    assert isinstance(opened, p.SessionOpened)
    await started(rt, "a")
    await started(rt, "b")
    await raw.send(p.ClaimNext(id=3, token=opened.token))
    claimed = await raw.reply()
    assert isinstance(claimed, p.ClaimReply)
    await raw.send(
        p.CompleteRun(id=4, token=opened.token, run_id=claimed.claim.run.id, next=p.NextClaim())
    )
    reply = await raw.reply()
    assert isinstance(reply, p.FinishedReply)
    assert reply.id == 4
    assert reply.finished.run.status == "completed"
    assert reply.finished.claim is not None
    # Refused finish: an ordinary error reply.
    await raw.send(
        p.FailRun(
            id=5, token=opened.token, run_id=claimed.claim.run.id, error="x", next=p.NextClaim()
        )
    )
    error = await raw.reply()
    assert isinstance(error, p.ErrorReply)
    assert error.code == RUN_ALREADY_FINISHED
    # A waiting finish that the client cancels: the finish is still reported.
    await raw.send(
        p.ReleaseRun(
            id=6,
            token=opened.token,
            run_id=reply.finished.claim.run.id,
            reason="bye",
            next=p.NextClaim(wait=True, workspace="elsewhere"),
        )
    )
    await until_waiting(rt)
    await raw.send(p.Cancel(id=7, target=6))
    got = {r.id: r for r in await raw.replies(2)}
    assert isinstance(got[7], p.Ok)
    cancelled = got[6]
    assert isinstance(cancelled, p.FinishedReply)
    assert cancelled.finished.run.status == "queued"
    assert cancelled.finished.no_claim is not None
    assert cancelled.finished.no_claim.code == REQUEST_CANCELLED
    await raw.close()


async def test_shutdown_ends_a_waiting_claim_part_with_the_finish_reported(
    socket_path: tuple[Runtime, SocketServer, Path],
) -> None:
    rt, server, path = socket_path
    raw = await Raw.open(path)
    session, token = await rt.open_session_with_token()
    await started(rt, "only")
    run = (await rt.session(session.id).claim_next()).run
    await raw.send(p.CompleteRun(id=2, token=token, run_id=run.id, next=p.NextClaim(wait=True)))
    await until_waiting(rt)
    server.shutdown()
    reply = await raw.reply()
    assert isinstance(reply, p.FinishedReply)
    assert reply.finished.run.status == "completed"
    assert reply.finished.no_claim is not None
    assert reply.finished.no_claim.code == SHUTTING_DOWN


async def test_both_clients_finish_and_claim(
    socket_path: tuple[Runtime, SocketServer, Path],
) -> None:
    rt, _, path = socket_path
    for i in range(3):
        await started(rt, f"t{i}")
    async with open_client(path) as client:
        _, token = await client.open_session(agent="async")
        claim = await client.claim_next(token=token)
        finished = await client.complete_and_next(claim.run.id, token=token, wait=True, timeout=1)
        assert finished.claim is not None
        finished = await client.fail_and_next(finished.claim.run.id, error="e", token=token)
        assert finished.claim is not None
        finished = await client.release_and_next(finished.claim.run.id, token=token)
        assert finished.claim is not None
        last = finished.claim.run.id

    def sync_side() -> Finished:
        with Client(path, session_token=token, reply_timeout=STEP) as sync:
            finished = sync.complete_and_next(last, wait=True, timeout=0.05)
            assert finished.no_claim is not None
            assert finished.no_claim.code == NO_CLAIMABLE_RUN
            return finished

    finished = await trio.to_thread.run_sync(sync_side)
    assert finished.run.status == "completed"
    assert not math.isnan(finished.run.ended_at or math.nan)


async def test_the_claim_part_honours_scope_and_priority_min() -> None:
    async with open_runtime() as rt:
        await rt.create_task("first", priority="urgent", start=True)
        await rt.create_task("medium, global", start=True)
        await rt.create_task("high, in a workspace", priority="high", workspace="ws", start=True)
        agent = await rt.open_session(agent="a")
        first = await agent.claim_next()

        # Only high or better: the medium task is skipped, the workspace one qualifies,
        # but scope=global excludes it, so nothing is claimed and the finish still stands.
        finished = await agent.complete_and_next(first.run.id, priority_min="high", scope="global")
        assert finished.run.status == "completed"
        assert finished.claim is None
        assert finished.no_claim is not None
        assert finished.no_claim.code == "NO_CLAIMABLE_RUN"

        second = await agent.claim_next(priority_min="high")
        assert second.task.title == "high, in a workspace"
        finished = await agent.release_and_next(second.run.id, scope="global")
        assert finished.claim is not None
        assert finished.claim.task.title == "medium, global"
