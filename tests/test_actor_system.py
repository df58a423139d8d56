"""The actors wired together, driven directly with requests and an in-memory committer."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from runlease.actors.clock import RuntimeClock
from runlease.actors.commit import MemoryCommitter
from runlease.actors.requests import Request
from runlease.actors.system import ActorSystem
from runlease.core.commands import ClaimNext, Command, CreateTask, OpenSession
from runlease.core.ids import hash_token
from runlease.core.machine import Machine, Outcome
from runlease.errors import INTERNAL

START = 1_700_000_000.0
R = TypeVar("R")


class MachineWithBrokenClaims(Machine):
    """A machine whose claim handler has a bug (raises a plain exception) while ``broken``."""

    broken = False

    def apply(self, command: Command[R]) -> Outcome[R]:
        if self.broken and isinstance(command, ClaimNext):
            raise ValueError("a bug in the claim handler")
        return super().apply(command)


def _acknowledge(request: Request | None, outcome: Outcome[Any]) -> None:
    if request is not None:
        request.resolve(outcome.reply, outcome.error)


def _claim(n: int, *, wait: bool = False) -> Request:
    command = ClaimNext(now=0.0, session_id="ses_a", claim_token_hash=hash_token(f"tok_{n}"))
    return Request(command, wait=wait)


async def _call(system: ActorSystem, request: Request) -> Any:
    await system.send(request)
    with trio.fail_after(5):
        await request.done.wait()
    return request.result()


async def test_a_bug_in_a_parked_claim_fails_that_claimer_and_the_scheduler_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    machine = MachineWithBrokenClaims()
    system = ActorSystem(machine, RuntimeClock(lambda: START), MemoryCommitter(_acknowledge))
    async with trio.open_nursery() as nursery:
        await nursery.start(system.run)
        await _call(system, Request(OpenSession(now=0.0, session_id="ses_a", agent="a")))

        parked = _claim(1, wait=True)
        await system.send(parked)
        await trio.testing.wait_all_tasks_blocked()
        assert len(system.waiters) == 1
        assert not parked.done.is_set()

        # New work wakes the waiter, whose claim now hits the bug.
        machine.broken = True
        with caplog.at_level(logging.ERROR, logger="runlease"):
            create = CreateTask(now=0.0, task_id="tsk_a", title="a", start_run_id="run_a")
            await _call(system, Request(create))
            with trio.fail_after(5):
                await parked.done.wait()
        assert parked.error is not None
        assert parked.error.code == INTERNAL
        assert "ClaimNext" in str(parked.error)
        assert len(system.waiters) == 0
        assert any("internal error applying ClaimNext" in r.getMessage() for r in caplog.records)

        # The scheduler is still serving: the run it could not hand out is still there.
        machine.broken = False
        claim = await _call(system, _claim(2))
        assert claim.run.id == "run_a"
        nursery.cancel_scope.cancel()


async def test_a_bug_in_a_direct_command_fails_only_its_caller() -> None:
    machine = MachineWithBrokenClaims()
    system = ActorSystem(machine, RuntimeClock(lambda: START), MemoryCommitter(_acknowledge))
    async with trio.open_nursery() as nursery:
        await nursery.start(system.run)
        await _call(system, Request(OpenSession(now=0.0, session_id="ses_a", agent="a")))
        machine.broken = True
        broken = _claim(1)
        await system.send(broken)
        with trio.fail_after(5):
            await broken.done.wait()
        assert broken.error is not None
        assert broken.error.code == INTERNAL
        machine.broken = False
        create = CreateTask(now=0.0, task_id="tsk_a", title="a", start_run_id="run_a")
        await _call(system, Request(create))
        assert (await _call(system, _claim(2))).run.id == "run_a"
        nursery.cancel_scope.cancel()


async def test_a_claim_that_finds_the_scheduler_idle_is_answered_during_its_delivery() -> None:
    machine = Machine()
    system = ActorSystem(machine, RuntimeClock(lambda: START), MemoryCommitter(_acknowledge))
    async with trio.open_nursery() as nursery:
        await nursery.start(system.run)
        await trio.testing.wait_all_tasks_blocked()
        await _call(system, Request(OpenSession(now=0.0, session_id="ses_a", agent="a")))
        create = CreateTask(now=0.0, task_id="tsk_a", title="a", start_run_id="run_a")
        await _call(system, Request(create))
        await trio.testing.wait_all_tasks_blocked()

        claim = _claim(1)
        await system.send(claim)
        # No other task ran in between: the claim was one scheduler turn on this task.
        assert claim.resolved
        assert claim.result().run.id == "run_a"
        nursery.cancel_scope.cancel()


async def test_a_cancelled_sender_delivers_nothing() -> None:
    machine = Machine()
    system = ActorSystem(machine, RuntimeClock(lambda: START), MemoryCommitter(_acknowledge))
    async with trio.open_nursery() as nursery:
        await nursery.start(system.run)
        await _call(system, Request(OpenSession(now=0.0, session_id="ses_a", agent="a")))
        create = CreateTask(now=0.0, task_id="tsk_a", title="a", start_run_id="run_a")
        await _call(system, Request(create))
        await trio.testing.wait_all_tasks_blocked()

        claim = _claim(1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await system.send(claim)
        assert scope.cancelled_caught
        assert not claim.resolved
        assert machine.runs["run_a"].status == "queued"
        nursery.cancel_scope.cancel()


async def test_messages_for_a_busy_scheduler_wait_in_order_for_its_next_batch() -> None:
    machine = Machine()
    system = ActorSystem(machine, RuntimeClock(lambda: START), MemoryCommitter(_acknowledge))
    async with trio.open_nursery() as nursery:
        await nursery.start(system.run)
        for name in ("a", "b"):
            await _call(system, Request(OpenSession(now=0.0, session_id=f"ses_{name}", agent=name)))
        for n in (1, 2):
            create = CreateTask(now=0.0, task_id=f"tsk_{n}", title="t", start_run_id=f"run_{n}")
            await _call(system, Request(create))
        await trio.testing.wait_all_tasks_blocked()

        # Woken but not yet run: the scheduler is busy, so claims queue behind the wake-up.
        system.scheduler.wake_nowait()
        first = Request(
            ClaimNext(now=0.0, session_id="ses_a", claim_token_hash=hash_token("tok_a"))
        )
        second = Request(
            ClaimNext(now=0.0, session_id="ses_b", claim_token_hash=hash_token("tok_b"))
        )
        await system.send(first)
        await system.send(second)
        assert not first.resolved
        assert not second.resolved
        with trio.fail_after(5):
            await second.done.wait()
        # Applied in the order they were sent: the first claimer got the older run.
        assert first.result().run.id == "run_1"
        assert second.result().run.id == "run_2"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("wait", [True, False])
async def test_a_claim_given_up_while_queued_for_a_busy_scheduler_is_never_made(
    wait: bool,
) -> None:
    machine = Machine()
    system = ActorSystem(machine, RuntimeClock(lambda: START), MemoryCommitter(_acknowledge))
    async with trio.open_nursery() as nursery:
        await nursery.start(system.run)
        await _call(system, Request(OpenSession(now=0.0, session_id="ses_a", agent="a")))
        create = CreateTask(now=0.0, task_id="tsk_a", title="a", start_run_id="run_a")
        await _call(system, Request(create))
        await trio.testing.wait_all_tasks_blocked()

        # The scheduler is woken but has not run: the claim waits in its mailbox, and its
        # caller gives up there (a wait that ran out, a cancelled request).
        system.scheduler.wake_nowait()
        claim = _claim(1, wait=wait)
        await system.send(claim)
        assert not claim.resolved
        claim.abandoned = True
        await trio.testing.wait_all_tasks_blocked()

        # Nobody is told of a claim made now, so none is made: the run stays queued and
        # the session free to claim it with its next request.
        assert not claim.resolved
        assert machine.runs["run_a"].status == "queued"
        assert machine.sessions["ses_a"].lease_run_id is None
        assert (await _call(system, _claim(2))).run.id == "run_a"
        nursery.cancel_scope.cancel()
