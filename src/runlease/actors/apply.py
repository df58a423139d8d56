"""The step every actor takes for a command: apply it to the machine now, hand the outcome on.

The scheduler and the task actors share it, so a refusal, a bug in a handler, a new deadline
or a run entering the queue is handled the same way whichever actor applied the command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from runlease.actors.clock import RuntimeClock
from runlease.actors.commit import Committer
from runlease.actors.requests import Request
from runlease.core.commands import AnyCommand
from runlease.core.machine import Deadline, Machine, Outcome
from runlease.errors import InternalError, RunleaseError

log = logging.getLogger("runlease")


class Applier:
    """Applies commands for the actors and routes each outcome to the committer.

    ``on_deadline`` receives every lease or session deadline an outcome sets (the lease
    clock watches them). ``work_queued`` turns true when an outcome put a run in the queue;
    the scheduler clears it once it has offered the queue to its waiting claimers.
    """

    def __init__(
        self,
        machine: Machine,
        clock: RuntimeClock,
        committer: Committer,
        *,
        on_deadline: Callable[[Deadline], None],
    ) -> None:
        self.machine = machine
        self.clock = clock
        self.committer = committer
        self._on_deadline = on_deadline
        self.work_queued = False

    def apply_now(self, command: AnyCommand) -> Outcome[Any]:
        """Apply ``command`` at the current time.

        A refusal raises its RunleaseError. A bug in a handler raises InternalError (the
        traceback is logged), so one bad command fails its own caller and never takes an
        actor's loop down with it.
        """
        command.now = self.clock.now()
        try:
            return self.machine.apply(command)
        except RunleaseError:
            raise
        except Exception:
            raise _internal_error(command) from None

    def apply(self, request: Request) -> Outcome[Any] | None:
        """Apply a request's command; on refusal resolve the request and return None."""
        refusal = self.committer.refusal
        if refusal is not None:
            request.resolve(None, refusal)
            return None
        try:
            return self.apply_now(request.command)
        except RunleaseError as exc:
            # The refusal was judged against memory, which may hold changes not yet
            # durable: it is released only once they are.
            self.committer.hold(request, None, exc)
            return None

    def execute(self, request: Request) -> Outcome[Any] | None:
        """Apply a request's command and hand its outcome on. None on refusal.

        The same steps as :meth:`apply` then :meth:`hand_on`, written out in one function
        because every claim and finish takes this path."""
        committer = self.committer
        refusal = committer.refusal
        if refusal is not None:
            request.resolve(None, refusal)
            return None
        command = request.command
        command.now = self.clock.now()
        try:
            outcome = self.machine.apply(command)
        except RunleaseError as exc:
            committer.hold(request, None, exc)
            return None
        except Exception:
            committer.hold(request, None, _internal_error(command))
            return None
        request.assigned = True
        for deadline in outcome.deadlines:
            self._on_deadline(deadline)
        if outcome.events:
            committer.submit(request, command, outcome)
        else:
            committer.hold(request, outcome.reply, outcome.error)
        if outcome.queued:
            self.work_queued = True
        return outcome

    def hand_on(self, request: Request, command: AnyCommand, outcome: Outcome[Any]) -> None:
        """Route an applied command's outcome: deadlines to the clock, changes to the journal."""
        for deadline in outcome.deadlines:
            self._on_deadline(deadline)
        if outcome.events:
            self.committer.submit(request, command, outcome)
        else:
            # Nothing changed, so there is nothing to journal; but the reply describes
            # memory, so it waits for the changes before it to be durable.
            self.committer.hold(request, outcome.reply, outcome.error)
        if outcome.queued:
            self.work_queued = True


def _internal_error(command: AnyCommand) -> InternalError:
    """A bug in a handler: logged with its traceback (call it inside the ``except``)."""
    log.exception("internal error applying %s", type(command).__name__)
    return InternalError(f"internal error in {type(command).__name__}")
