"""Issue 6 state survives restarts (journal replay and snapshots), and edge limits."""

from __future__ import annotations

from pathlib import Path

import pytest

import runlease
from runlease import Actor
from runlease.core.commands import CreateTask
from runlease.core.machine import Machine
from runlease.core.model import MAX_REQUIRED_ARTIFACTS
from runlease.errors import FORCE_RATE_LIMITED, GRAPH_LIMIT_EXCEEDED, INVALID_INPUT, RunleaseError


@pytest.mark.parametrize("snapshot_every", [1, 1_000_000])
async def test_graph_state_survives_a_restart(tmp_path: Path, snapshot_every: int) -> None:
    data_dir = tmp_path / "data"
    ops = Actor(kind="human", ref="ops")
    async with runlease.open_runtime(
        data_dir=data_dir, durability="relaxed", snapshot_every_records=snapshot_every
    ) as rt:
        agent = await rt.open_session(agent="a")
        parent = await rt.create_task("parent")
        child = await rt.create_task("child", parent=parent.id, start=True)
        blocker = await rt.create_task("blocker", start=True)
        blocked = await rt.create_task("blocked", start=True)
        await rt.add_dependency(blocked.id, blocker.id)
        await rt.pause_task(parent.id, reason="hold")
        claim = await agent.claim_next()
        assert claim.task.id == blocker.id
        for i in range(10):
            await rt.acting_as(ops).force_release(claim.run.id, reason=f"r{i}")
            claim = await agent.claim_next()
        await rt.checkpoint(blocker.id, "half way", author="bob")
        await rt.pause_scheduler(reason="maintenance")
        before = {t.id: t for t in rt.list_tasks()}

    async with runlease.open_runtime(data_dir=data_dir, durability="relaxed") as rt:
        after = {t.id: t for t in rt.list_tasks()}
        assert after == before
        rt._machine.check_invariants()
        assert rt.scheduler_status().paused
        assert rt.pause_state(child.id).effective_paused
        assert rt.get_task(blocked.id).status == "blocked"
        assert [c.note for c in rt.show_task(blocker.id).checkpoints] == ["half way"]
        with pytest.raises(RunleaseError) as info:  # the rate window survived the restart
            await rt.acting_as(ops).force_release(claim.run.id, reason="again")
        assert info.value.code == FORCE_RATE_LIMITED
        await rt.resume_scheduler()
        await rt.resume_task(parent.id)
        session = rt.session(agent.id)
        await session.complete(claim.run.id)
        other = await rt.open_session(agent="b")
        got = {(await other.claim_next()).task.id}
        third = await rt.open_session(agent="c")
        got.add((await third.claim_next()).task.id)
        assert got == {child.id, blocked.id}


def test_required_artifacts_limit_at_the_edge() -> None:
    machine = Machine()
    paths = [f"out/{i}.txt" for i in range(MAX_REQUIRED_ARTIFACTS)]
    machine.apply(CreateTask(now=1.0, task_id="t1", title="t", required_artifacts=paths))
    with pytest.raises(RunleaseError) as info:
        machine.apply(
            CreateTask(now=1.0, task_id="t2", title="t", required_artifacts=[*paths, "one.txt"])
        )
    assert info.value.code == GRAPH_LIMIT_EXCEEDED
    for bad in ("/etc/passwd", "../up.txt", "a/../../b"):
        with pytest.raises(RunleaseError) as info:
            machine.apply(CreateTask(now=1.0, task_id="t3", title="t", required_artifacts=[bad]))
        assert info.value.code == INVALID_INPUT
