"""The trio client: ``async with open_client(path) as client``.

The same methods as the synchronous :class:`runlease.client.Client`, as coroutines (the
synchronous ones are generated from these). Calls from
several trio tasks share the one connection: each request goes out as soon as it is made
and a reader task hands every reply to the caller waiting on its id (pipelining).

If a caller is cancelled while its request is in flight, the client tells the server to
cancel that request, best effort. A claim the server had already made by then stays with
the session until its lease expires, so prefer letting ``claim_next(wait=True)`` time out
on the server (``timeout=``) over cancelling it.
"""

from __future__ import annotations

import errno
import os
import socket as stdsocket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar

import trio

from runlease import client_common as common
from runlease import protocol as p
from runlease.core.model import Event, Finished
from runlease.errors import InternalError, RunleaseError, error_for_code
from runlease.operation_methods import AsyncClientMethods
from runlease.operations import ClaimNext, FinishRequest, Request

R = TypeVar("R")

RECEIVE_BYTES: Final = 64 * 1024
STREAM_BUFFER: Final = 256
CANCEL_GRACE: Final = 1.0


class AsyncClient(AsyncClientMethods):
    """One connection to a runlease server. Create it with :func:`open_client`.

    Its named methods (:class:`~runlease.operation_methods.AsyncClientMethods`) build a
    request and :meth:`call` it; session-scoped ones carry ``session_token`` unless the
    request names its own ``token``.
    """

    def __init__(self, stream: trio.SocketStream, path: Path, session_token: str | None) -> None:
        self.path = path
        self.session_token = session_token
        self.welcome: p.Welcome | None = None
        self._stream = stream
        self._send_lock = trio.Lock()
        self._next_id = 1
        self._waiting: dict[int, trio.MemorySendChannel[p.AnyReply]] = {}
        self._failure: RunleaseError | None = None

    # ------------------------------------------------------------------ plumbing
    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    async def _reader(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        buffer = p.FrameBuffer()
        failure: RunleaseError = common.closed_by_server(self.path)
        try:
            while True:
                try:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failure = common.unreachable(self.path, exc)
                    return
                if not data:
                    return
                buffer.feed(data)
                for body in buffer.frames():
                    reply = p.decode_reply(body)
                    if reply.id == p.CONNECTION_ID and isinstance(reply, p.ErrorReply):
                        failure = error_for_code(reply.code, reply.message)
                        return
                    channel = self._waiting.get(reply.id)
                    if channel is not None:
                        await channel.send(reply)
        except RunleaseError as exc:  # an unreadable reply or a broken reply stream
            failure = exc
        finally:
            self._failure = failure
            for channel in self._waiting.values():
                channel.close()

    def _register(self, rid: int, size: int) -> trio.MemoryReceiveChannel[p.AnyReply]:
        if self._failure is not None:
            raise self._failure
        send, receive = trio.open_memory_channel[p.AnyReply](size)
        self._waiting[rid] = send
        return receive

    async def _send(self, request: Request[Any]) -> None:
        frame = p.encode_frame(request)
        try:
            async with self._send_lock:
                await self._stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._failure or common.unreachable(self.path, exc) from None

    async def _next_reply(self, receive: trio.MemoryReceiveChannel[p.AnyReply]) -> p.AnyReply:
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            raise self._failure or common.closed_by_server(self.path) from None

    async def _exchange(self, request: Request[Any]) -> p.AnyReply:
        """Send one request and wait for its reply; if cancelled meanwhile, ask the server
        to cancel it too."""
        receive = self._register(request.id, 1)
        try:
            await self._send(request)
            try:
                reply = await self._next_reply(receive)
            except trio.Cancelled:
                await self._cancel_remote(request.id)
                raise
        finally:
            self._waiting.pop(request.id, None)
        return reply

    async def _cancel_remote(self, target: int) -> None:
        with trio.move_on_after(CANCEL_GRACE) as scope:
            scope.shield = True
            with suppress(RunleaseError):
                await self._send(p.Cancel(id=self._take_id(), target=target))

    async def _handshake(self) -> None:
        self.welcome = common.check_reply(
            await self._exchange(common.hello(self._take_id())), p.Welcome
        )

    async def call(self, request: Request[R]) -> R:
        """Send ``request`` and answer the value its reply carries (or raise its error)."""
        sent = common.outgoing(request, self._take_id(), self.session_token)
        return common.answer(await self._exchange(sent), sent)

    async def finish_and_claim(self, finish: FinishRequest, then: ClaimNext) -> Finished:
        sent = common.outgoing(finish, self._take_id(), self.session_token, then=then)
        return common.check_reply(await self._exchange(sent), p.FinishedReply).finished

    @asynccontextmanager
    async def follow_events(
        self, *, task_id: str | None = None, after_seq: int = 0
    ) -> AsyncIterator[EventStream]:
        """Buffered events after ``after_seq``, then live ones::

        async with client.follow_events(task_id=t) as events:
            async for event in events: ...
        """
        rid = self._take_id()
        receive = self._register(rid, STREAM_BUFFER)
        stream = EventStream(self, receive)
        try:
            await self._send(p.FollowEvents(id=rid, task_id=task_id, after_seq=after_seq))
            yield stream
        finally:
            self._waiting.pop(rid, None)
            if not stream.ended and self._failure is None:
                await self._cancel_remote(rid)


class EventStream:
    """What :meth:`AsyncClient.follow_events` yields: an async iterator of events."""

    def __init__(self, client: AsyncClient, receive: trio.MemoryReceiveChannel[p.AnyReply]) -> None:
        self._client = client
        self._receive = receive
        self.ended = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self.ended:
            raise StopAsyncIteration
        reply = await self._client._next_reply(self._receive)
        if isinstance(reply, p.EventItem):
            return reply.event
        self.ended = True
        if isinstance(reply, p.StreamEnd):
            raise StopAsyncIteration
        common.check_reply(reply, p.EventItem)
        raise InternalError("unreachable")  # pragma: no cover


@asynccontextmanager
async def open_client(
    path: str | os.PathLike[str] | None = None,
    *,
    session_token: str | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[AsyncClient]:
    """Connect to the server at ``path`` (default: $RUNLEASE_SOCKET, then the data dir's).

    While the server's queue of new connections is full the connect is retried, for up
    to ``connect_timeout`` seconds.
    """
    socket_path = common.resolve_socket(path)
    stream = await connect_unix(socket_path, connect_timeout)
    try:
        client = AsyncClient(stream, socket_path, session_token)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(client._reader)
                try:
                    await client._handshake()
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The reader never raises, so a group holds the caller's own exception: give it
            # back unwrapped, as if no nursery were involved.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        await stream.aclose()


async def connect_unix(path: Path, timeout: float) -> trio.SocketStream:
    """A stream connected to ``path``, retrying a full backlog (see ConnectBackoff)."""
    backoff = common.ConnectBackoff(path, timeout, clock=trio.current_time)
    while True:
        try:
            return await _connect_once(path)
        except OSError as exc:
            await trio.sleep(backoff.after_failure(exc))


async def _connect_once(path: Path) -> trio.SocketStream:
    # Not trio.open_unix_socket: trio takes EAGAIN (a full backlog) for a connect in
    # progress and then reports a socket that never connected as connected.
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect(os.fspath(path))
        except BlockingIOError as exc:
            if exc.errno != errno.EINPROGRESS:
                raise
            await trio.lowlevel.wait_writable(sock)
            failed = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ERROR)
            if failed:
                raise OSError(failed, os.strerror(failed)) from None
        else:
            await trio.lowlevel.checkpoint()
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


__all__ = ["AsyncClient", "EventStream", "open_client"]
