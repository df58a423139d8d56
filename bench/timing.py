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
from typing import Any, Final, TypeVar

import trio

from bench.common import Workload, percentile, rss_bytes
from bench.procs import await_message, spawn_context, stop_processes
from bench.runlease_systems import Mode, ServerProcess, preload, runtime_options
from runlease.core.model import Claim
from runlease.runtime.client import open_client
from runlease.runtime.runtime import open_runtime

T = TypeVar("T")
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


def depth_probe(depth: int, window: int, seed: int) -> DepthResult:
    return trio.run(_depth_probe, depth, window, seed)


async def _depth_probe(depth: int, window: int, seed: int) -> DepthResult:
    priorities = Workload(depth, seed).priorities()
    async with open_runtime() as rt:
        gc.collect()
        before = rss_bytes()
        began = time.perf_counter()
        await preload(rt, priorities)
        preload_s = time.perf_counter() - began
        gc.collect()
        per_run = (rss_bytes() - before) / depth
        handle = await rt.open_session(agent="depth-probe")
        clock = time.perf_counter
        claims: list[float] = []
        cycles: list[float] = []
        for i in range(window):
            t0 = clock()
            claim = await handle.claim_next(lease_seconds=LONG_LEASE)
            t1 = clock()
            await handle.complete(claim.run.id)
            t2 = clock()
            claims.append(t1 - t0)
            cycles.append(t2 - t0)
            # Not timed: a replacement run keeps the queue at exactly ``depth``.
            await rt.create_task("refill", priority=priorities[i % depth], start=True)  # type: ignore[arg-type]
        if rt.status().queued_runs != depth:
            raise RuntimeError(f"depth drifted to {rt.status().queued_runs}")
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
    )


# ------------------------------------------------------------------------- expiry
@dataclass
class ExpiryResult:
    live_leases: int
    measured: int
    spread_s: float
    expiries_per_s: float
    setup_s: float
    # Leases whose deadline passed before every lease was claimed (excluded from the stats).
    expired_during_setup: int
    seen: int
    # event.at - previous_lease_until: when the runtime applied the expiry.
    fired_late: dict[str, float] = field(default_factory=dict)
    # wall clock when a follower received the lease_expired event - previous_lease_until.
    seen_late: dict[str, float] = field(default_factory=dict)
    requeued: int = 0


def expiry_probe(leases: int, spread: float) -> ExpiryResult:
    return trio.run(_expiry_probe, leases, spread)


async def _expiry_probe(leases: int, spread: float) -> ExpiryResult:
    """``leases`` sessions each hold one lease; all but a calibration tenth expire, their
    deadlines spread evenly over ``spread`` seconds that start once every lease is held."""
    calibration = max(1, min(1000, leases // 10))
    measured = leases - calibration
    async with open_runtime(event_capacity=leases * 3 + 10_000) as rt:
        began = time.time()
        run_ids = await preload(rt, ["medium"] * leases)
        sessions = await _open_sessions(rt, leases)
        seq0 = rt.status().last_event_seq
        # (deadline, when the expiry was applied, when a follower saw it), per expiry.
        records: list[tuple[float, float, float]] = []
        all_seen = trio.Event()

        async def follow() -> None:
            async for event in rt.follow_events(after_seq=seq0):
                if event.kind != "lease_expired":
                    continue
                now = time.time()
                due = float(event.data["previous_lease_until"])
                records.append((due, event.at, now))
                if len(records) >= measured:
                    all_seen.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            # Calibration: long leases (they stay live throughout) and the claim rate.
            t0 = time.perf_counter()
            await _claim_all(sessions[:calibration], lambda i: LONG_LEASE)
            rate = calibration / max(time.perf_counter() - t0, 1e-6)
            first_deadline = time.time() + 1.5 * measured / rate + 1.0
            step = spread / max(measured - 1, 1)

            def lease_for(i: int) -> float:
                # Never 0: that would mean the default lease.
                return max(first_deadline + i * step - time.time(), 0.001)

            await _claim_all(sessions[calibration:], lease_for)
            setup_end = time.time()
            with trio.move_on_after(spread + 120.0):
                await all_seen.wait()
            nursery.cancel_scope.cancel()
        requeued = sum(1 for rid in run_ids if rt.get_run(rid).status == "queued")
    kept = [(at - due, now - due) for due, at, now in records if due >= setup_end]
    return ExpiryResult(
        live_leases=leases,
        measured=measured,
        spread_s=spread,
        expiries_per_s=measured / spread if spread > 0 else math.inf,
        setup_s=setup_end - began,
        expired_during_setup=len(records) - len(kept),
        seen=len(records),
        fired_late=_stats_ms([fired for fired, _ in kept]),
        seen_late=_stats_ms([seen for _, seen in kept]),
        requeued=requeued,
    )


async def _open_sessions(rt: Any, count: int) -> list[Any]:
    handles: list[Any] = [None] * count

    async def opener(first: int) -> None:
        for i in range(first, count, SETUP_WRITERS):
            handles[i] = await rt.open_session(agent=f"expiry-{i}")

    async with trio.open_nursery() as nursery:
        for first in range(min(SETUP_WRITERS, count)):
            nursery.start_soon(opener, first)
    return handles


async def _claim_all(handles: Sequence[Any], lease_for: Callable[[int], float]) -> None:
    async def claimer(first: int) -> None:
        for i in range(first, len(handles), SETUP_WRITERS):
            claim: Claim = await handles[i].claim_next(lease_seconds=lease_for(i))
            assert claim.run.id

    async with trio.open_nursery() as nursery:
        for first in range(min(SETUP_WRITERS, len(handles))):
            nursery.start_soon(claimer, first)


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
    async with open_runtime(**runtime_options(mode, workdir)) as rt:
        tasks = [await rt.create_task(f"wake {i}") for i in range(trials)]
        handle = await rt.open_session(agent="waiter")

        async def start_run(i: int) -> None:
            await rt.start(tasks[i].id)

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
