"""The actors of one runtime, wired together: who receives which request.

Claims and session commands go to the scheduler's mailbox; commands on one run are a turn
of that run's task actor; the lease clock sends expiries through the same routing, and so
does the starvation watch when the host turns it on.
"""

from __future__ import annotations

import trio

from runlease.actors.apply import Applier
from runlease.actors.clock import RuntimeClock
from runlease.actors.commit import Committer
from runlease.actors.idle_sessions import SessionActivity
from runlease.actors.lease_clock import LeaseClock
from runlease.actors.requests import Request
from runlease.actors.scheduler import Scheduler, WaiterQueue
from runlease.actors.starvation_watch import StarvationWatch
from runlease.actors.task_turn import TaskActors
from runlease.core.machine import Machine
from runlease.errors import RunleaseError


class ActorSystem:
    """The actors of one runtime and the state they share: the machine and the clock."""

    def __init__(
        self,
        machine: Machine,
        clock: RuntimeClock,
        committer: Committer,
        *,
        starve_after: float | None = None,
        session_idle_timeout: float | None = None,
    ) -> None:
        self.machine = machine
        self.clock = clock
        self.activity = SessionActivity(
            machine, clock, session_idle_timeout, waiting=self._session_waiting
        )
        self.lease_clock = LeaseClock(machine, clock, self.send_batch, self.activity)
        self.starvation_watch = (
            None
            if starve_after is None
            else StarvationWatch(machine, clock, self.send, starve_after)
        )
        self.applier = Applier(machine, clock, committer, on_deadline=self.lease_clock.watch)
        self.scheduler = Scheduler(self.applier)
        self.tasks = TaskActors(self.applier, self.scheduler)

    @property
    def committer(self) -> Committer:
        return self.applier.committer

    @committer.setter
    def committer(self, committer: Committer) -> None:
        self.applier.committer = committer

    @property
    def waiters(self) -> WaiterQueue[Request]:
        return self.scheduler.waiters

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.scheduler.run)
            await nursery.start(self.lease_clock.run)
            if self.starvation_watch is not None:
                await nursery.start(self.starvation_watch.run)
            task_status.started()

    async def send(self, request: Request) -> None:
        """Deliver a request to the actor that owns its command.

        A caller cancelled beforehand delivers nothing. Past that check the request is
        delivered: a task actor's turn, or the scheduler's, runs right here on the caller's
        task (the scheduler's only while it is idle; otherwise the request waits in its
        mailbox), so the outcome may already be there when this returns."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.tasks.own(request.command):
            self.tasks.turn(request)
        elif not self.scheduler.deliver_nowait(request):
            await self.scheduler.send(request)  # the mailbox is full: wait for room

    async def send_batch(self, requests: list[Request]) -> None:
        """Deliver requests that fell due together (the lease clock's expiries).

        Task actors' turns run back to back on this task, and the waiting claimers are
        offered the runs they put back in the queue once, after the whole batch."""
        tasks, applier, scheduler = self.tasks, self.applier, self.scheduler
        for request in requests:
            if tasks.own(request.command):
                applier.execute(request)
            elif not scheduler.deliver_nowait(request):
                await scheduler.send(request)  # the mailbox is full: wait for room
        if applier.work_queued:
            scheduler.wake_nowait()

    def _session_waiting(self, session_id: str) -> bool:
        """Whether the session has a claim parked waiting for work (a request in flight)."""

        def of_session(request: Request) -> bool:
            command = request.command
            claim = getattr(command, "claim", command)  # a finish that claims next
            return getattr(claim, "session_id", None) == session_id

        return self.scheduler.waiters.any_live(of_session)

    def arm_deadlines_of_live_state(self) -> None:
        """After boot: watch every lease, session TTL and idle session the state holds."""
        self.lease_clock.watch_live_state()

    def session_opened(self, session_id: str) -> None:
        """Watch a session just opened for idleness (when the idle timeout is on)."""
        session = self.machine.sessions.get(session_id)
        if session is None:
            return
        deadline = self.activity.first_deadline(session)
        if deadline is not None:
            self.lease_clock.watch(deadline)

    def after_rollback(self) -> None:
        """Memory was rolled back to the journal: watch the restored leases and sessions
        (the ones armed since may be gone or later) and let waiting claimers look again,
        since runs taken by refused claims are back in the queue."""
        self.lease_clock.watch_live_state()
        self.applier.work_queued = True
        self.scheduler.wake_nowait()

    def fail_waiters(self, error: RunleaseError) -> None:
        self.scheduler.fail_waiters(error)
