"""The async client for any event loop: ``async with runlease.aio.open_client() as client``.

Built on anyio, so one class serves asyncio hosts (LangGraph, the OpenAI Agents SDK,
Pydantic-AI) and trio programs alike. It has the trio client's typed methods, which
:class:`~runlease.operation_methods.AsyncClientMethods` defines once over :meth:`call`,
and speaks the same protocol through the same helpers (:mod:`runlease.protocol`,
:mod:`runlease.client_common`).

Calls from several tasks share the one connection: each request is framed into an outbox
that a writer task sends, and a reader task hands every reply to the caller waiting on its
id. A caller never writes to the socket itself, so a cancelled caller can never leave half
a frame behind. A caller cancelled while its request is in flight asks the server to cancel
it; if the server had made a claim for it all the same (the claim crossed the cancel), the
client releases that lease as soon as the reply comes in, so a cancelled claim leaves no
lease behind.
"""

from __future__ import annotations

import errno
import os
import socket as stdsocket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runlease import client_common as common
from runlease import protocol as p
from runlease.core.model import Event, Finished
from runlease.errors import InternalError, RunleaseError, error_for_code
from runlease.operation_methods import AsyncClientMethods
from runlease.operations import (
    ClaimNext,
    FinishRequest,
    ReleaseRun,
    Request,
    SessionRequest,
    strings,
)

R = TypeVar("R")

STREAM_BUFFER: Final = 256
# Requests waiting to go out past this many bytes make their callers wait for room.
OUTBOX_HIGH_WATER: Final = 1024 * 1024


class _Pending:
    """One call waiting for its reply: the reader fills ``reply`` and sets ``arrived``."""

    __slots__ = ("arrived", "reply")

    def __init__(self) -> None:
        self.reply: p.AnyReply | None = None
        self.arrived = anyio.Event()

    def deliver(self, reply: p.AnyReply | None) -> None:
        """Hand over the reply (None: the connection ended)."""
        self.reply = reply
        self.arrived.set()


class AnyioClient(AsyncClientMethods):
    """One connection to a runlease server, usable from asyncio or trio. Create it with
    :func:`open_client`; session-scoped requests carry ``session_token`` unless the request
    names its own ``token``."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        where: Path | common.ServerAddress,
        session_token: str | None,
        auth_token: str | None = None,
    ) -> None:
        self.path = where  # the socket path, or the TCP address: what errors name
        self.session_token = session_token
        self.auth_token = auth_token
        self.welcome: p.Welcome | None = None
        self._stream = stream
        self._next_id = 1
        self._waiting: dict[int, _Pending | MemoryObjectSendStream[p.AnyReply]] = {}
        # Requests of cancelled callers, by id: a claim still answering one is handed back.
        self._abandoned: dict[int, str | None] = {}
        self._failure: RunleaseError | None = None
        self._outbox = bytearray()
        self._writer_wanted = anyio.Event()
        self._room = anyio.Event()  # set whenever the writer emptied the outbox
        self._room.set()

    # ------------------------------------------------------------------ plumbing
    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    async def _reader(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        buffer = p.FrameBuffer()
        failure: RunleaseError = common.closed_by_server(self.path)
        try:
            while True:
                try:
                    data = await self._stream.receive(common.RECEIVE_BYTES)
                except anyio.EndOfStream:
                    return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    failure = common.lost(self.path, _why_broken(exc))
                    return
                buffer.feed(data)
                for body in buffer.frames():
                    await self._dispatch(p.decode_reply(body))
        except _ConnectionRefused as refused:
            failure = refused.error
        except RunleaseError as exc:  # an unreadable reply or a broken reply stream
            failure = exc
        finally:
            self._fail(failure)

    async def _dispatch(self, reply: p.AnyReply) -> None:
        if reply.id == p.CONNECTION_ID and isinstance(reply, p.ErrorReply):
            raise _ConnectionRefused(error_for_code(reply.code, reply.message))
        waiter = self._waiting.get(reply.id)
        if waiter is None:  # the caller gave up on it (cancelled)
            if reply.id in self._abandoned:
                self._hand_back(reply, self._abandoned.pop(reply.id))
            return
        if isinstance(waiter, _Pending):
            waiter.deliver(reply)
            return
        try:
            waiter.send_nowait(reply)
        except anyio.WouldBlock:
            # A stream read slower than it arrives: stop reading until it catches up, so
            # the server's sends wait rather than our memory.
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await waiter.send(reply)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def _fail(self, failure: RunleaseError) -> None:
        if self._failure is None:
            self._failure = failure
        for waiter in self._waiting.values():
            if isinstance(waiter, _Pending):
                if waiter.reply is None:  # a delivered reply stands
                    waiter.deliver(None)
            else:
                waiter.close()
        self._room.set()

    async def _writer(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Sends the outbox, whole frames at a time, for every caller."""
        task_status.started()
        while True:
            await self._writer_wanted.wait()
            self._writer_wanted = anyio.Event()
            while self._outbox:
                chunk = bytes(self._outbox)
                del self._outbox[:]
                try:
                    await self._stream.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    self._fail(common.lost(self.path, _why_broken(exc)))
                    return
            self._room.set()

    def _post(self, request: Request[Any]) -> None:
        """Queue one request for the writer (never waits, so a cancellation cannot cut it)."""
        if self._failure is not None:
            raise self._failure
        p.append_frame(self._outbox, request)
        if len(self._outbox) > OUTBOX_HIGH_WATER and self._room.is_set():
            self._room = anyio.Event()
        self._writer_wanted.set()

    async def _wait_for_room(self) -> None:
        """Wait while the requests queued behind a slow server exceed the high-water mark."""
        while len(self._outbox) > OUTBOX_HIGH_WATER and self._failure is None:
            await self._room.wait()

    async def _exchange(self, request: Request[Any]) -> p.AnyReply:
        """Send one request and wait for its reply; if cancelled once the request is on
        its way, ask the server to cancel it too."""
        if self._failure is not None:
            raise self._failure
        await anyio.lowlevel.checkpoint_if_cancelled()  # already cancelled: nothing goes out
        pending = _Pending()
        self._waiting[request.id] = pending
        try:
            self._post(request)
            try:
                await self._wait_for_room()
                await pending.arrived.wait()
            except anyio.get_cancelled_exc_class():
                token = request.token if isinstance(request, SessionRequest) else None
                if pending.reply is None:
                    self._cancel_remote(request.id)
                    self._abandoned[request.id] = token
                else:
                    self._hand_back(pending.reply, token)
                raise
        finally:
            self._waiting.pop(request.id, None)
        if pending.reply is None:
            raise self._failure or common.closed_by_server(self.path)
        return pending.reply

    def _hand_back(self, reply: p.AnyReply, token: str | None) -> None:
        """Release the lease of a claim that answered a cancelled caller, best effort."""
        if isinstance(reply, p.ClaimReply):
            claim = reply.claim
        elif isinstance(reply, p.FinishedReply) and reply.finished.claim is not None:
            claim = reply.finished.claim
        else:
            return
        release = ReleaseRun(claim.run.id, reason=common.ABANDONED_CLAIM_REASON, token=token)
        with suppress(RunleaseError):
            self._post(common.outgoing(release, self._take_id(), self.session_token))

    def _cancel_remote(self, target: int) -> None:
        """Ask the server to cancel request ``target``, best effort."""
        with suppress(RunleaseError):
            self._post(p.Cancel(id=self._take_id(), target=target))

    async def _handshake(self) -> None:
        self.welcome = common.check_reply(
            await self._exchange(
                common.hello(self._take_id(), common.CLIENT_NAME, self.auth_token)
            ),
            p.Welcome,
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
        self,
        *,
        task_id: str | None = None,
        after_seq: int = 0,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> AsyncIterator[AnyioEventStream]:
        """Buffered events after ``after_seq``, then live ones::

        async with client.follow_events(task_id=t) as events:
            async for event in events: ...
        """
        if self._failure is not None:
            raise self._failure
        rid = self._take_id()
        send, receive = anyio.create_memory_object_stream[p.AnyReply](STREAM_BUFFER)
        self._waiting[rid] = send
        stream = AnyioEventStream(self, receive)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
            self._post(
                p.FollowEvents(
                    id=rid,
                    task_id=task_id,
                    after_seq=after_seq,
                    run_id=run_id,
                    session_id=session_id,
                    kinds=None if kinds is None else strings(kinds, "kinds"),
                )
            )
            await self._wait_for_room()
            yield stream
        finally:
            self._waiting.pop(rid, None)
            send.close()
            receive.close()
            if not stream.ended and self._failure is None:
                self._cancel_remote(rid)


def _why_broken(exc: BaseException) -> BaseException:
    """What broke a stream: a TLS stream's broken-resource error says nothing itself and
    carries the TLS error (an EOF, a reset) as its cause."""
    return exc.__cause__ if exc.__cause__ is not None and not str(exc) else exc


class _ConnectionRefused(Exception):
    """The server refused the whole connection (an error reply to no request)."""

    def __init__(self, error: RunleaseError) -> None:
        super().__init__(error.message)
        self.error = error


class AnyioEventStream:
    """What :meth:`AnyioClient.follow_events` yields: an async iterator of events."""

    def __init__(self, client: AnyioClient, receive: MemoryObjectReceiveStream[p.AnyReply]) -> None:
        self._client = client
        self._receive = receive
        self.ended = False

    def __aiter__(self) -> AnyioEventStream:
        return self

    async def __anext__(self) -> Event:
        if self.ended:
            raise StopAsyncIteration
        try:
            reply = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self._client._failure or common.closed_by_server(self._client.path) from None
        if isinstance(reply, p.EventItem):
            return reply.event
        self.ended = True
        if isinstance(reply, p.StreamEnd):
            raise StopAsyncIteration
        common.check_reply(reply, p.EventItem)
        raise InternalError("unreachable")  # pragma: no cover


@asynccontextmanager
async def open_client(
    path: str | os.PathLike[str] | common.ServerAddress | None = None,
    *,
    session_token: str | None = None,
    connect_timeout: float = 5.0,
    auth_token: str | None = None,
    tls: common.TlsFiles | None = None,
) -> AsyncIterator[AnyioClient]:
    """Connect from asyncio or trio to the server at ``path``: a socket path or an address
    (``unix:/path``, ``tcp://host:port``); default $RUNLEASE_SERVER, else $RUNLEASE_SOCKET,
    else the data dir's socket. ``tls`` are the files a TCP connection uses (default: the
    environment's, see :class:`~runlease.client_common.TlsFiles`). ``auth_token`` (default:
    $RUNLEASE_TOKEN) is presented in the handshake if there is one.

    While the server's queue of new connections is full the connect is retried, for up
    to ``connect_timeout`` seconds; a TCP connection and its TLS handshake must be done
    within it.
    """
    address = common.resolve_address(path)
    stream = await connect(address, connect_timeout, tls)
    where: Path | common.ServerAddress = address if address.path is None else address.path
    try:
        client = AnyioClient(stream, where, session_token, common.resolve_auth_token(auth_token))
        try:
            async with anyio.create_task_group() as tasks:
                await tasks.start(client._reader)
                await tasks.start(client._writer)
                try:
                    await client._handshake()
                    yield client
                finally:
                    tasks.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The reader and the writer never raise, so a group holds the caller's own
            # exception: give it back unwrapped, as if no task group were involved.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        # A TLS stream says goodbye (close_notify) and waits for the server's: a server
        # that is gone or silent must turn leaving into neither an error nor a hang.
        with anyio.move_on_after(connect_timeout), suppress(anyio.BrokenResourceError, OSError):
            await stream.aclose()


async def connect(
    address: common.ServerAddress, timeout: float, tls: common.TlsFiles | None = None
) -> anyio.abc.ByteStream:
    """A byte stream to the server at ``address`` (its TLS handshake done for ``tcp://``),
    within ``timeout`` seconds; raises :class:`~runlease.errors.Unavailable` when it cannot
    be had. Every transport is opened here."""
    if address.path is not None:
        return await _connect_unix(address.path, timeout)
    context = (tls or common.TlsFiles.from_env()).context() if address.tls else None
    try:
        with anyio.fail_after(timeout):
            # anyio's TCP streams turn Nagle off: a small frame leaves at once.
            if context is None:
                return await anyio.connect_tcp(address.host, address.port)
            return await anyio.connect_tcp(
                address.host, address.port, ssl_context=context, tls_hostname=address.host
            )
    except TimeoutError:
        raise common.unreachable(address, f"no connection within {timeout:g} seconds") from None
    except (OSError, anyio.BrokenResourceError) as exc:
        raise common.unreachable(address, _why_broken(exc)) from None


async def _connect_unix(path: Path, timeout: float) -> anyio.abc.ByteStream:
    """A stream to the socket at ``path``, retrying a full backlog (see
    :class:`~runlease.client_common.ConnectBackoff`)."""
    backoff = common.ConnectBackoff(path, timeout, clock=anyio.current_time)
    while True:
        try:
            return await _connect_unix_once(path)
        except OSError as exc:
            await anyio.sleep(backoff.after_failure(exc))


async def _connect_unix_once(path: Path) -> anyio.abc.ByteStream:
    # Not anyio.connect_unix: under trio it takes EAGAIN (a full backlog) for a connect in
    # progress and then reports a socket that never connected as connected.
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect(os.fspath(path))
        except BlockingIOError as exc:
            if exc.errno != errno.EINPROGRESS:
                raise
            await anyio.wait_writable(sock)
            failed = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ERROR)
            if failed:
                raise OSError(failed, os.strerror(failed)) from None
        return await anyio.abc.UNIXSocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise


__all__ = ["AnyioClient", "AnyioEventStream", "connect", "open_client"]
