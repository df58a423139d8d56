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
    """

    __slots__ = (
        "abandoned",
        "assigned",
        "command",
        "done",
        "error",
        "finish_part",
        "reply",
        "wait",
    )

    def __init__(self, command: AnyCommand, *, wait: bool = False) -> None:
        self.command = command
        self.wait = wait
        self.done = trio.Event()
        self.reply: Any = None
        self.error: RunleaseError | None = None
        self.assigned = False
        self.abandoned = False
        self.finish_part: Request | None = None

    def resolve(self, reply: Any, error: RunleaseError | None = None) -> None:
        self.reply = reply
        self.error = error
        self.done.set()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply
