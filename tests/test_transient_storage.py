"""A transient resource shortage refuses a write; it does not make the runtime read-only.

The store reports a shortage (file descriptors, memory) as RESOURCE_EXHAUSTED with nothing
written and the store still usable. The committer then refuses that batch and everything
applied after it, rolls memory back to the journal, and takes writes again; a restart
shows exactly what was acknowledged. A STORAGE_FAILED commit still turns writes off.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from runlease import open_runtime
from runlease.core.model import Run, Session, Task
from runlease.errors import RESOURCE_EXHAUSTED, STORAGE_FAILED, RunleaseError, Unavailable
from runlease.persistence.store import Store
from runlease.runtime import Runtime
from runlease.runtime import journal as journal_module
from runlease.runtime.journal import BootReport
from storage_faults import THREAD_WAIT, AppendGate
from trio_helpers import Later

START = 1_700_000_000.0
STEP = 30  # seconds: an upper bound for one step on a loaded machine, never a sleep


def wall() -> float:
    return START  # leases never run out unless a test moves trio's clock


def shortage() -> Unavailable:
    return Unavailable("too many open files (simulated)", code=RESOURCE_EXHAUSTED)


class State(msgspec.Struct, frozen=True):
    tasks: list[Task]
    runs: list[Run]
    sessions: list[Session]
    last_event_seq: int


def state_of(rt: Runtime) -> State:
    tasks = rt.list_tasks()
    return State(
        tasks=tasks,
        runs=[run for task in tasks for run in rt.runs_of(task.id)],
        sessions=rt.list_sessions(),
        last_event_seq=rt.status().last_event_seq,
    )


async def expect_code(code: str, call: Awaitable[Any]) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> AppendGate:
    return AppendGate(monkeypatch)


async def test_a_shortage_refuses_the_write_and_the_next_write_succeeds(
    tmp_path: Path, gate: AppendGate
) -> None:
    data_dir = tmp_path / "data"
    async with open_runtime(wall, data_dir=data_dir) as rt:
        await rt.create_task("only", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()

        gate.fail_next = shortage()
        error = await expect_code(RESOURCE_EXHAUSTED, agent.complete(claim.run.id, result=1))
        assert isinstance(error, Unavailable)
        assert "nothing was changed" in error.message
        assert "retry" in error.message
        # Memory is back to the journal: the refused completion left no trace.
        assert rt.get_run(claim.run.id).status == "claimed"
        assert "run_completed" not in {e.kind for e in rt.events()}

        run = await agent.complete(claim.run.id, result=2)
        assert run.status == "completed"
        later = await rt.create_task("after the shortage")
        acknowledged = state_of(rt)

    async with open_runtime(wall, data_dir=data_dir) as rt:
        assert state_of(rt) == acknowledged
        assert rt.get_run(claim.run.id).result == 2
        assert rt.get_task(later.id).title == "after the shortage"


async def test_everything_applied_after_the_refused_batch_is_refused_too(
    tmp_path: Path, gate: AppendGate, nursery: trio.Nursery
) -> None:
    data_dir = tmp_path / "data"
    async with open_runtime(wall, data_dir=data_dir) as rt:
        kept = await rt.create_task("kept", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()
        acknowledged = state_of(rt)

        gate.hold_next()
        completing = Later(nursery, lambda: agent.complete(claim.run.id))
        with trio.fail_after(STEP):
            await gate.entered.wait()
        # Applied on top of the completion while it commits: waits in the next batch.
        creating = Later(nursery, lambda: rt.create_task("applied after", start=True))
        retrying = Later(nursery, lambda: rt.retry_run(claim.run.id))  # refused: not failed
        await trio.testing.wait_all_tasks_blocked()
        assert rt.get_run(claim.run.id).status == "completed"
        assert len(rt.list_tasks()) == 2

        gate.release(shortage())
        assert await completing.code() == RESOURCE_EXHAUSTED
        assert await creating.code() == RESOURCE_EXHAUSTED
        # A refusal judged against the refused state is a shortage too, not its own error.
        assert await retrying.code() == RESOURCE_EXHAUSTED
        assert state_of(rt) == acknowledged

        # Writes are taken again, not refused as read-only.
        assert rt._committer.refusal is None
        done = await agent.complete(claim.run.id, result="second try")
        assert done.status == "completed"
        acknowledged = state_of(rt)

    async with open_runtime(wall, data_dir=data_dir) as rt:
        assert state_of(rt) == acknowledged
        assert [t.id for t in rt.list_tasks()] == [kept.id]


async def test_writes_are_refused_while_memory_is_rolled_back(
    tmp_path: Path, gate: AppendGate, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    rolling_back = trio.Event()
    finish_rollback = threading.Event()
    real_load = journal_module.load_machine

    def slow_load(store: Store, report: BootReport) -> Any:
        trio.from_thread.run_sync(rolling_back.set)
        assert finish_rollback.wait(THREAD_WAIT), "the test never let the rollback finish"
        return real_load(store, report)

    async with open_runtime(wall, data_dir=tmp_path / "data") as rt:
        task = await rt.create_task("only", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()
        monkeypatch.setattr(journal_module, "load_machine", slow_load)
        try:
            gate.fail_next = shortage()
            completing = Later(nursery, lambda: agent.complete(claim.run.id))
            with trio.fail_after(STEP):
                await rolling_back.wait()
            # The machine is about to be replaced: a write now would be lost with it.
            await expect_code(RESOURCE_EXHAUSTED, rt.create_task("during the rollback"))
            await expect_code(RESOURCE_EXHAUSTED, agent.heartbeat(claim.run.id))
            # A read waits for the rolled-back state rather than show the refused one.
            reading = Later(nursery, lambda: rt.read(lambda: rt.get_task(task.id).status))
            await trio.testing.wait_all_tasks_blocked()
            assert not completing.done.is_set()
            assert not reading.done.is_set()
        finally:
            finish_rollback.set()
        assert await completing.code() == RESOURCE_EXHAUSTED
        assert await reading.result() != "completed"
        assert rt.get_run(claim.run.id).status == "claimed"
        assert [t.title for t in rt.list_tasks()] == ["only"]
        assert (await agent.complete(claim.run.id)).status == "completed"


async def test_a_waiting_claimer_gets_the_run_a_refused_claim_took(
    tmp_path: Path, gate: AppendGate, nursery: trio.Nursery
) -> None:
    async with open_runtime(wall, data_dir=tmp_path / "data") as rt:
        await rt.create_task("only", start=True)
        first = await rt.open_session(agent="first")
        second = await rt.open_session(agent="second")

        gate.hold_next()
        claiming = Later(nursery, first.claim_next)
        with trio.fail_after(STEP):
            await gate.entered.wait()
        # The only run is taken (not yet durably): the second claimer parks.
        waiting = Later(nursery, lambda: second.claim_next(wait=True, timeout=STEP * 2))
        await trio.testing.wait_all_tasks_blocked()
        assert rt.status().waiting_claimers == 1

        gate.release(shortage())
        assert await claiming.code() == RESOURCE_EXHAUSTED
        # The refused claim's run is back in the queue, and the waiter is offered it.
        claim = await waiting.result()
        assert claim.run.session_id == second.id
        await rt.settled()
        assert rt.get_run(claim.run.id).session_id == second.id


async def test_lease_deadlines_of_the_restored_state_are_watched(
    tmp_path: Path,
    gate: AppendGate,
    nursery: trio.Nursery,
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime(data_dir=tmp_path / "data") as rt:
        await rt.create_task("only", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next(lease_seconds=10)

        gate.hold_next()
        beating = Later(nursery, lambda: agent.heartbeat(claim.run.id, lease_seconds=100))
        await gate.entered.wait()
        # The first lease's deadline passes while the extension commits: the lease clock
        # sees the extended lease in memory and lets the deadline go.
        mock_clock.jump(20)
        await trio.testing.wait_all_tasks_blocked()
        assert rt.get_run(claim.run.id).status in ("claimed", "running")

        gate.release(shortage())
        assert await beating.code() == RESOURCE_EXHAUSTED
        # The restored lease ran out 10 seconds ago: it must be expired now, not never.
        await trio.testing.wait_all_tasks_blocked()
        await rt.settled()
        assert rt.get_run(claim.run.id).status == "queued"


async def test_storage_failed_still_turns_writes_off(tmp_path: Path, gate: AppendGate) -> None:
    async with open_runtime(wall, data_dir=tmp_path / "data") as rt:
        task = await rt.create_task("kept")
        gate.fail_next = Unavailable("input/output error (simulated)", code=STORAGE_FAILED)
        await expect_code(STORAGE_FAILED, rt.create_task("lost"))
        await expect_code(STORAGE_FAILED, rt.create_task("refused"))
        assert [t.id for t in rt.list_tasks()] == [task.id]
