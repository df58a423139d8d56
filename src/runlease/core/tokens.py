"""Access tokens: make and revoke them. Pure: the shell draws the id and the secret.

A token's secret is never in the state, the journal or an event: the command carries its
sha256 hash, the way a session token is kept. Expiry needs no command: a token past its
``expires_at`` is simply no longer usable (:meth:`AccessToken.usable`), so nothing has to
run at the moment it expires, and replay decides exactly as the first run did.

Names are unique among usable tokens, so ``token revoke NAME`` names one token; the name of
a revoked or expired token may be given to a new one.
"""

from __future__ import annotations

import msgspec

from runlease.core import validate
from runlease.core.commands import CreateToken, RevokeToken
from runlease.core.ids import is_token_hash
from runlease.core.model import ROLES, AccessToken
from runlease.core.outcome import Outcome
from runlease.core.registry import handles
from runlease.core.state import State
from runlease.errors import CONFLICT, INVALID_TRANSITION, TOKEN_NOT_FOUND, InvalidInput, NotFound

TOKEN_NOT_FOUND_HINT = "`runlease token list` shows the tokens"


def usable_token_named(m: State, name: str, now: float) -> AccessToken | None:
    for token in m.access_tokens.values():
        if token.name == name and token.usable(now):
            return token
    return None


@handles(CreateToken)
def create_token(m: State, cmd: CreateToken) -> Outcome[AccessToken]:
    name = validate.name(cmd.name, "name")
    if cmd.role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {cmd.role!r}")
    if not is_token_hash(cmd.token_hash) or cmd.token_hash in m.access_token_by_hash:
        raise InvalidInput("token hash is malformed or already in use")
    if cmd.token_id in m.access_tokens:
        raise InvalidInput(f"token {cmd.token_id!r} already exists")
    if usable_token_named(m, name, cmd.now) is not None:
        raise InvalidInput(
            f"a live token is already named {name!r}; revoke it first or pick another name",
            code=CONFLICT,
        )
    expires_at = None
    if cmd.ttl_seconds is not None:
        expires_at = cmd.now + validate.positive_seconds(cmd.ttl_seconds, "ttl")
    token = AccessToken(
        id=cmd.token_id,
        name=name,
        role=cmd.role,
        token_hash=cmd.token_hash,
        created_at=cmd.now,
        expires_at=expires_at,
    )
    m.access_tokens[token.id] = token
    m.access_token_by_hash[token.token_hash] = token.id
    event = m.event(
        "token_created",
        cmd.now,
        data={"token_id": token.id, "name": name, "role": token.role, "expires_at": expires_at},
    )
    return Outcome(reply=_copy(token), events=[event])


@handles(RevokeToken)
def revoke_token(m: State, cmd: RevokeToken) -> Outcome[AccessToken]:
    token = m.access_tokens.get(cmd.ref) or usable_token_named(m, cmd.ref, cmd.now)
    if token is None:
        raise NotFound(
            f"no token with id or live name {cmd.ref!r}; {TOKEN_NOT_FOUND_HINT}",
            code=TOKEN_NOT_FOUND,
        )
    if token.revoked_at is not None:
        raise InvalidInput(f"token {token.id} is already revoked", code=INVALID_TRANSITION)
    token.revoked_at = cmd.now
    event = m.event("token_revoked", cmd.now, data={"token_id": token.id, "name": token.name})
    return Outcome(reply=_copy(token), events=[event])


def _copy(token: AccessToken) -> AccessToken:
    return msgspec.structs.replace(token)
