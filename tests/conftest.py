"""Shared test settings and fixtures.

HYPOTHESIS_PROFILE=ci (set by .ci/run) raises example counts. The fixtures here are the
ones several test files use: a served runtime in process, a ``runlease serve`` subprocess
with the CLI in front of it, a per-test workspace, and the skewed-clock server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings

from cli_helpers import Cli, Server, assert_no_claim_tokens, serve_relaxed, serve_skewed
from runlease import open_runtime
from runlease.runtime.server import SocketServer, serve_socket
from socket_helpers import Served

settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# ------------------------------------------------------------------ shared fixtures
@pytest.fixture
async def served(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Served]:
    """An in-memory runtime behind the socket server, on a socket of this test's own."""
    path = tmp_path / "sock" / "s.sock"
    async with open_runtime() as rt:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        yield Served(rt, server, path)
        server.shutdown()
        await server.wait_stopped()


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    """A relaxed ``runlease serve`` subprocess shared by one test module."""
    yield from serve_relaxed(tmp_path_factory.mktemp(request.module.__name__))


@pytest.fixture
def cli(server: tuple[Server, Path]) -> Iterator[Cli]:
    """The CLI against the module's server. Whatever a test made it print is checked for
    raw claim tokens afterwards: a token is a credential and no output may show one."""
    runner = Cli(socket=server[1])
    yield runner
    assert_no_claim_tokens(runner)


@pytest.fixture
def ws() -> str:
    """A workspace only this test uses, so tests sharing a server never see each other's runs."""
    return "ws-" + uuid.uuid4().hex[:10]


@pytest.fixture
def skewed(tmp_path: Path) -> Iterator[tuple[Cli, Path]]:
    """A server whose wall clock the test moves (see :func:`cli_helpers.serve_skewed`)."""
    servers = serve_skewed(tmp_path)
    runner, skew = next(servers)
    yield runner, skew
    next(servers, None)  # stops the server and checks that it exited cleanly
    assert_no_claim_tokens(runner)
