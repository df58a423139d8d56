"""Talk to a runlease server over its Unix socket or TCP (TLS), from programs that do not
embed it.

Two clients with the same methods:

- :class:`Client` (this module) is synchronous and uses only the standard library's
  ``socket``; one call at a time. The ``runlease`` CLI uses it::

      from runlease.client import Client

      with Client(session_token=token) as client:  # socket from $RUNLEASE_SOCKET etc.
          claim = client.claim_next(wait=True, timeout=30)
          client.complete(claim.run.id, result={"ok": True})

  An agent loop can finish a run and claim the next in one round trip with
  ``complete_and_next`` (also ``fail_and_next`` and ``release_and_next``).

- :func:`open_client` (in :mod:`runlease.runtime.client`, importable from here too) is the
  trio client: ``async with open_client(path) as client``. It pipelines: concurrent calls
  from several trio tasks share one connection.

Errors arrive as the same :class:`~runlease.errors.RunleaseError` classes the embedded
runtime raises, rebuilt from their codes. A server that cannot be reached raises
``Unavailable`` with code ``SERVER_UNAVAILABLE`` naming the socket path.

Where the server is: a socket path, or an address (``unix:/path``, ``tcp://host:port``,
see :class:`~runlease.client_common.ServerAddress`); by default $RUNLEASE_SERVER, else the
local socket. A TCP connection verifies the server's certificate against $RUNLEASE_TLS_CA
(else the system's CAs) and shows $RUNLEASE_TLS_CERT / $RUNLEASE_TLS_KEY for mutual TLS
(see :class:`~runlease.client_common.TlsFiles`).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from runlease import protocol as p
from runlease.client_common import (
    CLIENT_NAME,
    DEFAULT_RECONNECT_TIMEOUT,
    RECEIVE_BYTES,
    ConnectBackoff,
    ConnectionLost,
    ServerAddress,
    TlsFiles,
    answer,
    check_reply,
    closed_by_server,
    hello,
    lost,
    outcome_unknown,
    outgoing,
    resolve_address,
    resolve_auth_token,
    resolve_socket,
    unreachable,
)
from runlease.core.model import Event, Finished
from runlease.errors import InternalError, RunleaseError, Unavailable, error_for_code
from runlease.operation_methods_sync import ClientMethods
from runlease.operations import ClaimNext, FinishRequest, Request, strings

if TYPE_CHECKING:
    from runlease.runtime.client import AsyncClient, open_client

R = TypeVar("R")


# ---------------------------------------------------------------------------- connecting
def connect_unix(
    path: Path,
    timeout: float,
    *,
    attempt: Callable[[float], socket.socket] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> socket.socket:
    """A socket connected to ``path``, retrying a full backlog (see :class:`ConnectBackoff`).

    ``attempt(seconds_left)`` makes one try (tests pass a fake); it raises OSError on failure.
    """
    backoff = ConnectBackoff(path, timeout, clock=clock, jitter=jitter)
    try_once = attempt or (lambda left: _connect_once(path, left))
    while True:
        try:
            return try_once(backoff.remaining())
        except OSError as exc:
            sleep(backoff.after_failure(exc))


def _connect_once(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(timeout, 0.001))
        sock.connect(os.fspath(path))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def open_connection(
    address: ServerAddress, timeout: float, tls: TlsFiles | None = None
) -> socket.socket:
    """One socket connected to ``address`` (TLS set up for ``tcp://``), within ``timeout``
    seconds; raises :class:`~runlease.errors.Unavailable` when it cannot be had."""
    if address.path is not None:
        return connect_unix(address.path, timeout)
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        raise unreachable(address, exc) from None
    try:
        # Frames are small and each waits for its answer: never hold one back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.tls:
            context = (tls or TlsFiles.from_env()).context()
            # The handshake runs here, under the connect timeout.
            sock = context.wrap_socket(sock, server_hostname=address.host)
        sock.settimeout(None)
    except OSError as exc:
        sock.close()
        raise unreachable(address, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _would_block(exc: OSError) -> bool:
    """A TLS socket read with nothing to read says so with its own error."""
    import ssl

    return isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError)


# ------------------------------------------------------------------------ sync client
class Client(ClientMethods):
    """A synchronous connection to a runlease server. Not safe to share between threads.

    Its named methods (generated in :mod:`runlease.operation_methods_sync`) build a request
    and :meth:`call` it. ``session_token`` is used by the session-scoped calls (claim_next,
    heartbeat, complete, fail, release, block, whoami, ...) unless the request names its
    own ``token``. ``auth_token`` (default: $RUNLEASE_TOKEN) is the access token presented
    in the handshake: the connection then acts with its role. ``reply_timeout``
    bounds how long a call waits for its reply (None: forever); a waiting claim gets its own
    timeout on top, and a followed event stream waits as long as it is read.

    If the server closed the connection while no call was running (it closes idle ones),
    the next call connects again by itself. A connect retries for ``connect_timeout``
    seconds while the server's queue of new connections is full.

    Once connected, a client survives the server going away (a restart): it connects
    again with a jittered, doubling backoff for up to ``reconnect_timeout`` seconds in all
    (0: never), then raises SERVER_UNAVAILABLE. A call whose request had not gone out is
    sent on the new connection; one whose request went out unanswered is sent again only
    if its operation allows it (``Request.may_resend``: reads, heartbeats, finishes, a
    create with an idempotency key, ...), else it raises SERVER_UNAVAILABLE saying the
    request may have been applied. A followed event stream resumes after the last event
    it delivered. ``sleep`` and ``clock`` pace the backoff (tests pass fakes).
    ``path`` is a socket path or a server address (see the module's docstring); ``tls``
    the files a TCP connection uses (default: from the environment).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | ServerAddress | None = None,
        *,
        session_token: str | None = None,
        connect_timeout: float = 5.0,
        reply_timeout: float | None = None,
        client_name: str = CLIENT_NAME,
        auth_token: str | None = None,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        tls: TlsFiles | None = None,
    ) -> None:
        self.address = resolve_address(path)
        # What error messages name: the socket path, or the TCP address.
        self.path: Path | ServerAddress = (
            self.address.path if self.address.path is not None else self.address
        )
        self.tls = tls
        # Presented in every handshake (see resolve_auth_token); never sent anywhere else.
        self.auth_token = resolve_auth_token(auth_token)
        self.client_name = client_name
        self.session_token = session_token
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.reconnect_timeout = reconnect_timeout
        self.welcome: p.Welcome | None = None
        self._sock: socket.socket | None = None
        self._buffer = p.FrameBuffer()
        self._next_id = 1
        self._broken: RunleaseError | None = None
        self._sleep = sleep
        self._clock = clock
        self._connected_once = False

    # ------------------------------------------------------------------ connection
    def connect(self) -> Client:
        if self._sock is not None:
            return self
        self._sock = open_connection(self.address, self.connect_timeout, self.tls)
        self._buffer = p.FrameBuffer()
        self._broken = None
        self.welcome = None
        try:
            greeting = hello(self._take_id(), self.client_name, self.auth_token)
            self.welcome = check_reply(self._exchange(greeting), p.Welcome)
        except BaseException:
            self.close()
            raise
        self._connected_once = True
        return self

    # ------------------------------------------------------------------ reconnecting
    def _may_reconnect(self) -> bool:
        return self.reconnect_timeout > 0 and self._connected_once

    def _reconnect(self, backoff: ConnectBackoff | None) -> ConnectBackoff:
        """Connect again, trying until ``backoff`` runs out (a new one if None); answers
        the backoff so that one outage, however many calls it spans, has one bound."""
        if backoff is None:
            backoff = ConnectBackoff.for_restart(
                self.path, self.reconnect_timeout, clock=self._clock
            )
        self.close()
        while True:
            try:
                self.connect()
            except Unavailable as exc:
                self._sleep(backoff.after_outage(exc))
            else:
                return backoff

    def _exchange_resending(self, request: Request[Any]) -> p.AnyReply:
        """:meth:`_exchange` that survives a lost connection: reconnect and send again
        when that cannot apply the request twice (see the class docstring)."""
        if isinstance(self._broken, ConnectionLost) and self._may_reconnect():
            self._broken = None  # the next call finds out whether the server is back
        backoff: ConnectBackoff | None = None
        while True:
            try:
                return self._exchange(request)
            except ConnectionLost as exc:
                if not self._may_reconnect():
                    raise
                if exc.sent and not request.may_resend():
                    raise outcome_unknown(self.path, request) from None
            backoff = self._reconnect(backoff)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _socket(self) -> socket.socket:
        if self._broken is not None:
            raise self._broken
        if self._sock is None:
            try:
                self.connect()
            except ConnectionLost as exc:
                exc.sent = False  # the request waiting to go out never did
                raise
            except Unavailable as exc:
                if not self._connected_once:
                    raise
                raise ConnectionLost(exc.message, sent=False, code=exc.code) from None
        assert self._sock is not None
        return self._sock

    def _send(self, request: Request[Any]) -> None:
        frame = p.encode_frame(request)
        if self.welcome is not None and self._sock is not None and self._closed_between_calls():
            # Nothing was pending on the old connection, so nothing is lost: start afresh.
            self.close()
        sock = self._socket()
        try:
            sock.sendall(frame)
        except OSError as exc:
            # Not all of the frame went out, so the server cannot have read the request.
            raise self._break(lost(self.path, exc, sent=False)) from None

    def _closed_between_calls(self) -> bool:
        """Whether the server closed this connection while no call was running on it (an
        idle timeout, a restart); reads what already arrived without waiting."""
        sock = self._sock
        assert sock is not None
        timeout = sock.gettimeout()
        # A blocking socket reads without waiting when asked to (no mode switch, which
        # costs system calls); with a timeout, recv would first wait for data, so switch.
        # A TLS socket takes no flags: it always switches.
        switch = timeout is not None or not self.address.local
        flags = 0 if switch else socket.MSG_DONTWAIT
        if switch:
            sock.settimeout(0.0)
        try:
            while True:
                try:
                    data = sock.recv(RECEIVE_BYTES, flags)
                except (BlockingIOError, InterruptedError):
                    return False  # still open, nothing more to read now
                except OSError as exc:
                    return not (self.address.tls and _would_block(exc))
                if not data:
                    return True
                # Late replies to abandoned requests are skipped by the next call as
                # usual; a closing notice (CONNECTION_TIMEOUT) comes with the end of
                # the stream.
                self._buffer.feed(data)
        finally:
            if switch:
                sock.settimeout(timeout)

    def _break(self, error: RunleaseError) -> RunleaseError:
        self._broken = error
        self.close()
        return error

    def _receive(self, timeout: float | None = None) -> p.AnyReply:
        """The next reply; ``timeout`` bounds each wait for bytes (None: wait forever)."""
        while True:
            try:
                body = self._buffer.next_frame()
            except p.FramingLost as exc:
                raise self._break(
                    InternalError(f"the server's reply stream broke: {exc.message}")
                ) from None
            if body is not None:
                reply = p.decode_reply(body)
                if reply.id == p.CONNECTION_ID and isinstance(reply, p.ErrorReply):
                    raise self._break(error_for_code(reply.code, reply.message))
                return reply
            sock = self._socket()
            try:
                if sock.gettimeout() != timeout:
                    sock.settimeout(timeout)
                data = sock.recv(RECEIVE_BYTES)
            except TimeoutError:
                raise self._break(
                    unreachable(self.path, f"no reply within {timeout} seconds")
                ) from None
            except OSError as exc:
                raise self._break(lost(self.path, exc)) from None
            if not data:
                raise self._break(closed_by_server(self.path))
            self._buffer.feed(data)

    def _receive_for(self, rid: int, timeout: float | None = None) -> p.AnyReply:
        while True:
            reply = self._receive(timeout)
            if reply.id == rid:
                return reply
            # A late reply to something abandoned earlier (a cancelled stream): skip it.

    def _exchange(self, request: Request[Any]) -> p.AnyReply:
        """Send, then wait for the reply: ``reply_timeout`` plus as long as the request may
        legitimately take on the server (a waiting claim its timeout; None: forever)."""
        self._send(request)
        patience = request.patience()
        timeout = None
        if patience is not None and self.reply_timeout is not None:
            timeout = self.reply_timeout + patience
        return self._receive_for(request.id, timeout)

    def call(self, request: Request[R]) -> R:
        """Send ``request`` and answer the value its reply carries (or raise its error)."""
        sent = outgoing(request, self._take_id(), self.session_token)
        return answer(self._exchange_resending(sent), sent)

    def finish_and_claim(self, finish: FinishRequest, then: ClaimNext) -> Finished:
        sent = outgoing(finish, self._take_id(), self.session_token, then=then)
        return check_reply(self._exchange_resending(sent), p.FinishedReply).finished

    @contextmanager
    def follow_events(
        self,
        *,
        task_id: str | None = None,
        after_seq: int = 0,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> Iterator[Iterator[Event]]:
        """Buffered events after ``after_seq``, then live ones, until the block exits::

        with client.follow_events(task_id=t) as events:
            for event in events: ...
        """
        follow = p.FollowEvents(
            task_id=task_id,
            after_seq=after_seq,
            run_id=run_id,
            session_id=session_id,
            kinds=None if kinds is None else strings(kinds, "kinds"),
        )
        stream = _EventStream(self, follow)
        try:
            stream.start()
        except ConnectionLost:
            if not self._may_reconnect():
                raise
            stream._resume()  # the server went away since the last call: follow anew
        try:
            yield stream
        finally:
            if not stream.ended and self._broken is None and self._sock is not None:
                stream.cancel()


class _EventStream:
    """The iterator behind :meth:`Client.follow_events`.

    If the connection is lost (or the server ends the stream because it shuts down), the
    client connects again and asks for the events after the last one delivered: the
    history is durable, so nothing is skipped or repeated.
    """

    def __init__(self, client: Client, follow: p.FollowEvents) -> None:
        self._client = client
        self._follow = follow
        self._rid = 0
        self._backoff: ConnectBackoff | None = None
        self.ended = False

    def start(self) -> None:
        """Ask for the events (again, after a reconnect): after the last one delivered."""
        self._rid = self._client._take_id()
        self._client._send(msgspec.structs.replace(self._follow, id=self._rid))

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self.ended:
            raise StopIteration
        client = self._client
        while True:
            try:
                reply = client._receive_for(self._rid)
            except ConnectionLost:
                if not client._may_reconnect():
                    raise
            else:
                restarting = isinstance(reply, p.StreamEnd) and reply.reason == "shutdown"
                if not (restarting and client._may_reconnect()):
                    break
            self._resume()
        if isinstance(reply, p.EventItem):
            self._backoff = None  # the outage, if any, is over
            self._follow = msgspec.structs.replace(self._follow, after_seq=reply.event.seq)
            return reply.event
        self.ended = True
        if isinstance(reply, p.StreamEnd):
            raise StopIteration
        check_reply(reply, p.EventItem)  # raises the error the server sent
        raise StopIteration  # pragma: no cover

    def _resume(self) -> None:
        while True:
            self._backoff = self._client._reconnect(self._backoff)
            try:
                self.start()
            except ConnectionLost:
                continue  # lost again before the request went out: try once more
            return

    def cancel(self) -> None:
        """Ask the server to end the stream and read up to its end, so the client stays usable."""
        client = self._client
        cancel_id = client._take_id()
        client._send(p.Cancel(id=cancel_id, target=self._rid))
        pending = {cancel_id, self._rid}
        while pending:
            reply = client._receive(client.reply_timeout)
            if reply.id == cancel_id:
                pending.discard(cancel_id)
            elif reply.id == self._rid and not isinstance(reply, p.EventItem):
                pending.discard(self._rid)
        self.ended = True


def connect(
    path: str | os.PathLike[str] | ServerAddress | None = None,
    *,
    session_token: str | None = None,
    auth_token: str | None = None,
    tls: TlsFiles | None = None,
) -> Client:
    """A connected :class:`Client` (close it, or use ``with``)."""
    return Client(path, session_token=session_token, auth_token=auth_token, tls=tls).connect()


def __getattr__(name: str) -> Any:
    # The trio client lives in runlease.runtime.client (only runtime/ imports trio);
    # importing it from here loads it on first use.
    if name in ("open_client", "AsyncClient"):
        from runlease.runtime import client as trio_client

        return getattr(trio_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "Client",
    "ServerAddress",
    "TlsFiles",
    "check_reply",
    "connect",
    "open_client",
    "open_connection",
    "resolve_socket",
    "unreachable",
]
