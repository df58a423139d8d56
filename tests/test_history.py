"""The event history on its own: the memory ring, filters, reads by sequence, holds,
observers, waiting, and following (catch-up from the store, then live) without gaps or
repeats. Time is trio's MockClock; nothing sleeps."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from runlease.core.model import Event
from runlease.errors import EVENT_NOT_FOUND, InvalidInput, NotFound
from runlease.runtime import history as history_module
from runlease.runtime.history import EventHistory

STEP = 30  # seconds of mock time: an upper bound, never waited for on a real clock


def event(
    seq: int,
    kind: str = "task_created",
    *,
    task: str | None = None,
    run: str | None = None,
    session: str | None = None,
) -> Event:
    return Event(seq=seq, kind=kind, at=float(seq), task_id=task, run_id=run, session_id=session)


def seqs(events: Iterable[Event]) -> list[int]:
    return [e.seq for e in events]


class ListStore:
    """A store that keeps every event it is given, with the read rules of the contract."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.oldest = 0  # events below this were compacted
        self.reads = 0

    def append(self, events: Iterable[Event]) -> None:
        self.events.extend(events)

    def compact_below(self, seq: int) -> None:
        self.events = [e for e in self.events if e.seq >= seq]
        self.oldest = seq

    def read_events(
        self,
        *,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int,
        newest: bool = False,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: frozenset[str] | None = None,
    ) -> list[Event]:
        self.reads += 1
        found = [
            e
            for e in self.events
            if after_seq < e.seq
            and (before_seq is None or e.seq < before_seq)
            and (task_id is None or e.task_id == task_id)
            and (run_id is None or e.run_id == run_id)
            and (session_id is None or e.session_id == session_id)
            and (kinds is None or e.kind in kinds)
        ]
        return found[-limit:] if newest else found[:limit]

    def get_event(self, seq: int) -> Event | None:
        return next((e for e in self.events if e.seq == seq), None)

    def event_bounds(self) -> tuple[int, int]:
        if not self.events:
            return (0, 0)
        return (self.events[0].seq, self.events[-1].seq)


def stored_history(store: ListStore, capacity: int) -> EventHistory:
    return EventHistory(capacity=capacity, store=store)


def publish(history: EventHistory, store: ListStore | None, events: list[Event]) -> None:
    """What a commit does: the store gets the events first, then the history publishes."""
    if store is not None:
        store.append(events)
    history.publish(events)


# ----------------------------------------------------------------------- memory ring
def test_the_memory_ring_keeps_only_the_newest_events() -> None:
    history = EventHistory(capacity=5)
    history.publish(event(n, task=f"t{n % 3}") for n in range(1, 13))
    assert history.last_seq == 12
    assert history.ring_floor == 7
    assert seqs(history.read(limit=100)) == [8, 9, 10, 11, 12]
    # A task's own reads see only what the ring still holds of it.
    assert seqs(history.read(limit=100, task_id="t0")) == [9, 12]
    assert seqs(history.recent(10, task_id="t1")) == [10]
    assert history.get(8).seq == 8
    with pytest.raises(NotFound) as gone:
        history.get(3)
    assert gone.value.code == EVENT_NOT_FOUND
    assert "no longer kept" in gone.value.message


def test_a_task_whose_events_all_left_the_ring_has_no_index_left() -> None:
    history = EventHistory(capacity=2)
    history.publish([event(1, task="old"), event(2, task="new"), event(3, task="new")])
    assert history.read(limit=10, task_id="old") == []
    assert "old" not in history._by_task
    assert seqs(history.read(limit=10, task_id="new")) == [2, 3]


def test_a_long_lived_task_keeps_exactly_its_events_in_the_ring() -> None:
    history = EventHistory(capacity=20)
    for n in range(1, 201):
        history.publish([event(n, task="busy" if n % 4 else "quiet")])
        kept = range(max(1, n - 19), n + 1)
        assert seqs(history.read(limit=100, task_id="busy")) == [s for s in kept if s % 4]
    assert seqs(history.recent(3, task_id="quiet")) == [192, 196, 200]
    assert seqs(history.read(after_seq=190, task_id="busy")) == [191, 193, 194, 195, 197, 198, 199]


def test_filters_combine_and_after_seq_and_limit_page() -> None:
    history = EventHistory()
    history.publish(
        [
            event(1, "task_created", task="a"),
            event(2, "run_queued", task="a", run="r1"),
            event(3, "session_opened", session="s"),
            event(4, "run_claimed", task="a", run="r1", session="s"),
            event(5, "task_created", task="b"),
            event(6, "run_completed", task="a", run="r1", session="s"),
        ]
    )
    assert seqs(history.read(task_id="a")) == [1, 2, 4, 6]
    assert seqs(history.read(run_id="r1")) == [2, 4, 6]
    assert seqs(history.read(session_id="s")) == [3, 4, 6]
    assert seqs(history.read(kinds=frozenset({"task_created"}))) == [1, 5]
    assert seqs(history.read(task_id="a", session_id="s")) == [4, 6]
    assert seqs(history.read(after_seq=2, limit=2)) == [3, 4]
    assert seqs(history.read(after_seq=4, task_id="a")) == [6]
    assert history.read(after_seq=6) == []
    with pytest.raises(InvalidInput):
        history.read(after_seq=-1)
    with pytest.raises(InvalidInput):
        history.read(limit=0)


def test_recent_is_the_newest_events_oldest_first() -> None:
    history = EventHistory()
    history.publish(event(n, task="a" if n % 2 else "b", run=f"r{n % 4}") for n in range(1, 11))
    assert seqs(history.recent(3)) == [8, 9, 10]
    assert seqs(history.recent(2, task_id="a")) == [7, 9]
    assert seqs(history.recent(5, task_id="a", run_id="r1")) == [1, 5, 9]
    assert history.recent(5, task_id="nobody") == []


def test_get_says_whether_an_event_is_not_written_yet() -> None:
    history = EventHistory(start_seq=4)
    history.publish([event(5), event(6)])
    assert history.get(6).seq == 6
    with pytest.raises(NotFound) as later:
        history.get(7)
    assert later.value.code == EVENT_NOT_FOUND
    assert "not been written yet" in later.value.message
    with pytest.raises(InvalidInput):
        history.get(0)


# ---------------------------------------------------------------- through a store
def test_reads_older_than_the_ring_go_to_the_store() -> None:
    store = ListStore()
    history = stored_history(store, capacity=3)
    publish(history, store, [event(n, task="a" if n < 5 else "b") for n in range(1, 11)])
    reads = store.reads
    # Inside the ring: answered from memory.
    assert seqs(history.read(after_seq=8)) == [9, 10]
    assert seqs(history.recent(2)) == [9, 10]
    assert store.reads == reads
    # Before it: from the store, the whole retained history.
    assert seqs(history.read(limit=4)) == [1, 2, 3, 4]
    assert seqs(history.read(task_id="a")) == [1, 2, 3, 4]
    assert seqs(history.recent(2, task_id="a")) == [3, 4]
    assert history.get(2).seq == 2


def test_the_store_never_shows_an_event_before_it_is_published() -> None:
    store = ListStore()
    history = stored_history(store, capacity=2)
    publish(history, store, [event(n) for n in range(1, 6)])
    store.append([event(6), event(7)])  # written, not acknowledged yet
    assert seqs(history.read()) == [1, 2, 3, 4, 5]
    with pytest.raises(NotFound, match="not been written yet"):
        history.get(6)


def test_get_says_an_event_was_compacted() -> None:
    store = ListStore()
    history = stored_history(store, capacity=2)
    publish(history, store, [event(n) for n in range(1, 9)])
    store.compact_below(4)
    with pytest.raises(NotFound) as gone:
        history.get(2)
    assert gone.value.code == EVENT_NOT_FOUND
    assert "compacted" in gone.value.message
    assert history.get(5).seq == 5


def test_a_history_started_after_boot_reads_the_past_from_the_store() -> None:
    store = ListStore()
    store.append([event(n, task="a") for n in range(1, 6)])
    history = EventHistory(capacity=10, store=store, start_seq=5)
    assert history.last_seq == 5
    assert seqs(history.read(task_id="a")) == [1, 2, 3, 4, 5]
    publish(history, store, [event(6, task="a")])
    assert seqs(history.recent(3, task_id="a")) == [4, 5, 6]


# ------------------------------------------------------------------ holds, observers
def test_holds_keep_the_lowest_position_until_released() -> None:
    history = EventHistory()
    assert history.keep_after is None
    history.hold("hooks", 40)
    history.hold("export", 12)
    assert history.keep_after == 12
    history.hold("export", 50)
    assert history.keep_after == 40
    history.hold("hooks", None)
    history.hold("export", None)
    history.hold("never-held", None)
    assert history.keep_after is None


def test_observers_see_each_event_in_order_and_one_that_raises_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def broken(e: Event) -> None:
        if e.seq == 2:
            raise RuntimeError("observer bug")

    history = EventHistory(observers=[broken])
    history.add_observer(lambda e: seen.append(e.seq))
    with caplog.at_level(logging.ERROR, logger="runlease.history"):
        history.publish([event(1), event(2), event(3)])
        history.publish([event(4)])
    assert seen == [1, 2, 3, 4]
    assert history.last_seq == 4
    [record] = [r for r in caplog.records if r.getMessage() == "observer_failed"]
    fields = record.__dict__["fields"]
    assert fields["seq"] == 2
    assert "broken" in fields["observer"]
    assert record.exc_info is not None


def test_an_observer_reads_the_history_up_to_its_own_event() -> None:
    seen: list[tuple[int, int]] = []
    history = EventHistory()
    history.add_observer(lambda e: seen.append((e.seq, history.last_seq)))
    history.publish([event(1), event(2)])
    assert seen == [(1, 1), (2, 2)]


# ----------------------------------------------------------------- waiting, following
async def test_wait_beyond_returns_once_a_later_event_is_published(
    autojump_clock: trio.testing.MockClock,
) -> None:
    history = EventHistory()
    history.publish([event(1)])
    with trio.fail_after(STEP):
        await history.wait_beyond(0)  # already there
    done = trio.Event()

    async def waiter() -> None:
        await history.wait_beyond(2)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        history.publish([event(2)])
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        history.publish([event(3)])
        with trio.fail_after(STEP):
            await done.wait()
    # A closed history releases its waiters.
    history.close()
    with trio.fail_after(STEP):
        await history.wait_beyond(100)


async def test_follow_catches_up_from_the_store_then_goes_live(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "FOLLOW_CHUNK", 3)
    store = ListStore()
    history = stored_history(store, capacity=4)
    publish(history, store, [event(n, task="a" if n % 2 else "b") for n in range(1, 21)])
    got: list[int] = []
    odd: list[int] = []
    caught_up = trio.Event()

    async def follower() -> None:
        async for e in history.follow(after_seq=2):
            got.append(e.seq)
            if e.seq == 20:
                caught_up.set()

    async def task_follower() -> None:
        async for e in history.follow(task_id="a", kinds=frozenset({"task_created"})):
            odd.append(e.seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower)
        nursery.start_soon(task_follower)
        with trio.fail_after(STEP):
            await caught_up.wait()
        # While it was catching up, the follower held its place against compaction.
        await trio.testing.wait_all_tasks_blocked()
        assert history.keep_after == 20
        for n in range(21, 31):
            publish(history, store, [event(n, task="a" if n % 2 else "b")])
            if n % 3 == 0:
                await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        history.close()
    assert got == list(range(3, 31))
    assert odd == list(range(1, 31, 2))
    assert history.keep_after is None  # the followers let go when they ended


async def test_events_published_while_a_follower_is_busy_are_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    history = EventHistory(capacity=100)
    got: list[int] = []
    all_seen = trio.Event()
    async with trio.open_nursery() as nursery:

        async def slow_follower() -> None:
            async for e in history.follow():
                got.append(e.seq)
                if e.seq == 45:
                    all_seen.set()
                # Publish more while this one is being handled: the follower must read
                # them next, not sleep through them.
                if e.seq % 5 == 0 and e.seq <= 40:
                    history.publish([event(e.seq + 1 + i) for i in range(5)])
                await trio.sleep(1)

        nursery.start_soon(slow_follower)
        history.publish([event(n) for n in range(1, 6)])
        with trio.fail_after(STEP * 10):
            await all_seen.wait()
        history.close()
    assert got == list(range(1, 46))


def test_concatenated_follows_equal_the_published_sequence() -> None:
    """Random publishes, a follower that stops at random points and resumes with
    ``after_seq`` = the last seq it saw: together they see every event once, in order."""

    @given(
        batches=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=25),
        stops=st.lists(st.integers(min_value=1, max_value=12), max_size=8),
        capacity=st.sampled_from([3, 10, 1000]),
        chunk=st.sampled_from([1, 2, 512]),
    )
    def check(batches: list[int], stops: list[int], capacity: int, chunk: int) -> None:
        history_module.FOLLOW_CHUNK = chunk
        store = ListStore()
        history = stored_history(store, capacity)
        total = sum(batches)

        async def main() -> list[int]:
            seen: list[int] = []
            pending = list(batches)

            async def producer() -> None:
                seq = 0
                for size in pending:
                    publish(history, store, [event(seq + i + 1) for i in range(size)])
                    seq += size
                    await trio.sleep(0.5)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                budget = list(stops)
                while len(seen) < total:
                    cursor = seen[-1] if seen else 0
                    take = budget.pop(0) if budget else total
                    async for e in history.follow(after_seq=cursor):
                        seen.append(e.seq)
                        take -= 1
                        if take == 0 or len(seen) == total:
                            break
            return seen

        seen = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert seen == list(range(1, total + 1))

    original = history_module.FOLLOW_CHUNK
    try:
        check()
    finally:
        history_module.FOLLOW_CHUNK = original
