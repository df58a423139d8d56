"""The history's operations on the embedded runtime and over the socket: filtered
``events``, ``get_event`` with EVENT_NOT_FOUND, ``follow_events`` with filters and resuming
with ``after_seq``, whole-history timelines, observers and the retention of memory."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from runlease import open_runtime
from runlease import protocol as p
from runlease.cli.commands.server import history_retention
from runlease.core.model import Event
from runlease.errors import EVENT_NOT_FOUND, InvalidInput, NotFound, UsageError
from runlease.persistence.events import HistoryRetention
from runlease.runtime import Runtime
from runlease.runtime.client import open_client
from socket_helpers import Raw, Served


async def finished_task(rt: Runtime, title: str) -> tuple[str, str, str]:
    """A task claimed and completed by a session of its own: (task, run, session) ids."""
    task = await rt.create_task(title, workspace="ws")
    run = await rt.start_task(task.id)
    session = await rt.open_session(agent=title)
    claim = await session.claim_next(workspace="ws")
    assert claim.run.id == run.id
    await session.complete(run.id, result={"ok": True})
    return task.id, run.id, session.id


async def test_events_filter_by_task_run_session_and_type(served: Served) -> None:
    first, run, session = await finished_task(served.rt, "first")
    second, _, _ = await finished_task(served.rt, "second")
    async with open_client(served.path) as client:
        everything = await client.events()
        assert [e.seq for e in everything] == list(range(1, everything[-1].seq + 1))
        of_task = await client.events(task_id=first)
        assert of_task
        assert {e.task_id for e in of_task} == {first}
        assert [e.kind for e in of_task][:2] == ["task_created", "run_queued"]
        of_run = await client.events(run_id=run)
        assert {e.run_id for e in of_run} == {run}
        assert "run_completed" in {e.kind for e in of_run}
        of_session = await client.events(session_id=session)
        assert {e.session_id for e in of_session} == {session}
        assert "session_opened" in {e.kind for e in of_session}
        kinds = await client.events(kinds=["task_created", "run_completed"])
        assert [(e.kind, e.task_id) for e in kinds] == [
            ("task_created", first),
            ("run_completed", first),
            ("task_created", second),
            ("run_completed", second),
        ]
        assert await client.events(task_id=second, kinds=["session_opened"]) == []
        # after_seq and limit page through the same answer.
        assert (
            await client.events(after_seq=of_task[0].seq, limit=2)
            == everything[of_task[0].seq : of_task[0].seq + 2]
        )
        with pytest.raises(InvalidInput):
            await client.events(kinds="task_created")


async def test_a_page_of_events_says_where_the_next_starts(served: Served) -> None:
    for i in range(5):
        await served.rt.create_task(f"t{i}")
    raw = await Raw.open(served.path)
    await raw.send(p.ListEvents(id=2, limit=2, kinds=["task_created"], after_seq=1))
    page = await raw.reply()
    assert isinstance(page, p.EventList)
    assert [e.seq for e in page.events] == [2, 3]
    assert page.next_after_seq == 3


async def test_get_event_by_sequence_and_event_not_found(served: Served) -> None:
    task = await served.rt.create_task("one")
    async with open_client(served.path) as client:
        [created] = await client.events(task_id=task.id)
        assert await client.get_event(created.seq) == created
        newest = (await client.status()).last_event_seq
        with pytest.raises(NotFound) as later:
            await client.get_event(newest + 5)
        assert later.value.code == EVENT_NOT_FOUND
        assert "not been written yet" in later.value.message
    assert served.rt.get_event(created.seq) == created


async def test_get_event_of_an_event_memory_no_longer_keeps() -> None:
    async with open_runtime(history_retention=HistoryRetention(max_events=3)) as rt:
        for i in range(6):
            await rt.create_task(f"t{i}")
        assert [e.seq for e in rt.events()] == [4, 5, 6]
        with pytest.raises(NotFound) as gone:
            rt.get_event(1)
        assert gone.value.code == EVENT_NOT_FOUND
        assert "no longer kept" in gone.value.message


async def test_follow_with_filters_and_resume_after_a_seq(served: Served) -> None:
    rt = served.rt
    task = await rt.create_task("watched", workspace="ws")
    await rt.create_task("other", workspace="ws")
    await rt.start_task(task.id)
    async with open_client(served.path) as client:
        async with client.follow_events(task_id=task.id) as stream:
            first = await stream.__anext__()
            second = await stream.__anext__()
        assert [first.kind, second.kind] == ["task_created", "run_queued"]
        # Resume after the first: the second comes again, then live ones, nothing else.
        session = await rt.open_session(agent="a")
        async with client.follow_events(
            task_id=task.id, after_seq=first.seq, kinds=["run_queued", "run_claimed"]
        ) as stream:
            assert await stream.__anext__() == second
            await session.claim_next(workspace="ws")
            claimed = await stream.__anext__()
            assert claimed.kind == "run_claimed"
            assert claimed.session_id == session.id


async def test_timeline_reads_a_long_history(served: Served) -> None:
    rt = served.rt
    task = await rt.create_task("busy")
    for _ in range(150):
        await rt.pause_task(task.id, reason="hold on")
        await rt.resume_task(task.id)
    async with open_client(served.path) as client:
        timeline = await client.timeline(task.id)
        assert len(timeline) == 301
        assert timeline[0].kind == "task_created"
        assert await client.timeline(task.id, after_seq=timeline[-2].seq) == timeline[-1:]
        shown = await client.show_task(task.id)
        assert shown.events == timeline[-len(shown.events) :]
    inspected = rt.inspect_task(task.id)
    assert [e.seq for e in inspected.recent_events] == [e.seq for e in timeline[-20:]]


async def test_observers_receive_each_acknowledged_event_in_order(tmp_path: Path) -> None:
    seen: list[Event] = []
    published: list[int] = []

    def broken(event: Event) -> None:
        raise RuntimeError("an observer's bug")

    def watch(event: Event) -> None:
        seen.append(event)

    async with open_runtime(data_dir=tmp_path / "data", observers=[broken, watch]) as rt:
        rt.history.add_observer(lambda event: published.append(rt.history.last_seq))
        task = await rt.create_task("observed")
        await rt.start_task(task.id)
        # Each was durable and published before the observer saw it.
        assert [e.seq for e in seen[-2:]] == published
        assert [e.kind for e in seen[-2:]] == ["task_created", "run_queued"]
        assert rt.status().last_event_seq == seen[-1].seq
    assert [e.seq for e in seen] == sorted({e.seq for e in seen})


async def test_a_follower_of_the_embedded_runtime_ends_when_it_closes() -> None:
    got: list[str] = []
    async with open_runtime() as rt:
        await rt.create_task("before")

        async def follow() -> None:
            async with aclosing(rt.follow_events(kinds=["task_created"])) as events:
                async for event in events:
                    got.append(event.kind)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await rt.create_task("after")
            rt._close()  # what leaving the block does: followers end after what they had
    assert got == ["task_created", "task_created"]


def test_serve_reads_history_limits() -> None:
    assert history_retention(None, None) == HistoryRetention()
    assert history_retention("3600", "1000") == HistoryRetention(max_age=3600.0, max_events=1000)
    assert history_retention("0", "none") == HistoryRetention(max_age=None, max_events=None)
    assert history_retention("None", "0") == HistoryRetention(max_age=None, max_events=None)
    for age, count in (("-1", None), ("soon", None), ("inf", None), (None, "1.5"), (None, "-3")):
        with pytest.raises(UsageError):
            history_retention(age, count)
