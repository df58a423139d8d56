"""The scheduler actor: claims and session commands, and the claimers waiting for work.

It owns the claimable index and the sessions. Its mailbox is drained in batches: it takes
every message already queued before yielding, so claims that arrive together are applied
together, and only then offers newly queued runs to the waiting claimers.

A claimer that asked to wait and found nothing parks in the :class:`WaiterQueue`, FIFO, each
with its own filters. Whenever a run enters the queue the scheduler walks the waiters in
arrival order and lets each try a claim; a waiter whose filters match nothing stays where it
is, so a picky early waiter never starves a later one that can take the run. Waiters that
gave up (timeout, cancellation) are dropped lazily.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import msgspec
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
        kept: deque[W] = deque()
        waiters = self._waiters
        while waiters and has_work():
            waiter = waiters.popleft()
            if waiter.abandoned:
                continue
            if not attempt(waiter):
                kept.append(waiter)
        kept.extend(waiters)
        self._waiters = kept

    def drain(self) -> list[W]:
        """Remove and return every live waiter (the runtime is closing)."""
        waiters = [w for w in self._waiters if not w.abandoned]
        self._waiters.clear()
        return waiters


class WorkAvailable(msgspec.Struct, tag="work_available"):
    """Tells the scheduler that a run entered the queue, so waiters should try again."""


SchedulerMessage = Request | WorkAvailable
_WORK_AVAILABLE = WorkAvailable()


class Scheduler:
    def __init__(self, applier: Applier) -> None:
        self._applier = applier
        self.waiters: WaiterQueue[Request] = WaiterQueue()
        self._send, self._receive = trio.open_memory_channel[SchedulerMessage](
            SCHEDULER_MAILBOX_SIZE
        )
        # True while a WorkAvailable sits in the mailbox: one is enough to make the
        # scheduler serve its waiters, however many runs entered the queue meanwhile.
        self._wake_pending = False

    async def send(self, request: Request) -> None:
        await self._send.send(request)

    def wake_nowait(self) -> None:
        """Ask the scheduler to offer the queue to its waiters again.

        If the mailbox is full the scheduler is busy and checks ``work_queued`` after its
        current batch anyway, so the wake-up can be dropped; so can one asked for while an
        earlier one is still in the mailbox."""
        if self._wake_pending:
            return
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(_WORK_AVAILABLE)
            self._wake_pending = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        receive = self._receive
        task_status.started()
        while True:
            message = await receive.receive()
            self._handle(message)
            # Drain whatever else is queued before yielding, so claims batch up.
            while True:
                try:
                    message = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                self._handle(message)
            if self._applier.work_queued:
                self._serve_waiters()

    def _handle(self, message: SchedulerMessage) -> None:
        if isinstance(message, WorkAvailable):
            self._wake_pending = False
            self._applier.work_queued = True
            return
        if isinstance(message.command, ClaimNext) and message.wait:
            if not self._try_claim_for(message):
                self.waiters.park(message)
            return
        if isinstance(message.command, FinishAndClaim):
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
        if request.wait and not request.abandoned and outcome.reply.claim is None:
            part = Request(command)
            part.assigned = True
            request.finish_part = part
            request.command = command.claim
            self._applier.hand_on(part, command, outcome)
            # The claim part already saw whatever the finish queued: wait for new work.
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
