"""Leases and queue order when the wall clock steps, above all backwards across a restart.

The machine keeps the newest time of any applied command (``high_water``) and numbers every
enqueue (``Run.queue_seq``). Boot starts the runtime clock no earlier than that mark, so a
recovered lease lasts at most its granted length, and the claim order follows the enqueue
order, never wall time.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from runlease import open_runtime
from runlease.actors.clock import RuntimeClock
from runlease.core.commands import (
    AnyCommand,
    ClaimNext,
    CompleteRun,
    CreateTask,
    OpenSession,
)
from runlease.core.ids import hash_token
from runlease.core.machine import Machine
from runlease.core.model import Run, Session, Task
from runlease.core.snapshot import decode_snapshot, encode_snapshot
from runlease.errors import RunleaseError

START = 1_700_000_000.0
HOUR = 3600.0


class SteppedWall:
    """Wall time that runs with trio's clock, plus a step the test sets (a settable clock)."""

    def __init__(self) -> None:
        self.step = 0.0

    def __call__(self) -> float:
        return START + self.step + trio.current_time()


def claim_cmd(now: float, session_id: str, n: int) -> ClaimNext:
    return ClaimNext(now=now, session_id=session_id, claim_token_hash=hash_token(f"rl_claim_{n}"))


async def advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Move mock time by hand and let every task react (no autojump: the store's IO threads
    would otherwise let mock time run on while a test waits on the disk)."""
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


# ----------------------------------------------------------------------- runtime
async def test_a_lease_recovered_after_a_backward_step_expires_within_its_length(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    wall = SteppedWall()
    async with open_runtime(wall, data_dir=tmp_path) as rt:
        leased_task = await rt.create_task("leased before the step", start=True)
        holder = await rt.open_session(agent="holder")
        claim = await holder.claim_next(lease_seconds=4)
        older = await rt.create_task("queued before the step", start=True)

    wall.step = -HOUR  # the wall clock goes back an hour while the runtime is down
    async with open_runtime(wall, data_dir=tmp_path) as rt:
        booted_at = trio.current_time()
        run = rt.get_run(claim.run.id)
        assert run.status == "claimed"
        assert run.lease_until is not None
        assert run.lease_until - rt._clock.now() <= 4.0
        newer = await rt.create_task("queued after the step", start=True)

        # Work queued before the step goes first, then work queued after it.
        taker = await rt.open_session(agent="taker")
        first = await taker.claim_next(lease_seconds=600)
        assert first.task.id == older.id
        await taker.complete(first.run.id)
        second = await taker.claim_next(lease_seconds=600)
        assert second.task.id == newer.id

        # The recovered 4 s lease runs out within 4 s of (mock) time.
        await advance(mock_clock, 4.0)
        assert trio.current_time() - booted_at == pytest.approx(4.0)
        expired = rt.get_run(claim.run.id)
        assert (expired.status, expired.reason) == ("queued", "lease_expired")
        assert rt.get_task(leased_task.id).status == "ready"
        assert holder.id not in {s.id for s in rt.list_sessions() if s.lease_run_id}


async def test_records_after_a_backward_step_never_predate_the_ones_before(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    wall = SteppedWall()
    async with open_runtime(wall, data_dir=tmp_path) as rt:
        before = await rt.create_task("before", start=True)
    wall.step = -HOUR
    async with open_runtime(wall, data_dir=tmp_path) as rt:
        after = await rt.create_task("after", start=True)
        assert after.created_at >= before.created_at
        await advance(mock_clock, 10)
        # The clock keeps its pace from the anchor: ten seconds on, ten seconds later.
        later = await rt.create_task("later")
        assert later.created_at == pytest.approx(after.created_at + 10, abs=0.01)


async def test_runtime_clock_starts_at_the_later_of_wall_time_and_the_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    behind = RuntimeClock(lambda: START - HOUR + trio.current_time(), floor=START)
    assert behind.now() == pytest.approx(START)
    await trio.sleep(5)
    assert behind.now() == pytest.approx(START + 5)
    ahead = RuntimeClock(lambda: START + trio.current_time(), floor=START - HOUR)
    assert ahead.now() == pytest.approx(START + trio.current_time())
    # The default clock (real wall time) is floored the same way.
    future = 4_000_000_000.0
    floored = RuntimeClock(floor=future)
    assert floored.now() == pytest.approx(future)
    await trio.sleep(2)
    assert floored.now() == pytest.approx(future + 2)
    assert floored.trio_time_of(future + 10) == pytest.approx(trio.current_time() + 8)


# -------------------------------------------------------------------------- core
def test_claim_order_follows_enqueue_order_when_command_times_go_back() -> None:
    m = Machine()
    m.apply(CreateTask(now=START, task_id="tsk_a", title="a", start_run_id="run_z"))
    m.apply(CreateTask(now=START - HOUR, task_id="tsk_b", title="b", start_run_id="run_a"))
    m.apply(CreateTask(now=START - HOUR, task_id="tsk_c", title="c", start_run_id="run_b"))
    m.apply(OpenSession(now=START - HOUR, session_id="ses_1", agent="w"))
    assert [m.runs[r].queue_seq for r in ("run_z", "run_a", "run_b")] == [1, 2, 3]
    order = []
    for n in range(3):
        outcome = m.apply(claim_cmd(START - HOUR + n, "ses_1", n))
        run_id = outcome.reply.run.id
        order.append(run_id)
        m.apply(CompleteRun(now=START - HOUR + n, session_id="ses_1", run_id=run_id))
    assert order == ["run_z", "run_a", "run_b"]
    m.check_invariants()


def test_high_water_is_the_newest_applied_time_and_survives_snapshot_and_replay() -> None:
    commands: list[AnyCommand] = [
        CreateTask(now=START, task_id="tsk_a", title="a", start_run_id="run_a"),
        CreateTask(now=START - HOUR, task_id="tsk_b", title="b", start_run_id="run_b"),
        OpenSession(now=START - 2 * HOUR, session_id="ses_1", agent="w"),
    ]
    m = Machine()
    for command in commands:
        m.apply(command)
    assert m.high_water == START
    # A refused command changes nothing, so it does not move the mark either.
    with pytest.raises(RunleaseError, match="already exists"):
        m.apply(CreateTask(now=START + HOUR, task_id="tsk_a", title="again"))
    assert m.high_water == START

    restored = decode_snapshot(encode_snapshot(m))
    assert (restored.high_water, restored.queue_seq) == (START, 2)
    replayed = Machine()
    for command in commands:
        replayed.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(command), type=AnyCommand))
    assert (replayed.high_water, replayed.queue_seq) == (START, 2)
    # The next enqueue continues the counter in every copy.
    for machine in (m, restored, replayed):
        machine.apply(CreateTask(now=START, task_id="tsk_c", title="c", start_run_id="run_c"))
        assert machine.runs["run_c"].queue_seq == 3


def test_an_image_from_before_queue_places_numbers_open_runs_in_old_claim_order() -> None:
    # Written by an older runlease: no queue_seq on runs, no high_water, no counter.
    tasks = [
        Task(
            id=f"tsk_{n}",
            title=n,
            status="ready",
            current_run_id=f"run_{n}",
            created_at=at,
            updated_at=at,
        )
        for n, at in (
            ("late", START + 5),
            ("early", START + 1),
            ("tie_b", START + 3),
            ("tie_a", START + 3),
        )
    ]
    runs = [Run(id=f"run_{t.id[4:]}", task_id=t.id, queued_at=t.created_at) for t in tasks]
    sessions = [Session(id="ses_1", agent="w", opened_at=START + 9)]
    image = msgspec.msgpack.encode(
        {
            "format": 1,
            "last_seq": 4,
            "tasks": tasks,
            "runs": runs,
            "sessions": sessions,
            "tokens": {},
        }
    )
    m = decode_snapshot(image)
    places = {run_id: run.queue_seq for run_id, run in m.runs.items()}
    assert places == {"run_early": 1, "run_tie_a": 2, "run_tie_b": 3, "run_late": 4}
    assert m.queue_seq == 4
    assert m.high_water == START + 9  # the newest time any record holds
    order = []
    for n in range(4):
        run_id = m.apply(claim_cmd(START + 10, "ses_1", n)).reply.run.id
        order.append(run_id)
        m.apply(CompleteRun(now=START + 10, session_id="ses_1", run_id=run_id))
    assert order == ["run_early", "run_tie_a", "run_tie_b", "run_late"]
    m.check_invariants()
