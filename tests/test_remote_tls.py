"""Serving over TCP with TLS: the clients and the CLI reach a remote server, mutual TLS
checks client certificates, and what is not TLS is refused without harming the server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from cli_helpers import Cli, Server, clean_env, log_event
from remote_helpers import Remote, tls_server
from runlease import open_runtime
from runlease import protocol as p
from runlease.client import Client
from runlease.client_common import ServerAddress, TlsFiles, hello
from runlease.errors import SERVER_UNAVAILABLE, InvalidInput, Unavailable
from runlease.runtime.client import open_client
from runlease.runtime.listeners import check_listeners, server_tls_context
from runlease.runtime.server import ServerLimits, SocketServer, serve_socket

STEP = 10.0


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    with tls_server(tmp_path_factory.mktemp("tls")) as served:
        yield served


def work_loop(client: Client, name: str) -> None:
    """Claim, heartbeat and complete one run through ``client``."""
    _, token = client.open_session(agent=name)
    task = client.create_task(f"{name} work", start=True)
    claim = client.claim_next(token=token)
    assert claim.task.id == task.id
    client.heartbeat(claim.run.id, token=token)
    client.complete(claim.run.id, token=token, result={"by": name})
    assert client.get_task(task.id).status == "completed"


def test_sync_client_works_over_tls(remote: Remote) -> None:
    with Client(remote.url, tls=remote.tls, auth_token=remote.token) as client:
        work_loop(client, "sync")
        assert client.status().connections >= 1


async def test_trio_client_works_over_tls(remote: Remote) -> None:
    async with open_client(remote.url, tls=remote.tls, auth_token=remote.token) as client:
        _, token = await client.open_session(agent="trio")
        task = await client.create_task("trio work", start=True)
        claim = await client.claim_next(token=token)
        assert claim.task.id == task.id
        await client.heartbeat(claim.run.id, token=token)
        await client.complete(claim.run.id, token=token, result={"by": "trio"})
        assert (await client.get_task(task.id)).status == "completed"


def test_cli_works_over_tls_from_the_environment(remote: Remote) -> None:
    cli = remote.cli()
    _, token = cli.session("cli-agent")
    task = cli.ok("task", "create", "cli work", "--start")["task"]
    claim = cli.ok("task", "next", token=token)
    assert claim["task"]["id"] == task["id"]
    run_id = claim["run"]["id"]
    cli.ok("task", "heartbeat", run_id, token=token)
    cli.ok("task", "complete", run_id, token=token)
    assert cli.ok("task", "show", task["id"])["task"]["status"] == "completed"


def test_cli_without_the_ca_refuses_the_server(remote: Remote) -> None:
    cli = remote.cli()
    del cli.env["RUNLEASE_TLS_CA"]
    message = cli.fails("status", code=SERVER_UNAVAILABLE, exit=6)
    assert remote.url in message


def test_plaintext_to_the_tls_port_is_refused_and_the_server_lives_on(remote: Remote) -> None:
    address = ServerAddress.parse(remote.url)
    with socket.create_connection((address.host, address.port), timeout=STEP) as raw:
        raw.sendall(p.encode_frame(hello(1)))
        received = b""
        try:
            while chunk := raw.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    # Whatever came back (a TLS alert at most) is no runlease reply.
    assert b"welcome" not in received
    remote.server.log.wait_for(lambda line: log_event(line) == "tls_handshake_failed", STEP)
    with Client(remote.url, tls=remote.tls, auth_token=remote.token) as client:
        assert client.status().pid == remote.server.process.pid
    # A plaintext client is told the server is unreachable, not left hanging.
    plain = ServerAddress.parse(remote.url)._replace(tls=False)
    with pytest.raises(Unavailable), Client(plain, connect_timeout=STEP, reply_timeout=STEP):
        pass


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    with tls_server(tmp_path, mutual=True) as remote:
        with Client(remote.url, tls=remote.tls, auth_token=remote.token) as client:
            work_loop(client, "with-cert")
        uncertified = TlsFiles(ca=remote.tls.ca)
        with (
            pytest.raises(Unavailable) as refused,
            Client(remote.url, tls=uncertified, auth_token=remote.token) as client,
        ):
            client.status()
        assert refused.value.code == SERVER_UNAVAILABLE
        # A certificate from another CA is refused too.
        stranger = trustme.CA().issue_cert("stranger@clients.test")
        pem = tmp_path / "stranger.pem"
        stranger.private_key_and_cert_chain_pem.write_to_path(str(pem))
        foreign = TlsFiles(ca=remote.tls.ca, cert=pem)
        with (
            pytest.raises(Unavailable),
            Client(remote.url, tls=foreign, auth_token=remote.token) as client,
        ):
            client.status()
        # The refusals cost the server nothing: the certified client still works.
        with Client(remote.url, tls=remote.tls, auth_token=remote.token) as client:
            assert client.status().live_sessions >= 1
        remote.cli().ok("status")


def test_plaintext_off_loopback_is_refused_at_start(tmp_path: Path) -> None:
    server = Server.serve("--data-dir", str(tmp_path / "data"), "--listen", "tcp://0.0.0.0:0")
    try:
        assert server.wait_exit() == 2
    finally:
        server.kill()
    assert "--insecure-plaintext" in "".join(server.out.lines)
    assert "USAGE" in "".join(server.out.lines)


def test_insecure_plaintext_allows_it(tmp_path: Path) -> None:
    private = tmp_path / "local"
    private.mkdir(mode=0o700)
    local = private / "runlease.sock"
    server = Server.serve(
        "--data-dir",
        str(tmp_path / "data"),
        "--durability",
        "relaxed",
        "--listen",
        f"unix:{local}",
        "--listen",
        "tcp://0.0.0.0:0",
        "--insecure-plaintext",
    )
    try:
        record = server.wait_listening()
        (url,) = [url for url in record["listeners"] if url.startswith("tcp")]
        assert url.startswith("tcp+plaintext://0.0.0.0:")
        port = ServerAddress.parse(url).port
        assert any(log_event(line) == "plaintext_listener" for line in server.log.lines)
        token = Cli(socket=local).ok("token", "create", "--role", "agent", "--name", "plain")
        address = f"tcp+plaintext://127.0.0.1:{port}"
        with Client(address, auth_token=token["token"]) as client:
            work_loop(client, "plain")
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()


def test_loopback_plaintext_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    loopback = [ServerAddress.parse("tcp+plaintext://127.0.0.1:0")]
    with caplog.at_level("WARNING", logger="runlease.server"):
        check_listeners(loopback, tls=False, insecure_plaintext=False)
    assert [record.getMessage() for record in caplog.records] == ["plaintext_listener"]
    with pytest.raises(InvalidInput, match="--insecure-plaintext"):
        check_listeners(
            [ServerAddress.parse("tcp://192.0.2.7:7070")], tls=False, insecure_plaintext=False
        )
    check_listeners(
        [ServerAddress.parse("tcp://192.0.2.7:7070")], tls=True, insecure_plaintext=False
    )


def test_serve_usage_errors(tmp_path: Path) -> None:
    env = clean_env({"RUNLEASE_HOME": str(tmp_path)})
    for args, words in [
        (["--listen", "tcp://127.0.0.1"], "host:port"),
        (["--listen", "http://x:1"], "unknown server address"),
        (["--tls-cert", str(tmp_path / "missing.pem")], "tcp://"),
        (["--listen", "tcp://127.0.0.1:0", "--tls-cert", str(tmp_path / "missing.pem")], "TLS"),
    ]:
        server = Server.serve(*args, env=env)
        try:
            assert server.wait_exit() == 2, args
        finally:
            server.kill()
        assert words in "".join(server.out.lines), (args, server.out.lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/run/x.sock", ServerAddress("unix", path=Path("/run/x.sock"))),
        ("unix:/run/x.sock", ServerAddress("unix", path=Path("/run/x.sock"))),
        ("unix:///run/x.sock", ServerAddress("unix", path=Path("/run/x.sock"))),
        ("tcp://db.example:7070", ServerAddress("tcp", host="db.example", port=7070, tls=True)),
        ("tcp://[::1]:7070/", ServerAddress("tcp", host="::1", port=7070, tls=True)),
        ("tcp+plaintext://127.0.0.1:9", ServerAddress("tcp", host="127.0.0.1", port=9)),
    ],
)
def test_server_address_parse(text: str, expected: ServerAddress) -> None:
    parsed = ServerAddress.parse(text)
    assert parsed == expected
    assert ServerAddress.parse(parsed.url) == parsed


@pytest.mark.parametrize(
    "text", ["", "tcp://host", "tcp://host:port", "tcp://:80", "tcp://a:b:80", "ws://x:1", "unix:"]
)
def test_server_address_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidInput):
        ServerAddress.parse(text)


async def test_each_connection_knows_whether_it_is_local(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    sock = tmp_path / "s.sock"
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        issued = await rt.create_token(name="remote", role="operator")
        server: SocketServer = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: serve_socket(
                rt,
                sock,
                listen=[ServerAddress.parse("tcp://127.0.0.1:0")],
                tls=server_tls_context(pem),
                task_status=task_status,
            )
        )
        tcp_url = next(url for url in server.urls if url.startswith("tcp://"))
        async with (
            open_client(sock) as local_client,
            open_client(
                tcp_url, tls=TlsFiles(ca=ca_pem), auth_token=issued.secret
            ) as remote_client,
        ):
            await local_client.status()
            await remote_client.status()
            connections = sorted(server._connections, key=lambda conn: conn.local)
            assert [conn.local for conn in connections] == [False, True]
            assert connections[0].remote.startswith("127.0.0.1:")
            # Writes over it are stamped with the token that authenticated it.
            assert connections[0].origin().ref == "token:remote"
        server.shutdown()
        await server.wait_stopped()
        nursery.cancel_scope.cancel()
    assert not sock.exists()


def test_cli_server_and_tls_ca_flags(remote: Remote) -> None:
    cli = remote.cli()
    cli.env.clear()
    assert remote.tls.ca is not None
    flags = ["--server", remote.url, "--tls-ca", str(remote.tls.ca), "--token", remote.token]
    status = cli.ok(*flags, "status")
    assert status["server"]["pid"] == remote.server.process.pid
    # Global options may follow the command as well.
    assert cli.ok("status", *flags)["server"]


async def test_a_silent_tls_client_is_closed_after_the_handshake_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    limits = ServerLimits(handshake_timeout=30.0)
    caplog.set_level("INFO", logger="runlease.server")
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        server: SocketServer = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: serve_socket(
                rt,
                None,
                listen=[ServerAddress.parse("tcp://127.0.0.1:0")],
                tls=server_tls_context(pem),
                limits=limits,
                task_status=task_status,
            )
        )
        port = ServerAddress.parse(server.urls[0]).port
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        started = trio.current_time()
        # The server gives up on the handshake and closes: the read ends, with no reply.
        assert await silent.receive_some(4096) == b""
        assert trio.current_time() - started >= limits.handshake_timeout
        await silent.aclose()
        assert server.connection_count == 0
        server.shutdown()
        await server.wait_stopped()
        nursery.cancel_scope.cancel()
    assert any(
        getattr(record, "fields", {}).get("phase") == "tls_handshake" for record in caplog.records
    )
