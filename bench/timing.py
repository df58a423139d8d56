"""Scale and timing probes of runlease alone: claim cost against queue depth (with resident
memory per queued task), lease-expiry precision with many live leases, and how fast a
waiting claimer is woken by a newly started run.

Each depth and the expiry probe run in a fresh process so that one probe's heap does not
colour the next one's memory figure.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import trio

from bench.common import Workload, percentile, rss_bytes
from bench.procs import await_message, spawn_context, stop_processes
from bench.runlease_systems import Mode, ServerProcess, preload, runtime_options
from runlease.core.model import Claim
from runlease.runtime.client import open_client
from runlease.runtime.collector import GcTuning
from runlease.runtime.runtime import Runtime, open_runtime

T = TypeVar("T")
# The probes run the runtime as a host that owns its process would (and `runlease serve`
# does): with the collector tuned, so a full collection does not rescan the large state.
GC_TUNING: Final = GcTuning()
LONG_LEASE: Final = 3600.0
SETUP_WRITERS: Final = 64


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _stats_ms(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": _ms(percentile(ordered, 50)),
        "p99_ms": _ms(percentile(ordered, 99)),
        "max_ms": _ms(ordered[-1]) if ordered else math.nan,
    }


def collector_summary(rt: Runtime, since: int = 0) -> dict[str, float]:
    """What the garbage collector's full collections cost while the probe ran (from the
    ``since``-th full collection on)."""
    collector = rt.collector
    if collector is None:
        return {}
    stats = collector.stats
    pauses = sorted(stats.pauses[since:])
    return {
        "full_collections": len(pauses),
        "full_pause_p50_ms": _ms(percentile(pauses, 50)) if pauses else 0.0,
        "full_pause_max_ms": _ms(stats.full_pause_max),
        "full_cpu_max_ms": _ms(stats.full_cpu_max),
        "freezes": stats.freezes,
        "young_pause_max_ms": _ms(stats.young_pause_max),
    }


def in_child(function: Callable[..., T], *args: Any, timeout: float = 3600.0) -> T:
    """Run ``function(*args)`` in a fresh spawned process and return what it returns."""
    ctx = spawn_context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_entry, args=(function, args, send), daemon=True)
    child.start()
    send.close()
    try:
        _status, value = await_message(child, receive, timeout, f"running {function.__name__}")
    finally:
        stop_processes([child])
        receive.close()
    result: T = value
    return result


def _child_entry(function: Callable[..., Any], args: tuple[Any, ...], send: Any) -> None:
    import traceback

    try:
        send.send(("ok", function(*args)))
    except BaseException:
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()


# ------------------------------------------------------------------- claim vs depth
@dataclass
class DepthResult:
    depth: int
    window: int
    preload_s: float
    rss_bytes_per_run: float
    cycle_mean_us: float
    cycle_p50_us: float
    cycle_p99_us: float
    claim_p50_us: float
    claim_p99_us: float
    # Full garbage collections during the whole probe (preload included): how many, their
    # pauses, how often the runtime froze the heap.
    gc: dict[str, float] = field(default_factory=dict)
    # 0: untagged tasks and claims. N: each task carries one of N tags and each claim asks
    # for one of them (a tag-filtered claim), so a claim may take 1/N of the queue.
    tags: int = 0


def depth_probe(depth: int, window: int, seed: int, tags: int = 0) -> DepthResult:
    return trio.run(_depth_probe, depth, window, seed, tags)


def _tag(i: int, tags: int) -> list[str]:
    return [f"tag-{i % tags}"] if tags else []


async def _depth_probe(depth: int, window: int, seed: int, tags: int) -> DepthResult:
    priorities = Workload(depth, seed).priorities()
    async with open_runtime(gc_tuning=GC_TUNING) as rt:
        gc.collect()
        before = rss_bytes()
        began = time.perf_counter()
        await preload(rt, priorities, [_tag(i, tags) for i in range(depth)] if tags else None)
        preload_s = time.perf_counter() - began
        gc.collect()
        per_run = (rss_bytes() - before) / depth
        handle = await rt.open_session(agent="depth-probe")
        clock = time.perf_counter
        claims: list[float] = []
        cycles: list[float] = []
        for i in range(window):
            wanted = _tag(i, tags)
            t0 = clock()
            claim = await handle.claim_next(lease_seconds=LONG_LEASE, tags=wanted)
            t1 = clock()
            await handle.complete(claim.run.id)
            t2 = clock()
            claims.append(t1 - t0)
            cycles.append(t2 - t0)
            # Not timed: a replacement run (with the tag taken) keeps the queue at exactly
            # ``depth``, and each tag's share of it as it was.
            await rt.create_task(
                "refill",
                priority=priorities[i % depth],  # type: ignore[arg-type]
                start=True,
                tags=wanted,
            )
        if rt.status().queued_runs != depth:
            raise RuntimeError(f"depth drifted to {rt.status().queued_runs}")
        collected = collector_summary(rt)
    cycles.sort()
    claims.sort()
    return DepthResult(
        depth=depth,
        window=window,
        preload_s=preload_s,
        rss_bytes_per_run=per_run,
        cycle_mean_us=sum(cycles) / len(cycles) * 1e6,
        cycle_p50_us=percentile(cycles, 50) * 1e6,
        cycle_p99_us=percentile(cycles, 99) * 1e6,
        claim_p50_us=percentile(claims, 50) * 1e6,
        claim_p99_us=percentile(claims, 99) * 1e6,
        gc=collected,
        tags=tags,
    )


# ------------------------------------------------------------------------- expiry
ExpiryObserver = Literal["poll", "follow"]
POLL_INTERVAL: Final = 0.001
POLL_SAMPLE: Final = 1000


@dataclass
class ExpiryResult:
    live_leases: int
    measured: int
    spread_s: float
    expiries_per_s: float
    setup_s: float
    # Leases whose deadline passed before every lease was claimed (excluded from the stats).
    expired_during_setup: int
    # lease_expired events found for the measured leases.
    fired: int
    # event.at - previous_lease_until: how late the runtime applied each expiry.
    fired_late: dict[str, float] = field(default_factory=dict)
    # How the requeue was watched, how many leases were watched, and how late it was seen.
    observer: str = "poll"
    watched: int = 0
    seen_late: dict[str, float] = field(default_factory=dict)
    requeued: int = 0
    gc: dict[str, float] = field(default_factory=dict)


def expiry_probe(leases: int, spread: float, observer: ExpiryObserver = "poll") -> ExpiryResult:
    return trio.run(_expiry_probe, leases, spread, observer)


async def _expiry_probe(leases: int, spread: float, observer: ExpiryObserver) -> ExpiryResult:
    """``leases`` sessions each hold one lease; all but a calibration tenth expire, their
    deadlines spread evenly over ``spread`` seconds that start once every lease is held.

    How late each expiry was applied comes from the ``lease_expired`` events, read once
    everything has expired (reading them costs the runtime nothing while it works). When a
    run is *seen* requeued is watched live, by one of two observers:

    - ``poll`` (default): every millisecond, the runs of a sample of about 1,000 leases
      whose deadline has passed are looked up until they show ``queued`` (resolution 1 ms);
    - ``follow``: a follower of the event stream notes the wall clock of each
      ``lease_expired`` event it receives. It costs the runtime a scan of its whole event
      buffer per wake-up, so with many events it slows down what it measures.
    """
    calibration = max(1, min(1000, leases // 10))
    measured = leases - calibration
    async with open_runtime(event_capacity=leases * 3 + 10_000, gc_tuning=GC_TUNING) as rt:
        began = time.time()
        await preload(rt, ["medium"] * leases)
        sessions = await _open_sessions(rt, leases)
        seq0 = rt.status().last_event_seq
        seen: list[float] = []
        async with trio.open_nursery() as nursery:
            if observer == "follow":
                nursery.start_soon(_follow_expiries, rt, seq0, seen)
            # Calibration: long leases (they stay live throughout) and the claim rate.
            t0 = time.perf_counter()
            await _claim_all(sessions[:calibration], lambda i: LONG_LEASE)
            rate = calibration / max(time.perf_counter() - t0, 1e-6)
            first_deadline = time.time() + 1.5 * measured / rate + 1.0
            step = spread / max(measured - 1, 1)

            def lease_for(i: int) -> float:
                # Never 0: that would mean the default lease.
                return max(first_deadline + i * step - time.time(), 0.001)

            claims = await _claim_all(sessions[calibration:], lease_for)
            setup_end = time.time()
            collections_in_setup = rt.collector.stats.full_collections if rt.collector else 0
            due = sorted((c.lease.lease_until, c.run.id) for c in claims)
            watched = due[:: max(1, len(due) // POLL_SAMPLE)] if observer == "poll" else []
            if watched:
                nursery.start_soon(_poll_requeues, rt, watched, seen)
            expired = await _wait_for_expiries(rt, seq0, measured, due[-1][0] + spread + 120)
            nursery.cancel_scope.cancel()
        requeued = sum(1 for c in claims if rt.get_run(c.run.id).status == "queued")
        collected = collector_summary(rt, since=collections_in_setup)
    deadlines = [float(e.data["previous_lease_until"]) for e in expired]
    fired = [e.at - d for e, d in zip(expired, deadlines, strict=True) if d >= setup_end]
    return ExpiryResult(
        live_leases=leases,
        measured=measured,
        spread_s=spread,
        expiries_per_s=measured / spread if spread > 0 else math.inf,
        setup_s=setup_end - began,
        expired_during_setup=sum(1 for d in deadlines if d < setup_end),
        fired=len(expired),
        fired_late=_stats_ms(fired),
        observer=observer,
        watched=len(watched) if observer == "poll" else len(seen),
        seen_late=_stats_ms(seen),
        requeued=requeued,
        gc=collected,
    )


async def _wait_for_expiries(rt: Any, seq0: int, count: int, give_up_at: float) -> list[Any]:
    """The lease_expired events after ``seq0`` once there are ``count`` of them.

    Each look reads only the events since the previous one: rescanning everything after
    ``seq0`` (100k claims and the expiries so far) every 200 ms blocked the event loop for
    tens of milliseconds at a time and made the runtime it measures late."""
    expired: list[Any] = []
    cursor = seq0
    while True:
        await trio.sleep(0.2)
        new = rt.events(after_seq=cursor)
        if new:
            cursor = new[-1].seq
            expired.extend(e for e in new if e.kind == "lease_expired")
        if len(expired) >= count or time.time() > give_up_at:
            return expired


async def _poll_requeues(rt: Any, watched: list[tuple[float, str]], seen: list[float]) -> None:
    next_due = 0
    pending: list[tuple[float, str]] = []
    while next_due < len(watched) or pending:
        now = time.time()
        while next_due < len(watched) and watched[next_due][0] <= now:
            pending.append(watched[next_due])
            next_due += 1
        still: list[tuple[float, str]] = []
        for deadline, run_id in pending:
            if rt.get_run(run_id).status == "queued":
                seen.append(now - deadline)
            else:
                still.append((deadline, run_id))
        pending = still
        await trio.sleep(POLL_INTERVAL)


async def _follow_expiries(rt: Any, seq0: int, seen: list[float]) -> None:
    async for event in rt.follow_events(after_seq=seq0):
        if event.kind == "lease_expired":
            seen.append(time.time() - float(event.data["previous_lease_until"]))


async def _open_sessions(rt: Any, count: int) -> list[Any]:
    handles: list[Any] = [None] * count

    async def opener(first: int) -> None:
        for i in range(first, count, SETUP_WRITERS):
            handles[i] = await rt.open_session(agent=f"expiry-{i}")

    async with trio.open_nursery() as nursery:
        for first in range(min(SETUP_WRITERS, count)):
            nursery.start_soon(opener, first)
    return handles


async def _claim_all(handles: Sequence[Any], lease_for: Callable[[int], float]) -> list[Claim]:
    claims: list[Claim | None] = [None] * len(handles)

    async def claimer(first: int) -> None:
        for i in range(first, len(handles), SETUP_WRITERS):
            claims[i] = await handles[i].claim_next(lease_seconds=lease_for(i))

    async with trio.open_nursery() as nursery:
        for first in range(min(SETUP_WRITERS, len(handles))):
            nursery.start_soon(claimer, first)
    return [claim for claim in claims if claim is not None]


# ------------------------------------------------------------------------- wake-up
@dataclass
class WakeupResult:
    system: str
    trials: int
    latency: dict[str, float]


async def _wake_trials(
    trials: int,
    start_run: Callable[[int], Any],
    wait_claim: Callable[[], Any],
    complete: Callable[[Claim], Any],
    waiting: Callable[[], Any],
) -> list[float]:
    """Per trial: park a claimer, start a run, time until the claimer holds it."""
    latencies: list[float] = []
    for i in range(trials):
        box: dict[str, Any] = {}
        got = trio.Event()

        async def waiter(box: dict[str, Any] = box, got: trio.Event = got) -> None:
            box["claim"] = await wait_claim()
            box["at"] = time.perf_counter()
            got.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            # Polled: over the socket the only way to see a parked claimer is to ask.
            while not await waiting():  # noqa: ASYNC110
                await trio.sleep(0.0005)
            await trio.sleep(0.001)
            t0 = time.perf_counter()
            await start_run(i)
            await got.wait()
        latencies.append(box["at"] - t0)
        await complete(box["claim"])
    return latencies


def wakeup_embedded(mode: Mode, trials: int, workdir: Path) -> WakeupResult:
    return trio.run(_wakeup_embedded, mode, trials, workdir)


async def _wakeup_embedded(mode: Mode, trials: int, workdir: Path) -> WakeupResult:
    async with open_runtime(**runtime_options(mode, workdir), gc_tuning=GC_TUNING) as rt:
        tasks = [await rt.create_task(f"wake {i}") for i in range(trials)]
        handle = await rt.open_session(agent="waiter")

        async def start_run(i: int) -> None:
            await rt.start_task(tasks[i].id)

        async def wait_claim() -> Claim:
            return await handle.claim_next(wait=True, timeout=60, lease_seconds=LONG_LEASE)

        async def complete(claim: Claim) -> None:
            await handle.complete(claim.run.id)

        async def waiting() -> bool:
            return rt.status().waiting_claimers > 0

        latencies = await _wake_trials(trials, start_run, wait_claim, complete, waiting)
    return WakeupResult(f"embedded-{mode}", trials, _stats_ms(latencies))


def wakeup_socket(mode: Mode, trials: int, workdir: Path) -> WakeupResult:
    with ServerProcess("runlease", mode, workdir, Workload(0)) as server:
        return trio.run(_wakeup_socket, mode, trials, str(server.socket_path))


async def _wakeup_socket(mode: Mode, trials: int, socket_path: str) -> WakeupResult:
    async with open_client(socket_path) as starter, open_client(socket_path) as waiter_conn:
        _session, token = await waiter_conn.open_session(agent="waiter")
        waiter_conn.session_token = token
        tasks = [await starter.create_task(f"wake {i}") for i in range(trials)]

        async def start_run(i: int) -> None:
            await starter.start_task(tasks[i].id)

        async def wait_claim() -> Claim:
            return await waiter_conn.claim_next(wait=True, timeout=60, lease_seconds=LONG_LEASE)

        async def complete(claim: Claim) -> None:
            await waiter_conn.complete(claim.run.id)

        async def waiting() -> bool:
            return (await starter.status()).waiting_claimers > 0

        latencies = await _wake_trials(trials, start_run, wait_claim, complete, waiting)
    return WakeupResult(f"socket-{mode}", trials, _stats_ms(latencies))


def as_dict(result: Any) -> dict[str, Any]:
    return asdict(result)
