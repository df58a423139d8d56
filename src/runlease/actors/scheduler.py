"""The scheduler actor: claims and session commands, and the claimers waiting for work.

It owns the claimable index and the sessions. Its mailbox is drained in batches: it takes
every message already queued before yielding, so claims that arrive together are applied
together, and only then offers newly queued runs to the waiting claimers.

A claimer that asked to wait and found nothing parks in the :class:`WaiterQueue`, FIFO, each
with its own filters. Whenever a run enters the queue the scheduler walks the waiters in
arrival order and lets each try a claim; a waiter whose filters match nothing stays where it
is, so a picky early waiter never starves a later one that can take the run. Waiters that
gave up (timeout, cancellation) are dropped lazily.

A message that finds the scheduler idle (parked on an empty mailbox) is not queued: it is
handled at once, as one turn of the scheduler, on the trio task that delivered it. That is
still an actor turn in the strict sense: the scheduler's state is touched only by its own
synchronous code, trio runs one task at a time, and a turn never awaits, so it cannot
interleave with another turn (the same rule that lets task actors run on the delivering
task, see ``task_turn``). Only when the scheduler is busy (woken with mail it has not
handled yet) do messages wait in the mailbox, in order, and get handled in one batch. So a
claim that arrives alone costs no task switch and no mailbox round trip, while claims
arriving together still batch, and waiters are still offered new work oldest first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

from runlease.actors.apply import Applier
from runlease.actors.requests import Request
from runlease.core.commands import ClaimNext, FinishAndClaim
from runlease.errors import NO_CLAIMABLE_RUN, RESOURCE_EXHAUSTED, RunleaseError

SCHEDULER_MAILBOX_SIZE = 4096


class Waiter(Protocol):
    @property
    def abandoned(self) -> bool: ...


W = TypeVar("W", bound=Waiter)


class WaiterQueue(Generic[W]):
    def __init__(self) -> None:
        self._waiters: deque[W] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def park(self, waiter: W) -> None:
        self._waiters.append(waiter)

    def serve(self, attempt: Callable[[W], bool], has_work: Callable[[], bool]) -> None:
        """Offer work to waiters oldest first.

        ``attempt(waiter)`` returns True once the waiter is settled (it got a claim or an
        error) and False if it should keep waiting. Stops as soon as ``has_work()`` is false.
        """
        waiters = self._waiters
        if not waiters:
            return
        kept: deque[W] = deque()
        while waiters and has_work():
            waiter = waiters.popleft()
            if waiter.abandoned:
                continue
            if not attempt(waiter):
                kept.append(waiter)
        kept.extend(waiters)
        self._waiters = kept

    def any_live(self, match: Callable[[W], bool]) -> bool:
        """Whether a waiter that has not given up matches (a walk of the queue: off the
        claim path, for the idle-session check)."""
        return any(not w.abandoned and match(w) for w in self._waiters)

    def drain(self) -> list[W]:
        """Remove and return every live waiter (the runtime is closing)."""
        waiters = [w for w in self._waiters if not w.abandoned]
        self._waiters.clear()
        return waiters


SchedulerMessage = Request


class Scheduler:
    def __init__(self, applier: Applier) -> None:
        self._applier = applier
        self.waiters: WaiterQueue[Request] = WaiterQueue()
        self._mailbox: deque[SchedulerMessage] = deque()
        # True only while the scheduler's task is parked on an empty mailbox (its loop
        # runs and has nothing in hand): a message may then be handled on the sender's task.
        self._idle = False
        self._mail = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()

    def deliver_nowait(self, request: Request) -> bool:
        """Handle ``request`` now if the scheduler is idle, else queue it; False (and
        nothing done) if the mailbox is full."""
        if self._idle:
            self._turn(request)
            return True
        if len(self._mailbox) >= SCHEDULER_MAILBOX_SIZE:
            return False
        self._mailbox.append(request)
        self._wake_up()
        return True

    async def send(self, request: Request) -> None:
        """Deliver ``request``, waiting for room in the mailbox if it is full.

        Like a channel send: a caller cancelled beforehand delivers nothing; once past the
        check the request is delivered whatever happens to the caller."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.deliver_nowait(request):
            await self._space.park()

    def wake_nowait(self) -> None:
        """Ask the scheduler to offer the queue to its waiters again, on its own task.

        Deferred rather than run here because the caller may be mid-way through its own
        bookkeeping (a roll back of memory, a task turn)."""
        self._applier.work_queued = True
        self._wake_up()

    def _wake_up(self) -> None:
        if self._idle:
            self._idle = False
            self._mail.unpark()

    def _turn(self, request: Request) -> None:
        """One turn of the scheduler on the delivering task (it was idle: nothing queued)."""
        self._handle(request)
        if self._applier.work_queued:
            self._serve_waiters()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        mailbox = self._mailbox
        task_status.started()
        try:
            while True:
                # Drain everything queued before yielding, so claims that arrived together
                # are applied together, then offer new work to the waiters.
                while mailbox:
                    self._handle(mailbox.popleft())
                if self._space:
                    self._space.unpark_all()
                if self._applier.work_queued:
                    self._serve_waiters()
                if not mailbox:
                    self._idle = True
                    await self._mail.park()
        finally:
            self._idle = False

    def _handle(self, message: SchedulerMessage) -> None:
        command = message.command
        if isinstance(command, ClaimNext):
            if message.abandoned:
                # The caller stopped waiting (its timeout ran out, it was cancelled) while
                # the claim sat in the mailbox: making it now would hand a lease to nobody,
                # and the session's next claim would find it already holding one.
                return
            if message.wait:
                if not self._try_claim_for(message):
                    message.parked = True
                    self.waiters.park(message)
                return
        elif isinstance(command, FinishAndClaim):
            self._finish_and_claim(message)
            return
        self._applier.execute(message)

    def _finish_and_claim(self, request: Request) -> None:
        """A finish followed by a claim, applied as one command by the scheduler.

        Routed here rather than to the task actor because the claim part needs the claim
        index, and one command keeps both parts in one journal record: a single commit and
        a single reply. If the claim part found nothing and the caller waits, the finish is
        journaled under a request of its own and this request parks as a plain claim.
        """
        command = request.command
        assert isinstance(command, FinishAndClaim)
        outcome = self._applier.apply(request)
        if outcome is None:
            return
        no_claim = outcome.reply.no_claim
        if (
            request.wait
            and not request.abandoned
            and no_claim is not None
            # Only "nothing to take" is worth waiting for: a session that holds a lease
            # again (after a repeated finish) is told at once.
            and no_claim.code == NO_CLAIMABLE_RUN
        ):
            part = Request(command)
            part.assigned = True
            request.finish_part = part
            request.command = command.claim
            self._applier.hand_on(part, command, outcome)
            # The claim part already saw whatever the finish queued: wait for new work.
            request.parked = True
            self.waiters.park(request)
            return
        request.assigned = True
        self._applier.hand_on(request, command, outcome)

    def _try_claim_for(self, request: Request) -> bool:
        """One claim attempt for a waiting claimer; True once it is settled."""
        applier = self._applier
        command = request.command
        refusal = applier.committer.refusal
        if refusal is not None:
            if refusal.code == RESOURCE_EXHAUSTED:
                # Memory is being rolled back after a transient shortage: keep waiting,
                # the waiters are offered the restored state once it is adopted.
                return False
            request.resolve(None, refusal)
            return True
        try:
            outcome = applier.apply_now(command)
        except RunleaseError as exc:
            if exc.code == NO_CLAIMABLE_RUN:
                return False
            applier.committer.hold(request, None, exc)
            return True
        if outcome.error is not None and outcome.error.code == NO_CLAIMABLE_RUN:
            # The claim expired the session's stale lease but found nothing: record the
            # expiry (it is journaled without a caller) and keep waiting.
            applier.hand_on(Request(command), command, outcome)
            return False
        request.assigned = True
        applier.hand_on(request, command, outcome)
        return True

    def _serve_waiters(self) -> None:
        self._applier.work_queued = False
        index = self._applier.machine.index
        self.waiters.serve(self._try_claim_for, lambda: len(index) > 0)

    def fail_waiters(self, error: RunleaseError) -> None:
        """Resolve every waiting claimer with ``error`` (the runtime is closing)."""
        for request in self.waiters.drain():
            request.resolve(None, error)
