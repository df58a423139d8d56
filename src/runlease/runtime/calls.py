"""One request being carried out: the runtime, and who asks through which surface.

Every operation runs as ``await request.execute(Call(...))`` (or ``serve`` over the
socket), wherever it came from; only the :class:`Call` differs. It stamps every command
with the caller's actor and origin, and resolves the caller's session lazily (from a bearer
token over the socket), so a refusal for a missing session is an ordinary error reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from runlease.core.model import Actor, Origin
from runlease.errors import InvalidInput
from runlease.operations import ServerStatus

if TYPE_CHECKING:
    from runlease.runtime.runtime import Runtime

# Stamped on writes made through the embedded API.
EMBEDDED: Final = Origin(kind="embedded")


class Call:
    """Who carries out one request, and what it may use while it runs.

    A call that names its caller up front (embedded: the runtime, a session handle, an
    acting-as view) holds nothing that changes from one request to the next, so each of
    those surfaces keeps one and reuses it; the socket server makes one per request, since
    the token is resolved per request.
    """

    __slots__ = ("_actor", "_session_id", "_status", "_token", "origin", "runtime", "stop_waiting")

    def __init__(
        self,
        runtime: Runtime,
        *,
        origin: Origin = EMBEDDED,
        actor: Actor | None = None,
        session_id: str | None = None,
        token: str | None = None,
        stop_waiting: trio.CancelScope | None = None,
        status: Callable[[], ServerStatus] | None = None,
    ) -> None:
        self.runtime = runtime
        self.origin = origin
        # Cancelling it ends the wait of a finish's claim part (the finish still stands).
        self.stop_waiting = stop_waiting
        self._actor = actor
        self._session_id = session_id
        self._token = token
        self._status = status

    def actor(self, default: Actor | None = None) -> Actor | None:
        """Who the command is stamped with: the caller's own actor if it named one, else its
        session, else ``default`` (the operator for operator actions; None lets the state
        machine decide)."""
        if self._actor is not None:
            return self._actor
        if self._session_id is not None or self._token is not None:
            # The caller is its session, for every command of this call: made once.
            self._actor = Actor(kind="agent_session", ref=self.session_id())
            return self._actor
        return default

    def session_id(self) -> str:
        """The caller's session; AUTONOMY_SESSION_REQUIRED when it has none.

        Every request made as a session asks for it, so this is where the session's last
        activity is kept (see actors/idle_sessions.py)."""
        if self._session_id is None:
            self._session_id = self.runtime.session_id_for_token(self._token)
        self.runtime.activity.touch(self._session_id)
        return self._session_id

    def status(self) -> ServerStatus:
        if self._status is None:
            raise InvalidInput("status describes a server; embedded, use Runtime.status()")
        return self._status()
