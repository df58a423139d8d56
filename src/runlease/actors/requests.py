"""A request in flight: the command, and where its outcome goes once it is durable."""

from __future__ import annotations

from typing import Any

import trio

from runlease.core.commands import AnyCommand
from runlease.errors import RunleaseError


class Request:
    """One command on its way through an actor and the journal to its caller.

    ``assigned`` turns true the moment the state machine accepted the command: from then on
    its outcome must reach the caller even if the caller's own timeout fires, because the
    state already changed (for a claim: the session now holds the lease).

    ``finish_part`` is set when a finish-and-claim found nothing and parked to wait: the
    finish goes to the journal on its own under that request, and this one carries on as a
    plain waiting claim.

    ``parked`` turns true when a claim found nothing and joined the waiting claimers: its
    answer then took as long as work took to come, which the claim timings keep apart.

    ``resolved`` turns true with the outcome. The :attr:`done` event exists only once
    someone asks for it: a request answered during the turn that delivered it (the common
    case in memory) never needs one.
    """

    __slots__ = (
        "_done",
        "abandoned",
        "assigned",
        "command",
        "error",
        "finish_part",
        "parked",
        "reply",
        "resolved",
        "wait",
    )

    def __init__(self, command: AnyCommand, *, wait: bool = False) -> None:
        self.command = command
        self.wait = wait
        self._done: trio.Event | None = None
        self.resolved = False
        self.reply: Any = None
        self.error: RunleaseError | None = None
        self.assigned = False
        self.abandoned = False
        self.finish_part: Request | None = None
        self.parked = False

    @property
    def done(self) -> trio.Event:
        """Set once the request is resolved."""
        done = self._done
        if done is None:
            done = self._done = trio.Event()
            if self.resolved:
                done.set()
        return done

    def resolve(self, reply: Any, error: RunleaseError | None = None) -> None:
        self.reply = reply
        self.error = error
        self.resolved = True
        if self._done is not None:
            self._done.set()

    async def outcome(self) -> None:
        """Wait until it is resolved.

        If it already is, this is only a schedule point that a cancellation cannot
        interrupt: the outcome exists, so it must reach the caller (a cancellation then
        lands at the caller's next checkpoint). Otherwise it waits on :attr:`done`.
        """
        if self.resolved:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self.done.wait()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply
