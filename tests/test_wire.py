"""runtime.wire: receiving and sending on a trio socket without a run-loop pass per call,
and what it keeps of trio's guarantees: cancellation, fairness, whole frames."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from runlease import protocol as p
from runlease.runtime.wire import READY_STREAK, Wire
from socket_helpers import STEP

SMALL_BUFFER = 4096


@asynccontextmanager
async def pair(buffer: int | None = None) -> AsyncIterator[tuple[Wire, socket.socket]]:
    """A Wire on one end of a Unix socket pair and a plain blocking socket on the other."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if buffer is not None:
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    trio_sock = trio.socket.from_stdlib_socket(ours)
    try:
        yield Wire(trio_sock), theirs
    finally:
        trio_sock.close()
        theirs.close()


def read_all(sock: socket.socket, count: int) -> bytes:
    out = bytearray()
    sock.settimeout(STEP)
    while len(out) < count:
        data = sock.recv(1 << 20)
        assert data, "closed early"
        out += data
    return bytes(out)


async def test_receive_returns_what_arrived_and_empty_at_end_of_stream() -> None:
    async with pair() as (wire, peer):
        peer.sendall(b"hello")
        assert await wire.receive_some() == b"hello"
        peer.shutdown(socket.SHUT_WR)
        assert await wire.receive_some() == b""


async def test_receive_waits_for_bytes_and_honours_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pair() as (wire, peer):
        with trio.move_on_after(1) as scope:
            await wire.receive_some()
        assert scope.cancelled_caught
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def receive() -> None:
                got.append(await wire.receive_some())

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            peer.sendall(b"late")
        assert got == [b"late"]


async def test_a_receive_on_a_closed_socket_is_closed_resource_error() -> None:
    async with pair() as (wire, _peer):
        wire.sock.close()
        with pytest.raises(trio.ClosedResourceError):
            await wire.receive_some()


async def test_a_reader_that_always_finds_bytes_still_lets_others_run() -> None:
    async with pair() as (wire, peer):
        peer.sendall(b"x" * (READY_STREAK * 4))
        # A full read: the next ones try the socket at once, without waiting.
        assert await wire.receive_some(1) == b"x"
        ran = trio.Event()

        async def other() -> None:
            ran.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            # Byte by byte the data lasts many receives, none of which has to wait; after a
            # streak of them the reader yields, and the other task runs in that turn of the
            # run loop (trio may run it just before or just after the reader's next step).
            receives = 0
            while not ran.is_set():
                assert receives <= 2 * READY_STREAK, "the reader never yielded"
                await wire.receive_some(1)
                receives += 1
            assert receives >= 1


async def test_frames_queued_together_leave_in_one_send() -> None:
    async with pair() as (wire, peer):
        for rid in (1, 2, 3):
            p.append_frame(wire.outbox, p.Ok(id=rid))
        assert wire.send_ready()
        assert not wire.outbox
        peer.settimeout(STEP)
        buffer = p.FrameBuffer()
        buffer.feed(peer.recv(65536))
        assert [p.decode_reply(body).id for body in buffer.frames()] == [1, 2, 3]


async def test_flush_waits_for_a_slow_reader_and_sends_everything_in_order() -> None:
    async with pair(SMALL_BUFFER) as (wire, peer):
        message = p.ErrorReply(id=7, code="X", message="y" * 200_000)
        p.append_frame(wire.outbox, message)
        p.append_frame(wire.outbox, p.Ok(id=8))
        total = len(wire.outbox)
        assert not wire.send_ready()  # more than the socket buffers hold
        async with trio.open_nursery() as nursery:
            result: list[bytes] = []

            async def reader() -> None:
                result.append(await trio.to_thread.run_sync(read_all, peer, total))

            nursery.start_soon(reader)
            with trio.fail_after(STEP):
                await wire.flush()
        buffer = p.FrameBuffer()
        buffer.feed(result[0])
        assert [p.decode_reply(body) for body in buffer.frames()] == [message, p.Ok(id=8)]
        assert not wire.torn


def fill(sock: trio.socket.SocketType) -> int:
    """Write to ``sock`` until the kernel takes no more; how many bytes it took."""
    total = 0
    while True:
        try:
            total += os.write(sock.fileno(), b"\0" * 65536)
        except BlockingIOError:
            return total


async def test_a_flush_cancelled_before_anything_went_out_keeps_whole_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pair(SMALL_BUFFER) as (wire, peer):
        # The socket is full before the frame is queued: none of it can go out.
        sent_before = fill(wire.sock)
        p.append_frame(wire.outbox, p.Ok(id=1))
        with trio.move_on_after(1) as scope:
            await wire.flush()
        assert scope.cancelled_caught
        assert not wire.torn
        assert bytes(wire.outbox) == p.encode_frame(p.Ok(id=1))
        # Once the peer reads, the frame goes out whole.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.flush)
            data = await trio.to_thread.run_sync(read_all, peer, sent_before + len(wire.outbox))
        assert data.endswith(p.encode_frame(p.Ok(id=1)))


async def test_a_flush_cancelled_mid_frame_tears_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pair(SMALL_BUFFER) as (wire, _peer):
        p.append_frame(wire.outbox, p.ErrorReply(id=1, code="X", message="y" * 200_000))
        with trio.move_on_after(1) as scope:
            await wire.flush()
        assert scope.cancelled_caught
        assert wire.torn
        with pytest.raises(trio.BrokenResourceError):
            await wire.flush()


async def test_a_second_flush_waits_for_the_first_which_sends_its_bytes_too() -> None:
    async with pair(SMALL_BUFFER) as (wire, peer):
        big = p.ErrorReply(id=1, code="X", message="y" * 100_000)
        p.append_frame(wire.outbox, big)
        finished: list[int] = []

        async def first() -> None:
            await wire.flush()
            finished.append(1)

        async def second() -> None:
            p.append_frame(wire.outbox, p.Ok(id=2))
            await wire.flush()
            finished.append(2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            assert wire.writing
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            total = len(p.encode_frame(big)) + len(p.encode_frame(p.Ok(id=2)))
            data = await trio.to_thread.run_sync(read_all, peer, total)
        assert sorted(finished) == [1, 2]
        buffer = p.FrameBuffer()
        buffer.feed(data)
        assert [p.decode_reply(body).id for body in buffer.frames()] == [1, 2]


async def test_a_send_to_a_vanished_peer_is_broken_resource_error() -> None:
    async with pair() as (wire, peer):
        peer.close()
        p.append_frame(wire.outbox, p.Ok(id=1))
        with pytest.raises(trio.BrokenResourceError):
            await wire.flush()
        assert wire.broken
