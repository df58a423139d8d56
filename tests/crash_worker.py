"""The process that tests/test_crash_recovery.py kills: a durable runtime under load.

Run as ``python tests/crash_worker.py DATA_DIR --durability ... --seed ...``. It opens the
embedded runtime on DATA_DIR, writes what it recovered as one ``state`` line, then drives
concurrent claims, heartbeats, completions, failures, releases and session stops from many
trio tasks until it is killed (or, with ``--drain``, until the queue is empty).

Every line on stdout is one JSON object, written with a single ``write`` before the next
step, so whatever reached the pipe before a SIGKILL is still read by the parent:

``intent``  printed before an operation is sent: it may or may not take effect.
``ack``     printed after the runtime acknowledged it: it must survive the kill.
``nack``    printed after the runtime refused it: it changed nothing.

Each actor (a session loop or a producer) has at most one operation in flight, so after a
kill each actor leaves at most one unresolved ``intent``.

Half of the completions, failures and releases also claim the session's next run in the
same call (``complete_and_next`` and friends). Such a call is logged as two operations: the
finish under the session loop's actor, and its claim part as a ``claim`` of the actor
``<actor>.next``; when the claim part takes nothing it gets a ``nack`` (NO_CLAIMABLE_RUN)
while the finish is acknowledged. Some of them ask for a workspace that never has work, so
finishes acknowledged with nothing claimed happen under every kill pattern.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal

import msgspec
import trio

from runlease import open_runtime
from runlease.core.model import Priority, Run, Session, Task
from runlease.errors import (
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    NO_CLAIMABLE_RUN,
    RunleaseError,
)
from runlease.runtime.runtime import Runtime, SessionHandle

Op = Literal["create", "open", "claim", "heartbeat", "complete", "fail", "release", "stop"]

# Refusals that mean "nothing changed" (the machine raises before touching state). A lease
# can end under its holder if the lease clock expires it, so those two count as refusals too.
REFUSALS = frozenset({NO_CLAIMABLE_RUN, AUTONOMY_LEASE_EXPIRED, AUTONOMY_NO_ACTIVE_LEASE})

SESSION_LOOPS = 8
PRODUCERS = 2
QUEUE_TARGET = 24
# None is the default lease (300 s); the parent moves the clock so some of these run out
# while the worker is down and are expired on boot.
LEASE_CHOICES: tuple[float | None, ...] = (None, 30.0, 30.0, 3600.0)
# A workspace no task is ever created in: a claim part filtered to it finds nothing.
NOWHERE = "nowhere"
PRIORITIES: tuple[Priority, ...] = ("low", "medium", "high", "urgent")


class Intent(msgspec.Struct, tag="intent", omit_defaults=True):
    actor: str
    op: Op
    session: str | None = None
    run: str | None = None
    title: str | None = None
    agent: str | None = None
    result: Any = None
    error: str | None = None
    reason: str | None = None


class Ack(msgspec.Struct, tag="ack", omit_defaults=True):
    actor: str
    op: Op
    session: str | None = None
    # The run as the reply described it (for a stop: the run it released, if any).
    run: Run | None = None
    task: Task | None = None
    agent: str | None = None
    released: list[str] = []
    # For a finish that also claimed: "claimed" or "nothing" (what its claim part got).
    with_next: str | None = None


class Nack(msgspec.Struct, tag="nack"):
    actor: str
    op: Op
    code: str


class StateDump(msgspec.Struct, tag="state"):
    """What boot recovered, before this process sent a single request."""

    now: float
    snapshot_seq: int
    replayed: int
    orphaned_leases: list[str]
    expired_sessions: list[str]
    invariant_error: str | None
    tasks: list[Task]
    runs: list[Run]
    sessions: list[Session]


class Ready(msgspec.Struct, tag="ready"):
    pass


class Done(msgspec.Struct, tag="done"):
    pass


class Fatal(msgspec.Struct, tag="fatal"):
    message: str


Line = Intent | Ack | Nack | StateDump | Ready | Done | Fatal

_encoder = msgspec.json.Encoder()
line_decoder = msgspec.json.Decoder(Line)


def emit(line: Line) -> None:
    data = memoryview(_encoder.encode(line) + b"\n")
    while data:
        written = os.write(1, data)
        data = data[written:]


class SteadyClock:
    """Wall time for the runtime: starts where the parent says and only moves forward."""

    def __init__(self, start: float) -> None:
        self._start = start
        self._base = time.monotonic()
        self._last = start

    def __call__(self) -> float:
        now = max(self._start + (time.monotonic() - self._base), self._last + 1e-6)
        self._last = now
        return now


def dump_state(rt: Runtime, now: float) -> StateDump:
    report = rt.boot_report
    assert report is not None
    try:
        rt._machine.check_invariants()
        invariant_error = None
    except AssertionError as exc:
        invariant_error = f"{exc}" or "invariant failed"
    tasks = rt.list_tasks()
    return StateDump(
        now=now,
        snapshot_seq=report.snapshot_seq,
        replayed=report.replayed,
        orphaned_leases=list(report.orphaned_leases),
        expired_sessions=list(report.expired_sessions),
        invariant_error=invariant_error,
        tasks=tasks,
        runs=[run for task in tasks for run in rt.runs_of(task.id)],
        sessions=rt.list_sessions(),
    )


class Worker:
    def __init__(self, rt: Runtime, rng: random.Random, tag: str, *, drain: bool) -> None:
        self.rt = rt
        self.rng = rng
        self.tag = tag
        self.drain = drain
        self.opened = 0

    def refused(self, actor: str, op: Op, exc: RunleaseError) -> None:
        if exc.code not in REFUSALS:
            emit(Fatal(message=f"{actor} {op}: unexpected {exc!r}"))
            raise exc
        emit(Nack(actor=actor, op=op, code=exc.code))

    async def open_session(self, actor: str) -> SessionHandle:
        agent = f"{self.tag}-{actor}-{self.opened}"
        self.opened += 1
        emit(Intent(actor=actor, op="open", agent=agent))
        handle = await self.rt.open_session(agent=agent)
        emit(Ack(actor=actor, op="open", session=handle.id, agent=agent))
        return handle

    async def session_loop(self, actor: str, session: Session | None) -> None:
        rng = random.Random(self.rng.random())
        handle = await self.open_session(actor) if session is None else self.rt.session(session.id)
        held = None if session is None else session.lease_run_id
        done = 0
        while True:
            if held is None:
                emit(Intent(actor=actor, op="claim", session=handle.id))
                try:
                    claim = await handle.claim_next(
                        wait=not self.drain, timeout=0.05, lease_seconds=rng.choice(LEASE_CHOICES)
                    )
                except RunleaseError as exc:
                    self.refused(actor, "claim", exc)
                    if self.drain:
                        return
                    continue
                emit(
                    Ack(actor=actor, op="claim", session=handle.id, run=claim.run, task=claim.task)
                )
                held = claim.run.id
                continue
            done += 1
            op: Op = (
                "complete"
                if self.drain
                else rng.choices(
                    ("heartbeat", "complete", "fail", "release", "stop"), (20, 55, 10, 10, 5)
                )[0]
            )
            note = f"{handle.id}/{held}/{done}"
            intent = Intent(actor=actor, op=op, session=handle.id, run=held)
            if op == "complete":
                intent.result = {"by": handle.id, "n": done}
            elif op == "fail":
                intent.error = f"failed {note}"
            elif op == "release":
                intent.reason = f"released {note}"
            emit(intent)
            try:
                if op == "heartbeat":
                    beat = await handle.heartbeat(held, lease_seconds=rng.choice(LEASE_CHOICES))
                    emit(Ack(actor=actor, op=op, session=handle.id, run=beat.run))
                    continue
                if op == "stop":
                    released = await handle.stop()
                    emit(
                        Ack(
                            actor=actor,
                            op=op,
                            session=handle.id,
                            released=released.released_run_ids,
                        )
                    )
                    held = None
                    handle = await self.open_session(actor)
                    continue
                if rng.random() < 0.5:
                    held = await self.finish_and_claim(handle, actor, intent, held, rng)
                    continue
                if op == "complete":
                    run = await handle.complete(held, result=intent.result)
                elif op == "fail":
                    assert intent.error is not None
                    run = await handle.fail(held, error=intent.error)
                else:
                    run = await handle.release(held, reason=intent.reason)
                emit(Ack(actor=actor, op=op, session=handle.id, run=run))
            except RunleaseError as exc:
                self.refused(actor, op, exc)
            held = None

    async def finish_and_claim(
        self, handle: SessionHandle, actor: str, intent: Intent, held: str, rng: random.Random
    ) -> str | None:
        """Finish ``held`` and claim the next run in one call; returns the run now held."""
        next_actor = f"{actor}.next"
        emit(Intent(actor=next_actor, op="claim", session=handle.id))
        options: dict[str, Any] = {
            "wait": not self.drain,
            "timeout": 0.05,
            "lease_seconds": rng.choice(LEASE_CHOICES),
            "workspace": NOWHERE if not self.drain and rng.random() < 0.25 else None,
        }
        try:
            if intent.op == "complete":
                finished = await handle.complete_and_next(held, result=intent.result, **options)
            elif intent.op == "fail":
                assert intent.error is not None
                finished = await handle.fail_and_next(held, error=intent.error, **options)
            else:
                finished = await handle.release_and_next(held, reason=intent.reason, **options)
        except RunleaseError as exc:
            self.refused(actor, intent.op, exc)
            emit(Nack(actor=next_actor, op="claim", code=exc.code))
            return None
        claim = finished.claim
        emit(
            Ack(
                actor=actor,
                op=intent.op,
                session=handle.id,
                run=finished.run,
                with_next="nothing" if claim is None else "claimed",
            )
        )
        if claim is None:
            assert finished.no_claim is not None
            emit(Nack(actor=next_actor, op="claim", code=finished.no_claim.code))
            return None
        emit(Ack(actor=next_actor, op="claim", session=handle.id, run=claim.run, task=claim.task))
        return claim.run.id

    async def producer(self, actor: str) -> None:
        rng = random.Random(self.rng.random())
        made = 0
        while True:
            if self.rt.status().queued_runs >= QUEUE_TARGET:
                await trio.sleep(0.002)  # pacing the load, not synchronising anything
                continue
            title = f"{self.tag}-{actor}-{made}"
            made += 1
            emit(Intent(actor=actor, op="create", title=title))
            task = await self.rt.create_task(title, priority=rng.choice(PRIORITIES), start=True)
            emit(Ack(actor=actor, op="create", task=task))


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    clock = SteadyClock(args.clock_start)
    async with open_runtime(
        clock,
        data_dir=args.data_dir,
        durability=args.durability,
        snapshot_every_records=args.snapshot_every_records,
        snapshot_every_seconds=args.snapshot_every_seconds,
    ) as rt:
        emit(dump_state(rt, clock()))
        emit(Ready())
        worker = Worker(rt, rng, args.tag, drain=args.drain)
        live = rt.list_sessions(live_only=True)
        async with trio.open_nursery() as nursery:
            for i in range(max(SESSION_LOOPS, len(live))):
                nursery.start_soon(worker.session_loop, f"s{i}", live[i] if i < len(live) else None)
            if not args.drain:
                for i in range(PRODUCERS):
                    nursery.start_soon(worker.producer, f"p{i}")
    emit(Done())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--durability", choices=("durable", "relaxed"), default="durable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="r0", help="prefix of titles and agent names")
    parser.add_argument("--clock-start", type=float, default=1_700_000_000.0)
    parser.add_argument("--snapshot-every-records", type=int, default=1000)
    parser.add_argument("--snapshot-every-seconds", type=float, default=600.0)
    parser.add_argument(
        "--drain", action="store_true", help="only complete work; exit once none is left"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
