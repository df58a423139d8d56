"""Reaching a ``runlease serve`` process over TCP with TLS, end to end.

The role rules themselves are tested in process (test_roles.py); here the same table of
examples goes through a real TLS connection, a token that is wrong, revoked, expired or
missing is refused in the handshake, an agent's session outlives a crash of the server
(picked up on a new connection, or by the reconnecting client), and the anyio client
reaches the server over TLS from asyncio and from trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trio
import trustme

import runlease.aio
from reconnect_helpers import RECONNECT_TIMEOUT
from remote_helpers import Remote, tls_server
from runlease import open_runtime
from runlease import protocol as p
from runlease.client import Client
from runlease.client_common import ServerAddress, TlsFiles
from runlease.core.model import ROLES, Role
from runlease.errors import (
    AUTH_TOKEN_REFUSED,
    PERMISSION_DENIED,
    SERVER_UNAVAILABLE,
    RunleaseError,
    Unavailable,
)
from runlease.runtime.client import open_client, open_stream
from runlease.runtime.listeners import server_tls_context
from runlease.runtime.server import SocketServer, serve_socket
from socket_helpers import STEP, Raw
from test_roles import WallClock, runs_what_it_may


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


async def test_a_wrong_or_revoked_token_is_refused_in_the_tls_handshake(remote: Remote) -> None:
    revoked = make_token(remote, "agent", "tls-revoked")["token"]
    remote.local_cli().ok("token", "revoke", "tls-revoked")
    for token in ("rl_token_not-a-real-one", "some garbage", revoked):
        assert isinstance(token, str)
        await refused_at_hello(remote, token)
    # The refusals cost nothing: a good token still gets in.
    raw, welcome = await tls_hello(remote, remote.token)
    await raw.close()
    assert isinstance(welcome, p.Welcome)


async def test_an_expired_token_is_refused_in_the_tls_handshake(tmp_path: Path) -> None:
    # The server runs in this process, on a wall clock the test moves: the token expires
    # when the test says so, with no real time to wait for.
    ca = trustme.CA()
    pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    clock = WallClock()
    async with open_runtime(clock=clock) as rt, trio.open_nursery() as nursery:
        server: SocketServer = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: serve_socket(
                rt,
                None,
                listen=[ServerAddress.parse("tcp://127.0.0.1:0")],
                tls=server_tls_context(pem),
                task_status=task_status,
            )
        )
        address = ServerAddress.parse(server.urls[0])
        _, secret = await rt.create_token(name="brief", role="reader", ttl=60)

        async def answer_to_hello() -> p.AnyReply | None:
            raw = Raw(await open_stream(address, STEP, TlsFiles(ca=ca_pem)))
            try:
                await raw.send(p.Hello(id=1, versions=[1], auth_token=secret))
                reply = await raw.reply()
                if isinstance(reply, p.ErrorReply):
                    assert await raw.reply() is None  # the connection is closed
                return reply
            finally:
                await raw.close()

        assert isinstance(await answer_to_hello(), p.Welcome)
        clock.now += 59.5
        assert isinstance(await answer_to_hello(), p.Welcome)
        clock.now += 0.5
        refused = await answer_to_hello()
        assert isinstance(refused, p.ErrorReply)
        assert refused.code == AUTH_TOKEN_REFUSED
        assert secret not in refused.message
        server.shutdown()
        await server.wait_stopped()
        nursery.cancel_scope.cancel()


async def test_a_tcp_connection_without_a_token_is_refused(remote: Remote) -> None:
    await refused_at_hello(remote, None)
    await refused_at_hello(remote, "")


# ------------------------------------------------- a session across a server restart
def agent_token(remote: Remote, name: str) -> str:
    secret = make_token(remote, "agent", name)["token"]
    assert isinstance(secret, str)
    return secret


async def test_an_agent_session_resumes_on_a_new_tls_connection_after_a_crash(
    tmp_path: Path,
) -> None:
    with tls_server(tmp_path) as remote:
        agent = agent_token(remote, "roaming-agent")
        first_url = remote.url
        async with open_client(remote.url, tls=remote.tls, auth_token=agent) as client:
            session, secret = await client.open_session(agent="roaming")
            task = await client.create_task("survives a crash", start=True)
            claim = await client.claim_next(token=secret)
            assert claim.task.id == task.id
        # Killed and started again on the same data dir, listening on a new port.
        await trio.to_thread.run_sync(lambda: remote.restart(same_port=False))
        async with open_client(remote.url, tls=remote.tls, auth_token=agent) as client:
            assert (await client.status()).pid == remote.server.process.pid
            beat = await client.heartbeat(claim.run.id, token=secret)
            assert beat.run.id == claim.run.id
            done = await client.complete(claim.run.id, token=secret, result={"after": "crash"})
            assert done.status == "completed"
            resumed = await client.get_session(session.id)
            assert resumed.token_id == session.token_id is not None
        # The old address is gone: the session moved with the server, not with the port.
        assert remote.url != first_url


def test_the_reconnecting_sync_client_resumes_its_session_over_tls(tmp_path: Path) -> None:
    with tls_server(tmp_path) as remote:
        agent = agent_token(remote, "steady-agent")
        with Client(
            remote.url, tls=remote.tls, auth_token=agent, reconnect_timeout=RECONNECT_TIMEOUT
        ) as client:
            _, secret = client.open_session(agent="steady")
            client.session_token = secret
            task = client.create_task("carried across", start=True)
            claim = client.claim_next()
            before = client.status().pid
            # A crash, and the server back on the same port: the same client object carries on.
            remote.restart()
            assert client.heartbeat(claim.run.id).run.id == claim.run.id
            assert client.status().pid == remote.server.process.pid != before
            done = client.complete(claim.run.id, result={"after": "restart"})
            assert done.status == "completed"
            assert client.get_task(task.id).status == "completed"


# ------------------------------------------------- the anyio client over TCP+TLS
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_client_works_over_tls_with_an_agent_token(remote: Remote, backend: str) -> None:
    agent = agent_token(remote, f"anyio-{backend}")

    async def main() -> str:
        async with runlease.aio.open_client(remote.url, tls=remote.tls, auth_token=agent) as client:
            _, secret = await client.open_session(agent=f"anyio-{backend}")
            task = await client.create_task(f"{backend} over tls", start=True)
            claim = await client.claim_next(token=secret)
            assert claim.task.id == task.id
            await client.heartbeat(claim.run.id, token=secret)
            # The token's role holds on this connection as on any other.
            with pytest.raises(RunleaseError) as denied:
                await client.pause_scheduler()
            assert denied.value.code == PERMISSION_DENIED
            done = await client.complete(claim.run.id, token=secret, result={"on": backend})
            return done.status

    assert anyio.run(main, backend=backend) == "completed"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_client_is_refused_without_a_token_or_the_servers_ca(
    remote: Remote, backend: str
) -> None:
    async def connect(tls: TlsFiles, token: str) -> None:
        async with runlease.aio.open_client(remote.url, tls=tls, auth_token=token) as client:
            await client.status()

    with pytest.raises(RunleaseError) as no_token:
        anyio.run(connect, remote.tls, "", backend=backend)
    assert no_token.value.code == AUTH_TOKEN_REFUSED
    # Without the test CA the server's certificate is not trusted: no connection at all.
    with pytest.raises(Unavailable) as untrusted:
        anyio.run(connect, TlsFiles(), remote.token, backend=backend)
    assert untrusted.value.code == SERVER_UNAVAILABLE
    assert remote.url in str(untrusted.value)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_client_reports_a_lost_tls_server_and_leaves_quietly(
    tmp_path: Path, backend: str
) -> None:
    with tls_server(tmp_path) as remote:

        async def main() -> None:
            async with runlease.aio.open_client(
                remote.url, tls=remote.tls, auth_token=remote.token
            ) as client:
                await client.status()
                await anyio.to_thread.run_sync(remote.server.kill)
                with pytest.raises(Unavailable) as lost:
                    await client.status()
                assert lost.value.code == SERVER_UNAVAILABLE
                assert remote.url in str(lost.value)
            # Leaving the block closed the broken TLS stream without raising.

        anyio.run(main, backend=backend)
        remote.restart()  # for the helper's clean stop
