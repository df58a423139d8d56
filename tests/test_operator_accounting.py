"""Operator accounting and derived task status through the embedded runtime.

A retry spends the same per-actor, per-task allowance as a force; a drain leaves a
started and a completed event; a task's status follows AGH's derivation (awaiting
approval is blocked, retryable or freed of its dependencies is ready), also after a
restart from a snapshot written before that derivation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import runlease
from runlease import Actor
from runlease.core.commands import (
    AddDependency,
    ApproveTask,
    ClaimNext,
    CreateTask,
    FailRun,
    OpenSession,
    StartTask,
)
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_token, new_secret_token
from runlease.core.machine import Machine
from runlease.core.model import FORCE_RATE_LIMIT, Event
from runlease.core.snapshot import decode_snapshot, encode_snapshot
from runlease.errors import FORCE_RATE_LIMITED, RunleaseError
from runlease.runtime.client import open_client
from runlease.runtime.runtime import OPERATOR
from socket_helpers import Served


def _kinds(events: list[Event], prefix: str) -> list[Event]:
    return [e for e in events if e.kind.startswith(prefix)]


# ---------------------------------------------------------------------- retry accounting
async def test_retry_counts_toward_the_force_rate_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        await rt.create_task("t", max_attempts=10, start=True)
        alice = rt.acting_as(Actor(kind="human", ref="alice"))
        claim = await agent.claim_next()
        for i in range(FORCE_RATE_LIMIT - 1):
            await alice.force_release(claim.run.id, reason=f"r{i}")
            claim = await agent.claim_next()
        failed = await agent.fail(claim.run.id, error="boom")
        retried = await alice.retry_run(failed.id)  # the tenth in the window: allowed
        claim = await agent.claim_next()
        assert claim.run.id == retried.run.id
        failed = await agent.fail(claim.run.id, error="boom again")
        with pytest.raises(RunleaseError) as info:
            await alice.retry_run(failed.id)
        assert info.value.code == FORCE_RATE_LIMITED
        assert "retried" in info.value.message
        assert rt.get_task(failed.task_id).current_run_id == failed.id  # nothing changed
        # Another actor has an allowance of its own; alice's comes back as the window slides.
        bob = await rt.acting_as(Actor(kind="human", ref="bob")).retry_run(failed.id)
        claim = await agent.claim_next()
        failed = await agent.fail(claim.run.id, error="third")
        assert failed.id == bob.run.id
        await trio.sleep(61)
        assert (await alice.retry_run(failed.id)).run.previous_run_id == failed.id


async def test_retries_alone_are_limited_too(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        await rt.create_task("t", max_attempts=10, start=True)
        allowed = 0
        code = None
        for _ in range(9):  # a retry chain is at most 10 runs: 9 retries
            failed = await agent.fail((await agent.claim_next()).run.id, error="x")
            try:
                await rt.retry_run(failed.id)
            except RunleaseError as exc:
                code = exc.code
                break
            allowed += 1
        # Nine retries stay under the limit of ten: the chain limit comes first here.
        assert (allowed, code) == (9, None)


# --------------------------------------------------------------------------- drain events
async def test_drain_records_started_and_completed_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        await rt.create_task("t", start=True)
        claim = await agent.claim_next(lease_seconds=600)
        timed_out = await rt.drain_scheduler(timeout=5, reason="deploy")
        assert timed_out.timed_out
        events = _kinds(rt.events(), "scheduler_")
        assert [e.kind for e in events] == [
            "scheduler_paused",
            "scheduler_drain_started",
            "scheduler_drain_completed",
        ]
        started, completed = events[1], events[2]
        assert started.data == {"reason": "deploy", "active_claims": 1}
        assert completed.data["completed"] is False
        assert completed.data["timed_out"] is True
        assert completed.data["remaining_claims"] == 1
        assert completed.data["started_at"] == pytest.approx(started.at)
        assert completed.at - started.at == pytest.approx(5, abs=0.01)
        assert started.actor == completed.actor == OPERATOR

        # Drained again while paused: no second pause, and this time every lease ends.
        async with trio.open_nursery() as nursery:

            async def finish() -> None:
                await trio.sleep(2)
                await agent.complete(claim.run.id)

            nursery.start_soon(finish)
            done = await rt.drain_scheduler(timeout=30)
        assert done.completed
        after = _kinds(rt.events(after_seq=completed.seq), "scheduler_")
        assert [e.kind for e in after] == ["scheduler_drain_started", "scheduler_drain_completed"]
        assert after[1].data["completed"] is True
        assert after[1].data["timed_out"] is False
        assert rt.scheduler_status().paused  # a drain leaves the scheduler paused


async def test_a_drain_cut_short_still_records_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        await rt.create_task("t", start=True)
        await agent.claim_next(lease_seconds=600)
        with trio.move_on_after(2) as cut:
            await rt.drain_scheduler(timeout=30)
        assert cut.cancelled_caught
        events = _kinds(rt.events(), "scheduler_drain")
        assert [e.kind for e in events] == ["scheduler_drain_started", "scheduler_drain_completed"]
        assert events[1].data["remaining_claims"] == 1
        assert events[1].at - events[0].at == pytest.approx(2, abs=0.01)


async def test_drain_events_and_retry_limit_over_the_socket(served: Served) -> None:
    rt = served.rt
    agent = await rt.open_session(agent="a")
    await rt.create_task("t", max_attempts=10, start=True)
    async with open_client(served.path) as client:
        drained = await client.drain_scheduler(timeout=0, reason="upgrade")
        assert drained.completed
        kinds = [e.kind for e in await client.events() if e.kind.startswith("scheduler_")]
        assert kinds == ["scheduler_paused", "scheduler_drain_started", "scheduler_drain_completed"]
        await client.resume_scheduler()
        claim = await agent.claim_next()
        for i in range(FORCE_RATE_LIMIT):
            await client.force_release(claim.run.id, reason=f"r{i}")
            claim = await agent.claim_next()
        failed = await agent.fail(claim.run.id, error="x")
        with pytest.raises(RunleaseError) as info:
            await client.retry_run(failed.id)  # the socket's operator spent its allowance
        assert info.value.code == FORCE_RATE_LIMITED


async def test_drain_is_journaled_and_replayed(tmp_path: Path) -> None:
    async with runlease.open_runtime(data_dir=tmp_path, durability="relaxed") as rt:
        await rt.drain_scheduler(timeout=0)
        seq = rt.status().last_event_seq
    async with runlease.open_runtime(data_dir=tmp_path, durability="relaxed") as rt:
        assert rt.scheduler_status().paused
        assert rt.status().last_event_seq == seq  # both drain records replayed


# ------------------------------------------------------------------------ derived status
async def test_task_status_as_agh_derives_it() -> None:
    async with runlease.open_runtime() as rt:
        manual = await rt.create_task("needs a decision", approval_policy="manual")
        assert manual.status == "blocked"
        run = await rt.approve_task(manual.id)
        assert rt.get_task(manual.id).status == "ready"

        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()
        assert claim.run.id == run.id
        await agent.fail(claim.run.id, error="flaky")
        assert rt.get_task(manual.id).status == "ready"  # attempts left

        blocker = await rt.create_task("first")
        waiting = await rt.create_task("second")
        assert waiting.status == "pending"  # never started, no dependency
        assert (await rt.add_dependency(waiting.id, blocker.id)).status == "blocked"
        assert (await rt.remove_dependency(waiting.id, blocker.id)).status == "ready"


def test_a_snapshot_from_before_the_derivation_loads_with_todays_statuses() -> None:
    m = Machine()
    m.apply(OpenSession(now=1.0, session_id="s", agent="a"))
    m.apply(CreateTask(now=1.0, task_id="manual", title="m", approval_policy="manual"))
    m.apply(CreateTask(now=1.0, task_id="flaky", title="f", start_run_id="r1"))
    m.apply(CreateTask(now=1.0, task_id="first", title="b"))
    m.apply(CreateTask(now=1.0, task_id="plain", title="p"))
    token = new_secret_token(CLAIM_TOKEN_PREFIX)
    m.apply(ClaimNext(now=2.0, session_id="s", claim_token_hash=hash_token(token)))
    m.apply(FailRun(now=3.0, session_id="s", run_id="r1", error="x"))
    m.apply(AddDependency(now=4.0, task_id="plain", blocked_by="first"))
    # What an older runlease stored for these tasks.
    for task_id in ("manual", "flaky"):
        m.tasks[task_id].status = "pending"
    restored = decode_snapshot(encode_snapshot(m))
    assert restored.tasks["manual"].status == "blocked"
    assert restored.tasks["flaky"].status == "ready"
    assert restored.tasks["plain"].status == "blocked"
    restored.check_invariants()
    restored.apply(ApproveTask(now=5.0, task_id="manual", run_id="r2"))
    restored.apply(StartTask(now=5.0, task_id="flaky", run_id="r3"))
    assert [restored.tasks[t].status for t in ("manual", "flaky")] == ["ready", "ready"]
