"""The server: one runtime, many clients, the protocol of :mod:`runlease.protocol`.

Each connection has a reader task. Per wake-up it takes every complete frame the socket
holds; what can be answered at once (hello, cancel, a bad frame) is queued, and the replies
queued in that turn leave in one send (:mod:`runlease.runtime.wire`). The last request of
the batch, unless it may wait long, is answered on the reader task itself (the usual
one-call-at-a-time client then costs no task spawn); any other request gets a task, so a
client may pipeline requests and get replies as they finish, matched by id. A connection
holds at most ``max_inflight`` requests at once; past that the reader stops reading until
one finishes, so a greedy client slows only itself.

Every operation runs through one executor: the request is looked up in the operation
table (:mod:`runlease.operations`), carried out with ``request.serve(call)`` for a
:class:`~runlease.runtime.calls.Call` that names the caller (the session of the request's
token, or the operator) and the connection's origin, and its value goes back in the reply
that carries that type. There is no per-operation code here.

Nothing a client sends can stop the server: a bad frame, an unknown op or a field of the
wrong type gets an error reply with a stable code and the connection carries on. Only a
length prefix above the frame limit closes the connection, because after it the byte stream
cannot be trusted to be in step. Errors inside a handler become ``INTERNAL`` replies and a
log line; they never reach another connection.

Listeners: one server may listen on several addresses at once, Unix sockets and TCP ports,
TLS or (on loopback, or when the operator accepts the risk) plain; the rules are in
:mod:`runlease.runtime.listeners`. Every listener feeds the same connections, limits and
executor; each connection knows whether it came over a Unix socket (``local``) or over TCP.

Security: the socket file is made safe by :mod:`runlease.runtime.socket_file`, and every
Unix connection's peer uid (SO_PEERCRED) must be the server's own; others get a
``PEER_REFUSED`` reply and are closed. A TLS connection must finish its handshake within
``handshake_timeout``; one that fails (plain bytes sent to a TLS port, an untrusted client
certificate) is logged and closed before it costs anything more. A hello may carry an
access token (``auth_token``): an unknown, revoked or expired one is refused
(``AUTH_TOKEN_REFUSED``), and a usable one makes the connection act with its role, checked
before every request (``PERMISSION_DENIED``). A connection that is not local
(``_Connection.local``: it came over TCP) must present one; the local socket without a
token acts as the operator.

Limits (:class:`ServerLimits`), so that no client, and no crowd of clients, can starve the
server: a connection must say hello within ``handshake_timeout`` and may send only small
frames before it does; a connection with nothing in flight is closed after
``idle_timeout`` (a parked claim, an event stream or a drain is never idle); at most
``max_connections`` are served at once, never more than the open-file limit leaves room
for; and the frames being received, across all connections, may together declare at most
``max_buffered_bytes``. A refused or timed-out connection gets an error reply saying which
limit it hit (``SERVER_BUSY``, ``CONNECTION_TIMEOUT``, ``FRAME_TOO_LARGE``) and is closed.

Shutdown (:meth:`SocketServer.shutdown`): stop accepting and remove the socket file, stop
reading new requests, end waiting claims (``SHUTTING_DOWN``) and event streams (a
``StreamEnd`` with reason ``shutdown``), let the other requests in flight finish and their
replies go out, then close the connections. Whatever is still running after the grace
period is cancelled, including a reply stuck on a client that does not read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from runlease import protocol as p
from runlease.client_common import ServerAddress
from runlease.core.model import AccessToken, Actor, Finished, NoClaim, Origin
from runlease.errors import (
    AUTH_TOKEN_REFUSED,
    BAD_REQUEST,
    CONNECTION_TIMEOUT,
    HANDSHAKE_REQUIRED,
    INTERNAL,
    PAYLOAD_TOO_LARGE,
    PEER_REFUSED,
    REQUEST_CANCELLED,
    SERVER_BUSY,
    SHUTTING_DOWN,
    UNSUPPORTED_VERSION,
    InvalidInput,
    LeaseRefused,
    RunleaseError,
)
from runlease.operations import OPERATOR
from runlease.runtime.calls import Call
from runlease.runtime.listeners import bound_url, check_listeners
from runlease.runtime.runtime import Runtime
from runlease.runtime.socket_file import bind_unix_socket, default_backlog, peer_credentials
from runlease.runtime.wire import StreamWire, Wire

log = logging.getLogger("runlease.server")

SERVER_NAME: Final = "runlease"
# Requests over the socket without a session token act as the operator.
SOCKET_OPERATOR: Final = OPERATOR
DEFAULT_MAX_INFLIGHT: Final = 64
DEFAULT_SHUTDOWN_GRACE: Final = 10.0
RECEIVE_BYTES: Final = 64 * 1024
# After a closing error reply: how long, and how much, to keep discarding client bytes so
# the reply is not lost to a connection reset.
LINGER_SECONDS: Final = 2.0
LINGER_MAX_BYTES: Final = 4 * 1024 * 1024
# Defaults of the limits that keep clients from starving the server (see ServerLimits).
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_IDLE_TIMEOUT: Final = 300.0
DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_MAX_BUFFERED_BYTES: Final = 64 * 1024 * 1024
# A hello is tiny; until it is done a connection may not make the server hold more.
HANDSHAKE_MAX_FRAME: Final = 4096
# File descriptors kept free of connections: the store, its lock, the log, trio's own
# wakeup and epoll fds, worker threads, and the one a refused connection needs briefly.
FD_RESERVE: Final = 64
# Refused connections being told why at once; past this they are closed without a word.
MAX_REFUSING: Final = 16
# At most one refusal log line per this many seconds; the line counts the ones in between.
REFUSAL_LOG_INTERVAL: Final = 1.0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("runlease")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


# ------------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class ServerLimits:
    """What one server allows its clients; every field is a ``runlease serve`` option.

    ``idle_timeout`` 0 (or infinity) never closes an idle connection. ``backlog`` None asks
    for the system's maximum listen backlog.
    """

    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    backlog: int | None = None

    def __post_init__(self) -> None:
        if not self.handshake_timeout > 0:
            raise InvalidInput(
                f"handshake_timeout must be more than 0 seconds, got {self.handshake_timeout}"
            )
        if not self.idle_timeout >= 0:
            raise InvalidInput(
                f"idle_timeout must be 0 (never) or more seconds, got {self.idle_timeout}"
            )
        if self.max_connections < 1:
            raise InvalidInput(f"max_connections must be at least 1, got {self.max_connections}")
        if self.max_buffered_bytes < p.MAX_FRAME_BYTES:
            raise InvalidInput(
                f"max_buffered_bytes must be at least one frame ({p.MAX_FRAME_BYTES}), "
                f"got {self.max_buffered_bytes}"
            )
        if self.backlog is not None and self.backlog < 1:
            raise InvalidInput(f"backlog must be at least 1, got {self.backlog}")

    @property
    def idle_seconds(self) -> float:
        return math.inf if self.idle_timeout == 0 else self.idle_timeout


def fd_soft_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None if unlimited or unknown."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(configured: int, soft_limit: int | None, reserve: int = FD_RESERVE) -> int:
    """How many connections to serve: the configured cap, below the open-file limit.

    Each connection holds one descriptor; ``reserve`` stay free for storage, threads,
    logs and refusals, so that serving many idle clients never makes a write fail EMFILE.
    """
    if soft_limit is None:
        return configured
    return max(1, min(configured, soft_limit - reserve))


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit lets; (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an unlimited soft limit; its per-process ceiling is fs.nr_open.
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text().strip())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    after, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, after


# -------------------------------------------------------------------------- connections
def _remote_address(stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a TCP peer; "" if it is already gone."""
    raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    try:
        host, port = raw.socket.getpeername()[:2]
    except OSError:
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _InFlight:
    __slots__ = ("ended", "long", "scope", "why")

    def __init__(self, *, long: bool, cancellable: bool = True) -> None:
        # None for a request the reading task answers itself: no cancel can reach it, as
        # that task reads the next frame only once the answer is out.
        self.scope = trio.CancelScope() if cancellable else None
        self.long = long
        self.why: str | None = None  # why its scope was cancelled: cancelled, shutdown, ...
        self.ended: trio.Event | None = None  # made by whoever waits for it to end


class _Connection:
    def __init__(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        number: int,
        max_inflight: int,
        *,
        local: bool = True,
        listener: str = "",
    ) -> None:
        self.stream = stream
        # The hot path reads and writes through the wire; the stream closes the socket.
        # A TLS stream's socket carries records, not frames: its wire goes through it.
        self.wire: Wire | StreamWire = (
            Wire(stream.socket) if isinstance(stream, trio.SocketStream) else StreamWire(stream)
        )
        self.number = number
        # True for the owner-only Unix socket, False for TCP: what a caller may do without
        # proving who it is depends on it.
        self.local = local
        self.listener = listener  # the URL of the listener that accepted it
        self.remote = ""  # host:port of a TCP peer
        self.peer: tuple[int, int, int] | None = None
        self.buffer = p.FrameBuffer()
        self.buffer.limit(HANDSHAKE_MAX_FRAME, " before the hello handshake")
        self.reserved = 0  # bytes of the shared receive budget held by a partial frame
        self.slots = trio.Semaphore(max_inflight)
        self.inflight: dict[int, _InFlight] = {}
        self.handshaken = False
        self.client_name = ""  # what the client called itself in hello
        self._origin: Origin | None = None
        # The access token this connection authenticated with (its id, its actor), if any.
        self.token_id: str | None = None
        self.token_actor: Actor | None = None
        self.draining = False
        self.linger = False  # closing after an error reply: half-close and drain first
        # The reading task is answering a request itself; a drain must let it finish.
        self.answering = False
        self.scope = trio.CancelScope()  # the whole connection
        self.read_scope = trio.CancelScope()
        # Cancelled when the handshake or an idle spell runs too long (see _watch_deadlines).
        self.timer = trio.CancelScope()
        self.watch_scope = trio.CancelScope()
        # When the connection last did something with nothing left in flight.
        self.idle_since = -math.inf

    def origin(self) -> Origin:
        """How this connection's writes are stamped: ``cli`` for the runlease command,
        ``socket`` for any other client; ``ref`` names the peer process when known.
        Built once per hello (the peer and the client's name are fixed by then)."""
        if self._origin is None:
            kind = "cli" if self.client_name == p.CLI_CLIENT_NAME else "socket"
            if self.token_actor is not None:
                # The token says who is behind a session's writes too (audit).
                ref = f"token:{self.token_actor.ref}"
            elif not self.local:
                ref = f"tcp:{self.remote}"
            else:
                ref = "" if self.peer is None else f"pid:{self.peer[0]}"
            self._origin = Origin(kind=kind, ref=ref)
        return self._origin

    @property
    def socket(self) -> trio.socket.SocketType:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            return stream.transport_stream.socket
        return stream.socket

    def greeted(self, client_name: str, token: AccessToken | None) -> None:
        self.handshaken = True
        self.client_name = client_name
        # Each hello says anew who the connection is.
        self.token_id = None if token is None else token.id
        self.token_actor = None if token is None else Actor(kind="token", ref=token.name)
        self._origin = None

    def fields(self, **more: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"conn": self.number}
        if self.listener:
            out["listener"] = self.listener
        if self.peer is not None:
            out["peer_pid"], out["peer_uid"] = self.peer[0], self.peer[1]
        if self.remote:
            out["remote"] = self.remote
        out.update(more)
        return out

    def post(self, reply: p.Reply) -> None:
        """Queue a reply; it leaves with the next :meth:`flush`, together with every other
        reply queued meanwhile."""
        try:
            p.append_frame(self.wire.outbox, reply)
        except InvalidInput:
            p.append_frame(
                self.wire.outbox,
                p.ErrorReply(
                    id=reply.id,
                    code=PAYLOAD_TOO_LARGE,
                    message=f"the reply would exceed {p.MAX_FRAME_BYTES} bytes; ask for less",
                ),
            )

    async def flush(self) -> bool:
        """Send the queued replies; False if the client is gone (the connection is then
        cancelled). Cancelled while the client reads too slowly to take them, the stream
        is torn if part of a frame went out (see Wire.flush), and nothing more follows."""
        try:
            await self.wire.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.scope.cancel()
            return False
        return True

    async def send(self, reply: p.Reply) -> bool:
        """Send one reply (with any queued before it); False if the client is gone."""
        self.post(reply)
        return await self.flush()

    async def send_last(self, reply: p.Reply) -> None:
        """Send the reply that explains a close, if the stream can still carry it, and
        arrange to linger; bounded, since a client that does not read must not hold us."""
        self.linger = True
        if self.wire.torn:
            return
        with trio.move_on_after(LINGER_SECONDS):
            await self.send(reply)

    async def half_close_and_drain(self) -> None:
        """Say EOF, then discard what the client still sends (bounded) until it closes.

        Closing a Unix socket with unread bytes in it resets the connection, and the peer
        may then lose the error reply that explains why it is being closed.
        """
        with trio.move_on_after(LINGER_SECONDS):
            try:
                # TLS has no half-close: there the client just reads until we close.
                if isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
                discarded = 0
                while discarded < LINGER_MAX_BYTES:
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        return
                    discarded += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                return

    def begin_drain(self, why: str = "shutdown") -> None:
        """Stop reading; end long waits now; let short requests finish."""
        self.draining = True
        if not self.answering:
            # Else the reader stops once its answer is out (see _dispatch). It is not
            # shielded, so the server's grace period still bounds it.
            self.read_scope.cancel()
        for flight in self.inflight.values():
            if flight.long and flight.scope is not None and flight.why is None:
                flight.why = why
                flight.scope.cancel()


class _Bound:
    """One listening socket and how its connections are served."""

    __slots__ = ("listener", "local", "tls", "url")

    def __init__(
        self, listener: trio.SocketListener, url: str, *, local: bool, tls: ssl.SSLContext | None
    ) -> None:
        self.listener = listener
        self.url = url
        self.local = local
        self.tls = tls

    def wrap(
        self, stream: trio.SocketStream
    ) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        if self.tls is None:
            return stream
        return trio.SSLStream(stream, self.tls, server_side=True)


class SocketServer:
    """Serves one :class:`Runtime` on its listeners. Start it with :func:`serve_socket`.

    ``path`` is a Unix socket to listen on; ``listen`` adds more addresses (Unix sockets or
    TCP ports). TCP listeners speak TLS with the ``tls`` context; without one, a TCP
    listener off loopback is refused unless ``insecure_plaintext`` (see
    :func:`runlease.runtime.listeners.check_listeners`).
    """

    def __init__(
        self,
        runtime: Runtime,
        path: str | os.PathLike[str] | None,
        *,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        limits: ServerLimits | None = None,
        listen: Sequence[ServerAddress] = (),
        tls: ssl.SSLContext | None = None,
        insecure_plaintext: bool = False,
    ) -> None:
        self.runtime = runtime
        self.addresses = [*([] if path is None else [ServerAddress.unix(path)]), *listen]
        check_listeners(self.addresses, tls=tls is not None, insecure_plaintext=insecure_plaintext)
        self.tls = tls
        # The first Unix socket, which status reports; None when serving only TCP.
        self.path: Path | None = next(
            (address.path for address in self.addresses if address.path is not None), None
        )
        # What clients can connect to, once run() has bound every listener.
        self.urls: list[str] = []
        self.max_inflight = max_inflight
        self.shutdown_grace = shutdown_grace
        self.limits = limits or ServerLimits()
        # The configured cap until run() lowers it below the open-file limit.
        self.connection_limit = self.limits.max_connections
        self._buffered = 0  # bytes declared by partial frames across all connections
        self._refusing = 0
        self._refused_unlogged = 0
        self._refusal_logged_at = -math.inf
        self.started_at = time.time()
        self.version = _version()
        self._uid = os.geteuid()
        self._accept_scope = trio.CancelScope()
        self._connections: set[_Connection] = set()
        self._connections_changed = trio.Event()
        self._opened = 0
        self._stopping = False
        self._stopped = trio.Event()
        self._socket_ids: dict[Path, tuple[int, int]] = {}

    # ----------------------------------------------------------------- life cycle
    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def shutdown(self) -> None:
        """Begin a graceful stop; :meth:`run` returns once it is done."""
        if not self._stopping:
            self._stopping = True
            log.info("shutdown_started", extra={"fields": {"connections": len(self._connections)}})
            self._accept_scope.cancel()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[SocketServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        soft = fd_soft_limit()
        self.connection_limit = connection_cap(self.limits.max_connections, soft)
        log.info(
            "connection_limit",
            extra={
                "fields": {
                    "max_connections": self.connection_limit,
                    "configured": self.limits.max_connections,
                    "fd_soft_limit": soft,
                    "fd_reserve": FD_RESERVE,
                }
            },
        )
        bound: list[_Bound] = []
        try:
            for address in self.addresses:
                bound += await self._bind(address)
            self.urls = [each.url for each in bound]
            async with trio.open_nursery() as nursery:
                task_status.started(self)
                with self._accept_scope:
                    if not self._stopping:
                        async with trio.open_nursery() as accepting:
                            for each in bound:
                                accepting.start_soon(self._accept_loop, each, nursery)
                # Stopping: no new connections, then drain the ones we have.
                for each in bound:
                    await each.listener.aclose()
                self._remove_socket_file()
                for conn in list(self._connections):
                    conn.begin_drain()
                with trio.move_on_after(self.shutdown_grace) as grace:
                    while self._connections:
                        await self._wait_connections_changed()
                if grace.cancelled_caught:
                    log.warning(
                        "shutdown_grace_expired",
                        extra={"fields": {"connections": len(self._connections)}},
                    )
                nursery.cancel_scope.cancel()
        finally:
            for each in bound:
                with contextlib.suppress(Exception):
                    await each.listener.aclose()
            self._remove_socket_file()
            self._stopped.set()

    async def _bind(self, address: ServerAddress) -> list[_Bound]:
        """Listen on ``address``: one socket, or one per address family for a TCP host."""
        if address.path is not None:
            raw = bind_unix_socket(address.path, backlog=self.limits.backlog)
            info = os.stat(address.path)
            self._socket_ids[address.path] = (info.st_dev, info.st_ino)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
            return [_Bound(listener, address.url, local=True, tls=None)]
        listeners = await trio.open_tcp_listeners(
            address.port, host=address.host, backlog=self.limits.backlog
        )
        return [
            _Bound(
                listener,
                bound_url(address, listener.socket.getsockname(), tls=self.tls is not None),
                local=False,
                tls=self.tls,
            )
            for listener in listeners
        ]

    def _remove_socket_file(self) -> None:
        for path, socket_id in list(self._socket_ids.items()):
            try:
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == socket_id:
                    os.unlink(path)
            except OSError:
                pass
        self._socket_ids.clear()

    async def _wait_connections_changed(self) -> None:
        await self._connections_changed.wait()

    def _note_connections_changed(self) -> None:
        self._connections_changed.set()
        self._connections_changed = trio.Event()

    async def _accept_loop(self, bound: _Bound, nursery: trio.Nursery) -> None:
        while True:
            try:
                accepted = await bound.listener.accept()
            except OSError as exc:
                # Out of file descriptors or memory: back off instead of spinning.
                log.error("accept_failed", extra={"fields": {"error": str(exc)}})
                await trio.sleep(0.1)
                continue
            stream = bound.wrap(accepted)
            if len(self._connections) >= self.connection_limit:
                await self._refuse(stream, bound, nursery)
                continue
            self._opened += 1
            nursery.start_soon(self._serve_connection, stream, self._opened, bound.local, bound.url)

    async def _refuse(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        bound: _Bound,
        nursery: trio.Nursery,
    ) -> None:
        """At the connection cap: tell the client so and close, rather than leave it hanging
        in the backlog or let accept fail for want of descriptors."""
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            fields: dict[str, Any] = {"listener": bound.url}
            if not bound.local:
                fields["remote"] = _remote_address(stream)
            fields.update(
                code=SERVER_BUSY,
                reason="max_connections",
                max_connections=self.connection_limit,
                # This one and those refused since the last line (one line per interval).
                refused=self._refused_unlogged,
            )
            log.warning("connection_refused", extra={"fields": fields})
            self._refusal_logged_at = now
            self._refused_unlogged = 0
        if self._refusing >= MAX_REFUSING:
            # A flood: explaining costs a descriptor per client for a while; just close.
            await stream.aclose()
            return
        self._refusing += 1
        nursery.start_soon(self._explain_refusal, stream)

    async def _explain_refusal(
        self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    ) -> None:
        conn = _Connection(stream, 0, 1)
        try:
            await conn.send_last(
                p.ErrorReply(
                    id=p.CONNECTION_ID,
                    code=SERVER_BUSY,
                    message=(
                        f"the server is serving its maximum of {self.connection_limit} "
                        "connections; try again later, close idle clients, or raise the "
                        "limit with `runlease serve --max-connections` (it also stays "
                        f"{FD_RESERVE} below the open-file limit, `ulimit -n`)"
                    ),
                )
            )
            await conn.half_close_and_drain()
        finally:
            self._refusing -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()

    # ----------------------------------------------------------------- one client
    async def _serve_connection(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        number: int,
        local: bool = True,
        listener: str = "",
    ) -> None:
        conn = _Connection(stream, number, self.max_inflight, local=local, listener=listener)
        self._connections.add(conn)
        self._note_connections_changed()
        try:
            with conn.scope:
                if await self._admit(conn):
                    await self._serve_admitted(conn)
            if conn.linger:
                await conn.half_close_and_drain()
        except Exception:
            log.exception("connection_failed", extra={"fields": conn.fields()})
        finally:
            # Bookkeeping first: closing checkpoints, and a cancelled close must not leave
            # the connection counted.
            self._reserve(conn, 0)
            self._connections.discard(conn)
            self._note_connections_changed()
            log.debug("connection_closed", extra={"fields": conn.fields()})
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _admit(self, conn: _Connection) -> bool:
        if not conn.local:
            return await self._admit_remote(conn)
        try:
            conn.peer = peer_credentials(conn.socket)
        except OSError:
            conn.peer = None
        if conn.peer is not None and conn.peer[1] != self._uid:
            log.warning(
                "peer_refused",
                extra={"fields": conn.fields(code=PEER_REFUSED, server_uid=self._uid)},
            )
            conn.linger = True
            await conn.send(
                p.ErrorReply(
                    id=p.CONNECTION_ID,
                    code=PEER_REFUSED,
                    message=(
                        f"this runlease server serves only uid {self._uid}; "
                        f"your uid is {conn.peer[1]}"
                    ),
                )
            )
            return False
        log.debug("connection_opened", extra={"fields": conn.fields()})
        return True

    async def _admit_remote(self, conn: _Connection) -> bool:
        """A TCP client: note its address, and finish the TLS handshake (within the
        handshake timeout) before reading a frame; a failed one is logged and closed."""
        conn.remote = _remote_address(conn.stream)
        stream = conn.stream
        if isinstance(stream, trio.SSLStream):
            with trio.move_on_after(self.limits.handshake_timeout) as late:
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    reason = exc.__cause__ if exc.__cause__ is not None else exc
                    # Nothing can be said to a peer that does not speak TLS: no code.
                    log.warning(
                        "tls_handshake_failed", extra={"fields": conn.fields(error=str(reason))}
                    )
                    return False
            if late.cancelled_caught:
                log.warning(
                    "connection_timed_out",
                    extra={"fields": conn.fields(code=CONNECTION_TIMEOUT, phase="tls_handshake")},
                )
                return False
        log.debug("connection_opened", extra={"fields": conn.fields()})
        return True

    async def _serve_admitted(self, conn: _Connection) -> None:
        async with trio.open_nursery() as handlers:
            with conn.read_scope:
                conn.idle_since = trio.current_time()
                with conn.timer:
                    handlers.start_soon(self._watch_deadlines, conn)
                    try:
                        await self._read_loop(conn, handlers)
                    finally:
                        conn.watch_scope.cancel()
                if conn.timer.cancelled_caught:
                    await self._time_out(conn)
            if not conn.draining:
                # The client went away: nobody is left to read replies.
                handlers.cancel_scope.cancel()

    async def _watch_deadlines(self, conn: _Connection) -> None:
        """Cancel the connection's timer when the hello is late, or when nothing has been
        in flight for the idle timeout; never while something is, so a parked claim, a
        stream or a drain keeps its connection as long as it runs.

        A task of its own that wakes once per deadline, so that a request costs only a
        timestamp (``idle_since``) rather than re-arming a deadline twice.
        """
        hello_deadline = trio.current_time() + self.limits.handshake_timeout
        idle = self.limits.idle_seconds
        with conn.watch_scope:
            while True:
                now = trio.current_time()
                if not conn.handshaken:
                    deadline = hello_deadline
                    # A hello may come any moment; then the idle clock rules, so look
                    # again at least once per idle timeout.
                    look_again = min(deadline, now + idle)
                elif conn.inflight:
                    deadline = math.inf
                    look_again = now + idle
                else:
                    deadline = look_again = conn.idle_since + idle
                if now >= deadline:
                    conn.timer.cancel()
                    return
                await trio.sleep_until(max(look_again, now))

    async def _time_out(self, conn: _Connection) -> None:
        if conn.handshaken:
            phase, message = (
                "idle",
                f"the connection sat idle for {self.limits.idle_timeout:g} seconds and the "
                "server closed it; connect again to go on (`runlease serve --idle-timeout` "
                "sets the limit)",
            )
        else:
            phase, message = (
                "handshake",
                f"no hello within {self.limits.handshake_timeout:g} seconds of connecting, "
                "so the server closed the connection; a client must send hello first "
                "(`runlease serve --handshake-timeout` sets the limit)",
            )
        # A late hello is a refusal; closing an idle connection is routine.
        log.log(
            logging.INFO if conn.handshaken else logging.WARNING,
            "connection_timed_out",
            extra={"fields": conn.fields(code=CONNECTION_TIMEOUT, phase=phase)},
        )
        await conn.send_last(
            p.ErrorReply(id=p.CONNECTION_ID, code=CONNECTION_TIMEOUT, message=message)
        )

    def _reserve(self, conn: _Connection, size: int) -> bool:
        """Hold ``size`` bytes of the shared receive budget for ``conn``'s partial frame
        (in place of what it held); False, holding nothing, if that would overrun it."""
        self._buffered -= conn.reserved
        conn.reserved = 0
        if size and self._buffered + size > self.limits.max_buffered_bytes:
            return False
        self._buffered += size
        conn.reserved = size
        return True

    async def _read_loop(self, conn: _Connection, handlers: trio.Nursery) -> None:
        while True:
            try:
                data = await conn.wire.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            conn.buffer.feed(data)
            while True:
                try:
                    body = conn.buffer.next_frame()
                except p.FramingLost as exc:
                    log.warning(
                        "framing_lost",
                        extra={"fields": conn.fields(code=exc.code, declared=exc.declared)},
                    )
                    await conn.send_last(
                        p.ErrorReply(id=p.CONNECTION_ID, code=exc.code, message=exc.message)
                    )
                    # Requests read before the bad prefix still get their replies.
                    conn.begin_drain("framing_lost")
                    return
                if body is None:
                    break
                await self._dispatch(conn, body, handlers)
            conn.idle_since = trio.current_time()
            # The replies this batch of frames made ready leave in one send.
            await conn.flush()
            declared = conn.buffer.partial_size
            if declared != conn.reserved and not self._reserve(conn, declared):
                log.warning(
                    "receive_budget_exhausted",
                    extra={
                        "fields": conn.fields(
                            code=SERVER_BUSY,
                            declared=declared,
                            budget=self.limits.max_buffered_bytes,
                        )
                    },
                )
                await conn.send_last(
                    p.ErrorReply(
                        id=p.CONNECTION_ID,
                        code=SERVER_BUSY,
                        message=(
                            f"the server cannot take a {declared}-byte frame now: frames "
                            "being received from all clients would exceed its "
                            f"{self.limits.max_buffered_bytes}-byte budget; try again "
                            "later or send smaller requests (`runlease serve "
                            "--max-buffered-bytes` sets the budget)"
                        ),
                    )
                )
                conn.begin_drain("server_busy")
                return

    async def _dispatch(self, conn: _Connection, body: bytes, handlers: trio.Nursery) -> None:
        """Act on one frame. Replies known at once are queued for the batch's one send;
        an operation is answered on the reading task when it is the last frame received
        and may not wait long (the usual one-at-a-time client: no task spawn), else it gets
        a task of its own so the frames after it are not held up."""
        try:
            request = p.decode_request(body)
        except p.RequestRejected as exc:
            log.warning(
                "request_rejected",
                extra={"fields": conn.fields(code=exc.code, request_id=exc.request_id)},
            )
            conn.post(p.ErrorReply(id=exc.request_id, code=exc.code, message=exc.message))
            return
        if isinstance(request, p.Hello):
            reply = self._hello(conn, request)
            if isinstance(reply, p.ErrorReply):
                log.warning(
                    "handshake_refused",
                    extra={"fields": conn.fields(code=reply.code, error=reply.message)},
                )
            if isinstance(reply, p.ErrorReply) and reply.code == AUTH_TOKEN_REFUSED:
                # Nothing more is read from a connection that failed to authenticate.
                await conn.send_last(reply)
                conn.begin_drain("auth_refused")
                return
            conn.post(reply)
            return
        if not conn.handshaken:
            conn.post(
                p.ErrorReply(
                    id=request.id,
                    code=HANDSHAKE_REQUIRED,
                    message="send hello with the protocol versions you speak first",
                )
            )
            return
        if isinstance(request, p.Cancel):
            conn.post(p.Ok(id=request.id))
            flight = conn.inflight.get(request.target)
            if flight is not None and flight.scope is not None and flight.why is None:
                flight.why = "cancelled"
                flight.scope.cancel()
                # Frames after the cancel see the request over: a waiting claim that was
                # cancelled cannot take the work a later request of this client creates.
                flight.ended = trio.Event()
                await conn.flush()
                await flight.ended.wait()
            return
        if request.id in conn.inflight:
            conn.post(
                p.ErrorReply(
                    id=request.id,
                    code=BAD_REQUEST,
                    message=f"request id {request.id} is already in flight on this connection",
                )
            )
            return
        try:
            conn.slots.acquire_nowait()
        except trio.WouldBlock:
            # Full: what is queued goes out before the reader waits for a request to end.
            await conn.flush()
            await conn.slots.acquire()
        if conn.draining:
            conn.slots.release()
            return
        long = request.long()
        inline = not long and len(conn.buffer) == 0
        flight = _InFlight(long=long, cancellable=not inline)
        conn.inflight[request.id] = flight
        if inline:
            # A drain that starts while the answer is worked out lets it finish (within the
            # grace period), then stops the reading.
            await conn.flush()
            conn.answering = True
            try:
                await self._handle(conn, request, flight)
            finally:
                conn.answering = False
            if conn.draining:
                conn.read_scope.cancel()
                await trio.lowlevel.checkpoint()
            return
        handlers.start_soon(self._handle, conn, request, flight)

    def _hello(self, conn: _Connection, hello: p.Hello) -> p.Reply:
        version = p.choose_version(hello.versions)
        if version is None:
            return p.ErrorReply(
                id=hello.id,
                code=UNSUPPORTED_VERSION,
                message=(
                    f"this server speaks protocol versions {list(p.SUPPORTED_VERSIONS)}; "
                    f"the client offered {hello.versions[:10]}"
                ),
            )
        token = None
        try:
            if hello.auth_token is not None:
                token = self.runtime.authenticate(hello.auth_token)
            elif not conn.local:
                raise LeaseRefused(
                    "this connection must authenticate: send an access token in hello "
                    "(--token or RUNLEASE_TOKEN; `runlease token create` makes one)",
                    code=AUTH_TOKEN_REFUSED,
                )
        except RunleaseError as exc:
            return p.ErrorReply(id=hello.id, code=exc.code, message=exc.message)
        conn.greeted(hello.client, token)
        conn.buffer.limit(p.MAX_FRAME_BYTES)
        return p.Welcome(id=hello.id, version=version, server=SERVER_NAME, pid=os.getpid())

    async def _handle(self, conn: _Connection, request: p.AnyRequest, flight: _InFlight) -> None:
        try:
            reply: p.Reply | None = None
            # A finish that claims next is never cut short: its scope only ends the wait of
            # the claim part (the runtime enters it), so the finish is always reported.
            if flight.scope is None or request.claims_after_finish():
                reply = await self._answer(conn, request, flight)
            else:
                with flight.scope:
                    reply = await self._answer(conn, request, flight)
            if reply is None:
                reply = self._interrupted_reply(request, flight.why)
            await conn.send(reply)
        finally:
            conn.inflight.pop(request.id, None)
            conn.slots.release()
            conn.idle_since = trio.current_time()
            if flight.ended is not None:
                flight.ended.set()

    async def _answer(self, conn: _Connection, request: p.AnyRequest, flight: _InFlight) -> p.Reply:
        """The reply to ``request``: its value, or the error it raised."""
        try:
            return await self._execute(conn, request, flight)
        except RunleaseError as exc:
            return p.ErrorReply(id=request.id, code=exc.code, message=exc.message)
        except Exception:
            log.exception(
                "request_failed", extra={"fields": conn.fields(op=type(request).__name__)}
            )
            return p.ErrorReply(
                id=request.id,
                code=INTERNAL,
                message="internal error while handling the request; see the server log",
            )

    @staticmethod
    def _interrupted_reply(request: p.AnyRequest, why: str | None) -> p.Reply:
        reason = why or "cancelled"
        if isinstance(request, p.FollowEvents):
            return p.StreamEnd(id=request.id, reason=reason)
        if reason == "shutdown":
            return p.ErrorReply(
                id=request.id,
                code=SHUTTING_DOWN,
                message="the server is shutting down; try again once it is back",
            )
        return p.ErrorReply(
            id=request.id, code=REQUEST_CANCELLED, message="the request was cancelled"
        )

    # ------------------------------------------------------------------ requests
    async def _execute(
        self, conn: _Connection, request: p.AnyRequest, flight: _InFlight
    ) -> p.Reply:
        """The one executor: carry the request out for its caller, answer its value."""
        if isinstance(request, p.Hello | p.Cancel):  # pragma: no cover - the reader's
            raise InvalidInput(f"{type(request).__name__} is handled by the reader")
        principal = None
        operator: Actor | None = SOCKET_OPERATOR
        if conn.token_id is not None:
            # Checked on every request, so a revoke or an expiry takes effect at once.
            principal = self.runtime.token_in_force(conn.token_id)
            operator = conn.token_actor
        token = request.token if isinstance(request, p.SessionRequest) else None
        call = Call(
            self.runtime,
            origin=conn.origin(),
            # With a session token the caller is that session; without, the access token's
            # name, or the operator on the local socket without one.
            actor=None if token else operator,
            token=token,
            stop_waiting=flight.scope,
            status=self.status,
            principal=principal,
        )
        call.authorize(request)
        if isinstance(request, p.FollowEvents):
            return await self._follow(conn, request)
        value = await request.serve(call)
        if isinstance(value, Finished) and value.no_claim is not None and flight.why == "shutdown":
            value.no_claim = NoClaim(
                code=SHUTTING_DOWN, message="the server is shutting down; nothing was claimed"
            )
        return p.reply_to(request.id, value)

    async def _follow(self, conn: _Connection, request: p.FollowEvents) -> p.Reply:
        if request.after_seq < 0:
            raise InvalidInput("after_seq must be zero or positive")
        events = self.runtime.follow_events(
            after_seq=request.after_seq,
            task_id=request.task_id,
            run_id=request.run_id,
            session_id=request.session_id,
            kinds=request.kinds,
        )
        # Closed on the way out, so the follower's hold on the history goes with it.
        async with contextlib.aclosing(events):
            async for event in events:
                if not await conn.send(p.EventItem(id=request.id, event=event)):
                    break
        return p.StreamEnd(id=request.id, reason="closed")

    def status(self) -> p.ServerStatus:
        rt = self.runtime.status()
        return p.ServerStatus(
            version=self.version,
            protocol=p.PROTOCOL_VERSION,
            pid=os.getpid(),
            socket=str(self.path) if self.path is not None else ",".join(self.urls),
            started_at=self.started_at,
            uptime_seconds=max(time.time() - self.started_at, 0.0),
            connections=len(self._connections),
            durability=rt.durability,
            recovered=rt.recovered,
            tasks=rt.tasks,
            queued_runs=rt.queued_runs,
            leased_runs=rt.leased_runs,
            live_sessions=rt.live_sessions,
            waiting_claimers=rt.waiting_claimers,
            last_event_seq=rt.last_event_seq,
        )


async def serve_socket(
    runtime: Runtime,
    path: str | os.PathLike[str] | None,
    *,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    limits: ServerLimits | None = None,
    listen: Sequence[ServerAddress] = (),
    tls: ssl.SSLContext | None = None,
    insecure_plaintext: bool = False,
    task_status: trio.TaskStatus[SocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``runtime`` on a Unix socket at ``path`` (and on ``listen``'s addresses; see
    :class:`SocketServer`) until cancelled or shut down.

    With ``await nursery.start(serve_socket, rt, path)`` the caller gets the
    :class:`SocketServer` once every listener is listening (its ``urls`` say where), and
    may call its ``shutdown()``.
    """
    server = SocketServer(
        runtime,
        path,
        max_inflight=max_inflight,
        shutdown_grace=shutdown_grace,
        limits=limits,
        listen=listen,
        tls=tls,
        insecure_plaintext=insecure_plaintext,
    )
    await server.run(task_status=task_status)


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_SHUTDOWN_GRACE",
    "ServerLimits",
    "SocketServer",
    "bind_unix_socket",
    "connection_cap",
    "default_backlog",
    "peer_credentials",
    "serve_socket",
]
