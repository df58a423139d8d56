"""The trio shells of the three actors: scheduler, per-task actors, lease clock.

All of them drive one pure :class:`~runlease.core.machine.Machine`; what they add is who
handles which message, in what order, and when replies are released.

- The scheduler owns the claimable index, sessions and the queue of waiting claimers. It
  handles claims and session commands, draining its mailbox in batches.
- A task actor owns the run-scoped commands of one task (heartbeat, complete, fail,
  release, block, lease expiry). Task actors are virtual, as in Orleans: an idle task is
  only its record in the machine, and a message for it runs as one turn, to completion, on
  the trio task that delivered it. Turns never await, so two turns of one task can never
  interleave and no per-task trio task or mailbox is needed (measured: spawning one per
  message cost ~40% of embedded claim+complete throughput).
- The lease clock sleeps until the earliest lease or session-TTL deadline and sends the
  expiry to the owning actor at that moment (no periodic sweep).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import msgspec
import trio

from runlease.actors.lease_clock import DeadlineHeap
from runlease.actors.scheduler import WaiterQueue
from runlease.core.commands import (
    RUN_SCOPED,
    AnyCommand,
    ClaimNext,
    ExpireLease,
    ExpireSession,
    FinishAndClaim,
)
from runlease.core.machine import LEASE_DEADLINE, SESSION_DEADLINE, Machine, Outcome
from runlease.core.model import LEASED_RUN_STATUSES, Origin
from runlease.errors import NO_CLAIMABLE_RUN, RESOURCE_EXHAUSTED, InternalError, RunleaseError
from runlease.runtime.clock import RuntimeClock
from runlease.runtime.commit import Committer
from runlease.runtime.requests import Request

log = logging.getLogger("runlease")

SCHEDULER_MAILBOX_SIZE = 4096
# The origin of what the lease clock does on its own: expiries, at boot and while running.
LEASE_CLOCK = Origin(kind="daemon", ref="lease_clock")


class WorkAvailable(msgspec.Struct, tag="work_available"):
    """Tells the scheduler that a run entered the queue, so waiters should try again."""


SchedulerMessage = Request | WorkAvailable
# Commands a task actor handles: everything that acts on one run of its task.
_TASK_OWNED = (*RUN_SCOPED, ExpireLease)


class ActorSystem:
    """The actors of one runtime and the state they share: the machine and the clock."""

    def __init__(self, machine: Machine, clock: RuntimeClock, committer: Committer) -> None:
        self.machine = machine
        self.clock = clock
        self.committer = committer
        self.deadlines = DeadlineHeap()
        self.waiters: WaiterQueue[Request] = WaiterQueue()
        self._scheduler_send, self._scheduler_receive = trio.open_memory_channel[SchedulerMessage](
            SCHEDULER_MAILBOX_SIZE
        )
        self._clock_wake = trio.Event()
        self._work_pending = False
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._run_scheduler)
            nursery.start_soon(self._run_lease_clock)
            task_status.started()

    # ------------------------------------------------------------------ routing
    async def send(self, request: Request) -> None:
        """Deliver a request to the actor that owns its command."""
        command = request.command
        if isinstance(command, _TASK_OWNED) and command.run_id in self.machine.runs:
            self._task_turn(request)
            return
        await self._scheduler_send.send(request)

    def _task_turn(self, request: Request) -> None:
        """One turn of the task actor that owns the request's run."""
        self._execute(request)
        if self._work_pending:
            # The turn put a run back in the queue: let the scheduler offer it to waiters.
            with contextlib.suppress(trio.WouldBlock):
                self._scheduler_send.send_nowait(WorkAvailable())

    def arm_deadlines_of_live_state(self) -> None:
        """After boot or a rollback: watch every lease and session TTL the state holds.

        Deadlines already in the heap may be pushed again; the clock checks each against
        the state when it is due, so a duplicate or stale entry does nothing."""
        for run in self.machine.leased_runs():
            assert run.lease_until is not None
            self.deadlines.push((run.lease_until, LEASE_DEADLINE, run.id))
        for session in self.machine.sessions.values():
            if session.state == "live" and session.ttl_deadline is not None:
                self.deadlines.push((session.ttl_deadline, SESSION_DEADLINE, session.id))
        self._clock_wake.set()

    def after_rollback(self) -> None:
        """Memory was rolled back to the journal: watch the restored leases and sessions
        (the ones armed since may be gone or later) and let waiting claimers look again,
        since runs taken by refused claims are back in the queue."""
        self.arm_deadlines_of_live_state()
        self._work_pending = True
        with contextlib.suppress(trio.WouldBlock):
            self._scheduler_send.send_nowait(WorkAvailable())

    # --------------------------------------------------------------- execution
    def _execute(self, request: Request) -> Outcome[Any] | None:
        """Apply one command now; route its outcome to the committer. None on refusal."""
        outcome = self._apply(request)
        if outcome is not None:
            request.assigned = True
            self._after_apply(request, request.command, outcome)
        return outcome

    def _apply(self, request: Request) -> Outcome[Any] | None:
        """Apply a request's command to the machine; on refusal resolve it and return None."""
        command = request.command
        refusal = self.committer.refusal
        if refusal is not None:
            request.resolve(None, refusal)
            return None
        command.now = self.clock.now()
        try:
            return self.machine.apply(command)
        except RunleaseError as exc:
            # The refusal was judged against memory, which may hold changes not yet
            # durable: it is released only once they are.
            self.committer.hold(request, None, exc)
            return None
        except Exception:
            log.exception("internal error applying %s", type(command).__name__)
            request.resolve(None, InternalError(f"internal error in {type(command).__name__}"))
            return None

    def _finish_and_claim(self, request: Request) -> None:
        """A finish followed by a claim, applied as one command by the scheduler.

        Routed here rather than to the task actor because the claim part needs the claim
        index, and one command keeps both parts in one journal record: a single commit and
        a single reply. If the claim part found nothing and the caller waits, the finish is
        journaled under a request of its own and this request parks as a plain claim.
        """
        command = request.command
        assert isinstance(command, FinishAndClaim)
        outcome = self._apply(request)
        if outcome is None:
            return
        if request.wait and not request.abandoned and outcome.reply.claim is None:
            part = Request(command)
            part.assigned = True
            request.finish_part = part
            request.command = command.claim
            self._after_apply(part, command, outcome)
            # The claim part already saw whatever the finish queued: wait for new work.
            self.waiters.park(request)
            return
        request.assigned = True
        self._after_apply(request, command, outcome)

    def _after_apply(self, request: Request, command: AnyCommand, outcome: Outcome[Any]) -> None:
        for deadline in outcome.deadlines:
            if self.deadlines.push(deadline):
                self._clock_wake.set()
        if outcome.events:
            self.committer.submit(request, command, outcome)
        else:
            # Nothing changed, so there is nothing to journal; but the reply describes
            # memory, so it waits for the changes before it to be durable.
            self.committer.hold(request, outcome.reply, outcome.error)
        if outcome.queued:
            # The scheduler offers new work to waiters after its current batch; a turn
            # elsewhere wakes it with WorkAvailable (if its mailbox is full it is busy and
            # checks this flag anyway).
            self._work_pending = True

    # --------------------------------------------------------------- scheduler
    async def _run_scheduler(self) -> None:
        receive = self._scheduler_receive
        while True:
            message = await receive.receive()
            self._handle_scheduler_message(message)
            # Drain whatever else is queued before yielding, so claims batch up.
            while True:
                try:
                    message = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                self._handle_scheduler_message(message)
            if self._work_pending:
                self._serve_waiters()

    def _handle_scheduler_message(self, message: SchedulerMessage) -> None:
        if isinstance(message, WorkAvailable):
            self._work_pending = True
            return
        if isinstance(message.command, ClaimNext) and message.wait:
            if not self._try_claim_for(message):
                self.waiters.park(message)
            return
        if isinstance(message.command, FinishAndClaim):
            self._finish_and_claim(message)
            return
        self._execute(message)

    def _try_claim_for(self, request: Request) -> bool:
        """One claim attempt for a waiting claimer; True once it is settled."""
        command = request.command
        refusal = self.committer.refusal
        if refusal is not None:
            if refusal.code == RESOURCE_EXHAUSTED:
                # Memory is being rolled back after a transient shortage: keep waiting,
                # the waiters are offered the restored state once it is adopted.
                return False
            request.resolve(None, refusal)
            return True
        command.now = self.clock.now()
        try:
            outcome = self.machine.apply(command)
        except RunleaseError as exc:
            if exc.code == NO_CLAIMABLE_RUN:
                return False
            self.committer.hold(request, None, exc)
            return True
        if outcome.error is not None and outcome.error.code == NO_CLAIMABLE_RUN:
            # The claim expired the session's stale lease but found nothing: record the
            # expiry (it is journaled without a caller) and keep waiting.
            self._after_apply(Request(command), command, outcome)
            return False
        request.assigned = True
        self._after_apply(request, command, outcome)
        return True

    def _serve_waiters(self) -> None:
        self._work_pending = False
        index = self.machine.index
        self.waiters.serve(self._try_claim_for, lambda: len(index) > 0)

    # -------------------------------------------------------------- lease clock
    async def _run_lease_clock(self) -> None:
        while True:
            self._clock_wake = wake = trio.Event()
            upcoming = self.deadlines.next_deadline()
            if upcoming is None:
                await wake.wait()
            else:
                with trio.move_on_at(self.clock.trio_time_of(upcoming)):
                    await wake.wait()
            for at, kind, key in self.deadlines.pop_due(self.clock.now()):
                if kind == LEASE_DEADLINE:
                    run = self.machine.runs.get(key)
                    if (
                        run is not None
                        and run.status in LEASED_RUN_STATUSES
                        and run.lease_until is not None
                        and run.lease_until <= at
                    ):
                        await self.send(
                            Request(ExpireLease(now=0.0, run_id=key, origin=LEASE_CLOCK))
                        )
                else:
                    session = self.machine.sessions.get(key)
                    if session is not None and session.state == "live":
                        await self.send(
                            Request(ExpireSession(now=0.0, session_id=key, origin=LEASE_CLOCK))
                        )

    # ------------------------------------------------------------------- close
    def fail_waiters(self, error: RunleaseError) -> None:
        for request in self.waiters.drain():
            request.resolve(None, error)
