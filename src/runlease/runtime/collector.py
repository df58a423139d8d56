"""Keeping the cyclic garbage collector's pauses short while a runtime holds a large state.

CPython's full collections walk every tracked object that is not frozen. With hundreds of
thousands of queued runs, sessions and recent events in memory, one full collection stops
the event loop for tens to hundreds of milliseconds: a lease expiry or a waiting claimer's
wake-up that falls due meanwhile is served that much late. Nearly all of that state lives
as long as the runtime, so scanning it again and again finds nothing to free.

:class:`GcTuning` tells a runtime to move such a heap out of the collector's way
(``gc.freeze()``):

- once boot has recovered the state (``freeze_after_boot``);
- after any full collection that took ``freeze_after_pause`` seconds of CPU or more: its
  survivors are long-lived by then (a large preload, a state that kept growing), so the
  next full collections only walk what was allocated since. Frozen objects are still freed
  by reference counting; only a reference cycle among them is never collected. Freezes
  happen as the long-lived heap grows (each needs a pause's worth of new survivors), not
  with time, so what a freeze can pin stays in proportion to that growth.

The generation thresholds can be set too (``thresholds``), but by default stay as CPython
has them: a request's temporaries die before the next young collection, and what the
runtime keeps long (records, index entries, events) is untracked by design, so young
collections stay small. Raising the first threshold from 700 to 10,000 measured worse:
each young collection promotes whatever is alive at that moment, the middle generation
grew to about a hundred thousand objects, and its collections doubled the p99 lateness of
lease expiries at 100k leases.

The collector is process-wide, so a runtime changes it only when asked: ``runlease serve``
owns its process and always does; an embedding host opts in with
``open_runtime(gc_tuning=GcTuning())``. When the runtime closes it restores the thresholds,
removes its callback and, if nothing was frozen before it started, unfreezes what it froze
so the collector can reclaim the runtime's cycles.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

# A full collection longer than this freezes its survivors: about the pause a 2-core VM
# takes to walk some tens of thousands of objects, far below the expiry and wake-up goals.
DEFAULT_FREEZE_AFTER_PAUSE = 0.005


@dataclass(frozen=True)
class GcTuning:
    """How a runtime that owns its process tunes the cyclic garbage collector.

    ``thresholds``: passed to ``gc.set_threshold`` while the runtime runs (None: leave
    them). ``freeze_after_boot``: freeze the recovered state once boot has finished.
    ``freeze_after_pause``: freeze the survivors of a full collection that took at least
    this many seconds of CPU time (None: never).
    """

    thresholds: tuple[int, int, int] | None = None
    freeze_after_boot: bool = True
    freeze_after_pause: float | None = DEFAULT_FREEZE_AFTER_PAUSE


@dataclass
class CollectorStats:
    """What the collector did while a tuned runtime ran (full collections only)."""

    full_collections: int = 0
    # Wall time the event loop stood still, and the CPU time the collection itself took
    # (they differ when the machine is busy and the process waits for a core).
    full_pause_total: float = 0.0
    full_pause_max: float = 0.0
    full_cpu_max: float = 0.0
    freezes: int = 0
    # The longest pause of a young (generation 0 or 1) collection.
    young_pause_max: float = 0.0
    pauses: list[float] = field(default_factory=list, repr=False)


# How many full-collection pauses are kept for percentiles (the newest ones).
KEPT_PAUSES = 4096


class TunedCollector:
    """Applies a :class:`GcTuning` for the life of one runtime (``start`` ... ``stop``)."""

    def __init__(self, tuning: GcTuning) -> None:
        self.tuning = tuning
        self.stats = CollectorStats()
        self._previous_thresholds: tuple[int, int, int] | None = None
        self._frozen_before = 0
        self._started_at: float | None = None
        self._started_cpu = 0.0
        self._running = False

    def start(self) -> None:
        self._frozen_before = gc.get_freeze_count()
        if self.tuning.thresholds is not None:
            self._previous_thresholds = gc.get_threshold()
            gc.set_threshold(*self.tuning.thresholds)
        gc.callbacks.append(self._on_collection)
        self._running = True

    def freeze(self) -> None:
        """Collect, then freeze what survived: the state the runtime holds right now."""
        gc.collect()
        self._freeze_survivors()

    def after_boot(self) -> None:
        if self._running and self.tuning.freeze_after_boot:
            self.freeze()

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        with_callback = gc.callbacks
        if self._on_collection in with_callback:
            with_callback.remove(self._on_collection)
        if self._previous_thresholds is not None:
            gc.set_threshold(*self._previous_thresholds)
        if self.stats.freezes and self._frozen_before == 0:
            gc.unfreeze()

    def _freeze_survivors(self) -> None:
        # gc.get_freeze_count() would walk every frozen object: not counted here.
        gc.freeze()
        self.stats.freezes += 1

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        full = info["generation"] == 2
        if phase == "start":
            self._started_at = time.perf_counter()
            if full:
                self._started_cpu = time.thread_time()
            return
        started, self._started_at = self._started_at, None
        if started is None:
            return
        pause = time.perf_counter() - started
        stats = self.stats
        if not full:
            stats.young_pause_max = max(stats.young_pause_max, pause)
            return
        cpu = time.thread_time() - self._started_cpu
        stats.full_collections += 1
        stats.full_pause_total += pause
        stats.full_pause_max = max(stats.full_pause_max, pause)
        stats.full_cpu_max = max(stats.full_cpu_max, cpu)
        stats.pauses.append(pause)
        if len(stats.pauses) > KEPT_PAUSES:
            del stats.pauses[: len(stats.pauses) - KEPT_PAUSES]
        # Judged on CPU time: on a busy machine a short collection can take long on the
        # wall clock, and freezing is only worth it for a heap that is itself costly.
        limit = self.tuning.freeze_after_pause
        if limit is not None and cpu >= limit:
            # Right after a full collection every tracked object is a survivor: freezing
            # now pins no garbage.
            self._freeze_survivors()
