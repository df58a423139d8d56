"""The lease clock: sleeps until the earliest lease or session deadline, then sends the expiry.

There is no periodic sweep. The clock keeps a heap of deadlines in time order, sleeps until
the first is due (or until an earlier one is added) and sends every expiry that is due and
still current to the actors at once: they apply the batch back to back, so expiries that
fall due together cost one wake-up of the clock, land in one group commit, and wake the
waiting claimers once.

Deadlines are only ever added. A lease that was renewed leaves its old deadline behind; when
that fires the state machine sees the newer ``lease_until`` and does nothing, so the heap
needs no removal and renewal stays O(log n).

Idle sessions' deadlines share the heap and are checked the same lazy way (see
:mod:`runlease.actors.idle_sessions`).
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable

import trio

from runlease.actors.clock import RuntimeClock
from runlease.actors.idle_sessions import IDLE_DEADLINE, SessionActivity
from runlease.actors.requests import Request
from runlease.core.commands import ExpireLease, ExpireSession
from runlease.core.machine import LEASE_DEADLINE, SESSION_DEADLINE, Deadline, Machine
from runlease.core.model import LEASED_RUN_STATUSES, Origin

# The origin of what the lease clock does on its own: expiries, at boot and while running.
LEASE_CLOCK = Origin(kind="daemon", ref="lease_clock")


class DeadlineHeap:
    def __init__(self) -> None:
        self._heap: list[Deadline] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: Deadline) -> bool:
        """Add a deadline; True if it is now the earliest (the clock must re-arm)."""
        heapq.heappush(self._heap, deadline)
        return self._heap[0] is deadline

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Deadline]:
        due: list[Deadline] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        return due


class LeaseClock:
    """Watches deadlines and hands the expiries that fell due together, as one batch, to
    ``deliver`` (the actors' router applies them back to back)."""

    def __init__(
        self,
        machine: Machine,
        clock: RuntimeClock,
        deliver: Callable[[list[Request]], Awaitable[None]],
        activity: SessionActivity | None = None,
    ) -> None:
        self._machine = machine
        # Idle sessions: their deadlines share this heap (see actors/idle_sessions.py).
        self._activity = activity
        self._clock = clock
        self._deliver = deliver
        self.deadlines = DeadlineHeap()
        self._wake = trio.Event()

    def watch(self, deadline: Deadline) -> None:
        if self.deadlines.push(deadline):
            self._wake.set()

    def watch_live_state(self) -> None:
        """Watch every lease and session TTL the machine holds (after boot or a rollback).

        Deadlines already in the heap may be pushed again; each is checked against the
        state when it is due, so a duplicate or stale entry does nothing."""
        for run in self._machine.leased_runs():
            assert run.lease_until is not None
            self.deadlines.push((run.lease_until, LEASE_DEADLINE, run.id))
        for session in self._machine.sessions.values():
            if session.state == "live" and session.ttl_deadline is not None:
                self.deadlines.push((session.ttl_deadline, SESSION_DEADLINE, session.id))
        if self._activity is not None:
            for deadline in self._activity.live_deadlines():
                self.deadlines.push(deadline)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._wake = wake = trio.Event()
            upcoming = self.deadlines.next_deadline()
            if upcoming is None:
                await wake.wait()
            else:
                with trio.move_on_at(self._clock.trio_time_of(upcoming)):
                    await wake.wait()
            due = self.expiries_due(self._clock.now())
            if due:
                await self._deliver(due)

    def expiries_due(self, now: float) -> list[Request]:
        """The expiries whose deadline is ``now`` or earlier and still current, in deadline
        order. A deadline left behind by a renewal, a finish or a stopped session is
        dropped here without sending anything."""
        expiries: list[Request] = []
        runs, sessions = self._machine.runs, self._machine.sessions
        for at, kind, key in self.deadlines.pop_due(now):
            if kind == LEASE_DEADLINE:
                run = runs.get(key)
                if (
                    run is not None
                    and run.status in LEASED_RUN_STATUSES
                    and run.lease_until is not None
                    and run.lease_until <= at
                ):
                    expiries.append(Request(ExpireLease(now=0.0, run_id=key, origin=LEASE_CLOCK)))
            elif kind == IDLE_DEADLINE:
                if self._activity is not None:
                    stop = self._activity.due(key, now, self.deadlines.push)
                    if stop is not None:
                        expiries.append(stop)
            else:
                session = sessions.get(key)
                if session is not None and session.state == "live":
                    expiries.append(
                        Request(ExpireSession(now=0.0, session_id=key, origin=LEASE_CLOCK))
                    )
        return expiries
