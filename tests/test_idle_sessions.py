"""Idle sessions: a live session with no lease and no request for the idle timeout stops.

Time moves only through trio's MockClock (the runtime's wall clock follows it), so hours
of idleness pass instantly and every deadline is exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import runlease
from runlease.core.commands import (
    ClaimNext,
    CreateTask,
    ExpireIdleSession,
    OpenSession,
    StartTask,
)
from runlease.core.machine import Machine
from runlease.core.model import Event, SessionReleased
from runlease.errors import InvalidInput
from runlease.operations import WhoAmI
from runlease.runtime.client import open_client
from runlease.runtime.server import serve_socket

TIMEOUT = 100.0
T0 = 1_000_000.0


def last_active(rt: runlease.Runtime, session_id: str) -> float | None:
    """When a live session last made a request, as ``session list --live`` shows it."""
    (session,) = [s for s in rt.list_sessions(live_only=True) if s.id == session_id]
    return session.last_active_at


def idle_stops(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "session_stopped" and e.data["reason"] == "idle"]


def test_the_state_machine_stops_only_a_live_session_without_a_lease() -> None:
    m = Machine()
    m.apply(OpenSession(now=T0, session_id="idle", agent="a"))
    m.apply(OpenSession(now=T0, session_id="child", agent="a", parent_id="idle"))
    m.apply(OpenSession(now=T0, session_id="busy", agent="b"))
    m.apply(CreateTask(now=T0, task_id="tsk_1", title="t"))
    m.apply(StartTask(now=T0, task_id="tsk_1", run_id="run_1"))
    m.apply(ClaimNext(now=T0, session_id="busy", claim_token_hash="sha256:" + "0" * 64))

    def expire(session_id: str) -> ExpireIdleSession:
        return ExpireIdleSession(
            now=T0 + 500, session_id=session_id, last_active_at=T0, idle_timeout=TIMEOUT
        )

    held = m.apply(expire("busy"))
    assert (held.reply, held.events) == (None, [])
    assert m.sessions["busy"].state == "live"

    outcome = m.apply(expire("idle"))
    assert isinstance(outcome.reply, SessionReleased)
    assert outcome.reply.stopped_session_ids == ["idle", "child"]
    assert (m.sessions["idle"].stop_reason, m.sessions["child"].stop_reason) == (
        "idle",
        "parent_stopped",
    )
    first = outcome.events[0]
    assert (first.kind, first.session_id) == ("session_stopped", "idle")
    assert first.data == {"reason": "idle", "last_active_at": T0, "idle_timeout": TIMEOUT}
    again = m.apply(expire("idle"))
    assert (again.reply, again.events) == (None, [])


async def test_a_session_that_does_nothing_is_stopped_as_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime(session_idle_timeout=TIMEOUT) as rt:
        agent = await rt.open_session(agent="a")
        opened_at = rt.get_session(agent.id).opened_at
        await trio.sleep(TIMEOUT - 1)
        assert rt.get_session(agent.id).state == "live"
        await trio.sleep(2)
        session = rt.get_session(agent.id)
        assert (session.state, session.stop_reason) == ("stopped", "idle")
        assert session.stopped_at == pytest.approx(opened_at + TIMEOUT)
        (event,) = idle_stops(rt.events())
        assert event.session_id == agent.id
        assert event.data["last_active_at"] == pytest.approx(opened_at)
        assert event.data["idle_timeout"] == TIMEOUT


async def test_every_request_postpones_it_reads_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime(session_idle_timeout=TIMEOUT) as rt:
        agent = await rt.open_session(agent="a")
        await trio.sleep(60)
        await agent.call(WhoAmI())  # a read made as the session
        await trio.sleep(60)
        assert rt.get_session(agent.id).state == "live"  # 120 s since it opened
        await rt.create_task("t", start=True)
        claim = await agent.claim_next(lease_seconds=30)
        await agent.complete(claim.run.id)
        done_at = last_active(rt, agent.id)
        assert done_at is not None
        await trio.sleep(TIMEOUT - 1)
        assert rt.get_session(agent.id).state == "live"
        await trio.sleep(2)
        session = rt.get_session(agent.id)
        assert (session.state, session.stop_reason) == ("stopped", "idle")
        (event,) = idle_stops(rt.events())
        assert event.data["last_active_at"] == pytest.approx(done_at)


async def test_a_session_holding_a_lease_is_never_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime(session_idle_timeout=TIMEOUT) as rt:
        await rt.create_task("t", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next(lease_seconds=5 * TIMEOUT)
        lease_until = claim.run.lease_until
        assert lease_until is not None
        await trio.sleep(4 * TIMEOUT)  # no request at all, but the lease is held
        assert rt.get_session(agent.id).state == "live"
        # The lease runs out (the clock requeues the run): idle from then on.
        await trio.sleep(TIMEOUT + TIMEOUT - 1)
        assert rt.get_run(claim.run.id).status == "queued"
        assert rt.get_session(agent.id).state == "live"
        await trio.sleep(2)
        session = rt.get_session(agent.id)
        assert (session.state, session.stop_reason) == ("stopped", "idle")
        assert session.stopped_at == pytest.approx(lease_until + TIMEOUT)


async def test_a_claim_waiting_for_work_is_not_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime(session_idle_timeout=TIMEOUT) as rt:
        agent = await rt.open_session(agent="a")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: agent.claim_next(wait=True, lease_seconds=10))
            await trio.sleep(3 * TIMEOUT)
            assert rt.get_session(agent.id).state == "live"
            task = await rt.create_task("t", start=True)
        (run,) = rt.runs_of(task.id)
        await agent.complete(run.id)
        assert rt.get_session(agent.id).state == "live"


async def test_with_no_timeout_sessions_stay(autojump_clock: trio.testing.MockClock) -> None:
    for off in (None, 0):
        async with runlease.open_runtime(session_idle_timeout=off) as rt:
            agent = await rt.open_session(agent="a")
            await trio.sleep(30 * 86400)
            assert rt.get_session(agent.id).state == "live"
            assert idle_stops(rt.events()) == []


async def test_the_default_is_a_day(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        agent = await rt.open_session(agent="a")
        await trio.sleep(86400 - 1)
        assert rt.get_session(agent.id).state == "live"
        await trio.sleep(2)
        assert rt.get_session(agent.id).stop_reason == "idle"


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), True, "1"])
async def test_a_bad_timeout_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInput):
        async with runlease.open_runtime(session_idle_timeout=bad):  # type: ignore[arg-type]
            pass


async def test_a_restart_counts_as_activity_and_the_stop_is_journaled(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # A durable runtime waits on threads, which moves the mock clock by itself: the wall
    # clock is set by hand, and the idle check goes by it.
    wall = [T0]
    data_dir = tmp_path / "data"
    async with runlease.open_runtime(
        lambda: wall[0], data_dir=data_dir, session_idle_timeout=TIMEOUT
    ) as rt:
        agent = await rt.open_session(agent="a")
        wall[0] += TIMEOUT - 10
    async with runlease.open_runtime(
        lambda: wall[0], data_dir=data_dir, session_idle_timeout=TIMEOUT
    ) as rt:
        booted = wall[0]
        wall[0] += TIMEOUT - 1  # long past the deadline it had before the restart
        await trio.sleep(TIMEOUT)
        assert rt.get_session(agent.id).state == "live"
        assert last_active(rt, agent.id) == booted
        wall[0] += 2
        await trio.sleep(TIMEOUT)
        session = rt.get_session(agent.id)
        assert (session.state, session.stop_reason) == ("stopped", "idle")
        assert session.stopped_at == booted + TIMEOUT + 1
    async with runlease.open_runtime(
        lambda: wall[0], data_dir=data_dir, session_idle_timeout=TIMEOUT
    ) as rt:
        session = rt.get_session(agent.id)
        assert (session.state, session.stop_reason) == ("stopped", "idle")


async def test_listings_show_age_and_last_activity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime(session_idle_timeout=TIMEOUT) as rt:
        agent = await rt.open_session(agent="a")
        gone = await rt.open_session(agent="b")
        await gone.stop()
        await trio.sleep(30)
        await agent.call(WhoAmI())
        touched = last_active(rt, agent.id)
        await trio.sleep(20)
        (live,) = rt.list_sessions(live_only=True)
        assert live.id == agent.id
        assert live.age_seconds == pytest.approx(50)
        assert live.last_active_at == pytest.approx(touched)
        assert touched == pytest.approx(live.opened_at + 30)
        for plain in (*rt.list_sessions(), rt.get_session(agent.id)):
            assert (plain.age_seconds, plain.last_active_at) == (None, None)


async def test_requests_over_the_socket_count(tmp_path: Path, nursery: trio.Nursery) -> None:
    wall = [T0]
    async with runlease.open_runtime(lambda: wall[0]) as rt:
        server = await nursery.start(serve_socket, rt, tmp_path / "s.sock")
        async with open_client(tmp_path / "s.sock") as operator:
            opened = await operator.open_session(agent="a")
        wall[0] += 50  # the wall clock moves on; the session says nothing meanwhile
        assert last_active(rt, opened.session.id) == T0
        async with open_client(tmp_path / "s.sock", session_token=opened.token) as agent:
            await agent.whoami()
        assert last_active(rt, opened.session.id) == T0 + 50
        server.shutdown()
        await server.wait_stopped()
