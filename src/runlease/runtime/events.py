"""A bounded, in-memory feed of recent events, with live following.

Only acknowledged (durable) events are published. The feed keeps the newest ``capacity``
events; a follower that falls further behind than that misses the oldest ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable

import trio

from runlease.core.model import Event


class EventFeed:
    def __init__(self, capacity: int) -> None:
        self._recent: deque[Event] = deque(maxlen=capacity)
        self._changed = trio.Event()
        self._closed = False

    def publish(self, events: Iterable[Event]) -> None:
        self._recent.extend(events)
        self._changed.set()
        self._changed = trio.Event()

    def recent(self, *, after_seq: int = 0, task_id: str | None = None) -> list[Event]:
        return [
            e
            for e in self._recent
            if e.seq > after_seq and (task_id is None or e.task_id == task_id)
        ]

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def follow(
        self, *, after_seq: int = 0, task_id: str | None = None
    ) -> AsyncIterator[Event]:
        """Replay what is still buffered after ``after_seq``, then yield new events live."""
        cursor = after_seq
        while True:
            changed = self._changed
            newest = self._recent[-1].seq if self._recent else cursor
            for event in self.recent(after_seq=cursor, task_id=task_id):
                yield event
            cursor = max(cursor, newest)
            if self._closed:
                return
            await changed.wait()
