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
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import trio

from runlease import client_common as common
from runlease import protocol as p
from runlease.core.model import Event, Finished
from runlease.errors import InternalError, RunleaseError, Unavailable, error_for_code
from runlease.operation_methods import AsyncClientMethods
from runlease.operations import (
    ClaimNext,
    FinishRequest,
    ReleaseRun,
    Request,
    SessionRequest,
    strings,
)
from runlease.runtime.wire import StreamWire, Wire

R = TypeVar("R")

STREAM_BUFFER: Final = 256
# Requests waiting to go out past this many bytes make their callers wait for room.
OUTBOX_HIGH_WATER: Final = 1024 * 1024


class _Pending:
    """One call waiting for its reply: the reader fills ``reply`` and wakes ``task``."""

    __slots__ = ("reply", "task")

    def __init__(self) -> None:
        self.reply: p.AnyReply | None = None
        self.task: trio.lowlevel.Task | None = None

    def deliver(self, reply: p.AnyReply | None) -> None:
        """Hand over the reply (None: the connection ended) and wake the caller if parked."""
        self.reply = reply
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


class _Link:
    """One connection to the server and the two tasks that serve it.

    A call writes its request straight to the socket when the socket has room (a writer
    task sends the rest otherwise, so a call never leaves half a frame behind) and parks
    until the reader task hands it its reply: no channel, lock or extra task per call.
    Once the connection ends every waiting call is woken with the failure; the client
    then makes a new link (see :class:`AsyncClient`).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        path: Path | common.ServerAddress,
        take_id: Callable[[], int],
    ) -> None:
        self.path = path  # the socket path, or the TCP address: what errors name
        self.stream = stream
        self._take_id = take_id
        # A TLS stream's socket carries records, not frames: its wire goes through it.
        self._wire: Wire | StreamWire = (
            Wire(stream.socket) if isinstance(stream, trio.SocketStream) else StreamWire(stream)
        )
        self._waiting: dict[int, _Pending | trio.MemorySendChannel[p.AnyReply]] = {}
        # Requests whose callers were cancelled before the reply came, by id, with the
        # session token they carried: a claim that answers one anyway is handed back.
        self._abandoned: dict[int, str | None] = {}
        self._failure: RunleaseError | None = None
        self._writer_wanted = trio.Event()
        self._room = trio.Event()  # set when the writer emptied the outbox
        self._scope = trio.CancelScope()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reader and the writer until :meth:`close`; then close the socket."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._reader)
                    await nursery.start(self._writer)
                    task_status.started()
        finally:
            self._fail(common.closed_by_server(self.path))
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    def close(self) -> None:
        self._scope.cancel()

    @property
    def failed(self) -> bool:
        return self._failure is not None

    # ------------------------------------------------------------------ plumbing
    async def _reader(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        buffer = p.FrameBuffer()
        failure: RunleaseError = common.closed_by_server(self.path)
        try:
            while True:
                try:
                    data = await self._wire.receive_some()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failure = common.lost(self.path, exc)
                    return
                if not data:
                    return
                buffer.feed(data)
                for body in buffer.frames():
                    reply = p.decode_reply(body)
                    if reply.id == p.CONNECTION_ID and isinstance(reply, p.ErrorReply):
                        failure = error_for_code(reply.code, reply.message)
                        return
                    waiter = self._waiting.get(reply.id)
                    if waiter is None:  # the caller gave up on it (cancelled)
                        if reply.id in self._abandoned:
                            self._hand_back(reply, self._abandoned.pop(reply.id))
                        continue
                    if isinstance(waiter, _Pending):
                        waiter.deliver(reply)
                        continue
                    try:
                        waiter.send_nowait(reply)
                    except trio.WouldBlock:
                        # A stream read slower than it arrives: stop reading until it
                        # catches up, so the server's sends wait rather than our memory.
                        with suppress(trio.BrokenResourceError):
                            await waiter.send(reply)
                    except trio.BrokenResourceError:
                        pass
        except RunleaseError as exc:  # an unreadable reply or a broken reply stream
            failure = exc
        finally:
            self._fail(failure)

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

    async def _writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sends what a call could not write at once, waiting for the server to read."""
        task_status.started()
        while True:
            await self._writer_wanted.wait()
            self._writer_wanted = trio.Event()
            try:
                await self._wire.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(common.lost(self.path, exc))
                return
            self._room.set()

    def _unsent(self) -> RunleaseError:
        """The failure to raise for a request that never went out on this link."""
        failure = self._failure
        assert failure is not None
        if isinstance(failure, Unavailable):
            # The connection had ended already (closed, idle timeout, restart): the request
            # is safe to send on a new one.
            return common.ConnectionLost(failure.message, sent=False, code=failure.code)
        return failure

    def post(self, request: Request[Any]) -> None:
        """Put one request on the wire now, or queue what the socket has no room for."""
        if self._failure is not None:
            raise self._unsent()
        p.append_frame(self._wire.outbox, request)
        try:
            if self._wire.send_ready():
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._failure or common.lost(self.path, exc) from None
        if self._room.is_set():
            self._room = trio.Event()
        self._writer_wanted.set()

    async def wait_for_room(self) -> None:
        """Wait while the requests queued behind a slow server exceed the high-water mark."""
        while len(self._wire.outbox) > OUTBOX_HIGH_WATER and self._failure is None:
            await self._room.wait()

    async def _wait(self, pending: _Pending) -> p.AnyReply:
        if pending.reply is None and self._failure is None:
            pending.task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                pending.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if pending.reply is None:
            raise self._failure or common.closed_by_server(self.path)
        return pending.reply

    async def next_reply(self, receive: trio.MemoryReceiveChannel[p.AnyReply]) -> p.AnyReply:
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            raise self._failure or common.closed_by_server(self.path) from None

    async def exchange(self, request: Request[Any]) -> p.AnyReply:
        """Send one request and wait for its reply; if cancelled once the request is on
        its way, ask the server to cancel it too."""
        if self._failure is not None:
            raise self._unsent()
        # Already cancelled: nothing goes out.
        await trio.lowlevel.checkpoint_if_cancelled()
        pending = _Pending()
        self._waiting[request.id] = pending
        try:
            self.post(request)
            try:
                await self.wait_for_room()
                return await self._wait(pending)
            except trio.Cancelled:
                token = request.token if isinstance(request, SessionRequest) else None
                if pending.reply is None:
                    self.cancel_remote(request.id)
                    self._abandoned[request.id] = token
                else:
                    self._hand_back(pending.reply, token)
                raise
        finally:
            self._waiting.pop(request.id, None)

    def subscribe(self, rid: int) -> trio.MemoryReceiveChannel[p.AnyReply]:
        """The channel the replies to stream ``rid`` arrive on."""
        send, receive = trio.open_memory_channel[p.AnyReply](STREAM_BUFFER)
        self._waiting[rid] = send
        return receive

    def unsubscribe(self, rid: int, *, cancel: bool) -> None:
        self._waiting.pop(rid, None)
        if cancel and self._failure is None:
            self.cancel_remote(rid)

    def _hand_back(self, reply: p.AnyReply, token: str | None) -> None:
        """Release the lease of a claim that answered a cancelled caller, best effort: the
        caller never learns of it, so it would otherwise sit until its lease ran out."""
        if isinstance(reply, p.ClaimReply):
            claim = reply.claim
        elif isinstance(reply, p.FinishedReply) and reply.finished.claim is not None:
            claim = reply.finished.claim
        else:
            return
        release = ReleaseRun(claim.run.id, reason=common.ABANDONED_CLAIM_REASON, token=token)
        with suppress(RunleaseError):
            self.post(common.outgoing(release, self._take_id(), None))

    def cancel_remote(self, target: int) -> None:
        """Ask the server to cancel request ``target``, best effort (queued if the socket
        is full; the writer sends it)."""
        with suppress(RunleaseError):
            self.post(p.Cancel(id=self._take_id(), target=target))


class AsyncClient(AsyncClientMethods):
    """A client of a runlease server. Create it with :func:`open_client`.

    Its named methods (:class:`~runlease.operation_methods.AsyncClientMethods`) build a
    request and :meth:`call` it; session-scoped ones carry ``session_token`` unless the
    request names its own ``token``. Calls from several tasks share one connection.

    If the connection is lost (the server restarted, or closed it), the client connects
    again, with a jittered doubling backoff for up to ``reconnect_timeout`` seconds (0:
    never), and then raises SERVER_UNAVAILABLE. A call whose request had not gone out is
    sent on the new connection; one whose request went out unanswered is sent again only
    if its operation allows it (``Request.may_resend``), else it raises
    SERVER_UNAVAILABLE saying the request may have been applied. A followed event stream
    resumes after the last event it delivered.
    """

    def __init__(
        self,
        address: common.ServerAddress,
        session_token: str | None,
        nursery: trio.Nursery,
        *,
        connect_timeout: float = 5.0,
        reconnect_timeout: float = common.DEFAULT_RECONNECT_TIMEOUT,
        auth_token: str | None = None,
        tls: common.TlsFiles | None = None,
    ) -> None:
        self.address = address
        self.tls = tls
        # What error messages name: the socket path, or the TCP address.
        self.path: Path | common.ServerAddress = (
            address.path if address.path is not None else address
        )
        self.session_token = session_token
        self.auth_token = auth_token
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.welcome: p.Welcome | None = None
        self._nursery = nursery
        self._next_id = 1
        self._link: _Link | None = None
        self._relinking = trio.Lock()

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _current(self) -> _Link:
        assert self._link is not None, "use open_client"
        return self._link

    # ------------------------------------------------------------------ connections
    async def _connect(self) -> None:
        """Open one connection, start serving it and say hello; it becomes the link."""
        stream = await open_stream(self.address, self.connect_timeout, self.tls)
        link = _Link(stream, self.path, self._take_id)
        try:
            await self._nursery.start(link.serve)
        except BaseException:
            await stream.aclose()
            raise
        try:
            welcome = common.check_reply(
                await link.exchange(
                    common.hello(self._take_id(), common.CLIENT_NAME, self.auth_token)
                ),
                p.Welcome,
            )
        except BaseException:
            link.close()
            raise
        self.welcome = welcome
        old, self._link = self._link, link
        if old is not None:
            old.close()

    async def _reconnect(self, lost: _Link) -> None:
        """Replace the lost link with a new connection, unless another task did already;
        tries until the backoff's bound, then raises SERVER_UNAVAILABLE."""
        async with self._relinking:
            if self._link is not lost:
                return
            lost.close()
            backoff = common.ConnectBackoff.for_restart(
                self.path, self.reconnect_timeout, clock=trio.current_time
            )
            while True:
                try:
                    await self._connect()
                except Unavailable as exc:
                    await trio.sleep(backoff.after_outage(exc))
                else:
                    return

    def _may_reconnect(self) -> bool:
        return self.reconnect_timeout > 0

    async def _exchange_resending(self, request: Request[Any]) -> p.AnyReply:
        while True:
            link = self._current()
            try:
                return await link.exchange(request)
            except common.ConnectionLost as exc:
                if not self._may_reconnect():
                    raise
                if exc.sent and not request.may_resend():
                    raise common.outcome_unknown(self.path, request) from None
            await self._reconnect(link)

    async def call(self, request: Request[R]) -> R:
        """Send ``request`` and answer the value its reply carries (or raise its error)."""
        sent = common.outgoing(request, self._take_id(), self.session_token)
        return common.answer(await self._exchange_resending(sent), sent)

    async def finish_and_claim(self, finish: FinishRequest, then: ClaimNext) -> Finished:
        sent = common.outgoing(finish, self._take_id(), self.session_token, then=then)
        return common.check_reply(await self._exchange_resending(sent), p.FinishedReply).finished

    @asynccontextmanager
    async def follow_events(
        self,
        *,
        task_id: str | None = None,
        after_seq: int = 0,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> AsyncIterator[EventStream]:
        """Buffered events after ``after_seq``, then live ones::

        async with client.follow_events(task_id=t) as events:
            async for event in events: ...
        """
        follow = p.FollowEvents(
            task_id=task_id,
            after_seq=after_seq,
            run_id=run_id,
            session_id=session_id,
            kinds=None if kinds is None else strings(kinds, "kinds"),
        )
        stream = EventStream(self, follow)
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                stream._open()
            except common.ConnectionLost:
                if not self._may_reconnect():
                    raise
                await stream._resume()  # the connection had ended: follow on a new one
            await stream._link.wait_for_room()
            yield stream
        finally:
            stream._close()


class EventStream:
    """What :meth:`AsyncClient.follow_events` yields: an async iterator of events.

    If the connection is lost (or the server ends the stream because it shuts down), the
    client connects again and asks for the events after the last one delivered: the
    history is durable, so nothing is skipped or repeated.
    """

    def __init__(self, client: AsyncClient, follow: p.FollowEvents) -> None:
        self._client = client
        self._follow = follow
        self._link = client._current()
        self._rid = 0
        self._receive: trio.MemoryReceiveChannel[p.AnyReply] | None = None
        self.ended = False

    def _open(self) -> None:
        """Ask the current link for the events after the last one delivered."""
        self._link = self._client._current()
        self._rid = self._client._take_id()
        self._receive = self._link.subscribe(self._rid)
        self._link.post(msgspec.structs.replace(self._follow, id=self._rid))

    def _close(self) -> None:
        if self._rid:
            self._link.unsubscribe(self._rid, cancel=not self.ended)

    async def _resume(self) -> None:
        while True:
            self._close()
            await self._client._reconnect(self._link)
            try:
                self._open()
            except common.ConnectionLost:
                continue  # lost again before the request went out
            return

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self.ended:
            raise StopAsyncIteration
        client = self._client
        while True:
            assert self._receive is not None
            try:
                reply = await self._link.next_reply(self._receive)
            except common.ConnectionLost:
                if not client._may_reconnect():
                    raise
            else:
                restarting = isinstance(reply, p.StreamEnd) and reply.reason == "shutdown"
                if not (restarting and client._may_reconnect()):
                    break
            await self._resume()
        if isinstance(reply, p.EventItem):
            self._follow = msgspec.structs.replace(self._follow, after_seq=reply.event.seq)
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
    reconnect_timeout: float = common.DEFAULT_RECONNECT_TIMEOUT,
    tls: common.TlsFiles | None = None,
) -> AsyncIterator[AsyncClient]:
    """Connect to the server at ``path``: a socket path or an address (``unix:/path``,
    ``tcp://host:port``); default $RUNLEASE_SERVER, else $RUNLEASE_SOCKET, else the data
    dir's socket. ``tls`` are the files a TCP connection uses (default: the environment's,
    see :class:`~runlease.client_common.TlsFiles`). ``auth_token`` (default:
    $RUNLEASE_TOKEN) is presented in the handshake if there is one.

    While the server's queue of new connections is full the connect is retried, for up
    to ``connect_timeout`` seconds. Once connected, the client outlives the server going
    away for up to ``reconnect_timeout`` seconds (see :class:`AsyncClient`).
    """
    address = common.resolve_address(path)
    try:
        async with trio.open_nursery() as nursery:
            client = AsyncClient(
                address,
                session_token,
                nursery,
                connect_timeout=connect_timeout,
                reconnect_timeout=reconnect_timeout,
                auth_token=common.resolve_auth_token(auth_token),
                tls=tls,
            )
            try:
                await client._connect()
                yield client
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The links' tasks never raise, so a group holds the caller's own exception:
        # give it back unwrapped, as if no nursery were involved.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def open_stream(
    address: common.ServerAddress, timeout: float, tls: common.TlsFiles | None = None
) -> trio.abc.Stream:
    """One stream connected to ``address`` (its TLS handshake done for ``tcp://``), within
    ``timeout`` seconds; raises :class:`~runlease.errors.Unavailable` when it cannot be had."""
    if address.path is not None:
        return await connect_unix(address.path, timeout)
    context = (tls or common.TlsFiles.from_env()).context() if address.tls else None
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(timeout):
            # trio's TCP streams turn Nagle off: a small frame leaves at once.
            tcp = stream = await trio.open_tcp_stream(address.host, address.port)
            if context is not None:
                stream = trio.SSLStream(tcp, context, server_hostname=address.host)
                await stream.do_handshake()
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        reason: BaseException | str = exc
        if isinstance(exc, trio.TooSlowError):
            reason = f"no connection within {timeout:g} seconds"
        elif isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
            reason = exc.__cause__  # the TLS error that broke the handshake
        raise common.unreachable(address, reason) from None
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise
    return stream


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


__all__ = ["AsyncClient", "EventStream", "open_client", "open_stream"]
