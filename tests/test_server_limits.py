"""The server cannot be starved: deadlines, caps and budgets, shutdown with stuck clients,
connection bursts, and the clients' side of each (clear errors, retries, reconnects)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cli_helpers import Server, log_event
from runlease import open_runtime
from runlease import protocol as p
from runlease.client import Client, connect_unix
from runlease.client_common import RETRY_FIRST_DELAY, RETRY_MAX_DELAY, ConnectBackoff
from runlease.errors import (
    CONNECTION_TIMEOUT,
    FRAME_TOO_LARGE,
    SERVER_BUSY,
    SERVER_UNAVAILABLE,
    Unavailable,
)
from runlease.runtime import Runtime
from runlease.runtime.client import open_client
from runlease.runtime.server import (
    ServerLimits,
    SocketServer,
    _Bound,
    connection_cap,
    default_backlog,
)
from socket_helpers import STEP, Raw

GRACE = 5.0
HANDSHAKE = 10.0
IDLE = 60.0
BIG_DESCRIPTION = "x" * 16_000  # 80 such tasks make a list reply of about 1 MiB


def error_of(reply: p.AnyReply | None) -> tuple[int, str, str]:
    assert isinstance(reply, p.ErrorReply), reply
    return reply.id, reply.code, reply.message


@asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    server_class: type[SocketServer] = SocketServer,
    shutdown_grace: float = GRACE,
    **limits: Any,
) -> AsyncIterator[tuple[Runtime, SocketServer, Path]]:
    path = tmp_path / "sock" / "s.sock"
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        server = server_class(
            rt, path, shutdown_grace=shutdown_grace, limits=ServerLimits(**limits)
        )
        await nursery.start(server.run)
        yield rt, server, path
        server.shutdown()
        await server.wait_stopped()


async def until_connections(server: SocketServer, count: int) -> None:
    with trio.fail_after(STEP):
        while server.connection_count > count:
            await server._wait_connections_changed()


async def fill_with_big_tasks(rt: Runtime, count: int = 80) -> None:
    for index in range(count):
        await rt.create_task(f"big {index}", description=BIG_DESCRIPTION)


# ------------------------------------------------------------ a client that does not read
async def test_shutdown_ends_a_reply_the_client_never_reads_after_the_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path) as (rt, server, path):
        await fill_with_big_tasks(rt)
        stuck = await Raw.open(path)
        # A lone request is answered on the reading task; its ~1 MiB reply fills the
        # socket buffers and then waits for a reader that never comes.
        await stuck.send(p.ListTasks(id=2, limit=10_000))
        await trio.testing.wait_all_tasks_blocked()
        assert server.connection_count == 1
        server.shutdown()
        try:
            with trio.fail_after(GRACE + STEP):
                await server.wait_stopped()
        finally:
            await stuck.close()  # unsticks a server that would otherwise hang the test
        assert server.connection_count == 0


async def test_a_client_that_does_not_read_holds_up_only_itself(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, idle_timeout=IDLE) as (rt, server, path):
        await fill_with_big_tasks(rt)
        stuck = await Raw.open(path)
        await stuck.send(p.ListTasks(id=2, limit=10_000))
        await trio.testing.wait_all_tasks_blocked()
        # Long after the idle timeout: the stuck reply keeps its connection (it is in
        # flight, not idle), and everyone else is served as usual.
        await trio.sleep(IDLE * 3)
        async with open_client(path) as client:
            task = await client.create_task("unrelated")
            assert (await client.get_task(task.id)).title == "unrelated"
            assert len(await client.list_tasks(limit=5)) == 5
            assert server.connection_count == 2
        await stuck.close()


def test_a_second_signal_stops_a_server_stuck_on_a_client_that_does_not_read(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "s.sock"
    server = Server.serve("--data-dir", str(tmp_path / "data"), "--socket", str(sock))
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.wait_listening()
        with Client(sock) as client:
            for index in range(80):
                client.create_task(f"big {index}", description=BIG_DESCRIPTION)
        stuck.settimeout(STEP)
        stuck.connect(os.fspath(sock))
        stuck.sendall(p.encode_frame(p.Hello(id=1, versions=[1])))
        stuck.sendall(p.encode_frame(p.ListTasks(id=2, limit=10_000)))
        # The welcome and the start of the big reply: the server is now sending it.
        received = b""
        while len(received) < 64 * 1024:
            received += stuck.recv(65536)
        server.process.send_signal(signal.SIGTERM)
        server.log.wait_for(lambda line: log_event(line) == "shutdown_started", STEP)
        server.process.send_signal(signal.SIGINT)
        server.wait_exit()
    finally:
        stuck.close()
        server.kill()
    events = [log_event(line) for line in server.log.lines]
    assert "stopped" in events, server.log.lines


# ------------------------------------------------------------------------- the handshake
async def test_a_connection_without_hello_is_closed_at_the_handshake_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, handshake_timeout=HANDSHAKE) as (_, server, path):
        silent = await Raw.open(path, hello=False)
        # Part of a frame is not a hello: it does not buy more time.
        await silent.send(b"\x00\x00\x00\x20abc")
        rid, code, message = error_of(await silent.reply(HANDSHAKE + STEP))
        assert (rid, code) == (p.CONNECTION_ID, CONNECTION_TIMEOUT)
        assert "hello" in message
        assert "--handshake-timeout" in message
        assert await silent.reply() is None
        await silent.close()
        # One that says hello in time stays past the handshake deadline.
        polite = await Raw.open(path)
        await trio.sleep(HANDSHAKE * 2)
        await polite.send(p.GetStatus(id=2))
        assert isinstance(await polite.reply(), p.StatusReply)
        await polite.close()
        await until_connections(server, 0)


async def test_only_small_frames_are_accepted_before_hello(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, _server, path):
        early = await Raw.open(path, hello=False)
        await early.send(p.HEADER.pack(8192) + b"\x00" * 100)
        rid, code, message = error_of(await early.reply())
        assert (rid, code) == (p.CONNECTION_ID, FRAME_TOO_LARGE)
        assert "4096" in message
        assert "hello" in message
        assert await early.reply() is None
        await early.close()
        # After hello the usual 1 MiB limit applies.
        late = await Raw.open(path)
        await late.send(p.CreateTask(id=2, title="long", description="d" * 10_000))
        assert isinstance(await late.reply(), p.TaskReply)
        await late.close()


# -------------------------------------------------------------------------- idle timeout
async def test_an_idle_connection_is_closed_and_activity_resets_the_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, idle_timeout=IDLE) as (_, _server, path):
        raw = await Raw.open(path)
        for rid in (2, 3):
            await trio.sleep(IDLE * 0.75)
            await raw.send(p.GetStatus(id=rid))
            assert isinstance(await raw.reply(), p.StatusReply)
        rid, code, message = error_of(await raw.reply(IDLE + STEP))
        assert (rid, code) == (p.CONNECTION_ID, CONNECTION_TIMEOUT)
        assert "idle" in message
        assert "--idle-timeout" in message
        assert await raw.reply() is None
        await raw.close()


async def test_waiting_claims_and_event_streams_are_never_idle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, idle_timeout=IDLE) as (rt, server, path):
        last_seq = rt.status().last_event_seq
        follower = await Raw.open(path)
        await follower.send(p.FollowEvents(id=2, after_seq=last_seq))
        claimed: list[str] = []

        async def wait_for_work() -> None:
            async with open_client(path) as client:
                _, token = await client.open_session(agent="patient")
                claim = await client.claim_next(wait=True, timeout=IDLE * 10, token=token)
                claimed.append(claim.run.id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_work)
            await trio.sleep(IDLE * 3)
            assert server.connection_count == 2
            task = await rt.create_task("finally", start=True)
        assert len(claimed) == 1
        seen: list[str | None] = []
        while task.id not in seen:
            item = await follower.reply()
            assert isinstance(item, p.EventItem), item
            seen.append(item.event.task_id)
        await follower.close()


async def test_the_idle_clock_starts_at_hello_and_after_the_last_request_ends(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    idle = 2.0
    async with serving(tmp_path, handshake_timeout=HANDSHAKE, idle_timeout=idle) as (
        _,
        _server,
        path,
    ):
        # A hello late in the handshake window: from then on the (shorter) idle clock rules.
        raw = await Raw.open(path, hello=False)
        await trio.sleep(HANDSHAKE / 2)
        await raw.send(p.Hello(id=1, versions=[1]))
        assert isinstance(await raw.reply(), p.Welcome)
        hello_at = trio.current_time()
        rid, code, _ = error_of(await raw.reply(HANDSHAKE))
        assert (rid, code) == (p.CONNECTION_ID, CONNECTION_TIMEOUT)
        assert trio.current_time() - hello_at == pytest.approx(idle, abs=0.01)
        await raw.close()

        # A waiting claim holds the connection past the idle timeout; once it is answered
        # the connection has the whole idle timeout again.
        raw = await Raw.open(path)
        await raw.send(p.OpenSession(id=2, agent="patient"))
        opened = await raw.reply()
        assert isinstance(opened, p.SessionOpened)
        await raw.send(p.ClaimNext(id=3, token=opened.token, wait=True, timeout=idle * 5))
        claimed = await raw.reply(idle * 10)
        assert error_of(claimed)[1] == "NO_CLAIMABLE_RUN"
        answered_at = trio.current_time()
        rid, code, _ = error_of(await raw.reply(HANDSHAKE))
        assert (rid, code) == (p.CONNECTION_ID, CONNECTION_TIMEOUT)
        assert trio.current_time() - answered_at == pytest.approx(idle, abs=0.01)
        await raw.close()


def test_zero_idle_timeout_means_never() -> None:
    assert ServerLimits(idle_timeout=0).idle_seconds == float("inf")
    with pytest.raises(Exception, match="handshake_timeout"):
        ServerLimits(handshake_timeout=0)


async def test_the_sync_client_reconnects_after_an_idle_close(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, idle_timeout=IDLE) as (_, server, path):
        client = Client(path, connect_timeout=STEP, reply_timeout=STEP)
        try:
            await trio.to_thread.run_sync(client.status)
            mock_clock.jump(IDLE + 1)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(STEP)  # past the server's linger after the notice
            await trio.testing.wait_all_tasks_blocked()
            assert server.connection_count == 0
            # The next call finds the notice and the closed stream, and connects again.
            status = await trio.to_thread.run_sync(client.status)
            assert status.connections == 1
        finally:
            client.close()


# ---------------------------------------------------------------------- connection cap
async def test_connections_past_the_cap_are_refused_with_server_busy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runlease.server")
    async with serving(tmp_path, max_connections=2) as (_, server, path):
        first, second = await Raw.open(path), await Raw.open(path)
        extra = await Raw.open(path, hello=False)
        rid, code, message = error_of(await extra.reply())
        assert (rid, code) == (p.CONNECTION_ID, SERVER_BUSY)
        assert "2 connections" in message
        assert "--max-connections" in message
        assert await extra.reply() is None
        await extra.close()
        assert any(r.getMessage() == "connection_refused" for r in caplog.records)

        # Both clients turn the refusal into a clear Unavailable error.
        with pytest.raises(Unavailable) as sync_error:
            await trio.to_thread.run_sync(Client(path, reply_timeout=STEP).connect)
        assert sync_error.value.code == SERVER_BUSY
        with pytest.raises(Unavailable) as trio_error:
            async with open_client(path):
                pass
        assert trio_error.value.code == SERVER_BUSY

        # A place freed is a place taken.
        await first.close()
        await until_connections(server, 1)
        async with open_client(path) as client:
            assert (await client.status()).connections == 2
        await second.close()


def test_the_connection_cap_stays_below_the_open_file_limit() -> None:
    assert connection_cap(1024, None) == 1024
    assert connection_cap(1024, 4096) == 1024
    assert connection_cap(1024, 256) == 256 - 64
    assert connection_cap(1024, 10) == 1


def test_a_server_near_its_fd_limit_refuses_connections_and_keeps_writing(
    tmp_path: Path,
) -> None:
    limit = 160
    sock = tmp_path / "s.sock"
    script = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))\n"
        "from runlease.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    server = Server(
        [sys.executable, "-c", script, "serve", "--data-dir", str(tmp_path / "d"),
         "--socket", str(sock)]
    )  # fmt: skip
    opened: list[socket.socket] = []
    try:
        server.wait_listening()
        cap_line = next(line for line in server.log.lines if log_event(line) == "connection_limit")
        cap = json.loads(cap_line)["max_connections"]
        assert cap == limit - 64
        admitted: list[socket.socket] = []
        refused = 0
        for index in range(cap + 20):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            opened.append(conn)
            conn.settimeout(STEP * 3)
            conn.connect(os.fspath(sock))
            conn.sendall(p.encode_frame(p.Hello(id=1, versions=[1])))
            reply = _read_reply(conn)
            if isinstance(reply, p.Welcome):
                admitted.append(conn)
            else:
                assert error_of(reply)[1] == SERVER_BUSY, (index, reply)
                refused += 1
                conn.close()
        assert len(admitted) == cap
        assert refused == 20
        # Storage still has descriptors: a write from an admitted client goes through.
        admitted[0].sendall(p.encode_frame(p.CreateTask(id=2, title="still writing")))
        assert isinstance(_read_reply(admitted[0]), p.TaskReply)
        assert server.stop() == 0
    finally:
        for conn in opened:
            conn.close()
        server.kill()
    assert "connection_refused" in [log_event(line) for line in server.log.lines]


def _read_reply(conn: socket.socket) -> p.AnyReply:
    buffer = p.FrameBuffer()
    while (body := buffer.next_frame()) is None:
        data = conn.recv(65536)
        assert data, "the server closed the connection without a reply"
        buffer.feed(data)
    return p.decode_reply(body)


# ------------------------------------------------------------------------ receive budget
async def test_partial_frames_share_a_budget_released_on_completion_and_close(
    tmp_path: Path,
) -> None:
    budget = p.MAX_FRAME_BYTES + p.MAX_FRAME_BYTES // 2
    async with serving(tmp_path, max_buffered_bytes=budget) as (_, server, path):
        holder = await Raw.open(path)
        await holder.send(p.HEADER.pack(p.MAX_FRAME_BYTES) + b"\x00" * 100)
        small = await Raw.open(path)
        await small.send(p.HEADER.pack(100_000) + b"\x00" * 10)
        await trio.testing.wait_all_tasks_blocked()

        greedy = await Raw.open(path)
        await greedy.send(p.HEADER.pack(p.MAX_FRAME_BYTES) + b"\x00" * 100)
        rid, code, message = error_of(await greedy.reply())
        assert (rid, code) == (p.CONNECTION_ID, SERVER_BUSY)
        assert "--max-buffered-bytes" in message
        assert await greedy.reply() is None
        await greedy.close()

        # Completing a frame gives its share back (the body is garbage: BAD_FRAME, but
        # the connection carries on).
        await small.send(b"\x00" * (100_000 - 10))
        assert error_of(await small.reply())[1] == "BAD_FRAME"
        # Closing does too: now a whole frame's worth fits again.
        await holder.close()
        await until_connections(server, 1)
        again = await Raw.open(path)
        await again.send(p.HEADER.pack(p.MAX_FRAME_BYTES) + b"\x00" * 100)
        await again.send(b"\x00" * (p.MAX_FRAME_BYTES - 100))
        assert error_of(await again.reply())[1] == "BAD_FRAME"
        await again.close()
        await small.close()


# ----------------------------------------------------------------------- connect bursts
class PausedServer(SocketServer):
    """Listens but does not accept until ``gate`` is set: a server too busy to accept."""

    gate: trio.Event

    async def _accept_loop(self, bound: _Bound, nursery: trio.Nursery) -> None:
        await self.gate.wait()
        await super()._accept_loop(bound, nursery)


@asynccontextmanager
async def paused(tmp_path: Path) -> AsyncIterator[tuple[PausedServer, Path]]:
    PausedServer.gate = trio.Event()
    async with serving(tmp_path, server_class=PausedServer, backlog=1) as (_, server, path):
        assert isinstance(server, PausedServer)
        yield server, path


def count_retries(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], threading.Event]:
    seen: list[int] = []
    event = threading.Event()
    original = ConnectBackoff.after_failure

    def counting(self: ConnectBackoff, exc: OSError) -> float:
        seen.append(exc.errno or 0)
        event.set()
        return original(self, exc)

    monkeypatch.setattr(ConnectBackoff, "after_failure", counting)
    return seen, event


async def test_a_burst_of_trio_clients_waits_out_a_full_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retries, _ = count_retries(monkeypatch)
    clients = 20
    async with paused(tmp_path) as (server, path):
        served: list[int] = []

        async def one() -> None:
            async with open_client(path, connect_timeout=STEP * 3) as client:
                served.append((await client.status()).pid)

        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            assert retries
            assert set(retries) == {errno.EAGAIN}
            assert not served
            server.gate.set()
        assert len(served) == clients


async def test_a_burst_of_sync_clients_waits_out_a_full_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, retried = count_retries(monkeypatch)
    clients = 10
    async with paused(tmp_path) as (server, path):
        served: list[int] = []

        def one() -> None:
            with Client(path, connect_timeout=STEP * 3, reply_timeout=STEP * 3) as client:
                served.append(client.status().pid)

        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(trio.to_thread.run_sync, one)
            assert await trio.to_thread.run_sync(retried.wait, STEP * 3)
            server.gate.set()
        assert len(served) == clients


def test_the_backlog_asks_for_the_system_maximum() -> None:
    assert default_backlog() >= 4096
    somaxconn = Path("/proc/sys/net/core/somaxconn")
    if somaxconn.exists():
        assert default_backlog() >= int(somaxconn.read_text())


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(times: int, error: int) -> tuple[Callable[[float], socket.socket], list[float]]:
    calls: list[float] = []
    sentinel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def attempt(left: float) -> socket.socket:
        calls.append(left)
        if len(calls) <= times:
            raise OSError(error, os.strerror(error))
        return sentinel

    return attempt, calls


def test_connect_retries_eagain_with_jittered_doubling_backoff() -> None:
    fake = FakeTime()
    attempt, calls = failing(9, errno.EAGAIN)
    jitter = iter([0.0, 1.0] * 10)  # the extremes: half and one and a half times
    sock = connect_unix(
        Path("/x.sock"), 5.0, attempt=attempt, sleep=fake.sleep, clock=fake.clock,
        jitter=lambda: next(jitter),
    )  # fmt: skip
    sock.close()
    assert len(calls) == 10
    base = [min(RETRY_FIRST_DELAY * 2**n, RETRY_MAX_DELAY) for n in range(9)]
    factors = [0.5, 1.5] * 5
    assert fake.slept == pytest.approx([b * f for b, f in zip(base, factors, strict=False)])
    assert max(fake.slept) <= RETRY_MAX_DELAY * 1.5
    assert calls[0] == 5.0
    assert calls[-1] < 5.0


def test_connect_gives_up_when_the_timeout_runs_out() -> None:
    fake = FakeTime()
    attempt, calls = failing(10_000, errno.EAGAIN)
    with pytest.raises(Unavailable) as info:
        connect_unix(Path("/x.sock"), 0.5, attempt=attempt, sleep=fake.sleep, clock=fake.clock)
    assert info.value.code == SERVER_UNAVAILABLE
    assert "overloaded" in info.value.message
    assert "/x.sock" in info.value.message
    assert sum(fake.slept) == pytest.approx(0.5)
    assert len(calls) > 10


def test_connect_reports_nobody_listening_at_once() -> None:
    fake = FakeTime()
    attempt, calls = failing(1, errno.ECONNREFUSED)
    with pytest.raises(Unavailable) as info:
        connect_unix(Path("/x.sock"), 5.0, attempt=attempt, sleep=fake.sleep, clock=fake.clock)
    assert info.value.code == SERVER_UNAVAILABLE
    assert "is `runlease serve` running" in info.value.message
    assert len(calls) == 1
    assert fake.slept == []
