"""Prometheus metrics of one runtime: ``RuntimeMetrics(...).render()`` is a scrape.

Three sources, none of which adds work to a request beyond a few list and dict updates:

- **Gauges** are read when scraped, from the same overview the dashboard and ``runlease
  top`` show (``rt.overview(limit=0)``: counts only, no rows).
- **Counters** come from the events the runtime publishes once they are durable: the
  metrics object is an event observer (:meth:`EventHistory.add_observer`) that bumps a
  count per event kind; the named counters are those counts, read at scrape time.
- **Histograms** are the runtime's own fixed-bucket timings (runtime/timings.py): claims,
  group commits, hook deliveries. They are turned into Prometheus histograms at scrape
  time by a custom collector, so no prometheus_client object is touched on a request.

Every metric lives on the object's own :class:`CollectorRegistry`, never the process-wide
one, so two runtimes in one process (or a test after another) never collide. Labels take
values from small fixed sets only (priorities, event kinds, force actions, expiry
reasons); an id, a workspace or a tag never becomes a label.

Wiring: ``metrics = RuntimeMetrics()``, ``open_runtime(..., observers=[metrics])`` so the
events of boot recovery are counted too, then ``metrics.bind(rt)`` inside the block. Or,
for a runtime already open, ``RuntimeMetrics(rt)``, which counts events from then on.
``render()`` must be called on the runtime's trio thread (it reads the live state).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from runlease.core.event_kinds import EVENT_KINDS
from runlease.core.model import PRIORITY_RANK, REASON_LEASE_EXPIRED, REASON_ORPHANED_ON_BOOT
from runlease.runtime.timings import Timings

if TYPE_CHECKING:
    from runlease.core.model import Event
    from runlease.runtime.runtime import Runtime

# Counters that are one event kind each: metric name (without _total) -> kind, help.
_KIND_COUNTERS: Final = (
    ("runlease_claims", "run_claimed", "Runs claimed (claim next, claim a chosen run)."),
    ("runlease_completions", "run_completed", "Runs completed by their holder."),
    ("runlease_failures", "run_failed", "Runs failed by their holder."),
    (
        "runlease_releases",
        "lease_released",
        "Leases handed back unfinished: released by the holder or as its session stopped.",
    ),
    ("runlease_steals", "run_stolen", "Runs stolen (an expired lease, or by force)."),
    ("runlease_sessions_opened", "session_opened", "Agent sessions opened."),
    ("runlease_sessions_stopped", "session_stopped", "Agent sessions stopped, for any reason."),
)
# The ``action`` label of force operations, from the event that records each.
_FORCE_ACTIONS: Final = (
    ("release", "run_force_released"),
    ("fail", "run_force_failed"),
)
# The ``reason`` label of lease expiries; any other reason is counted as "other".
_EXPIRY_REASONS: Final = (REASON_LEASE_EXPIRED, REASON_ORPHANED_ON_BOOT)
# Priorities in the queue gauge even when nothing waits at them, so the series never vanish.
_PRIORITIES: Final = tuple(sorted(PRIORITY_RANK, key=PRIORITY_RANK.__getitem__))


class RuntimeMetrics:
    """The metrics of one runtime, on a registry of their own (``self.registry``).

    Callable as an event observer: pass it in ``open_runtime(observers=[...])``, then
    :meth:`bind` the runtime (which starts timing its claims); ``RuntimeMetrics(rt)``
    does both at once for a runtime already running.
    """

    def __init__(self, runtime: Runtime | None = None, *, process: bool = True) -> None:
        self._runtime: Runtime | None = None
        # Events seen per kind; the named counters are read from it at scrape time.
        self._kinds: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)
        self._forced_steals = 0
        self._orphaned_expiries = 0
        self._odd_expiries = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RuntimeCollector(self))
        if process:
            # CPU, memory and open files of this process (Linux; nothing elsewhere).
            ProcessCollector(registry=self.registry)
        if runtime is not None:
            self.bind(runtime)

    def bind(self, runtime: Runtime) -> None:
        """Read gauges and timings from ``runtime``, time its claims, and count its events
        (once: an observer passed to ``open_runtime`` is not added again)."""
        self._runtime = runtime
        runtime.timings.time_claims()
        runtime.history.add_observer(self)

    def __call__(self, event: Event) -> None:
        """Count one published event (called by the history, in sequence order)."""
        kind = event.kind
        kinds = self._kinds
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "run_stolen":
            if event.data.get("mode") == "force":
                self._forced_steals += 1
        elif kind == "lease_expired":
            reason = event.data.get("reason")
            if reason == REASON_ORPHANED_ON_BOOT:
                self._orphaned_expiries += 1
            elif reason != REASON_LEASE_EXPIRED:
                self._odd_expiries += 1

    def render(self) -> tuple[bytes, str]:
        """One scrape: the Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ scrape side
    def _collect(self) -> Iterator[Metric]:
        yield from self._gauges()
        yield from self._counters()
        yield from self._histograms()
        info = GaugeMetricFamily(
            "runlease_build_info", "The runlease version serving (always 1).", labels=["version"]
        )
        info.add_metric([_VERSION], 1)
        yield info

    def _gauges(self) -> Iterator[Metric]:
        runtime = self._runtime
        if runtime is None:
            return
        view = runtime.overview(limit=0)
        queued = dict.fromkeys(_PRIORITIES, 0)
        for depth in view.queue:
            queued[depth.priority] = queued.get(depth.priority, 0) + depth.claimable
        by_priority = GaugeMetricFamily(
            "runlease_queued_runs",
            "Queued runs a claimer could take now, by task priority (held runs are apart).",
            labels=["priority"],
        )
        for priority, count in queued.items():
            by_priority.add_metric([priority], count)
        yield by_priority
        for name, help_text, value in (
            (
                "runlease_held_runs",
                "Queued runs held back by a draft, a pause or an open dependency.",
                view.held_runs,
            ),
            ("runlease_leased_runs", "Runs under a live lease.", view.leased_runs),
            ("runlease_live_sessions", "Live agent sessions.", view.live_sessions),
            (
                "runlease_waiting_claimers",
                "Claims parked waiting for work.",
                view.waiting_claimers,
            ),
            (
                "runlease_scheduler_paused",
                "1 while the scheduler is paused (no claims are handed out), else 0.",
                int(view.scheduler.paused),
            ),
            (
                "runlease_last_event_seq",
                "Sequence of the newest durable event.",
                view.last_event_seq,
            ),
            ("runlease_tasks", "Tasks kept, in any status.", view.tasks),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)

    def _counters(self) -> Iterator[Metric]:
        kinds = self._kinds
        for name, kind, help_text in _KIND_COUNTERS:
            yield CounterMetricFamily(name, help_text, value=kinds[kind])
        expired = kinds["lease_expired"]
        expiries = CounterMetricFamily(
            "runlease_lease_expiries",
            "Leases that ran out: lease_expired (the deadline passed), orphaned_on_boot "
            "(it passed while the runtime was down).",
            labels=["reason"],
        )
        ordinary = expired - self._orphaned_expiries - self._odd_expiries
        expiries.add_metric([REASON_LEASE_EXPIRED], ordinary)
        expiries.add_metric([REASON_ORPHANED_ON_BOOT], self._orphaned_expiries)
        expiries.add_metric(["other"], self._odd_expiries)
        yield expiries
        forced = CounterMetricFamily(
            "runlease_force_operations",
            "Runs taken from their holder by an operator action: force-release, force-fail "
            "(each run of a bulk one counts), steal --force.",
            labels=["action"],
        )
        for action, kind in _FORCE_ACTIONS:
            forced.add_metric([action], kinds[kind])
        forced.add_metric(["steal"], self._forced_steals)
        yield forced
        events = CounterMetricFamily(
            "runlease_events", "Durable events published, by kind.", labels=["kind"]
        )
        for kind in sorted(EVENT_KINDS):
            events.add_metric([kind], kinds[kind])
        odd = sum(count for kind, count in kinds.items() if kind not in EVENT_KINDS)
        if odd:
            events.add_metric(["other"], odd)
        yield events

    def _histograms(self) -> Iterator[Metric]:
        runtime = self._runtime
        if runtime is None:
            return
        timings = runtime.timings
        claims = HistogramMetricFamily(
            "runlease_claim_latency_seconds",
            "From a claim request (claim next, or a finish with --next) reaching the runtime "
            "to its answer; waited=true if it parked until work came.",
            labels=["waited"],
        )
        if timings.claims is not None:
            _add(claims, ["false"], timings.claims.served)
            _add(claims, ["true"], timings.claims.waited)
        yield claims
        commits = HistogramMetricFamily(
            "runlease_journal_commit_seconds",
            "One group commit: the journal write, and its flush to disk when durable.",
        )
        _add(commits, [], timings.commits)
        yield commits
        lag = HistogramMetricFamily(
            "runlease_hook_delivery_lag_seconds",
            "From an event to its successful delivery to a hook, retries included.",
        )
        _add(lag, [], timings.hook_lag)
        yield lag


class _RuntimeCollector(Collector):
    """Hands the registry the runtime's figures at each scrape."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._collect()


def _add(family: HistogramMetricFamily, labels: list[str], timings: Timings) -> None:
    buckets = [(_bound(bound), count) for bound, count in timings.cumulative()]
    family.add_metric(labels, buckets, timings.total)


def _bound(seconds: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it."""
    return "+Inf" if seconds == math.inf else repr(seconds)


def _version() -> str:
    try:
        return metadata.version("runlease")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


_VERSION: Final = _version()

__all__ = ["RuntimeMetrics"]
