"""Wall time for records, trio time for sleeping.

Records carry epoch seconds; the lease clock sleeps with trio so that tests under
``MockClock`` / ``autojump_clock`` move through hours of leases instantly. The two are tied
by an offset taken once at start-up, so wall time advances exactly as trio's clock does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


class RuntimeClock:
    def __init__(self, wall: Callable[[], float] | None = None) -> None:
        self._wall = wall
        self._offset = time.time() - trio.current_time()

    def now(self) -> float:
        if self._wall is not None:
            return self._wall()
        return self._offset + trio.current_time()

    def trio_time_of(self, at: float) -> float:
        """The trio deadline at which wall time ``at`` is reached."""
        return trio.current_time() + (at - self.now())
