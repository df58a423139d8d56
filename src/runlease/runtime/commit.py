"""Where applied commands go before their replies are released.

The in-memory committer acknowledges at once. The journal committer (``runlease.runtime.
journal``) writes every applied command to LMDB first and acknowledges after the commit,
so a reply always describes durable state. Either way the actors only call ``submit``,
which never blocks: the hot path is apply, submit, move on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from runlease.core.commands import AnyCommand
from runlease.core.machine import Outcome
from runlease.errors import RunleaseError
from runlease.runtime.requests import Request

Acknowledge = Callable[[Request | None, Outcome], None]


class Committer(Protocol):
    def submit(self, request: Request | None, command: AnyCommand, outcome: Outcome) -> None:
        """Make ``outcome`` durable, then acknowledge it. Must not block."""

    async def flush(self) -> None:
        """Return once everything submitted so far has been acknowledged."""

    @property
    def refusal(self) -> RunleaseError | None:
        """Set once writes can no longer be made durable; actors then refuse all writes."""


class MemoryCommitter:
    """No durability: acknowledge immediately."""

    def __init__(self, acknowledge: Acknowledge) -> None:
        self._acknowledge = acknowledge

    def submit(self, request: Request | None, command: AnyCommand, outcome: Outcome) -> None:
        self._acknowledge(request, outcome)

    async def flush(self) -> None:
        return None

    @property
    def refusal(self) -> RunleaseError | None:
        return None
