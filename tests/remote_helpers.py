"""A ``runlease serve`` reachable over TCP with TLS, and what a client needs to reach it.

One place sets remote servers up for tests: a CA made on the spot with ``trustme``, a
server certificate for 127.0.0.1, optionally mutual TLS (the server asks for client
certificates signed by the same CA), and the environment a client process uses. A TCP
connection must present an access token, so the server also listens on a private Unix
socket, where (as the operator) the helper makes an operator token for the clients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from cli_helpers import Cli, Server
from runlease.client_common import (
    ENV_SERVER,
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ServerAddress,
    TlsFiles,
)
from runlease.paths import ENV_ACCESS_TOKEN


@dataclass
class Remote:
    """A running TLS server: its URL, and the TLS files and environment of a client."""

    server: Server
    url: str
    ca: trustme.CA
    tls: TlsFiles  # what a client trusts (and shows, with mutual TLS)
    env: dict[str, str]  # RUNLEASE_SERVER, RUNLEASE_TOKEN, RUNLEASE_TLS_*: a client's
    base: Path
    local: Path  # the server's private Unix socket (the operator's, without a token)
    token: str  # an operator access token, for TCP clients
    args: list[str] = field(default_factory=list)  # how the server was started

    def restart(self, *, same_port: bool = True) -> None:
        """Kill the server (SIGKILL: a crash) and start it again on the same data dir and
        Unix socket; on the same TCP port, or on a new one (``url`` and ``env`` follow)."""
        self.server.kill()
        port = ServerAddress.parse(self.url).port if same_port else 0
        args = [f"tcp://127.0.0.1:{port}" if a.startswith("tcp://") else a for a in self.args]
        self.server = Server.serve(*args)
        record = self.server.wait_listening()
        self.url = next(url for url in record["listeners"] if url.startswith("tcp://"))
        self.env[ENV_SERVER] = self.url

    def local_cli(self) -> Cli:
        """The CLI on the private Unix socket: the operator, no token."""
        return Cli(socket=self.local)

    def cli(self) -> Cli:
        # No Unix socket is served: the CLI must find the server through RUNLEASE_SERVER.
        return Cli(socket=self.base / "no-such.sock", env=dict(self.env))

    def client_files(self, name: str) -> TlsFiles:
        """Trust files with a client certificate for ``name`` signed by the server's CA."""
        pem = self.base / f"client-{name}.pem"
        self.ca.issue_cert(f"{name}@clients.test").private_key_and_cert_chain_pem.write_to_path(
            str(pem)
        )
        return TlsFiles(ca=self.tls.ca, cert=pem)


@contextmanager
def tls_server(base: Path, *, mutual: bool = False, extra: Sequence[str] = ()) -> Iterator[Remote]:
    """``runlease serve --listen tcp://127.0.0.1:0`` with TLS, on a data dir under ``base``;
    stopped (cleanly, asserted) on the way out. With ``mutual``, clients must show a
    certificate from the same CA; the yielded files and env carry one."""
    base.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_pem = base / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server_pem = base / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(server_pem)
    )
    private = base / "local"
    private.mkdir(mode=0o700, exist_ok=True)
    local = private / "runlease.sock"
    args = [
        "--data-dir",
        str(base / "data"),
        "--durability",
        "relaxed",
        "--listen",
        f"unix:{local}",
        "--listen",
        "tcp://127.0.0.1:0",
        "--tls-cert",
        str(server_pem),
    ]
    if mutual:
        args += ["--tls-client-ca", str(ca_pem)]
    server = Server.serve(*args, *extra)
    remote: Remote | None = None
    try:
        record = server.wait_listening()
        url = next(url for url in record["listeners"] if url.startswith("tcp://"))
        made = Cli(socket=local).ok(
            "token", "create", "--role", "operator", "--name", "tests-operator"
        )
        token = made["token"]
        env = {ENV_SERVER: url, ENV_TLS_CA: str(ca_pem), ENV_ACCESS_TOKEN: token}
        tls = TlsFiles(ca=ca_pem)
        remote = Remote(
            server=server,
            url=url,
            ca=ca,
            tls=tls,
            env=env,
            base=base,
            local=local,
            token=token,
            args=[*args, *extra],
        )
        if mutual:
            tls = remote.tls = remote.client_files("agent")
            assert tls.cert is not None
            env[ENV_TLS_CERT] = env[ENV_TLS_KEY] = str(tls.cert)
        yield remote
        assert remote.server.stop() == 0, remote.server.log.lines
    finally:
        (server if remote is None else remote.server).kill()  # a restart replaces it
