"""``runlease token``: access tokens for callers that are not the local operator."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from runlease.cli.context import GLOBALS, connect, show
from runlease.cli.durations import duration
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.paths import ENV_ACCESS_TOKEN


def token_create(
    *,
    role: Annotated[
        Literal["reader", "agent", "operator"],
        Param(help="reader: reads only; agent: its own sessions' work; operator: everything."),
    ],
    name: Annotated[str, Param(help="A name unique among live tokens; events show it.")],
    ttl: Annotated[
        float | None, duration(help="Time until the token expires (default: never).")
    ] = None,
) -> int:
    """Make an access token and print its secret (shown only this once)."""
    with connect() as client:
        token, secret = client.create_token(name=name, role=role, ttl=ttl)
    show({"token": secret, "access_token": plain(token)})
    if GLOBALS.output == "table":
        sys.stderr.write(
            f"Keep the token: it is shown only once.\n  export {ENV_ACCESS_TOKEN}={secret}\n"
        )
    return 0


def token_list() -> int:
    """Every token with its role, expiry and revocation (never a secret)."""
    with connect() as client:
        tokens = client.list_tokens()
    return show({"tokens": plain(tokens)})


def token_revoke(token: str, /) -> int:
    """Revoke a token by its id or its name; its connections are refused from then on."""
    with connect() as client:
        revoked = client.revoke_token(token)
    return show({"access_token": plain(revoked)})
