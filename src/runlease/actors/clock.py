"""Wall time for records, trio time for sleeping.

Records carry epoch seconds; the lease clock sleeps with trio so that tests under
``MockClock`` / ``autojump_clock`` move through hours of leases instantly. The two are tied
by an offset taken once at start-up, so wall time advances exactly as trio's clock does.

``floor`` is the newest time the recovered state has already seen. The clock starts at the
later of the wall time and that floor: if the wall clock was stepped back while the runtime
was down, time resumes from the floor instead of repeating the past, so a recovered lease
can never last longer than it was granted (its deadline is at most its length past the
floor) and new records never look older than the ones before the restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


class RuntimeClock:
    def __init__(self, wall: Callable[[], float] | None = None, *, floor: float = 0.0) -> None:
        self._wall = wall
        if wall is None:
            self._offset = max(time.time(), floor) - trio.current_time()
            self._shift = 0.0
        else:
            # An injected clock keeps its own pace; it is shifted once, by as much as it
            # starts behind the floor, the same anchoring the default clock gets.
            self._offset = 0.0
            self._shift = max(0.0, floor - wall())

    def now(self) -> float:
        if self._wall is not None:
            return self._wall() + self._shift
        return self._offset + trio.current_time()

    def trio_time_of(self, at: float) -> float:
        """The trio deadline at which wall time ``at`` is reached."""
        return trio.current_time() + (at - self.now())
