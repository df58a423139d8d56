"""The lease clock's state: a heap of deadlines to fire, in time order.

Deadlines are only ever added. A lease that was renewed leaves its old deadline behind; when
that fires the state machine sees the newer ``lease_until`` and does nothing, so the heap
needs no removal and renewal stays O(log n).
"""

from __future__ import annotations

import heapq

from runlease.core.machine import Deadline


class DeadlineHeap:
    def __init__(self) -> None:
        self._heap: list[Deadline] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: Deadline) -> bool:
        """Add a deadline; True if it is now the earliest (the clock must re-arm)."""
        heapq.heappush(self._heap, deadline)
        return self._heap[0] is deadline

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Deadline]:
        due: list[Deadline] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        return due
