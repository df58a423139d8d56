"""A bounded, in-memory feed of recent events, with live following.

Only acknowledged (durable) events are published. The feed keeps the newest ``capacity``
events; a follower that falls further behind than that misses the oldest ones.

Per-task timelines are kept beside it: the newest ``TIMELINE_PER_TASK`` events of each of
the most recently active tasks, at most ``TIMELINE_TASKS`` tasks and ``TIMELINE_EVENTS``
events in all (the least recently active task's timeline goes first), so a task's history
outlives the global ring on a busy runtime while memory stays bounded.
Retention: both live in memory and start empty at boot, so they hold
what happened since this process started. The durable history of a task is its records:
every run (with attempts, errors, reasons) and its last checkpoints survive restarts.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable

import trio

from runlease.core.model import Event

TIMELINE_PER_TASK = 256
TIMELINE_TASKS = 10_000
TIMELINE_EVENTS = 100_000


class EventFeed:
    def __init__(self, capacity: int) -> None:
        self._recent: deque[Event] = deque(maxlen=capacity)
        self._changed = trio.Event()
        # Whether anyone took ``_changed`` to wait on it since it was last set: a publish
        # with no one watching leaves the event alone instead of replacing it.
        self._watched = False
        self._closed = False
        self._timelines: OrderedDict[str, deque[Event]] = OrderedDict()
        self._timeline_events = 0

    def publish(self, events: Iterable[Event]) -> None:
        recent = self._recent
        timelines = self._timelines
        for event in events:
            recent.append(event)
            task_id = event.task_id
            if task_id is None:
                continue
            line = timelines.get(task_id)
            if line is None:
                line = timelines[task_id] = deque(maxlen=TIMELINE_PER_TASK)
            else:
                timelines.move_to_end(task_id)
            if len(line) < TIMELINE_PER_TASK:
                self._timeline_events += 1
            line.append(event)
            while len(timelines) > TIMELINE_TASKS or self._timeline_events > TIMELINE_EVENTS:
                _, dropped = timelines.popitem(last=False)
                self._timeline_events -= len(dropped)
        if self._watched:
            self._watched = False
            self._changed.set()
            self._changed = trio.Event()

    def _watch(self) -> trio.Event:
        """The event the next publish sets."""
        self._watched = True
        return self._changed

    def timeline(
        self, task_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """The retained events of one task after ``after_seq``, oldest first."""
        line = self._timelines.get(task_id, ())
        out = [e for e in line if e.seq > after_seq]
        return out if limit is None else out[:limit]

    async def wait_changed(self) -> None:
        """Return at the next publish (or close)."""
        if not self._closed:
            await self._watch().wait()

    def recent(self, *, after_seq: int = 0, task_id: str | None = None) -> list[Event]:
        # Events sit in sequence order, so walk back from the newest only as far as needed:
        # a follower that is nearly caught up pays for the new events, not the whole buffer.
        out: list[Event] = []
        for event in reversed(self._recent):
            if event.seq <= after_seq:
                break
            if task_id is None or event.task_id == task_id:
                out.append(event)
        out.reverse()
        return out

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def follow(
        self, *, after_seq: int = 0, task_id: str | None = None
    ) -> AsyncIterator[Event]:
        """Replay what is still buffered after ``after_seq``, then yield new events live."""
        cursor = after_seq
        while True:
            changed = self._watch()
            newest = self._recent[-1].seq if self._recent else cursor
            for event in self.recent(after_seq=cursor, task_id=task_id):
                yield event
            cursor = max(cursor, newest)
            if self._closed:
                return
            await changed.wait()
