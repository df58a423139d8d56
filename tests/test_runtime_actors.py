"""The lease rules through the real actors, with trio's mock clock driving time."""

from __future__ import annotations

import contextlib
import random
from collections import Counter

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing

import runlease
from runlease.errors import (
    AUTONOMY_FOREIGN_RUN,
    AUTONOMY_LEASE_ALREADY_HELD,
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    AUTONOMY_SESSION_REQUIRED,
    NO_CLAIMABLE_RUN,
    RUN_ALREADY_FINISHED,
    SESSION_STOPPED,
    RunleaseError,
)
from runlease.operations import HeartbeatRun


async def test_lease_expires_exactly_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next(lease_seconds=30)
        deadline = claim.lease.lease_until

        await trio.sleep(29.9)
        assert rt.get_run(claim.run.id).status == "claimed"

        await trio.sleep(0.2)  # the clock wakes at 30.0 exactly
        run = rt.get_run(claim.run.id)
        assert run.status == "queued"
        assert run.recovery_count == 1
        assert run.claim_token_hash is None
        expired = [e for e in rt.events(task_id=task.id) if e.kind == "lease_expired"]
        assert len(expired) == 1
        assert expired[0].at == pytest.approx(deadline, abs=1e-3)
        assert expired[0].data["previous_session_id"] == agent.id
        assert expired[0].data["previous_claim_token_hash"] == claim.lease.claim_token_hash
        assert expired[0].data["previous_lease_until"] == deadline


async def test_heartbeat_moves_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        await rt.create_task("t", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next(lease_seconds=10)
        for _ in range(5):
            await trio.sleep(8)
            beat = await agent.heartbeat(claim.run.id, lease_seconds=10)
            assert beat.run.status == "running"
        assert rt.get_run(claim.run.id).status == "running"
        await trio.sleep(10.5)
        assert rt.get_run(claim.run.id).status == "queued"


async def test_stale_holder_fails_and_leaves_new_owner_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        await rt.create_task("t", start=True)
        stale = await rt.open_session(agent="stale")
        fresh = await rt.open_session(agent="fresh")
        old = await stale.claim_next(lease_seconds=5)
        await trio.sleep(6)  # expired and requeued by the clock
        new = await fresh.claim_next(lease_seconds=60)
        assert new.run.id == old.run.id
        assert new.lease.claim_token_hash != old.lease.claim_token_hash

        for attempt in (
            stale.heartbeat(old.run.id),
            stale.complete(old.run.id, result={"late": True}),
            stale.fail(old.run.id, error="late"),
            stale.release(old.run.id),
            stale.block(old.run.id, reason="late"),
        ):
            with pytest.raises(RunleaseError) as info:
                await attempt
            assert info.value.code == AUTONOMY_LEASE_EXPIRED

        run = rt.get_run(new.run.id)
        assert run.session_id == fresh.id
        assert run.claim_token_hash == new.lease.claim_token_hash
        assert run.lease_until == new.lease.lease_until
        assert run.result is None
        assert (await fresh.complete(new.run.id, result={"ok": 1})).status == "completed"


async def test_second_claim_and_wrong_run_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        await rt.create_task("one", start=True)
        await rt.create_task("two", start=True)
        a = await rt.open_session(agent="a")
        b = await rt.open_session(agent="b")
        claim_a = await a.claim_next()
        claim_b = await b.claim_next()

        with pytest.raises(RunleaseError) as info:
            await a.claim_next()
        assert info.value.code == AUTONOMY_LEASE_ALREADY_HELD

        with pytest.raises(RunleaseError) as info:
            await a.complete(claim_b.run.id)
        assert info.value.code == AUTONOMY_FOREIGN_RUN
        assert rt.get_run(claim_b.run.id).status == "claimed"

        idle = await rt.open_session(agent="idle")
        with pytest.raises(RunleaseError) as info:
            await idle.heartbeat(claim_a.run.id)
        assert info.value.code == AUTONOMY_FOREIGN_RUN

        with pytest.raises(RunleaseError) as info:
            await rt.call(HeartbeatRun(claim_a.run.id))  # the host itself holds no session
        assert info.value.code == AUTONOMY_SESSION_REQUIRED


async def test_ttl_releases_child_lease_and_stops_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t", start=True)
        parent = await rt.open_session(agent="parent")
        child = await rt.open_session(agent="child", parent=parent.id, ttl=60)
        claim = await child.claim_next(lease_seconds=3600)

        await trio.sleep(59.5)
        assert rt.get_run(claim.run.id).status == "claimed"
        await trio.sleep(1)

        run = rt.get_run(claim.run.id)
        assert run.status == "queued"
        assert run.reason == "ttl_expired"
        assert run.recovery_count == 0  # a structured release, not a recovery
        assert child.info().state == "stopped"
        assert child.info().stop_reason == "ttl_expired"
        assert parent.info().state == "live"
        released = [e for e in rt.events(task_id=task.id) if e.kind == "lease_released"]
        assert [e.data["reason"] for e in released] == ["ttl_expired"]
        with pytest.raises(RunleaseError) as info:
            await child.claim_next()
        assert info.value.code == SESSION_STOPPED


async def test_parent_stop_releases_child_leases_with_parent_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        for title in ("a", "b", "c"):
            await rt.create_task(title, start=True)
        parent = await rt.open_session(agent="parent")
        child = await rt.open_session(agent="child", parent=parent.id)
        grandchild = await rt.open_session(agent="grandchild", parent=child.id)
        independent = await rt.open_session(
            agent="independent", parent=parent.id, auto_stop_on_parent=False
        )
        c1 = await parent.claim_next()
        c2 = await child.claim_next()
        c3 = await grandchild.claim_next()

        result = await parent.stop(reason="operator")
        assert set(result.stopped_session_ids) == {parent.id, child.id, grandchild.id}
        assert set(result.released_run_ids) == {c1.run.id, c2.run.id, c3.run.id}
        assert rt.get_run(c1.run.id).reason == "session_stopped"
        assert rt.get_run(c2.run.id).reason == "parent_stopped"
        assert rt.get_run(c3.run.id).reason == "parent_stopped"
        assert parent.info().stop_reason == "operator"
        assert child.info().stop_reason == "parent_stopped"
        assert independent.info().state == "live"
        # The released runs are claimable again.
        assert (await independent.claim_next()).run.id in {c1.run.id, c2.run.id, c3.run.id}


async def test_waiting_claimer_is_woken_by_enqueue_in_fifo_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        sessions = [await rt.open_session(agent=f"w{i}") for i in range(3)]
        got: list[tuple[str, str, float]] = []

        async def wait_for_work(handle: runlease.SessionHandle) -> None:
            claim = await handle.claim_next(wait=True, timeout=100)
            got.append((handle.id, claim.run.task_id, trio.current_time()))

        async with trio.open_nursery() as nursery:
            for handle in sessions:
                nursery.start_soon(wait_for_work, handle)
                await trio.sleep(1)  # arrival order is the start order
            assert rt.status().waiting_claimers == 3
            started = trio.current_time()
            tasks = [await rt.create_task(f"t{i}", start=True) for i in range(3)]

        assert [sid for sid, _, _ in got] == [s.id for s in sessions]
        assert [tid for _, tid, _ in got] == [t.id for t in tasks]
        assert all(at == started for _, _, at in got)  # woken at once, no polling delay


async def test_waiting_claimer_times_out_with_no_claimable_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        start = trio.current_time()
        with pytest.raises(RunleaseError) as info:
            await agent.claim_next(wait=True, timeout=12)
        assert info.value.code == NO_CLAIMABLE_RUN
        assert trio.current_time() - start == pytest.approx(12)
        # A run arriving after the timeout is not claimed by the abandoned waiter.
        await rt.create_task("later", start=True)
        await trio.lowlevel.checkpoint()
        assert rt.status().queued_runs == 1
        assert agent.info().lease_run_id is None


async def test_waiting_claimer_only_takes_runs_it_can_do(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        picky = await rt.open_session(agent="picky", capabilities=["gpu"])
        plain = await rt.open_session(agent="plain")
        results: dict[str, str] = {}

        async def wait_for_work(handle: runlease.SessionHandle) -> None:
            claim = await handle.claim_next(wait=True, timeout=50)
            results[handle.id] = claim.task.title

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_work, picky)
            await trio.sleep(1)
            nursery.start_soon(wait_for_work, plain)
            await trio.sleep(1)
            await rt.create_task("needs-gpu", capabilities=["gpu"], start=True)
            await trio.sleep(1)
            assert results == {picky.id: "needs-gpu"}
            await rt.create_task("anything", start=True)
        assert results == {picky.id: "needs-gpu", plain.id: "anything"}


async def test_many_sessions_race_and_every_run_completes_exactly_once() -> None:
    runs = 10_000
    contenders = 256
    async with runlease.open_runtime() as rt:
        for i in range(runs):
            await rt.create_task(
                f"t{i}", priority=random.choice(["low", "medium", "high", "urgent"]), start=True
            )
        handed_out: Counter[str] = Counter()
        holders: dict[str, str] = {}
        completed: Counter[str] = Counter()

        async def contender(handle: runlease.SessionHandle) -> None:
            while True:
                try:
                    claim = await handle.claim_next()
                except RunleaseError as exc:
                    if exc.code != NO_CLAIMABLE_RUN:
                        raise
                    return
                run_id = claim.run.id
                assert run_id not in holders, "a run was handed to two sessions at once"
                holders[run_id] = handle.id
                handed_out[run_id] += 1
                await (
                    trio.lowlevel.checkpoint()
                )  # let everyone else interleave while this lease is held
                done = await handle.complete(run_id, result={"by": handle.id})
                assert done.status == "completed"
                del holders[run_id]
                completed[run_id] += 1

        sessions = [await rt.open_session(agent=f"c{i}") for i in range(contenders)]
        async with trio.open_nursery() as nursery:
            for handle in sessions:
                nursery.start_soon(contender, handle)

        assert len(completed) == runs
        assert set(completed.values()) == {1}
        assert set(handed_out.values()) == {1}
        assert all(t.status == "completed" for t in rt.list_tasks())
        status = rt.status()
        assert status.queued_runs == 0
        assert status.leased_runs == 0


@pytest.mark.parametrize(
    "order",
    [
        ("complete", "fail", "release"),
        ("release", "fail", "complete"),
        ("fail", "release", "complete"),
    ],
)
async def test_racing_finishes_on_one_lease_exactly_one_wins(order: tuple[str, ...]) -> None:
    async with runlease.open_runtime() as rt:
        await rt.create_task("t", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()
        run_id = claim.run.id
        outcomes: dict[str, str] = {}

        async def attempt(kind: str) -> None:
            try:
                if kind == "complete":
                    await agent.complete(run_id, result={"ok": True})
                elif kind == "fail":
                    await agent.fail(run_id, error="boom")
                else:
                    await agent.release(run_id, reason="handoff")
                outcomes[kind] = "won"
            except RunleaseError as exc:
                outcomes[kind] = exc.code

        async with trio.open_nursery() as nursery:
            for kind in order:
                nursery.start_soon(attempt, kind)

        winners = [k for k, v in outcomes.items() if v == "won"]
        assert len(winners) == 1
        # The losers hear what the winner recorded: a released run is back in the queue
        # (claim it again), a completed or failed one is finished for good.
        lost = AUTONOMY_NO_ACTIVE_LEASE if winners[0] == "release" else RUN_ALREADY_FINISHED
        assert all(v == lost for k, v in outcomes.items() if k not in winners)
        expected = {"complete": "completed", "fail": "failed", "release": "queued"}[winners[0]]
        assert rt.get_run(run_id).status == expected


async def test_raw_claim_tokens_never_appear_anywhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[str] = []

    def record(value: object) -> None:
        seen.append(repr(value))
        with contextlib.suppress(TypeError):
            seen.append(msgspec.json.encode(value).decode())

    async with runlease.open_runtime() as rt:
        parent = await rt.open_session(agent="parent")
        child = await rt.open_session(agent="child", parent=parent.id, ttl=500)
        record(parent.info())
        for i in range(4):
            record(await rt.create_task(f"t{i}", metadata={"i": i}, start=True))
        claim = await child.claim_next(lease_seconds=100)
        record(claim)
        record(await child.heartbeat(claim.run.id))
        record(await child.complete(claim.run.id, result={"ok": True}))
        claim = await child.claim_next(lease_seconds=100)
        record(await child.fail(claim.run.id, error="nope", metadata={"cmd": "make"}))
        claim = await child.claim_next(lease_seconds=100)
        record(await child.release(claim.run.id, reason="handoff"))
        claim = await child.claim_next(lease_seconds=100)
        record(await child.block(claim.run.id, reason="needs a human"))
        claim = await child.claim_next(lease_seconds=10)
        await trio.sleep(11)  # expiry
        record(await parent.claim_next())
        for bad in (
            child.complete(claim.run.id),
            parent.claim_next(),
            parent.complete(claim.run.id, result={"claim_token": "x"}),
        ):
            try:
                await bad
            except RunleaseError as exc:
                record(exc)
                seen.append(str(exc))
        record(await parent.stop())
        for task in rt.list_tasks():
            record(task)
            for run in rt.runs_of(task.id):
                record(run)
        for event in rt.events():
            record(event)
        record(rt.status())
        record(rt.list_sessions())

    assert len(seen) > 40
    leaks = [s for s in seen if "rl_claim_" in s]
    assert leaks == []
