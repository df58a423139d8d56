"""The scheduler's waiting claimers: FIFO, each with its own filters.

A claimer that asked to wait and found nothing parks here. Whenever a run enters the queue
the scheduler walks the waiters in arrival order and lets each try a claim; a waiter whose
filters match nothing stays where it is, so a picky early waiter never starves a later one
that can take the run. Waiters that gave up (timeout, cancellation) are dropped lazily.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Waiter(Protocol):
    @property
    def abandoned(self) -> bool: ...


W = TypeVar("W", bound=Waiter)


class WaiterQueue(Generic[W]):
    def __init__(self) -> None:
        self._waiters: deque[W] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def park(self, waiter: W) -> None:
        self._waiters.append(waiter)

    def serve(self, attempt: Callable[[W], bool], has_work: Callable[[], bool]) -> None:
        """Offer work to waiters oldest first.

        ``attempt(waiter)`` returns True once the waiter is settled (it got a claim or an
        error) and False if it should keep waiting. Stops as soon as ``has_work()`` is false.
        """
        kept: deque[W] = deque()
        waiters = self._waiters
        while waiters and has_work():
            waiter = waiters.popleft()
            if waiter.abandoned:
                continue
            if not attempt(waiter):
                kept.append(waiter)
        kept.extend(waiters)
        self._waiters = kept

    def drain(self) -> list[W]:
        """Remove and return every live waiter (the runtime is closing)."""
        waiters = [w for w in self._waiters if not w.abandoned]
        self._waiters.clear()
        return waiters
