"""Which function handles which command, filled in by the ``@handles`` decorator.

Each handler module registers its functions when it is imported; ``runlease.core.machine``
imports all of them, so a :class:`~runlease.core.machine.Machine` always sees the full
table. A command type can be registered once only, and a test checks that every member of
``AnyCommand`` has a handler whose reply type is the command's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from runlease.core.commands import Command, ExpireLease, ExpireSession
from runlease.core.model import Actor
from runlease.core.outcome import Outcome
from runlease.core.state import State
from runlease.errors import InvalidInput

C = TypeVar("C", bound=Command[Any])
R = TypeVar("R")

Handler = Callable[[State, Any], Outcome[Any]]

HANDLERS: dict[type[Command[Any]], Handler] = {}


def handles(
    command_type: type[C],
) -> Callable[[Callable[[State, C], Outcome[R]]], Callable[[State, C], Outcome[R]]]:
    """Register the decorated function as the handler of ``command_type``."""

    def register(handler: Callable[[State, C], Outcome[R]]) -> Callable[[State, C], Outcome[R]]:
        if command_type in HANDLERS:
            raise TypeError(
                f"{command_type.__name__} is already handled by "
                f"{HANDLERS[command_type].__qualname__}"
            )
        HANDLERS[command_type] = handler
        return handler

    return register


def dispatch(state: State, command: Command[R]) -> Outcome[R]:
    """Apply one command to ``state`` through its registered handler.

    Sets who is acting for the events the command emits, and moves the clock's high-water
    mark. Only commands that emit events change the state and reach the journal, so only
    they move the mark: replay then reaches exactly the same value.
    """
    handler = HANDLERS.get(type(command))
    if handler is None:
        raise InvalidInput(f"unknown command {type(command).__name__}")
    state.actor = command.actor or default_actor(command)
    state.origin = command.origin
    outcome: Outcome[R] = handler(state, command)
    if outcome.events and command.now > state.high_water:
        state.high_water = command.now
    return outcome


def default_actor(command: Command[Any]) -> Actor | None:
    """Who did it, when the shell did not say: the session, or the lease clock."""
    session_id = getattr(command, "session_id", None)
    if isinstance(session_id, str) and session_id:
        return Actor(kind="agent_session", ref=session_id)
    if isinstance(command, ExpireLease | ExpireSession):
        return Actor(kind="daemon", ref="lease_clock")
    return None
