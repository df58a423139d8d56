"""One request being carried out: the runtime, and who asks through which surface.

Every operation runs as ``await request.execute(Call(...))`` (or ``serve`` over the
socket), wherever it came from; only the :class:`Call` differs. It stamps every command
with the caller's actor and origin, and resolves the caller's session lazily (from a bearer
token over the socket), so a refusal for a missing session is an ordinary error reply.

Over the socket a call may also carry the access token its connection authenticated with
(the principal): the request's operation must need no more than the token's role
(:meth:`Call.authorize`), and an agent token acts only with the sessions it opened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from runlease.core.model import ROLE_RANK, AccessToken, Actor, Origin
from runlease.errors import PERMISSION_DENIED, InvalidInput, LeaseRefused
from runlease.operations import OPERATIONS, REQUIRED_RANK, Request, ServerStatus

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

    __slots__ = (
        "_actor",
        "_session_id",
        "_status",
        "_token",
        "origin",
        "principal",
        "runtime",
        "stop_waiting",
    )

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
        principal: AccessToken | None = None,
    ) -> None:
        self.runtime = runtime
        # The access token the caller authenticated with; None: trusted (embedded, or the
        # owner-only local socket without a token), which may do everything.
        self.principal = principal
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
            session_id = self.runtime.session_id_for_token(self._token)
            self.check_session(session_id)
            self._session_id = session_id
        self.runtime.activity.touch(self._session_id)
        return self._session_id

    @property
    def token_id(self) -> str | None:
        """The id of the caller's access token, recorded on the sessions it opens."""
        return None if self.principal is None else self.principal.id

    def authorize(self, request: Request[object]) -> None:
        """PERMISSION_DENIED unless the caller's role may run ``request``'s operation."""
        principal = self.principal
        if principal is None or REQUIRED_RANK[type(request)] <= ROLE_RANK[principal.role]:
            return
        needed = OPERATIONS[str(type(request).__struct_config__.tag)].role
        raise LeaseRefused(
            f"{type(request).__struct_config__.tag} needs the {needed} role; token "
            f"{principal.name!r} has the {principal.role} role (an operator can make a "
            f"token with `runlease token create --role {needed} --name NAME`)",
            code=PERMISSION_DENIED,
        )

    def check_session(self, session_id: str) -> None:
        """An agent token acts only with sessions opened over a connection that presented
        it; an operator token, like a trusted caller, acts with any. A reader cannot get
        this far with a write, and may read as any session."""
        principal = self.principal
        if principal is None or principal.role != "agent":
            return
        session = self.runtime.get_session(session_id)
        if session.token_id != principal.id:
            raise LeaseRefused(
                f"session {session_id} was not opened with token {principal.name!r}; an "
                "agent token acts only with the sessions it opened (open one with it)",
                code=PERMISSION_DENIED,
            )

    def status(self) -> ServerStatus:
        if self._status is None:
            raise InvalidInput("status describes a server; embedded, use Runtime.status()")
        return self._status()
