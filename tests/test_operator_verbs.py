"""The operator verbs through the embedded runtime: recover, reopen, unblock, tasks that start
on their own, per-task stale_after in ``stuck``, and the starvation backstop.

Time is trio's MockClock (``autojump_clock``) wherever leases must run out; the durable test
at the end replays every verb from the journal.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import runlease
from runlease import open_runtime
from runlease.core.model import MAX_RETRY_CHAIN, Actor
from runlease.errors import (
    APPROVAL_REQUIRED,
    FORBIDDEN_OPERATOR_ACTION,
    INVALID_INPUT,
    INVALID_TRANSITION,
    RETRY_CHAIN_TOO_DEEP,
    TASK_HAS_ACTIVE_RUNS,
    RunleaseError,
)
from runlease.persistence.store import Store
from runlease.runtime.runtime import Runtime


async def refused(code: str, call: Awaitable[Any]) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def blocked_run(rt: Runtime) -> tuple[str, str, runlease.SessionHandle]:
    """A task whose run a session claimed and blocked: (task id, run id, session)."""
    task = await rt.create_task("needs a person", start=True, priority="urgent")
    agent = await rt.open_session(agent="a")
    claim = await agent.claim_next()
    assert claim.task.id == task.id
    await agent.block(claim.run.id, reason="which database?")
    return task.id, claim.run.id, agent


# -------------------------------------------------------------------------- recover
async def test_recover_puts_a_blocked_run_back_and_it_can_be_claimed() -> None:
    async with open_runtime() as rt:
        task_id, run_id, agent = await blocked_run(rt)
        assert rt.get_task(task_id).status == "needs_attention"
        run = await rt.recover_run(run_id, reason="answered: postgres")
        assert (run.status, run.reason, run.attempt, run.error) == ("queued", "recovered", 1, None)
        assert rt.get_task(task_id).status == "ready"
        again = await agent.claim_next()
        assert again.run.id == run_id
        # Only a parked run can be recovered.
        await refused(INVALID_TRANSITION, rt.recover_run(run_id))
        kinds = [e.kind for e in rt.timeline(task_id)]
        assert "run_recovered" in kinds
        recovered = next(e for e in rt.timeline(task_id) if e.kind == "run_recovered")
        assert recovered.data["parked"]["reason"] == "which database?"
        assert recovered.actor == Actor(kind="human", ref="operator")
        rt._machine.check_invariants()


async def test_recover_gives_a_run_that_lost_too_many_leases_its_budget_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime() as rt:
        task = await rt.create_task("poison", start=True, max_attempts=1)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next(lease_seconds=10)
        await trio.sleep(11)  # the clock expires it: one lost lease is the whole budget
        parked = rt.get_run(claim.run.id)
        assert (parked.status, parked.error) == ("needs_attention", "lease_recovery_exhausted")
        run = await rt.recover_run(parked.id)
        assert (run.status, run.recovery_count, run.error) == ("queued", 0, None)
        assert rt.get_task(task.id).status == "ready"
        assert (await agent.claim_next()).run.id == parked.id


async def test_recover_wakes_a_claimer_that_waits_for_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        task_id, run_id, _ = await blocked_run(rt)
        waiter = await rt.open_session(agent="waiter")
        claimed: list[str] = []

        async def wait_for_work() -> None:
            claimed.append((await waiter.claim_next(wait=True, timeout=600)).run.id)

        nursery.start_soon(wait_for_work)
        await trio.sleep(30)  # the claimer is parked: nothing is queued
        assert claimed == []
        await rt.recover_run(run_id)
        await trio.sleep(1)
        assert claimed == [run_id]
        assert rt.get_task(task_id).status == "in_progress"


async def test_a_session_may_not_recover_or_unblock_unless_the_host_allows_it() -> None:
    async with open_runtime() as rt:
        task_id, run_id, agent = await blocked_run(rt)
        as_agent = rt.acting_as(Actor(kind="agent_session", ref=agent.id))
        await refused(FORBIDDEN_OPERATOR_ACTION, as_agent.recover_run(run_id))
        await refused(FORBIDDEN_OPERATOR_ACTION, as_agent.unblock_task(task_id))
        assert rt.get_run(run_id).status == "needs_attention"
    async with open_runtime(allow_agent_force=True) as rt:
        task_id, run_id, agent = await blocked_run(rt)
        as_agent = rt.acting_as(Actor(kind="agent_session", ref=agent.id))
        assert (await as_agent.unblock_task(task_id)).status == "queued"


async def test_a_parked_run_replaced_by_a_later_run_does_not_pin_a_completed_task() -> None:
    async with open_runtime() as rt:
        task_id, parked_id, agent = await blocked_run(rt)
        # Deleting while the current run is parked says how to close it.
        error = await refused(TASK_HAS_ACTIVE_RUNS, rt.delete_task(task_id))
        assert f"runlease run recover {parked_id}" in error.message
        # Someone starts a new run instead of recovering the parked one, and it completes.
        await rt.start_task(task_id)
        claim = await agent.claim_next()
        await agent.complete(claim.run.id)
        assert rt.get_task(task_id).status == "completed"
        # The replaced run cannot come back (recover takes the current run only) ...
        error = await refused(INVALID_TRANSITION, rt.recover_run(parked_id))
        assert claim.run.id in error.message
        # ... so it is history, and the task can be deleted with it.
        await rt.delete_task(task_id)
        assert rt._machine.runs.get(parked_id) is None
        rt._machine.check_invariants()


# --------------------------------------------------------------------------- unblock
async def test_unblock_clears_a_block_and_only_a_block() -> None:
    async with open_runtime() as rt:
        task_id, run_id, agent = await blocked_run(rt)
        run = await rt.unblock_task(task_id, reason="answered")
        assert (run.id, run.status, run.reason, run.attempt) == (run_id, "queued", "answered", 1)
        event = next(e for e in rt.timeline(task_id) if e.kind == "run_unblocked")
        assert event.data["blocked_by"] == agent.id
        assert event.data["block_reason"] == "which database?"
        await refused(INVALID_TRANSITION, rt.unblock_task(task_id))  # queued, not blocked
        fresh = await rt.create_task("never ran")
        await refused(INVALID_TRANSITION, rt.unblock_task(fresh.id))


async def test_unblock_refuses_a_run_parked_for_lost_leases_and_points_to_recover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime() as rt:
        task = await rt.create_task("poison", start=True, max_attempts=1)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next(lease_seconds=5)
        await trio.sleep(6)
        error = await refused(INVALID_TRANSITION, rt.unblock_task(task.id))
        assert f"runlease run recover {claim.run.id}" in error.message


# ---------------------------------------------------------------------------- reopen
async def test_reopen_a_completed_task_blocks_its_dependents_again() -> None:
    async with open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        first = await rt.create_task("build", start=True, max_attempts=2)
        after = await rt.create_task("deploy")
        await rt.add_dependency(after.id, first.id)
        done = await agent.complete((await agent.claim_next()).run.id)
        assert rt.get_task(after.id).status == "ready"  # its dependency is satisfied
        await rt.start_task(after.id)
        run = await rt.reopen_task(first.id, reason="flaky artifact")
        assert (run.status, run.attempt, run.previous_run_id) == ("queued", 1, done.id)
        assert rt.get_task(first.id).status == "ready"
        # The dependent waits for the reopened task again: only the reopened run is claimable.
        assert rt.get_task(after.id).status == "blocked"
        claim = await agent.claim_next()
        assert claim.run.id == run.id
        await refused(INVALID_TRANSITION, rt.reopen_task(first.id))  # in progress
        await agent.complete(claim.run.id)
        assert rt.get_task(after.id).status == "ready"
        rt._machine.check_invariants()


async def test_reopen_a_failed_task_gives_it_fresh_attempts() -> None:
    async with open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        task = await rt.create_task("flaky", start=True, max_attempts=1)
        await agent.fail((await agent.claim_next()).run.id, error="boom")
        assert rt.get_task(task.id).status == "failed"
        run = await rt.reopen_task(task.id)
        assert run.attempt == 1
        assert rt.get_task(task.id).status == "ready"
        # A task that is neither completed nor failed cannot be reopened.
        await refused(INVALID_TRANSITION, rt.reopen_task(task.id))
        pending = await rt.create_task("never ran")
        await refused(INVALID_TRANSITION, rt.reopen_task(pending.id))


async def test_reopen_respects_the_run_chain_limit() -> None:
    async with open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        task = await rt.create_task("again and again", start=True)
        for _ in range(MAX_RETRY_CHAIN - 1):
            await agent.complete((await agent.claim_next()).run.id)
            await rt.reopen_task(task.id)
        await agent.complete((await agent.claim_next()).run.id)
        await refused(RETRY_CHAIN_TOO_DEEP, rt.reopen_task(task.id))


# ------------------------------------------------------------ auto_enqueue_on_ready
async def test_a_task_starts_by_itself_when_its_last_dependency_completes() -> None:
    async with open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        one = await rt.create_task("one", start=True, priority="high")
        two = await rt.create_task("two", start=True)
        waiter = await rt.create_task("waiter", auto_enqueue_on_ready=True, priority="urgent")
        assert waiter.auto_enqueue_on_ready is True
        await rt.add_dependency(waiter.id, one.id)
        await rt.add_dependency(waiter.id, two.id)
        await agent.complete((await agent.claim_next()).run.id)  # one
        assert rt.get_task(waiter.id).current_run_id is None  # two still open
        # Completing the last dependency and claiming next is one step: the new run is
        # already there for the claim part, and it is the most urgent.
        finished = await agent.complete_and_next((await agent.claim_next()).run.id)
        assert finished.claim is not None
        assert finished.claim.task.id == waiter.id
        started = next(e for e in rt.timeline(waiter.id) if e.kind == "run_queued")
        assert started.data["trigger"] == "dependencies_completed"
        rt._machine.check_invariants()


async def test_removing_the_last_open_dependency_also_starts_it() -> None:
    async with open_runtime() as rt:
        blocker = await rt.create_task("blocker")
        waiter = await rt.create_task("waiter", auto_enqueue_on_ready=True)
        plain = await rt.create_task("plain")
        for task in (waiter, plain):
            await rt.add_dependency(task.id, blocker.id)
            await rt.remove_dependency(task.id, blocker.id)
        assert rt.get_task(waiter.id).status == "ready"
        assert rt.get_task(plain.id).current_run_id is None  # only on request


async def test_auto_enqueue_refuses_manual_approval_and_skips_started_tasks() -> None:
    async with open_runtime() as rt:
        await refused(
            APPROVAL_REQUIRED,
            rt.create_task("x", approval_policy="manual", auto_enqueue_on_ready=True),
        )
        agent = await rt.open_session(agent="a")
        blocker = await rt.create_task("blocker", start=True)
        waiter = await rt.create_task("waiter")
        await rt.add_dependency(waiter.id, blocker.id)
        manual = await rt.start_task(waiter.id)  # started while blocked: its run is held
        await rt.update_task(waiter.id, {"auto_enqueue_on_ready": True})
        await agent.complete((await agent.claim_next()).run.id)
        assert rt.get_task(waiter.id).current_run_id == manual.id  # no second run
        assert rt.get_task(waiter.id).status == "ready"


# ---------------------------------------------------------------------------- stuck
async def test_stuck_uses_the_task_stale_after_and_lists_unclaimed_expired_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime() as rt:
        quick = await rt.create_task("quick", start=True, stale_after=60, priority="high")
        slow = await rt.create_task("slow", start=True)
        a = await rt.open_session(agent="a")
        b = await rt.open_session(agent="b")
        quick_claim = await a.claim_next(lease_seconds=3600)
        slow_claim = await b.claim_next(lease_seconds=3600)
        await trio.sleep(120)
        rows = rt.stuck()  # default threshold 600 s
        assert [(r.run_id, r.kind, r.threshold) for r in rows] == [
            (quick_claim.run.id, "no_progress", 60.0)
        ]
        await rt.update_task(quick.id, {"stale_after": None})
        assert rt.stuck() == []
        # A lease that runs out is requeued by the clock at once, and still listed until
        # someone takes the run over.
        await b.heartbeat(slow_claim.run.id, lease_seconds=10)
        await trio.sleep(11)
        assert rt.get_run(slow_claim.run.id).status == "queued"
        rows = rt.stuck()
        assert [(r.run_id, r.kind, r.session_id) for r in rows] == [
            (slow_claim.run.id, "expired_unclaimed", b.id)
        ]
        assert rows[0].seconds == pytest.approx(11)
        thief = await rt.open_session(agent="thief")
        await thief.steal(slow.id)
        assert rt.stuck() == []
        await refused(INVALID_INPUT, rt.create_task("x", stale_after=0))


# ------------------------------------------------------------------------ starvation
async def test_a_run_no_live_session_can_take_is_parked_as_starved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime(starve_after=60) as rt:
        await rt.open_session(agent="cpu-only")
        gpu_task = await rt.create_task("train", start=True, capabilities=["gpu"])
        cpu_task = await rt.create_task("lint", start=True)
        await trio.sleep(59)
        assert rt.get_task(gpu_task.id).status == "ready"
        await trio.sleep(60)
        run = rt.get_run(rt.get_task(gpu_task.id).current_run_id or "")
        assert (run.status, run.error, run.reason) == ("needs_attention", "starved", "starved")
        starved = next(e for e in rt.timeline(gpu_task.id) if e.kind == "run_starved")
        assert starved.data["waited_seconds"] >= 60
        assert starved.actor == Actor(kind="daemon", ref="starvation_watch")
        # A run some live session could take waits as long as it must.
        assert rt.get_task(cpu_task.id).status == "ready"
        # Once a capable session exists, the operator recovers it and it is claimed.
        gpu = await rt.open_session(agent="gpu-box", capabilities=["gpu"])
        await rt.recover_run(run.id)
        # It kept its place in the queue: it was queued before the cpu task.
        assert (await gpu.claim_next()).run.id == run.id
        rt._machine.check_invariants()


async def test_a_session_arriving_in_time_saves_the_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime(starve_after=60) as rt:
        task = await rt.create_task("train", start=True, capabilities=["gpu"])
        await trio.sleep(50)
        gpu = await rt.open_session(agent="gpu-box", capabilities=["gpu"])
        await trio.sleep(100)
        assert rt.get_task(task.id).status == "ready"
        # While the scheduler is paused nobody can claim, and that is not starvation.
        await gpu.stop()
        await rt.pause_scheduler(reason="maintenance")
        await trio.sleep(300)
        assert rt.get_task(task.id).status == "ready"


async def test_starvation_is_off_by_default(autojump_clock: trio.testing.MockClock) -> None:
    async with open_runtime() as rt:
        task = await rt.create_task("train", start=True, capabilities=["gpu"])
        await trio.sleep(24 * 3600)
        assert rt.get_task(task.id).status == "ready"
        with pytest.raises(RunleaseError) as info:
            async with open_runtime(starve_after=0):
                pass
        assert info.value.code == INVALID_INPUT


# ----------------------------------------------------------------------------- replay
async def test_every_verb_replays_from_the_journal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_snapshots(self: Store, seq: int, data: bytes) -> None:
        raise OSError("snapshots are off: the reopen must replay every record")

    monkeypatch.setattr(Store, "write_snapshot", no_snapshots)
    # Durable commits wait on a real thread, which an autojumping clock takes for idleness:
    # time stands still while the verbs run (a lease must not run out during a slow
    # flush), and moves only for the starvation wait.
    autojump_clock.autojump_threshold = math.inf
    async with open_runtime(data_dir=tmp_path, starve_after=60) as rt:
        agent = await rt.open_session(agent="a", ttl=10_000)
        blocked_id, blocked_run_id, _ = await blocked_run(rt)
        await rt.unblock_task(blocked_id)
        await agent.block((await agent.claim_next()).run.id, reason="again")
        await rt.recover_run(blocked_run_id)
        assert (await agent.claim_next()).run.id == blocked_run_id
        await agent.complete(blocked_run_id)
        base = await rt.create_task("base", start=True, priority="urgent")
        auto = await rt.create_task("auto", auto_enqueue_on_ready=True, stale_after=30)
        await rt.add_dependency(auto.id, base.id)
        await agent.complete((await agent.claim_next()).run.id)
        await rt.reopen_task(base.id)
        await rt.create_task("starves", start=True, capabilities=["gpu"])
        autojump_clock.autojump_threshold = 0
        await trio.sleep(200)
        before = {t.id: (t, rt.runs_of(t.id)) for t in rt.list_tasks()}
        auto_run = rt.get_task(auto.id).current_run_id
        assert auto_run is not None
        assert sum(t.status == "needs_attention" for t, _ in before.values()) == 1
    async with open_runtime(data_dir=tmp_path) as rt:
        after = {t.id: (t, rt.runs_of(t.id)) for t in rt.list_tasks()}
        assert after == before
        assert rt.get_task(auto.id).current_run_id == auto_run
        assert rt.boot_report is not None
        assert rt.boot_report.snapshot_seq == 0
        rt._machine.check_invariants()
