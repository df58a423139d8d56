"""``runlease session open|stop|list``."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

from runlease.cli.context import GLOBALS, connect, show
from runlease.cli.durations import duration
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.client_common import ENV_SERVER, ENV_TLS_CA
from runlease.errors import UsageError
from runlease.paths import ENV_ACCESS_TOKEN, ENV_SESSION_TOKEN, ENV_SOCKET

# Where --export puts the session's id: for the script's own use (session stop, logs);
# the CLI itself reads only the token.
ENV_SESSION_ID = "RUNLEASE_SESSION_ID"


def session_open(
    *,
    agent: Annotated[str, Param(help="Who the session works for.")] = "agent",
    parent: Annotated[str | None, Param(help="A parent SESSION_ID.")] = None,
    ttl: Annotated[float | None, duration(help="Stop the session after SECONDS.")] = None,
    capability: Annotated[
        list[str] | None, Param(help="A capability the session offers (repeatable).")
    ] = None,
    export: Annotated[
        bool,
        Param(
            negative=(),
            help=f"Print shell export lines instead ({ENV_SESSION_TOKEN}, {ENV_SESSION_ID}, "
            "and where the server is when given on the command line), for "
            'eval "$(runlease session open --export)".',
        ),
    ] = False,
) -> int:
    """Open a session and print its id and its token (shown only this once)."""
    if export and GLOBALS.field is not None:
        raise UsageError("give --export or --field, not both")
    if export:
        # stdout is for eval: an error there would be run as shell code.
        GLOBALS.error_output = "table"
    with connect() as client:
        session, token = client.open_session(
            agent=agent, parent=parent, ttl=ttl, capabilities=capability or []
        )
    if export:
        sys.stdout.write(_exports(session.id, token))
        sys.stdout.flush()
        return 0
    show({"session_id": session.id, "session_token": token, "session": plain(session)})
    if GLOBALS.output == "table":
        sys.stderr.write(
            f"Keep the token: it is shown only once.\n  export {ENV_SESSION_TOKEN}={token}\n"
        )
    return 0


def _exports(session_id: str, token: str) -> str:
    """``export NAME=VALUE`` lines, shell-quoted, that let the commands after an ``eval``
    act for this session on the same server."""
    variables = {ENV_SESSION_TOKEN: token, ENV_SESSION_ID: session_id}
    # The connection settings in force, so they carry over when given as flags.
    if GLOBALS.server:
        variables[ENV_SERVER] = GLOBALS.server
    elif GLOBALS.socket is not None:
        variables[ENV_SOCKET] = str(GLOBALS.socket.expanduser().absolute())
    if GLOBALS.tls_ca is not None:
        variables[ENV_TLS_CA] = str(GLOBALS.tls_ca.expanduser().absolute())
    if GLOBALS.token:
        variables[ENV_ACCESS_TOKEN] = GLOBALS.token
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


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
