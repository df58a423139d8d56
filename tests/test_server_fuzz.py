"""Protocol fuzzing against a live server: whatever one client sends, others are served.

The server runs in its own trio loop on a background thread of this process; the fuzzing
clients and the well-behaved client are plain blocking sockets, so hypothesis drives them
like any other synchronous code.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from runlease import errors, open_runtime
from runlease import protocol as p
from runlease.client import Client
from runlease.runtime.server import SocketServer, serve_socket

STEP = 10.0  # seconds: an upper bound for one blocking socket call, never a sleep
SENTINEL_ID = 2**40
KNOWN_CODES = {
    value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)
}


class LiveServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ready = threading.Event()
        self.server: SocketServer | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.crash: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="runlease-fuzz-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            async with open_runtime() as rt, trio.open_nursery() as nursery:
                self.server = await nursery.start(serve_socket, rt, self.path)
                self.token = trio.lowlevel.current_trio_token()
                self.ready.set()
                await self.server.wait_stopped()

        try:
            trio.run(main)
        except BaseException as exc:
            self.crash = exc
        finally:
            self.ready.set()

    def alive(self) -> bool:
        return self.thread.is_alive() and self.crash is None


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("fuzz") / "sock" / "s.sock")
    live.thread.start()
    assert live.ready.wait(STEP)
    assert live.server is not None, live.crash
    yield live
    assert live.token is not None
    trio.from_thread.run_sync(live.server.shutdown, trio_token=live.token)
    live.thread.join(STEP)
    assert not live.thread.is_alive()
    assert live.crash is None, live.crash


@pytest.fixture(scope="module")
def good_client(live: LiveServer) -> Iterator[Client]:
    client = Client(live.path).connect()
    client.connect_timeout = STEP
    yield client
    client.close()


def check_served(live: LiveServer, client: Client) -> None:
    """The well-behaved client gets correct answers, and the server thread is fine."""
    assert live.alive(), live.crash
    task = client.create_task("still served")
    assert client.get_task(task.id).title == "still served"


def raw_connection(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(STEP)
    sock.connect(os.fspath(path))
    return sock


def read_all_replies(sock: socket.socket) -> tuple[list[p.AnyReply], bool]:
    """Every reply until the server closes the connection: (replies, complete frames)."""
    buffer = p.FrameBuffer()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            break
        buffer.feed(data)
    replies = [p.decode_reply(body) for body in buffer.frames()]
    return replies, len(buffer) == 0


def check_reply_shape(reply: p.AnyReply) -> None:
    if isinstance(reply, p.ErrorReply):
        assert reply.code in KNOWN_CODES, reply
        assert reply.message


# ---------------------------------------------------------------------------- strategies
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
fields = st.dictionaries(
    st.sampled_from(
        [
            "title",
            "task_id",
            "run_id",
            "session_id",
            "token",
            "versions",
            "wait",
            "timeout",
            "lease_seconds",
            "limit",
            "after",
            "after_seq",
            "priority",
            "metadata",
            "result",
            "error",
            "reason",
            "capabilities",
            "target",
            "agent",
            "ttl",
            "start",
        ]
    )
    | st.text(max_size=6),
    values,
    max_size=5,
)
request_maps = st.builds(
    lambda op, rid, rest: {**rest, "op": op, "id": rid},
    st.sampled_from(sorted(p.OPS)) | st.text(max_size=10) | values,
    st.integers(1, 2**31) | values,
    fields,
)
frame_bodies = (
    request_maps.map(msgspec.msgpack.encode)
    | st.binary(max_size=64)
    | values.map(msgspec.msgpack.encode)
)


@given(
    hello_first=st.booleans(),
    bodies=st.lists(frame_bodies, max_size=8),
    split=st.integers(0, 10_000),
)
def test_framed_fuzz_gets_replies_and_the_connection_survives(
    live: LiveServer, good_client: Client, hello_first: bool, bodies: list[bytes], split: int
) -> None:
    payload = b"".join(p.frame_bytes(body) for body in bodies)
    if hello_first:
        payload = p.encode_frame(p.Hello(id=SENTINEL_ID - 1, versions=[1])) + payload
    sentinel = p.encode_frame(p.Hello(id=SENTINEL_ID, versions=[1])) + p.encode_frame(
        p.GetStatus(id=SENTINEL_ID + 1)
    )
    cut = min(split, len(payload))
    with raw_connection(live.path) as sock:
        sock.sendall(payload[:cut])
        check_served(live, good_client)  # mid-way through a frame, perhaps
        sock.sendall(payload[cut:] + sentinel)
        buffer = p.FrameBuffer()
        while True:
            data = sock.recv(65536)
            assert data, "the server closed a connection whose framing was intact"
            buffer.feed(data)
            replies = [p.decode_reply(body) for body in buffer.frames()]
            for reply in replies:
                check_reply_shape(reply)
            if any(r.id == SENTINEL_ID + 1 and isinstance(r, p.StatusReply) for r in replies):
                break
    check_served(live, good_client)


@given(
    hello_first=st.booleans(),
    garbage=st.binary(max_size=2048),
    oversized=st.none() | st.integers(p.MAX_FRAME_BYTES + 1, 2**32 - 1),
)
def test_raw_garbage_never_hurts_other_clients(
    live: LiveServer,
    good_client: Client,
    hello_first: bool,
    garbage: bytes,
    oversized: int | None,
) -> None:
    with raw_connection(live.path) as sock:
        if hello_first:
            sock.sendall(p.encode_frame(p.Hello(id=1, versions=[1])))
        sock.sendall(garbage)
        check_served(live, good_client)
        # The garbage may already have lost framing, and the server hung up: that is fine.
        with contextlib.suppress(OSError):
            if oversized is not None:
                sock.sendall(struct.pack(">I", oversized))
            sock.shutdown(socket.SHUT_WR)
        replies, _ = read_all_replies(sock)  # the server closes: EOF, never a hang
    for reply in replies:
        check_reply_shape(reply)
    check_served(live, good_client)


def test_an_oversized_prefix_after_good_frames_is_reported_then_closed(
    live: LiveServer, good_client: Client
) -> None:
    with raw_connection(live.path) as sock:
        sock.sendall(
            p.encode_frame(p.Hello(id=1, versions=[1]))
            + p.encode_frame(p.GetStatus(id=2))
            + struct.pack(">I", p.MAX_FRAME_BYTES + 1)
            + b"x" * 10_000
        )
        replies, complete = read_all_replies(sock)
    assert complete
    by_id: dict[int, Any] = {r.id: r for r in replies}
    assert isinstance(by_id[1], p.Welcome)
    assert isinstance(by_id[2], p.StatusReply)
    assert isinstance(by_id[0], p.ErrorReply)
    assert by_id[0].code == errors.FRAME_TOO_LARGE
    check_served(live, good_client)


def test_many_abandoned_connections_leave_the_server_healthy(
    live: LiveServer, good_client: Client
) -> None:
    for i in range(50):
        with raw_connection(live.path) as sock:
            sock.sendall(p.encode_frame(p.Hello(id=1, versions=[1])))
            token_request = p.OpenSession(id=2, agent=f"a{i}")
            sock.sendall(p.encode_frame(token_request)[: 3 + i % 10])  # cut mid-frame
    check_served(live, good_client)
    assert good_client.status().connections >= 1
