"""Roles and tokens end to end over TCP with TLS, against a ``runlease serve`` process.

The role rules themselves are tested in process (test_roles.py); here the same table of
examples goes through a real TLS connection, and a token that is wrong, revoked, expired
or missing is refused in the handshake of a TCP connection.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from remote_helpers import Remote, tls_server
from runlease import protocol as p
from runlease.client import Client
from runlease.client_common import ServerAddress
from runlease.core.model import ROLES, Role
from runlease.errors import AUTH_TOKEN_REFUSED
from runlease.runtime.client import open_stream
from socket_helpers import STEP, Raw
from test_roles import runs_what_it_may


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    with tls_server(tmp_path_factory.mktemp("remote-roles")) as served:
        yield served


async def tls_hello(remote: Remote, token: str | None) -> tuple[Raw, p.AnyReply | None]:
    """A raw TLS connection to ``remote`` and the server's answer to a hello with ``token``."""
    raw = Raw(await open_stream(ServerAddress.parse(remote.url), STEP, remote.tls))
    await raw.send(p.Hello(id=1, versions=[1], auth_token=token))
    return raw, await raw.reply()


def make_token(remote: Remote, role: Role, name: str, *more: str) -> dict[str, object]:
    made: dict[str, object] = remote.local_cli().ok(
        "token", "create", "--role", role, "--name", name, *more
    )
    return made


async def refused_at_hello(remote: Remote, token: str | None) -> None:
    raw, reply = await tls_hello(remote, token)
    try:
        assert isinstance(reply, p.ErrorReply), reply
        assert reply.code == AUTH_TOKEN_REFUSED
        if token:
            assert token not in reply.message  # a secret is never echoed
        assert await raw.reply() is None  # and the connection is closed
    finally:
        await raw.close()


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_over_tls_runs_what_it_may_and_is_refused_the_rest(
    remote: Remote, role: Role
) -> None:
    secret = make_token(remote, role, f"tls-{role}")["token"]
    assert isinstance(secret, str)
    raw, welcome = await tls_hello(remote, secret)
    try:
        assert isinstance(welcome, p.Welcome), welcome
        await runs_what_it_may(raw, role)
    finally:
        await raw.close()


async def test_a_wrong_revoked_or_expired_token_is_refused_in_the_tls_handshake(
    remote: Remote,
) -> None:
    cli = remote.local_cli()
    revoked = make_token(remote, "agent", "tls-revoked")["token"]
    cli.ok("token", "revoke", "tls-revoked")
    # A token that lives a millisecond: by the time the server records anything later, its
    # clock (which never goes back) is past the expiry, checked here rather than assumed.
    with Client(remote.local, auth_token="") as local:
        brief, brief_secret = local.create_token(name="tls-brief", role="reader", ttl=0.001)
        # A CLI process in between: far more than a millisecond, asserted just below.
        made = cli.ok("task", "create", "after the brief token")["task"]
        later = local.get_task(made["id"])
    assert brief.expires_at is not None
    assert later.created_at >= brief.expires_at
    for token in ("rl_token_not-a-real-one", "some garbage", revoked, brief_secret):
        assert isinstance(token, str)
        await refused_at_hello(remote, token)
    # The refusals cost nothing: a good token still gets in.
    raw, welcome = await tls_hello(remote, remote.token)
    await raw.close()
    assert isinstance(welcome, p.Welcome)


async def test_a_tcp_connection_without_a_token_is_refused(remote: Remote) -> None:
    await refused_at_hello(remote, None)
    await refused_at_hello(remote, "")
