"""``runlease session open|stop|list``."""

from __future__ import annotations

import sys
from typing import Annotated

from runlease.cli.context import GLOBALS, connect, show
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.paths import ENV_SESSION_TOKEN


def session_open(
    *,
    agent: Annotated[str, Param(help="Who the session works for.")] = "agent",
    parent: Annotated[str | None, Param(help="A parent SESSION_ID.")] = None,
    ttl: Annotated[float | None, Param(help="Stop the session after SECONDS.")] = None,
    capability: Annotated[
        list[str] | None, Param(help="A capability the session offers (repeatable).")
    ] = None,
) -> int:
    """Open a session and print its id and its token (shown only this once)."""
    with connect() as client:
        session, token = client.open_session(
            agent=agent, parent=parent, ttl=ttl, capabilities=capability or []
        )
    show({"session_id": session.id, "session_token": token, "session": plain(session)})
    if GLOBALS.output == "table":
        sys.stderr.write(
            f"Keep the token: it is shown only once.\n  export {ENV_SESSION_TOKEN}={token}\n"
        )
    return 0


def session_stop(
    session_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why it stops.")] = None,
) -> int:
    """Stop a session: its lease goes back to the queue, its children stop too.

    Parameters
    ----------
    session_id
        The session to stop.
    """
    with connect() as client:
        released = client.stop_session(session_id, reason=reason)
    return show(plain(released))


def session_list(
    *, live: Annotated[bool, Param(help="Only sessions that are still live.")] = False
) -> int:
    """List sessions, oldest first."""
    with connect() as client:
        sessions = client.list_sessions(live_only=live)
    return show({"sessions": plain(sessions)})
