"""Where applied commands go before their replies are released.

The in-memory committer acknowledges at once. The journal committer (``runlease.runtime.
journal``) writes every applied command to LMDB first and acknowledges after the commit,
so a reply always describes durable state. Either way the actors only call ``submit``,
which never blocks: the hot path is apply, submit, move on.

Replies that are not writes must not get ahead of the journal either: a refusal or a
"nothing changed" reply computed from the machine may describe a change still waiting for
its commit, so it goes through ``hold``; and a read captures ``submitted_seq`` and
``generation``, computes its answer, then awaits ``settle`` (see ``Runtime.read``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from runlease.actors.requests import Request
from runlease.core.commands import AnyCommand
from runlease.core.machine import Outcome
from runlease.errors import RunleaseError

Acknowledge = Callable[[Request | None, Outcome[Any]], None]


class Committer(Protocol):
    # How many commands have been handed to ``submit`` (the journal sequence of the newest).
    submitted_seq: int
    # Bumped each time memory is rolled back to the journal: state read before may be gone.
    generation: int

    def submit(self, request: Request | None, command: AnyCommand, outcome: Outcome[Any]) -> None:
        """Make ``outcome`` durable, then acknowledge it. Must not block."""

    def hold(self, request: Request, reply: Any, error: RunleaseError | None) -> None:
        """Resolve ``request`` with a reply that changed nothing, but only once every change
        it may have observed is durable; if that commit fails, resolve with the failure.
        Must not block."""

    async def settle(self, seq: int, generation: int) -> None:
        """Return once every command up to ``seq`` is committed or failed, or once memory
        was rolled back since ``generation`` (the caller must then look again)."""

    async def flush(self) -> None:
        """Return once everything submitted so far has been acknowledged."""

    @property
    def refusal(self) -> RunleaseError | None:
        """Set while writes cannot be made durable; actors then refuse all writes."""


class MemoryCommitter:
    """No durability: acknowledge immediately."""

    def __init__(self, acknowledge: Acknowledge) -> None:
        self._acknowledge = acknowledge
        self.submitted_seq = 0
        self.generation = 0

    def submit(self, request: Request | None, command: AnyCommand, outcome: Outcome[Any]) -> None:
        self._acknowledge(request, outcome)

    def hold(self, request: Request, reply: Any, error: RunleaseError | None) -> None:
        request.resolve(reply, error)

    async def settle(self, seq: int, generation: int) -> None:
        return None

    async def flush(self) -> None:
        return None

    @property
    def refusal(self) -> RunleaseError | None:
        return None
