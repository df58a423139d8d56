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
    """

    __slots__ = ("abandoned", "assigned", "command", "done", "error", "reply", "wait")

    def __init__(self, command: AnyCommand, *, wait: bool = False) -> None:
        self.command = command
        self.wait = wait
        self.done = trio.Event()
        self.reply: Any = None
        self.error: RunleaseError | None = None
        self.assigned = False
        self.abandoned = False

    def resolve(self, reply: Any, error: RunleaseError | None = None) -> None:
        self.reply = reply
        self.error = error
        self.done.set()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply
