"""The lease clock with many leases: expiries that fall due together are applied together,
exactly at their deadline, in one group commit, and waiting claimers are woken once."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

import runlease
from runlease.actors.lease_clock import LeaseClock
from runlease.actors.scheduler import Scheduler
from runlease.core.commands import ExpireLease, ExpireSession

LEASES = 40


async def _claims(rt: runlease.Runtime, count: int, lease_seconds: float) -> list[runlease.Claim]:
    handles = [await rt.open_session(agent=f"a{i}") for i in range(count)]
    for i in range(count):
        await rt.create_task(f"t{i}", start=True)
    return [await h.claim_next(lease_seconds=lease_seconds) for h in handles]


async def test_leases_due_together_expire_at_their_deadline_in_one_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        claims = await _claims(rt, LEASES, 30)
        deadline = claims[0].lease.lease_until
        assert {c.lease.lease_until for c in claims} == {deadline}
        batches: list[int] = []
        system = rt._system
        deliver = system.send_batch

        async def counting(requests: list[object]) -> None:
            batches.append(len(requests))
            await deliver(requests)  # type: ignore[arg-type]

        system.lease_clock._deliver = counting  # type: ignore[assignment]
        seq = rt.status().last_event_seq
        await trio.sleep(31)
        expired = [e for e in rt.events(after_seq=seq) if e.kind == "lease_expired"]
        assert len(expired) == LEASES
        assert {e.at for e in expired} == {deadline}
        assert batches == [LEASES]
        assert rt.status().queued_runs == LEASES


async def test_one_batch_is_one_group_commit(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with runlease.open_runtime(data_dir=tmp_path, durability="relaxed") as rt:
        claims = await _claims(rt, LEASES, 30)
        committer = rt._committer
        store = committer._store  # type: ignore[attr-defined]
        commits: list[int] = []
        append = store.append

        def counting_append(records: list[bytes], *args: object, **kwargs: object) -> object:
            commits.append(len(records))
            return append(records, *args, **kwargs)

        store.append = counting_append
        await trio.sleep(31)
        assert all(rt.get_run(c.run.id).status == "queued" for c in claims)
        assert commits == [LEASES]


async def test_a_batch_of_requeues_wakes_the_scheduler_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        await _claims(rt, LEASES, 30)
        scheduler: Scheduler = rt._system.scheduler
        wakes: list[None] = []
        wake_nowait = scheduler.wake_nowait

        def counting_wake() -> None:
            wakes.append(None)
            wake_nowait()

        scheduler.wake_nowait = counting_wake  # type: ignore[method-assign]
        await trio.sleep(31)
        assert len(wakes) == 1
        assert rt.status().queued_runs == LEASES


async def test_only_current_deadlines_become_expiries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        renewed, finished, kept = await _claims(rt, 3, 30)
        first = kept.lease.lease_until
        clock: LeaseClock = rt._system.lease_clock
        await rt.session(renewed.lease.session_id).heartbeat(renewed.run.id, lease_seconds=60)
        await rt.session(finished.lease.session_id).complete(finished.run.id)
        stopped = await rt.open_session(agent="stopped", ttl=100)
        await stopped.stop()
        live = await rt.open_session(agent="live", ttl=100)

        assert clock.expiries_due(first - 1) == []
        # At the first deadline only the untouched lease is due: the renewed lease's and
        # the finished run's old deadlines are dropped without a command.
        due = [request.command for request in clock.expiries_due(first + 15)]
        assert len(due) == 1
        assert isinstance(due[0], ExpireLease)
        assert due[0].run_id == kept.run.id
        later = [request.command for request in clock.expiries_due(first + 200)]
        assert len(later) == 2
        assert isinstance(later[0], ExpireLease)
        assert later[0].run_id == renewed.run.id
        assert isinstance(later[1], ExpireSession)
        assert later[1].session_id == live.id
        assert clock.expiries_due(first + 200) == []
