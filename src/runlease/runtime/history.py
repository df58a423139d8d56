"""The event history: every acknowledged event, read by sequence, filtered, or followed live.

Events reach the history only once they are durable (``publish`` is called from the
runtime's acknowledgement), so nothing read here can be taken back by a crash, and
``last_seq`` is the newest event a reader may see.

Where events are kept:

- With a store (a data directory), the store holds the whole retained history and the
  history reads through it (:class:`EventStore`). A ring of the newest events stays in
  memory as well, so live followers and recent reads never touch the store.
- Without one (an in-memory runtime), the ring is all there is: the newest ``capacity``
  events since the process started.

Either way the ring holds every published event after ``ring_floor``: reads that start at
or after it are answered from memory, older ones from the store.

Compaction of the store is the store's (it runs with the checkpoint); the history only
says how far back it must keep events for its holders (:meth:`EventHistory.hold`,
:attr:`EventHistory.keep_after`). Observers (:meth:`EventHistory.add_observer`) are called
with each event as it is published, in sequence order.
"""

from __future__ import annotations

import logging
import sys
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from itertools import count
from typing import Protocol

import trio

from runlease.core.model import Event
from runlease.errors import EVENT_NOT_FOUND, InvalidInput, NotFound

log = logging.getLogger("runlease.history")

# Events kept in memory without a store when the retention sets no count limit.
DEFAULT_MEMORY_EVENTS = 100_000
# Events a follower reads per step while catching up, so one slow follower far behind
# never holds a long read.
FOLLOW_CHUNK = 512
# No limit, for the embedded reads that want everything retained.
EVERYTHING = sys.maxsize

Observer = Callable[[Event], None]


class EventStore(Protocol):
    """What the history reads from a durable store (see persistence/store.py)."""

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
    ) -> list[Event]: ...

    def get_event(self, seq: int) -> Event | None: ...

    def event_bounds(self) -> tuple[int, int]: ...


class EventHistory:
    """Published events by sequence: reads, ``follow``, holds and observers.

    ``last_seq`` starts at ``start_seq``, the newest event already durable when the
    history is created (the recovered state's), so a reader at boot sees exactly what
    the store holds.
    """

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_MEMORY_EVENTS,
        store: EventStore | None = None,
        start_seq: int = 0,
        observers: Iterable[Observer] = (),
    ) -> None:
        if capacity < 1:
            raise InvalidInput(f"the event history must keep at least one event, not {capacity}")
        self._store = store
        self._ring: deque[Event] = deque()
        self._capacity = capacity
        # Per task, its events in the ring (oldest first): a task's reads skip the others.
        self._by_task: dict[str, _TaskLine] = {}
        self._last_seq = start_seq
        self._floor = start_seq
        self._observers: list[Observer] = list(observers)
        # Observers of some kinds only: one dict lookup per event, no call for the others.
        self._observers_by_kind: dict[str, list[Observer]] = {}
        self._holds: dict[str, int] = {}
        self._followers = count(1)
        self._changed = trio.Event()
        # Whether anyone took ``_changed`` to wait on it since it was last set: a publish
        # with no one watching leaves the event alone instead of replacing it.
        self._watched = False
        self._closed = False

    # ---------------------------------------------------------------- writing side
    @property
    def last_seq(self) -> int:
        """The newest published (acknowledged, durable) event's sequence."""
        return self._last_seq

    @property
    def ring_floor(self) -> int:
        """Every published event after this sequence is in memory."""
        return self._floor

    def publish(self, events: Iterable[Event]) -> None:
        """Add acknowledged events, in sequence order; tell observers and followers."""
        ring = self._ring
        by_task = self._by_task
        observers = self._observers
        by_kind = self._observers_by_kind
        for event in events:
            if len(ring) >= self._capacity:
                self._evict()
            ring.append(event)
            task_id = event.task_id
            if task_id is not None:
                line = by_task.get(task_id)
                if line is None:
                    by_task[task_id] = _TaskLine((event,))
                else:
                    line.append(event)
            self._last_seq = event.seq
            if observers:
                self._notify(observers, event)
            if by_kind:
                chosen = by_kind.get(event.kind)
                if chosen is not None:
                    self._notify(chosen, event)
        if self._watched:
            self._watched = False
            self._changed.set()
            self._changed = trio.Event()

    def _evict(self) -> None:
        oldest = self._ring.popleft()
        self._floor = oldest.seq
        if oldest.task_id is not None:
            line = self._by_task[oldest.task_id]
            line.start += 1
            if line.start == len(line):
                del self._by_task[oldest.task_id]
            elif line.start >= _TRIM_AT and 2 * line.start >= len(line):
                del line[: line.start]
                line.start = 0

    @staticmethod
    def _notify(observers: Sequence[Observer], event: Event) -> None:
        for observer in observers:
            try:
                observer(event)
            except Exception:
                # An observer's bug must not undo or delay an acknowledged change.
                log.exception(
                    "observer_failed",
                    extra={"fields": {"seq": event.seq, "observer": repr(observer)}},
                )

    def add_observer(self, observer: Observer, *, kinds: Iterable[str] | None = None) -> None:
        """Call ``observer(event)`` with each event published from now on, in sequence
        order, once it is durable. It runs inside the acknowledgement: keep it quick (hand
        the event to a channel with ``send_nowait``); an exception it raises is logged and
        otherwise ignored. With ``kinds``, only events of those kinds reach it, and the
        others cost it nothing (observers of all kinds are called first). An observer added
        twice is still called once per event."""
        if kinds is None:
            if observer not in self._observers:
                self._observers.append(observer)
            return
        for kind in kinds:
            by_kind = self._observers_by_kind.setdefault(kind, [])
            if observer not in by_kind:
                by_kind.append(observer)

    def close(self) -> None:
        """End every follower and waiter (the runtime is closing)."""
        self._closed = True
        self._changed.set()

    # ---------------------------------------------------------------------- holds
    def hold(self, holder: str, seq: int | None) -> None:
        """Keep events after ``seq`` from compaction while ``holder`` holds; None lets go."""
        if seq is None:
            self._holds.pop(holder, None)
        else:
            self._holds[holder] = seq

    @property
    def keep_after(self) -> int | None:
        """The lowest hold: compaction keeps every event after it (None: no hold)."""
        return min(self._holds.values()) if self._holds else None

    # ---------------------------------------------------------------------- reads
    def read(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: frozenset[str] | None = None,
    ) -> list[Event]:
        """The first ``limit`` events after ``after_seq`` that match every filter given,
        oldest first; never beyond ``last_seq``."""
        _check_read(after_seq, limit)
        if after_seq >= self._floor or self._store is None:
            source: Iterable[Event] = self._ring_after(after_seq, task_id)
            out: list[Event] = []
            for event in source:
                if _matches(event, task_id, run_id, session_id, kinds):
                    out.append(event)
                    if len(out) >= limit:
                        break
            return out
        return self._store.read_events(
            after_seq=after_seq,
            before_seq=self._last_seq + 1,
            limit=limit,
            task_id=task_id,
            run_id=run_id,
            session_id=session_id,
            kinds=kinds,
        )

    def recent(
        self, limit: int, *, task_id: str | None = None, run_id: str | None = None
    ) -> list[Event]:
        """The newest ``limit`` events (of a task, of a run), oldest first."""
        _check_read(0, limit)
        line: Sequence[Event] = self._ring if task_id is None else self._task_line(task_id)
        out: list[Event] = []
        for event in reversed(line):
            if run_id is None or event.run_id == run_id:
                out.append(event)
                if len(out) >= limit:
                    break
        if len(out) < limit and self._store is not None and self._floor > 0:
            # The ring ran out before ``limit``: older ones may be in the store.
            return self._store.read_events(
                before_seq=self._last_seq + 1,
                limit=limit,
                newest=True,
                task_id=task_id,
                run_id=run_id,
            )
        out.reverse()
        return out

    def get(self, seq: int) -> Event:
        """The event numbered ``seq``; EVENT_NOT_FOUND says whether it is gone or not yet."""
        if seq < 1:
            raise InvalidInput(f"an event sequence is at least 1, got {seq}")
        if seq > self._last_seq:
            raise NotFound(
                f"event {seq} has not been written yet (the newest is {self._last_seq})",
                code=EVENT_NOT_FOUND,
            )
        if seq > self._floor:
            index = self._index_after(seq - 1)
            if index < len(self._ring) and self._ring[index].seq == seq:
                return self._ring[index]
            raise NotFound(f"there is no event {seq}", code=EVENT_NOT_FOUND)
        if self._store is None:
            raise NotFound(
                f"event {seq} is no longer kept: only the newest {self._capacity} events "
                f"are kept in memory (the oldest kept is {self._floor + 1})",
                code=EVENT_NOT_FOUND,
            )
        event = self._store.get_event(seq)
        if event is not None:
            return event
        oldest, _ = self._store.event_bounds()
        if oldest == 0 or seq < oldest:
            raise NotFound(
                f"event {seq} is older than the history's retention and was compacted "
                f"(the oldest kept is {oldest or self._last_seq + 1})",
                code=EVENT_NOT_FOUND,
            )
        raise NotFound(f"there is no event {seq}", code=EVENT_NOT_FOUND)

    def _index_after(self, seq: int) -> int:
        """The ring position of the first event after ``seq`` (``seq >= ring_floor``)."""
        ring = self._ring
        if not ring:
            return 0
        # Published sequences are normally consecutive: try the direct position first.
        guess = seq - ring[0].seq + 1
        if 0 <= guess < len(ring) and ring[guess].seq == seq + 1:
            return guess
        if guess >= len(ring) and ring[-1].seq <= seq:
            return len(ring)
        return bisect_right(ring, seq, key=_seq)

    def _task_line(self, task_id: str) -> list[Event]:
        """The task's events still in the ring, oldest first."""
        line = self._by_task.get(task_id)
        if line is None:
            return []
        return line[line.start :] if line.start else line

    def _ring_after(self, after_seq: int, task_id: str | None) -> Iterable[Event]:
        if task_id is not None:
            line = self._task_line(task_id)
            # A task's events are few next to the ring's: walk back from the newest.
            start = len(line)
            while start and line[start - 1].seq > after_seq:
                start -= 1
            return line[start:]
        start = self._index_after(max(after_seq, self._floor))
        ring = self._ring
        return (ring[i] for i in range(start, len(ring)))

    # ---------------------------------------------------------------- live reads
    def _watch(self) -> trio.Event:
        """The event the next publish (or close) sets."""
        self._watched = True
        return self._changed

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event after ``seq`` is published, or the history closed."""
        while self._last_seq <= seq and not self._closed:
            await self._watch().wait()

    async def follow(
        self,
        *,
        after_seq: int = 0,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: frozenset[str] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Every matching event after ``after_seq``: the stored ones, then each new one as
        it is published, until the history closes. Nothing is skipped or repeated: each
        step reads from where the last one ended, and the wake-up is armed before the
        read, so an event published while the follower is busy is read next time.

        While it runs, the follower holds the events after its position against
        compaction, so a slow reader catching up never loses its place.
        """
        _check_read(after_seq, 1)
        holder = f"follow:{next(self._followers)}"
        cursor = after_seq
        try:
            while True:
                self.hold(holder, cursor)
                changed = self._watch()
                newest = self._last_seq
                batch = self.read(
                    after_seq=cursor,
                    limit=FOLLOW_CHUNK,
                    task_id=task_id,
                    run_id=run_id,
                    session_id=session_id,
                    kinds=kinds,
                )
                for event in batch:
                    yield event
                if len(batch) >= FOLLOW_CHUNK:
                    cursor = batch[-1].seq  # more may be waiting: read on at once
                    continue
                # Everything up to ``newest`` was read (only some of it matched).
                cursor = max(cursor, newest)
                if self._closed:
                    return
                self.hold(holder, cursor)
                await changed.wait()
        finally:
            self.hold(holder, None)


# A task's line drops its evicted head once that many events went and they are at least
# half of it: each event is copied a bounded number of times, and memory stays bounded.
_TRIM_AT = 16


class _TaskLine(list[Event]):
    """One task's events in the ring, oldest first; those before ``start`` were evicted.
    A list (not a deque) because most tasks have a handful of events and a deque's
    smallest block is far larger."""

    __slots__ = ("start",)

    def __init__(self, events: Iterable[Event]) -> None:
        super().__init__(events)
        self.start = 0


def _seq(event: Event) -> int:
    return event.seq


def _check_read(after_seq: int, limit: int) -> None:
    if after_seq < 0:
        raise InvalidInput(f"after_seq must be zero or positive, got {after_seq}")
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")


def _matches(
    event: Event,
    task_id: str | None,
    run_id: str | None,
    session_id: str | None,
    kinds: frozenset[str] | None,
) -> bool:
    return (
        (task_id is None or event.task_id == task_id)
        and (run_id is None or event.run_id == run_id)
        and (session_id is None or event.session_id == session_id)
        and (kinds is None or event.kind in kinds)
    )


__all__ = ["DEFAULT_MEMORY_EVENTS", "EventHistory", "EventStore", "Observer"]
