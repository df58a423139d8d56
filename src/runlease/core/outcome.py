"""What applying one command produced: the reply, the events, and the shell's next steps."""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar

import msgspec

from runlease.core.model import Event
from runlease.errors import RunleaseError

R = TypeVar("R")

# (deadline, kind, id): what the lease clock must watch after this step.
Deadline = tuple[float, str, str]
LEASE_DEADLINE: Final = "lease"
SESSION_DEADLINE: Final = "session"


class Outcome(msgspec.Struct, Generic[R], kw_only=True):
    """The result of a command that was applied (a refusal raises instead).

    ``reply`` is what the caller gets back. ``error`` is set only when a claim first expired
    its session's stale lease (a change, with its event) and then found nothing to take:
    the change must be journaled and the caller still gets the error; ``reply`` is then
    meaningless. :meth:`result` gives the reply or raises that error.
    """

    reply: R
    events: list[Event] = []
    deadlines: list[Deadline] = []
    # True when a run entered the queue, so waiting claimers should try again.
    queued: bool = False
    error: RunleaseError | None = None

    def result(self) -> R:
        if self.error is not None:
            raise self.error
        return self.reply


def refused_after_changes(
    error: RunleaseError, events: list[Event], *, queued: bool
) -> Outcome[Any]:
    """An outcome that changed the state (``events``) and still refuses with ``error``.

    It has no reply, hence ``Outcome[Any]``: callers read :meth:`Outcome.result`, which
    raises the error.
    """
    return Outcome(reply=None, events=events, queued=queued, error=error)
