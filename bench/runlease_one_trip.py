"""runlease with one round trip per cycle: finish the run and claim the next in one call.

Same workload, harness and correctness check as :mod:`bench.runlease_systems`; only the
contender loop differs. After a first ``claim_next``, each cycle is one
``complete_and_next`` call (one request, one reply on the socket): it completes the run it
holds and hands back the next claim, until the claim part reports NO_CLAIMABLE_RUN. The
latency recorded per cycle is that whole call, which is what an agent waits for between
two runs.

The socket rows keep the ``runlease-socket`` family, so the report divides them by the
peers at the same durability (beanstalkd without a binlog for memory, with ``-f 0`` for
durable) and by the echo floor, like the two-round-trip rows (and ``--systems socket``
selects them too). The embedded rows get a family of their own, so ``--systems embedded``
still means the classic loop; they are compared with the peers like every runlease row.
The echo floor makes two round trips per cycle, so one-trip rows may pass it: the floor
for this loop is twice the echo row's cycles/s.

Importing this module registers the loop in ``bench.runlease_systems.LOOPS`` under
:data:`LOOP_NAME`; client processes import it through :func:`one_trip_client_main`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Final, Protocol

import trio

from bench.common import ContenderLog, RawRun, Workload, monotonic
from bench.procs import run_client_processes
from bench.runlease_systems import (
    CLIENT_PROCESSES,
    LOOPS,
    EmbeddedRunlease,
    Mode,
    ServerProcess,
    SocketRunlease,
    socket_client_main,
)
from runlease.core.model import Claim, Finished
from runlease.errors import NO_CLAIMABLE_RUN, NotFound, RunleaseError

LOOP_NAME: Final = "complete-and-next"


class OneTripClaimer(Protocol):
    """The embedded session handle and the trio client both have these."""

    def claim_next(self, *, lease_seconds: float | None = None) -> Awaitable[Claim]: ...

    def complete_and_next(
        self, run_id: str, *, lease_seconds: float | None = None
    ) -> Awaitable[Finished]: ...


async def contend_one_trip(
    claimer: OneTripClaimer, go: trio.Event, log: ContenderLog, lease: float
) -> None:
    """Claim once, then "complete it and claim the next" in one call until nothing is left."""
    await go.wait()
    clock = time.perf_counter
    began = clock()
    try:
        claim: Claim | None = await claimer.claim_next(lease_seconds=lease)
    except NotFound as exc:
        if exc.code != NO_CLAIMABLE_RUN:
            log.errors.append(f"claim refused: {exc.code}: {exc.message}")
        claim = None
    except RunleaseError as exc:
        log.errors.append(f"claim refused: {exc.code}: {exc.message}")
        claim = None
    if claim is not None:
        log.latencies.append(clock() - began)
    while claim is not None:
        run_id = claim.run.id
        began = clock()
        try:
            finished = await claimer.complete_and_next(run_id, lease_seconds=lease)
        except RunleaseError as exc:
            log.errors.append(f"complete {run_id} refused: {exc.code}: {exc.message}")
            break
        log.completed.append(run_id)
        claim = finished.claim
        if claim is not None:
            log.latencies.append(clock() - began)
        elif finished.no_claim is None or finished.no_claim.code != NO_CLAIMABLE_RUN:
            log.errors.append(f"claim part after {run_id}: {finished.no_claim}")
    log.end = monotonic()


LOOPS[LOOP_NAME] = contend_one_trip  # type: ignore[assignment]


class EmbeddedOneTrip(EmbeddedRunlease):
    """Embedded, each cycle one ``SessionHandle.complete_and_next`` call."""

    family = "runlease-embedded-onetrip"
    loop = LOOP_NAME

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self.key = f"embedded-onetrip-{mode}"
        self.label = f"runlease embedded, complete+next, {mode}"


class SocketOneTrip(SocketRunlease):
    """Over the socket, each cycle one request and one reply."""

    loop = LOOP_NAME

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self.key = f"socket-onetrip-{mode}"
        self.label = f"runlease socket, one round trip, {mode}"

    def run(self, workload: Workload, contenders: int, workdir: Path) -> RawRun:
        # As SocketSystem.run, but the client processes start in this module, so the loop
        # registered above exists in them too.
        with ServerProcess(self.server_kind, self.mode, workdir, workload) as server:
            start, logs = run_client_processes(
                one_trip_client_main,
                contenders,
                CLIENT_PROCESSES,
                (str(server.socket_path), workload.lease_seconds, self.loop, "", ""),
            )
            problems = server.verify()
        return RawRun(
            expected=server.expected,
            start=start,
            contenders=logs,
            system_problems=problems,
            notes={"client_processes": min(CLIENT_PROCESSES, contenders), "loop": self.loop},
        )


def one_trip_client_main(
    index: int,
    count: int,
    args: tuple[str, float, str, str, str],
    barrier: Barrier,
    conn: Connection,
) -> None:
    """Client process entry point: importing this module registered the one-trip loop."""
    socket_client_main(index, count, args, barrier, conn)


def one_trip_systems() -> list[EmbeddedOneTrip | SocketOneTrip]:
    """The rows this module adds: embedded and socket, memory and durable."""
    return [
        EmbeddedOneTrip("memory"),
        EmbeddedOneTrip("durable"),
        SocketOneTrip("memory"),
        SocketOneTrip("durable"),
    ]
