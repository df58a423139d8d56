"""Issue 6 through the embedded runtime: graph, operator controls, audit, HZL verbs, races."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import runlease
from runlease import Actor, Origin, Ownership
from runlease.errors import (
    APPROVAL_REQUIRED,
    ATTEMPTS_EXHAUSTED,
    BULK_TOO_LARGE,
    COMPLETION_CONTRACT_UNMET,
    DEPENDENCY_CYCLE,
    FORBIDDEN_OPERATOR_ACTION,
    FORCE_RATE_LIMITED,
    FORCE_REASON_REQUIRED,
    GRAPH_LIMIT_EXCEEDED,
    IMMUTABLE_FIELD,
    LEASE_NOT_EXPIRED,
    NO_CLAIMABLE_RUN,
    RETRY_CHAIN_TOO_DEEP,
    TASK_HAS_ACTIVE_RUNS,
    TASK_HAS_CHILDREN,
    TASK_IS_DRAFT,
    WORKSPACE_ROOT_UNKNOWN,
    RunleaseError,
)
from runlease.runtime.runtime import OPERATOR


async def _claim_code(session: runlease.SessionHandle) -> str:
    with pytest.raises(RunleaseError) as info:
        await session.claim_next()
    return info.value.code


# ----------------------------------------------------------------------- lifecycle
async def test_draft_publish_and_manual_approval(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        draft = await rt.create_task("d", draft=True)
        assert draft.status == "draft"
        with pytest.raises(RunleaseError) as info:
            await rt.start_task(draft.id)
        assert info.value.code == TASK_IS_DRAFT
        published = await rt.publish_task(draft.id)
        assert published.status == "ready"
        claim = await agent.claim_next()
        assert claim.task.id == draft.id
        await agent.complete(claim.run.id)

        manual = await rt.create_task("m", approval_policy="manual")
        assert manual.approval_state == "pending"
        with pytest.raises(RunleaseError) as info:
            await rt.start_task(manual.id)
        assert info.value.code == APPROVAL_REQUIRED
        run = await rt.approve_task(manual.id)
        assert run.status == "queued"
        assert rt.get_task(manual.id).approval_state == "approved"

        rejected = await rt.create_task("r", approval_policy="manual")
        task = await rt.reject_task(rejected.id, reason="not now")
        assert task.status == "blocked"  # a decision, not an ending: approvable later
        assert task.approval_state == "rejected"


async def test_update_mutable_fields_and_refuse_immutable() -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t", workspace="w1", start=True)
        updated = await rt.update_task(
            task.id, {"title": "t2", "priority": "urgent", "max_attempts": 5}
        )
        assert (updated.title, updated.priority, updated.max_attempts) == ("t2", "urgent", 5)
        for field, value in (("workspace_id", "w2"), ("scope", "global"), ("parent_task_id", "x")):
            with pytest.raises(RunleaseError) as info:
                await rt.update_task(task.id, {field: value})
            assert info.value.code == IMMUTABLE_FIELD


async def test_delete_refused_with_children_or_active_runs() -> None:
    async with runlease.open_runtime() as rt:
        parent = await rt.create_task("p")
        child = await rt.create_task("c", parent=parent.id, start=True)
        with pytest.raises(RunleaseError) as info:
            await rt.delete_task(parent.id)
        assert info.value.code == TASK_HAS_CHILDREN
        with pytest.raises(RunleaseError) as info:
            await rt.delete_task(child.id)
        assert info.value.code == TASK_HAS_ACTIVE_RUNS
        await rt.cancel_task(child.id, reason="gone")
        await rt.delete_task(child.id)
        await rt.delete_task(parent.id)
        assert rt.list_tasks() == []


async def test_idempotent_start_returns_the_same_run() -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t")
        first = await rt.start_task(task.id, idempotency_key="k1")
        again = await rt.start_task(task.id, idempotency_key="k1")
        assert again.id == first.id
        assert len(rt.runs_of(task.id)) == 1


# ----------------------------------------------------------------- graph limits
async def test_hierarchy_depth_limit_at_the_edge() -> None:
    async with runlease.open_runtime() as rt:
        parent = await rt.create_task("level 1")
        for level in range(2, 9):  # levels 2..8 are allowed
            parent = await rt.create_task(f"level {level}", parent=parent.id)
        with pytest.raises(RunleaseError) as info:
            await rt.create_task("level 9", parent=parent.id)
        assert info.value.code == GRAPH_LIMIT_EXCEEDED


async def test_direct_children_limit_at_the_edge() -> None:
    async with runlease.open_runtime() as rt:
        parent = await rt.create_task("p")
        for i in range(64):
            await rt.create_task(f"c{i}", parent=parent.id)
        with pytest.raises(RunleaseError) as info:
            await rt.create_task("c64", parent=parent.id)
        assert info.value.code == GRAPH_LIMIT_EXCEEDED


async def test_dependency_limit_cycle_and_self() -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t")
        blockers = [await rt.create_task(f"b{i}") for i in range(33)]
        for blocker in blockers[:32]:
            await rt.add_dependency(task.id, blocker.id)
        with pytest.raises(RunleaseError) as info:
            await rt.add_dependency(task.id, blockers[32].id)
        assert info.value.code == GRAPH_LIMIT_EXCEEDED
        with pytest.raises(RunleaseError) as info:
            await rt.add_dependency(task.id, task.id)
        assert info.value.code == DEPENDENCY_CYCLE
        with pytest.raises(RunleaseError) as info:
            await rt.add_dependency(blockers[0].id, task.id)
        assert info.value.code == DEPENDENCY_CYCLE


async def test_blocked_task_is_not_claimed_until_its_blocker_completes() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        blocker = await rt.create_task("first")
        blocked = await rt.create_task("second", priority="urgent", start=True)
        await rt.add_dependency(blocked.id, blocker.id)
        assert rt.get_task(blocked.id).status == "blocked"
        assert await _claim_code(agent) == NO_CLAIMABLE_RUN
        await rt.start_task(blocker.id)
        claim = await agent.claim_next()
        assert claim.task.id == blocker.id
        await agent.complete(claim.run.id)
        assert rt.get_task(blocked.id).status == "ready"
        claim = await agent.claim_next()
        assert claim.task.id == blocked.id


# ------------------------------------------------------------------ pause, cancel
async def test_paused_ancestor_pauses_descendants() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        root = await rt.create_task("root")
        mid = await rt.create_task("mid", parent=root.id)
        leaf = await rt.create_task("leaf", parent=mid.id, start=True)
        await rt.pause_task(root.id, reason="hold")
        state = rt.pause_state(leaf.id)
        assert state.effective_paused
        assert state.paused_by_task_id == root.id
        assert not state.paused
        assert rt.scheduler_status().paused_task_count == 1
        assert await _claim_code(agent) == NO_CLAIMABLE_RUN
        # Held back, but queued for less than five minutes: not stranded yet.
        assert rt.inspect_task(leaf.id).next_action == "waiting_for_session"
        assert rt.inspect_task(leaf.id).gate == "paused"
        await rt.resume_task(root.id)
        assert rt.inspect_task(leaf.id).next_action == "claim_available"
        claim = await agent.claim_next()
        assert claim.task.id == leaf.id


async def test_cancel_reaches_every_descendant_and_frees_the_session() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        root = await rt.create_task("root", start=True)
        kids = [await rt.create_task(f"k{i}", parent=root.id, start=True) for i in range(3)]
        grandkid = await rt.create_task("g", parent=kids[0].id, start=True)
        claim = await agent.claim_next()
        await rt.cancel_task(root.id, reason="stop")
        for task in (root, *kids, grandkid):
            assert rt.get_task(task.id).status == "canceled"
        assert rt.get_run(claim.run.id).status == "canceled"
        assert agent.info().lease_run_id is None
        assert rt.scheduler_status().queued_run_count == 0


# -------------------------------------------------------------------- run controls
async def test_retry_chain_and_attempt_limits_at_the_edge() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        task = await rt.create_task("t", max_attempts=10, start=True)
        for attempt in range(1, 11):
            claim = await agent.claim_next()
            assert claim.run.attempt == attempt
            failed = await agent.fail(claim.run.id, error="boom")
            if attempt < 10:
                retried = await rt.retry_run(failed.id)
                assert retried.run.previous_run_id == failed.id
        with pytest.raises(RunleaseError) as info:
            await rt.retry_run(failed.id)
        assert info.value.code == RETRY_CHAIN_TOO_DEEP
        assert len(rt.runs_of(task.id)) == 10

        small = await rt.create_task("s", max_attempts=2, start=True)
        claim = await agent.claim_next()
        failed = await agent.fail(claim.run.id, error="x")
        await rt.retry_run(failed.id)
        claim = await agent.claim_next()
        failed = await agent.fail(claim.run.id, error="x")
        with pytest.raises(RunleaseError) as info:
            await rt.retry_run(failed.id)
        assert info.value.code == ATTEMPTS_EXHAUSTED
        assert rt.get_task(small.id).status == "failed"


async def test_force_release_and_fail_reason_rate_limit_and_hash_prefix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        task = await rt.create_task("t", start=True)
        ops = Actor(kind="human", ref="alice")
        claim = await agent.claim_next()
        with pytest.raises(RunleaseError) as info:
            await rt.acting_as(ops).force_release(claim.run.id, reason="  ")
        assert info.value.code == FORCE_REASON_REQUIRED
        for i in range(10):  # ten in one minute is the limit
            released = await rt.acting_as(ops).force_release(claim.run.id, reason=f"r{i}")
            assert released.status == "queued"
            claim = await agent.claim_next()
        with pytest.raises(RunleaseError) as info:
            await rt.acting_as(ops).force_release(claim.run.id, reason="one more")
        assert info.value.code == FORCE_RATE_LIMITED
        # Another actor has its own budget; the window slides with time.
        await rt.acting_as(Actor(kind="human", ref="bob")).force_release(claim.run.id, reason="bob")
        claim = await agent.claim_next()
        await trio.sleep(61)
        await agent.heartbeat(claim.run.id)
        failed = await rt.acting_as(ops).force_fail(claim.run.id, reason="stuck")
        assert failed.failure_kind == "operator_forced"
        events = [e for e in rt.timeline(task.id) if e.kind.startswith("run_force")]
        assert len(events) == 12
        for event in events:
            prefix = event.data["previous_claim_hash_prefix"]
            assert len(prefix) == 8
            assert event.origin == Origin(kind="embedded")
            assert "claim_token_hash" not in event.data
        assert events[0].actor == ops


async def test_bulk_force_limit_and_per_run_items() -> None:
    async with runlease.open_runtime() as rt:
        agents = [await rt.open_session(agent="a") for _ in range(3)]
        for i in range(3):
            await rt.create_task(f"t{i}", start=True)
        runs = [(await a.claim_next()).run.id for a in agents]
        with pytest.raises(RunleaseError) as info:
            await rt.bulk_force_release([f"run_{i}" for i in range(51)], reason="x")
        assert info.value.code == BULK_TOO_LARGE
        ids = [*runs, "run_missing"] + [runs[0]] * 46  # exactly 50
        result = await rt.bulk_force_fail(ids, reason="maintenance")
        assert len(result.items) == 50
        assert [item.ok for item in result.items[:4]] == [True, True, True, False]
        assert result.items[3].code == "RUN_NOT_FOUND"
        assert not any(item.ok for item in result.items[4:])


# ------------------------------------------------------------------------ claims
async def test_claim_filters_owner_priority_scope_preferred() -> None:
    async with runlease.open_runtime() as rt:
        alice = await rt.open_session(agent="alice", capabilities=["gpu"])
        bob = await rt.open_session(agent="bob", capabilities=["gpu"])
        owned = await rt.create_task(
            "alice's", priority="urgent", owner=Ownership(kind="agent_session", ref=alice.id)
        )
        await rt.start_task(owned.id)
        assert await _claim_code(bob) == NO_CLAIMABLE_RUN
        claim = await alice.claim_next()
        assert claim.task.id == owned.id
        await alice.complete(claim.run.id)

        pooled = await rt.create_task("pool", owner=Ownership(kind="pool", ref="bob"), start=True)
        assert await _claim_code(alice) == NO_CLAIMABLE_RUN
        claim = await bob.claim_next()
        assert claim.task.id == pooled.id
        await bob.complete(claim.run.id)

        low = await rt.create_task("low", priority="low", start=True)
        with pytest.raises(RunleaseError):
            await alice.claim_next(priority_min="medium")
        plain = await rt.create_task("plain", start=True)
        preferred = await rt.create_task("gpu job", preferred_capabilities=["gpu"], start=True)
        claim = await alice.claim_next(priority_min="medium")
        assert claim.task.id == preferred.id  # same priority, later, but preferred
        await alice.complete(claim.run.id)
        claim = await alice.claim_next(scope="global")
        assert claim.task.id == plain.id
        await alice.complete(claim.run.id)
        claim = await alice.claim_next()
        assert claim.task.id == low.id


# --------------------------------------------------------------------- scheduler
async def test_scheduler_pause_drain_status_backlog(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        for i in range(3):
            await rt.create_task(f"t{i}", start=True)
        claim = await agent.claim_next(lease_seconds=60)
        status = await rt.pause_scheduler(reason="maintenance")
        assert status.paused
        assert status.active_claim_count == 1
        assert status.queued_run_count == 2
        other = await rt.open_session(agent="b")
        assert await _claim_code(other) == NO_CLAIMABLE_RUN

        result = await rt.drain_scheduler(timeout=5)
        assert result.timed_out
        assert result.remaining_claims == 1

        async with trio.open_nursery() as nursery:

            async def finish() -> None:
                await trio.sleep(3)
                await agent.complete(claim.run.id)

            nursery.start_soon(finish)
            result = await rt.drain_scheduler(timeout=30)
        assert result.completed
        assert result.remaining_claims == 0

        page = rt.backlog(limit=1)
        assert page.total == 2
        assert len(page.runs) == 1
        assert page.next_after == page.runs[0].run.id
        rest = rt.backlog(after=page.next_after, limit=10)
        assert len(rest.runs) == 1
        assert rest.next_after is None
        await rt.resume_scheduler()
        assert (await other.claim_next()).run.id == page.runs[0].run.id


async def test_paused_scheduler_keeps_expiring_leases(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        await rt.create_task("t", start=True)
        claim = await agent.claim_next(lease_seconds=10)
        await rt.pause_scheduler()
        await trio.sleep(11)
        assert rt.get_run(claim.run.id).status == "queued"


async def test_resume_wakes_waiting_claimers(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        await rt.pause_scheduler()
        await rt.create_task("t", start=True)
        agent = await rt.open_session(agent="a")
        got: list[str] = []
        async with trio.open_nursery() as nursery:

            async def wait_claim() -> None:
                got.append((await agent.claim_next(wait=True, timeout=100)).run.id)

            nursery.start_soon(wait_claim)
            await trio.sleep(5)
            assert got == []
            await rt.resume_scheduler()
        assert len(got) == 1


# ------------------------------------------------------------ completion contracts
async def test_completion_contract_lists_missing_artifacts(tmp_path: Path) -> None:
    async with runlease.open_runtime(workspace_roots={"ws": tmp_path}) as rt:
        agent = await rt.open_session(agent="a")
        await rt.create_task(
            "report",
            workspace="ws",
            required_artifacts=["out/report.md", "out/data.csv"],
            start=True,
        )
        claim = await agent.claim_next(workspace="ws")
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "report.md").write_text("done")
        with pytest.raises(RunleaseError) as info:
            await agent.complete(claim.run.id)
        assert info.value.code == COMPLETION_CONTRACT_UNMET
        assert "out/data.csv" in info.value.message
        assert "report.md" not in info.value.message
        (tmp_path / "out" / "data.csv").write_text("1,2")
        done = await agent.complete(claim.run.id)
        assert done.status == "completed"


async def test_completion_contract_needs_a_workspace_root() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        await rt.create_task("t", required_artifacts=["x"], start=True)
        claim = await agent.claim_next()
        with pytest.raises(RunleaseError) as info:
            await agent.complete(claim.run.id)
        assert info.value.code == WORKSPACE_ROOT_UNKNOWN


# --------------------------------------------------------------------- HZL verbs
async def test_checkpoint_stuck_steal_show_inspect(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        first = await rt.open_session(agent="first")
        second = await rt.open_session(agent="second")
        task = await rt.create_task("t", start=True)
        claim = await first.claim_next(lease_seconds=1000)
        await rt.checkpoint(task.id, "read the code", author="bob")
        assert rt.inspect_task(task.id).next_action == "running"
        await trio.sleep(700)
        stuck = rt.stuck(threshold=600)
        assert [(s.run_id, s.kind) for s in stuck] == [(claim.run.id, "no_progress")]
        assert stuck[0].seconds == pytest.approx(700, abs=1)
        with pytest.raises(RunleaseError) as info:
            await second.steal(task.id)
        assert info.value.code == LEASE_NOT_EXPIRED
        # A session may not force; the host (an operator actor) may, on its behalf.
        with pytest.raises(RunleaseError) as info:
            await second.steal(task.id, force=True)
        assert info.value.code == FORBIDDEN_OPERATOR_ACTION
        stolen = await second.acting_as(OPERATOR).steal(task.id, force=True)
        assert stolen.run.session_id == second.id
        assert first.info().lease_run_id is None
        detail = rt.show_task(task.id)
        assert [c.note for c in detail.checkpoints] == ["read the code"]
        assert detail.checkpoints[0].author == "bob"
        kinds = [e.kind for e in detail.events]
        assert kinds[-2:] == ["checkpoint", "run_stolen"]
        view = rt.inspect_run(claim.run.id)
        assert view.bound_session is not None
        assert view.bound_session.session_id == second.id
        assert view.current_run is not None
        assert len(view.current_run.claim_token_hash_prefix or "") == 8


async def test_next_action_values(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t")
        assert rt.inspect_task(task.id).next_action == "waiting_for_session"
        await rt.start_task(task.id)
        assert rt.inspect_task(task.id).next_action == "waiting_for_session"
        agent = await rt.open_session(agent="a")
        assert rt.inspect_task(task.id).next_action == "claim_available"
        claim = await agent.claim_next(lease_seconds=10)
        assert rt.inspect_task(task.id).next_action == "running"
        await agent.block(claim.run.id, reason="need a human")
        assert rt.inspect_task(task.id).next_action == "recovery_required"
        await rt.cancel_task(task.id)
        assert rt.inspect_task(task.id).next_action == "terminal"


async def test_events_carry_actor_and_origin_and_stream_replays() -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        task = await rt.acting_as(Actor(kind="human", ref="me")).create_task("t", start=True)
        claim = await agent.claim_next()
        created = rt.timeline(task.id)[0]
        assert created.actor == Actor(kind="human", ref="me")
        assert created.origin == Origin(kind="embedded")
        claimed = next(e for e in rt.timeline(task.id) if e.kind == "run_claimed")
        assert claimed.actor == Actor(kind="agent_session", ref=agent.id)
        after = claimed.seq
        seen: list[str] = []
        async with trio.open_nursery() as nursery:

            async def follow() -> None:
                async for event in rt.follow_events(after_seq=after, task_id=task.id):
                    seen.append(event.kind)
                    if event.kind == "run_completed":
                        return

            nursery.start_soon(follow)
            await agent.complete(claim.run.id)
        assert seen == ["run_completed"]


# -------------------------------------------------------------------------- races
async def test_ten_concurrent_steals_of_one_expired_run_one_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        holder = await rt.open_session(agent="holder")
        task = await rt.create_task("t", max_attempts=5, start=True)
        await holder.claim_next(lease_seconds=5)
        await trio.sleep(6)
        thieves = [await rt.open_session(agent=f"thief{i}") for i in range(10)]
        wins: list[str] = []
        codes: list[str] = []

        async def steal(session: runlease.SessionHandle) -> None:
            try:
                claim = await session.steal(task.id)
            except RunleaseError as exc:
                codes.append(exc.code)
            else:
                wins.append(claim.lease.session_id)

        async with trio.open_nursery() as nursery:
            for thief in thieves:
                nursery.start_soon(steal, thief)
        assert len(wins) == 1
        assert codes == [LEASE_NOT_EXPIRED] * 9


async def test_twenty_claimers_over_ten_tasks_make_exactly_ten_claims() -> None:
    async with runlease.open_runtime() as rt:
        for i in range(10):
            await rt.create_task(f"t{i}", start=True)
        sessions = [await rt.open_session(agent=f"s{i}") for i in range(20)]
        claimed: list[str] = []
        codes: list[str] = []
        misses = 0

        async def claim(session: runlease.SessionHandle) -> None:
            nonlocal misses
            try:
                claimed.append((await session.claim_next()).run.id)
            except RunleaseError as exc:
                codes.append(exc.code)
                misses += 1

        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(claim, session)
        assert len(claimed) == 10
        assert len(set(claimed)) == 10
        assert misses == 10
        assert codes == [NO_CLAIMABLE_RUN] * 10


async def test_dependency_completing_while_fifty_claimers_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        worker = await rt.open_session(agent="worker")
        blocker = await rt.create_task("blocker", start=True)
        dependents = []
        for i in range(5):
            dependent = await rt.create_task(f"dep{i}", start=True)
            await rt.add_dependency(dependent.id, blocker.id)
            dependents.append(dependent.id)
        claim = await worker.claim_next()
        assert claim.task.id == blocker.id
        waiters = [await rt.open_session(agent=f"w{i}") for i in range(50)]
        got: list[str] = []
        codes: list[str] = []

        async def wait_claim(session: runlease.SessionHandle) -> None:
            try:
                got.append((await session.claim_next(wait=True, timeout=60)).task.id)
            except RunleaseError as exc:
                codes.append(exc.code)

        async with trio.open_nursery() as nursery:
            for session in waiters:
                nursery.start_soon(wait_claim, session)
            await trio.sleep(1)
            assert got == []
            await worker.complete(claim.run.id)
        assert sorted(got) == sorted(dependents)
        assert codes == [NO_CLAIMABLE_RUN] * 45
