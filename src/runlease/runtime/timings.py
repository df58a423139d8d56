"""Fixed-bucket timings the runtime records for its metrics (see runtime/metrics.py).

Recording sits on busy paths (a claim, a group commit), so it is plain Python: a tuple of
bucket bounds, a list of counts and a running sum, one ``bisect`` and two additions per
observation; no lock, no metrics library. The runtime runs on one trio thread, so nothing
else writes at the same time; the metrics read the lists when they are scraped and turn
them into Prometheus histograms there.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Final

# Sub-second to a few seconds: one group commit (a log write, or a write and a flush to
# disk when durable) and a claim served at once both fall here.
COMMIT_SECONDS_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# Claims: tens of microseconds in memory, a commit's flush when durable; a claim that
# waited for work may wait for minutes, hence the longer tail.
CLAIM_SECONDS_BUCKETS: Final = (*COMMIT_SECONDS_BUCKETS, 5.0, 10.0, 30.0, 60.0)
# From an event to its delivery: milliseconds when the target is up, up to the retry
# policy's backoff (minutes to an hour) when it was not.
HOOK_LAG_SECONDS_BUCKETS: Final = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

Clock = Callable[[], float]


class Timings:
    """A histogram with fixed bounds: ``counts[i]`` observations fell at or under
    ``bounds[i]`` (and above the bound before it); the last count is the overflow.

    ``clock`` is what durations are read from (``observe_since``)."""

    __slots__ = ("bounds", "clock", "counts", "total")

    def __init__(self, bounds: Sequence[float], clock: Clock = time.perf_counter) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be distinct and ascending")
        self.bounds = tuple(bounds)
        self.clock = clock
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def observe_since(self, started: float) -> None:
        """Record the time from ``started`` (a reading of ``clock``) to now."""
        self.observe(self.clock() - started)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or under it) for every bound and infinity."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class ClaimTimings:
    """How long claims took from reaching the runtime to their answer, split by whether
    the claim parked to wait for work (``waited``) or was answered from the queue as it
    stood (``served``: the service time, which waiting would otherwise drown)."""

    __slots__ = ("clock", "served", "waited")

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self.served = Timings(CLAIM_SECONDS_BUCKETS, clock)
        self.waited = Timings(CLAIM_SECONDS_BUCKETS, clock)

    def done(self, started: float, parked: bool) -> None:
        """A claim that began at ``started`` (a reading of ``clock``) was answered."""
        timings = self.waited if parked else self.served
        seconds = self.clock() - started
        timings.counts[bisect_left(timings.bounds, seconds)] += 1
        timings.total += seconds


class RuntimeTimings:
    """Everything one runtime times for its metrics.

    Group commits and hook deliveries are always timed (a commit costs far more than its
    timing, a delivery is off every request's path). Claims are timed only once someone
    asks (:meth:`time_claims`, done by :class:`~runlease.runtime.metrics.RuntimeMetrics`),
    so a runtime nobody scrapes pays nothing per claim.

    Durations are read from ``clock`` (a monotonic clock by default); hook lag is measured
    against ``wall``, the clock events are stamped with.
    """

    __slots__ = ("claims", "clock", "commits", "hook_lag")

    def __init__(self, wall: Clock = time.time, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self.claims: ClaimTimings | None = None
        self.commits = Timings(COMMIT_SECONDS_BUCKETS, clock)
        self.hook_lag = Timings(HOOK_LAG_SECONDS_BUCKETS, wall)

    def time_claims(self) -> ClaimTimings:
        """Start timing claims (from now on; once started, timing stays on)."""
        if self.claims is None:
            self.claims = ClaimTimings(self.clock)
        return self.claims


__all__ = [
    "CLAIM_SECONDS_BUCKETS",
    "COMMIT_SECONDS_BUCKETS",
    "HOOK_LAG_SECONDS_BUCKETS",
    "ClaimTimings",
    "RuntimeTimings",
    "Timings",
]
