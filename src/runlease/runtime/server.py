"""The Unix-socket server: one runtime, many clients, the protocol of :mod:`runlease.protocol`.

Each connection gets a reader task and one task per request in flight, so a client may
pipeline requests and get replies as they finish, matched by id. A connection holds at most
``max_inflight`` requests at once; past that the reader stops reading until one finishes,
so a greedy client slows only itself.

Nothing a client sends can stop the server: a bad frame, an unknown op or a field of the
wrong type gets an error reply with a stable code and the connection carries on. Only a
length prefix above the frame limit closes the connection, because after it the byte stream
cannot be trusted to be in step. Errors inside a handler become ``INTERNAL`` replies and a
log line; they never reach another connection.

Security: the socket file is made 0600 inside a directory that must be private (0700,
owned by the server's user), and every connection's peer uid (SO_PEERCRED) must be the
server's own; others get a ``PEER_REFUSED`` reply and are closed.

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
import gc
import json
import logging
import math
import os
import resource
import signal
import socket as stdsocket
import stat
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, TypedDict, TypeGuard, TypeVar

import trio

from runlease import protocol as p
from runlease.core.model import Actor, Event, NoClaim, Origin, Session, Task
from runlease.core.views import MAX_PAGE as BACKLOG_MAX_PAGE
from runlease.errors import (
    BAD_REQUEST,
    CONNECTION_TIMEOUT,
    HANDSHAKE_REQUIRED,
    INTERNAL,
    PAYLOAD_TOO_LARGE,
    PEER_REFUSED,
    REQUEST_CANCELLED,
    SERVER_BUSY,
    SHUTTING_DOWN,
    SOCKET_IN_USE,
    SOCKET_PATH_UNSAFE,
    UNSUPPORTED_VERSION,
    InvalidInput,
    RunleaseError,
    Unavailable,
)
from runlease.runtime.runtime import DEFAULT_STUCK_THRESHOLD, Durability, Runtime, open_runtime

log = logging.getLogger("runlease.server")

SERVER_NAME: Final = "runlease"
# Operator requests over the socket act as this actor (session-scoped ones as the session).
SOCKET_OPERATOR: Final = Actor(kind="human", ref="operator")
DEFAULT_MAX_INFLIGHT: Final = 64
DEFAULT_SHUTDOWN_GRACE: Final = 10.0
DEFAULT_PAGE: Final = 500
MAX_PAGE: Final = 10_000
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
# The listen backlog asked for when none is given (the kernel caps it at its maximum).
MIN_BACKLOG: Final = 4096
SOMAXCONN_FILE: Final = Path("/proc/sys/net/core/somaxconn")
# At most one refusal log line per this many seconds; the line counts the ones in between.
REFUSAL_LOG_INTERVAL: Final = 1.0
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES: Final = 107
_PEERCRED = struct.Struct("3i")
# Room left in a frame for the envelope around a page of records.
_PAGE_SLACK: Final = 4096

T = TypeVar("T")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("runlease")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


# --------------------------------------------------------------------- the socket file
def _unsafe(message: str) -> InvalidInput:
    return InvalidInput(message, code=SOCKET_PATH_UNSAFE)


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's directory 0700 if missing; refuse one that others can enter."""
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = parent.stat()
    except OSError as exc:
        raise _unsafe(f"cannot create the socket directory {parent}: {exc.strerror}") from None
    if info.st_uid != os.geteuid():
        raise _unsafe(
            f"the socket directory {parent} belongs to uid {info.st_uid}, not to this "
            f"server's uid {os.geteuid()}; choose a directory of your own with --socket"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise _unsafe(
            f"the socket directory {parent} has mode {mode:04o}, so other users could reach "
            f"the socket; make it private (chmod 700 {parent}) or choose another --socket"
        )


def clear_stale_socket(path: Path) -> bool:
    """Remove a socket file left by a dead server; refuse a live one. True if removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise _unsafe(f"{path} exists and is not a socket; refusing to replace it")
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        os.unlink(path)
        return True
    except OSError as exc:
        raise Unavailable(
            f"cannot tell whether a server is listening on {path} ({exc}); "
            "remove the file if no runlease server is running",
            code=SOCKET_IN_USE,
        ) from None
    finally:
        probe.close()
    raise Unavailable(
        f"another runlease server is already listening on {path}; stop it first or "
        "choose another --socket",
        code=SOCKET_IN_USE,
    )


def default_backlog() -> int:
    """The listen backlog to ask for: the system's maximum, and at least MIN_BACKLOG.

    A burst of clients connecting at once beyond the backlog get EAGAIN on a Unix socket;
    asking for more than the kernel allows is harmless (it caps the value).
    """
    try:
        system = int(SOMAXCONN_FILE.read_text().strip())
    except (OSError, ValueError):
        system = stdsocket.SOMAXCONN
    return max(system, MIN_BACKLOG)


def bind_unix_socket(path: Path, *, backlog: int | None = None) -> stdsocket.socket:
    """A listening Unix socket at ``path``: mode 0600 in a private directory."""
    if backlog is None:
        backlog = default_backlog()
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise _unsafe(
            f"the socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow "
            f"at most {MAX_SOCKET_PATH_BYTES}: choose a shorter --socket"
        )
    prepare_socket_dir(path)
    if clear_stale_socket(path):
        log.info("stale_socket_removed", extra={"fields": {"socket": str(path)}})
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        # The directory is private, so the moment between bind and chmod exposes nothing.
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise Unavailable(
            f"cannot listen on {path}: {exc.strerror or exc}", code=SOCKET_IN_USE
        ) from None
    return sock


def peer_credentials(sock: Any) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a connected Unix socket's peer, where the OS says (Linux)."""
    option = getattr(stdsocket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, option, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


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
class _InFlight:
    __slots__ = ("long", "scope", "why")

    def __init__(self, *, long: bool) -> None:
        self.scope = trio.CancelScope()
        self.long = long
        self.why: str | None = None  # why its scope was cancelled: cancelled, shutdown, ...


class _Connection:
    def __init__(self, stream: trio.SocketStream, number: int, max_inflight: int) -> None:
        self.stream = stream
        self.number = number
        self.peer: tuple[int, int, int] | None = None
        self.buffer = p.FrameBuffer()
        self.buffer.limit(HANDSHAKE_MAX_FRAME, " before the hello handshake")
        self.reserved = 0  # bytes of the shared receive budget held by a partial frame
        self.send_lock = trio.Lock()
        self.slots = trio.Semaphore(max_inflight)
        self.inflight: dict[int, _InFlight] = {}
        self.handshaken = False
        self.client_name = ""  # what the client called itself in hello
        self.draining = False
        self.linger = False  # closing after an error reply: half-close and drain first
        # A send cancelled part way left half a frame on the wire: nothing more may follow.
        self.torn = False
        # The reading task is answering a request itself; a drain must let it finish.
        self.answering = False
        self.scope = trio.CancelScope()  # the whole connection
        self.read_scope = trio.CancelScope()
        # Fires when the handshake or an idle spell runs too long (see _refresh_deadline).
        self.timer = trio.CancelScope()

    def origin(self) -> Origin:
        """How this connection's writes are stamped: ``cli`` for the runlease command,
        ``socket`` for any other client; ``ref`` names the peer process when known."""
        kind = "cli" if self.client_name == p.CLI_CLIENT_NAME else "socket"
        return Origin(kind=kind, ref="" if self.peer is None else f"pid:{self.peer[0]}")

    def fields(self, **more: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"conn": self.number}
        if self.peer is not None:
            out["peer_pid"], out["peer_uid"] = self.peer[0], self.peer[1]
        out.update(more)
        return out

    async def send(self, reply: p.Reply) -> bool:
        """Send one reply; False if the client is gone (the connection is then cancelled)."""
        try:
            data = p.encode_frame(reply)
        except InvalidInput:
            data = p.encode_frame(
                p.ErrorReply(
                    id=reply.id,
                    code=PAYLOAD_TOO_LARGE,
                    message=f"the reply would exceed {p.MAX_FRAME_BYTES} bytes; ask for less",
                )
            )
        try:
            async with self.send_lock:
                if self.torn:
                    self.scope.cancel()
                    return False
                # Cancelled here, nothing has gone out yet; cancelled inside send_all, part
                # of the frame may have, and the stream is out of step for good.
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    await self.stream.send_all(data)
                except trio.Cancelled:
                    self.torn = True
                    raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.scope.cancel()
            return False
        return True

    async def send_last(self, reply: p.Reply) -> None:
        """Send the reply that explains a close, if the stream can still carry it, and
        arrange to linger; bounded, since a client that does not read must not hold us."""
        self.linger = True
        if self.torn:
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
                await self.stream.send_eof()
                discarded = 0
                while discarded < LINGER_MAX_BYTES:
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        return
                    discarded += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def begin_drain(self, why: str = "shutdown") -> None:
        """Stop reading; end long waits now; let short requests finish."""
        self.draining = True
        if not self.answering:
            # Else the reader stops once its answer is out (see _dispatch). It is not
            # shielded, so the server's grace period still bounds it.
            self.read_scope.cancel()
        for flight in self.inflight.values():
            if flight.long and flight.why is None:
                flight.why = why
                flight.scope.cancel()


class SocketServer:
    """Serves one :class:`Runtime` on a Unix socket. Start it with :func:`serve_socket`."""

    def __init__(
        self,
        runtime: Runtime,
        path: str | os.PathLike[str],
        *,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        limits: ServerLimits | None = None,
    ) -> None:
        self.runtime = runtime
        self.path = Path(path)
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
        self._socket_id: tuple[int, int] | None = None

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
        raw = bind_unix_socket(self.path, backlog=self.limits.backlog)
        info = os.stat(self.path)
        self._socket_id = (info.st_dev, info.st_ino)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(self)
                with self._accept_scope:
                    if not self._stopping:
                        await self._accept_loop(listener, nursery)
                # Stopping: no new connections, then drain the ones we have.
                await listener.aclose()
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
            with contextlib.suppress(Exception):
                await listener.aclose()
            self._remove_socket_file()
            self._stopped.set()

    def _remove_socket_file(self) -> None:
        if self._socket_id is None:
            return
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._socket_id:
                os.unlink(self.path)
        except OSError:
            pass
        self._socket_id = None

    async def _wait_connections_changed(self) -> None:
        await self._connections_changed.wait()

    def _note_connections_changed(self) -> None:
        self._connections_changed.set()
        self._connections_changed = trio.Event()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors or memory: back off instead of spinning.
                log.error("accept_failed", extra={"fields": {"error": str(exc)}})
                await trio.sleep(0.1)
                continue
            if len(self._connections) >= self.connection_limit:
                await self._refuse(stream, nursery)
                continue
            self._opened += 1
            nursery.start_soon(self._serve_connection, stream, self._opened)

    async def _refuse(self, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        """At the connection cap: tell the client so and close, rather than leave it hanging
        in the backlog or let accept fail for want of descriptors."""
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "connection_refused",
                extra={
                    "fields": {
                        "reason": "max_connections",
                        "max_connections": self.connection_limit,
                        "refused": self._refused_unlogged,
                    }
                },
            )
            self._refusal_logged_at = now
            self._refused_unlogged = 0
        if self._refusing >= MAX_REFUSING:
            # A flood: explaining costs a descriptor per client for a while; just close.
            await stream.aclose()
            return
        self._refusing += 1
        nursery.start_soon(self._explain_refusal, stream)

    async def _explain_refusal(self, stream: trio.SocketStream) -> None:
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
    async def _serve_connection(self, stream: trio.SocketStream, number: int) -> None:
        conn = _Connection(stream, number, self.max_inflight)
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
        try:
            conn.peer = peer_credentials(conn.stream.socket)
        except OSError:
            conn.peer = None
        if conn.peer is not None and conn.peer[1] != self._uid:
            log.warning("peer_refused", extra={"fields": conn.fields(server_uid=self._uid)})
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

    async def _serve_admitted(self, conn: _Connection) -> None:
        async with trio.open_nursery() as handlers:
            with conn.read_scope:
                self._refresh_deadline(conn)
                with conn.timer:
                    await self._read_loop(conn, handlers)
                if conn.timer.cancelled_caught:
                    await self._time_out(conn)
            if not conn.draining:
                # The client went away: nobody is left to read replies.
                handlers.cancel_scope.cancel()

    def _refresh_deadline(self, conn: _Connection) -> None:
        """Arm the connection's timer: the hello deadline until the handshake is done, then
        the idle deadline whenever nothing is in flight; never while something is, so a
        parked claim, a stream or a drain keeps its connection as long as it runs."""
        if not conn.handshaken:
            if conn.timer.deadline == math.inf:
                conn.timer.deadline = trio.current_time() + self.limits.handshake_timeout
        elif conn.inflight:
            conn.timer.deadline = math.inf
        else:
            conn.timer.deadline = trio.current_time() + self.limits.idle_seconds

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
        log.info("connection_timed_out", extra={"fields": conn.fields(phase=phase)})
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
                data = await conn.stream.receive_some(RECEIVE_BYTES)
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
                        "framing_lost", extra={"fields": conn.fields(declared=exc.declared)}
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
                self._refresh_deadline(conn)
            declared = conn.buffer.partial_size
            if declared != conn.reserved and not self._reserve(conn, declared):
                log.warning(
                    "receive_budget_exhausted",
                    extra={
                        "fields": conn.fields(
                            declared=declared, budget=self.limits.max_buffered_bytes
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
        try:
            request = p.decode_request(body)
        except p.RequestRejected as exc:
            await conn.send(p.ErrorReply(id=exc.request_id, code=exc.code, message=exc.message))
            return
        if isinstance(request, p.Hello):
            await conn.send(self._hello(conn, request))
            return
        if not conn.handshaken:
            await conn.send(
                p.ErrorReply(
                    id=request.id,
                    code=HANDSHAKE_REQUIRED,
                    message="send hello with the protocol versions you speak first",
                )
            )
            return
        if isinstance(request, p.Cancel):
            flight = conn.inflight.get(request.target)
            if flight is not None and flight.why is None:
                flight.why = "cancelled"
                flight.scope.cancel()
            await conn.send(p.Ok(id=request.id))
            return
        if request.id in conn.inflight:
            await conn.send(
                p.ErrorReply(
                    id=request.id,
                    code=BAD_REQUEST,
                    message=f"request id {request.id} is already in flight on this connection",
                )
            )
            return
        await conn.slots.acquire()
        if conn.draining:
            conn.slots.release()
            return
        long = (
            isinstance(request, p.FollowEvents)
            or (isinstance(request, p.ClaimNext) and request.wait)
            or isinstance(request, p.DrainScheduler)
            or (_claims_next(request) and request.next is not None and request.next.wait)
        )
        flight = _InFlight(long=long)
        conn.inflight[request.id] = flight
        self._refresh_deadline(conn)
        if not long and len(conn.buffer) == 0:
            # Nothing else is queued on this connection (the usual one-at-a-time client):
            # answer on the reading task and save a task spawn per request. A drain that
            # starts meanwhile lets the answer finish (within the grace period), then
            # stops the reading.
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
        conn.handshaken = True
        conn.buffer.limit(p.MAX_FRAME_BYTES)
        conn.client_name = hello.client
        return p.Welcome(id=hello.id, version=version, server=SERVER_NAME, pid=os.getpid())

    async def _handle(self, conn: _Connection, request: p.AnyRequest, flight: _InFlight) -> None:
        try:
            reply: p.Reply | None = None
            # A finish that claims next is never cut short: its scope only ends the wait of
            # the claim part (the runtime enters it), so the finish is always reported.
            with contextlib.nullcontext() if _claims_next(request) else flight.scope:
                try:
                    reply = await self._execute(conn, request)
                except RunleaseError as exc:
                    reply = p.ErrorReply(id=request.id, code=exc.code, message=exc.message)
                except Exception:
                    log.exception(
                        "request_failed",
                        extra={"fields": conn.fields(op=type(request).__name__)},
                    )
                    reply = p.ErrorReply(
                        id=request.id,
                        code=INTERNAL,
                        message="internal error while handling the request; see the server log",
                    )
            if reply is None:
                reply = self._interrupted_reply(request, flight.why)
            await conn.send(reply)
        finally:
            conn.inflight.pop(request.id, None)
            conn.slots.release()
            self._refresh_deadline(conn)

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
    async def _execute(self, conn: _Connection, request: p.AnyRequest) -> p.Reply:
        rt = self.runtime
        rid = request.id
        if isinstance(request, _READ_REQUESTS):
            # Computed from memory, sent only once everything it may show is durable.
            return await rt.read(lambda: self._answer(request))
        match request:
            case p.CreateTask():
                task = await rt.create_task(
                    request.title,
                    description=request.description,
                    priority=request.priority,
                    workspace=request.workspace,
                    scope=request.scope,
                    max_attempts=request.max_attempts,
                    metadata=request.metadata,
                    capabilities=request.capabilities,
                    start=request.start,
                    parent=request.parent,
                    preferred_capabilities=request.preferred_capabilities,
                    owner=request.owner,
                    draft=request.draft,
                    approval_policy=request.approval_policy,
                    required_artifacts=request.required_artifacts,
                    actor=SOCKET_OPERATOR,
                    origin=conn.origin(),
                )
                return p.TaskReply(id=rid, task=task)
            case p.StartTask():
                run = await rt.start(
                    request.task_id,
                    idempotency_key=request.idempotency_key,
                    actor=SOCKET_OPERATOR,
                    origin=conn.origin(),
                )
                return p.RunReply(id=rid, run=run)
            case p.FollowEvents():
                return await self._follow(conn, request)
            case p.OpenSession():
                session, token = await rt.open_session_with_token(
                    agent=request.agent,
                    parent=request.parent,
                    ttl=request.ttl,
                    capabilities=request.capabilities,
                    auto_stop_on_parent=request.auto_stop_on_parent,
                )
                return p.SessionOpened(id=rid, session=session, token=token)
            case p.StopSession():
                released = await rt.stop_session(request.session_id, reason=request.reason)
                return p.SessionReleasedReply(id=rid, released=released)
            case p.ClaimNext():
                session_id = rt.session_id_for_token(request.token)
                claim = await rt.claim_next(
                    session_id,
                    wait=request.wait,
                    timeout=request.timeout,
                    lease_seconds=request.lease_seconds,
                    workspace=request.workspace,
                    scope=request.scope,
                    priority_min=request.priority_min,
                )
                return p.ClaimReply(id=rid, claim=claim)
            case p.HeartbeatRun():
                session_id = rt.session_id_for_token(request.token)
                beat = await rt.heartbeat(
                    session_id, request.run_id, lease_seconds=request.lease_seconds
                )
                return p.HeartbeatReply(id=rid, heartbeat=beat)
            case p.CompleteRun() | p.FailRun() | p.ReleaseRun() if request.next is not None:
                return await self._finish_and_claim(conn, request, request.next)
            case p.CompleteRun():
                session_id = rt.session_id_for_token(request.token)
                run = await rt.complete(session_id, request.run_id, result=request.result)
                return p.RunReply(id=rid, run=run)
            case p.FailRun():
                session_id = rt.session_id_for_token(request.token)
                run = await rt.fail(
                    session_id, request.run_id, error=request.error, metadata=request.metadata
                )
                return p.RunReply(id=rid, run=run)
            case p.ReleaseRun():
                session_id = rt.session_id_for_token(request.token)
                run = await rt.release(session_id, request.run_id, reason=request.reason)
                return p.RunReply(id=rid, run=run)
            case p.BlockRun():
                session_id = rt.session_id_for_token(request.token)
                run = await rt.block(session_id, request.run_id, reason=request.reason)
                return p.RunReply(id=rid, run=run)
            case _ if isinstance(request, _OPERATOR_REQUESTS):
                return await self._operate(conn, request)
            case p.Hello() | p.Cancel():  # pragma: no cover - answered by _dispatch
                raise InvalidInput(f"{type(request).__name__} is handled by the reader")
        raise InvalidInput(f"unhandled request {type(request).__name__}")  # pragma: no cover

    def _answer(self, request: p.AnyRequest) -> p.Reply:
        """The requests that only read: computed at once from memory, never awaiting."""
        rt = self.runtime
        rid = request.id
        match request:
            case p.GetStatus():
                return p.StatusReply(id=rid, status=self.status())
            case p.ShowTask():
                detail = rt.show(request.task_id)
                return p.TaskDetail(
                    id=rid,
                    task=detail.task,
                    runs=detail.runs,
                    checkpoints=detail.checkpoints,
                    events=detail.events,
                    children=detail.children,
                    blocked_by=detail.blocked_by,
                    open_dependencies=detail.open_dependencies,
                    dependents=detail.dependents,
                    pause=detail.pause,
                )
            case p.GetRun():
                return p.RunReply(id=rid, run=rt.get_run(request.run_id))
            case p.ListTasks():
                limit = _page_limit(request.limit)
                tasks = rt.list_tasks(
                    status=request.status,
                    workspace=request.workspace,
                    after=request.after,
                    limit=limit + 1,
                )
                return _page(tasks, limit, lambda items, more: _task_page(rid, items, more))
            case p.ListEvents():
                limit = _page_limit(request.limit)
                events = rt.events(after_seq=request.after_seq, task_id=request.task_id)
                return _page(events, limit, lambda items, more: _event_page(rid, items, more))
            case p.GetSession():
                return p.SessionReply(id=rid, session=rt.get_session(request.session_id))
            case p.ListSessions():
                limit = _page_limit(request.limit)
                sessions = _after(rt.list_sessions(live_only=request.live_only), request.after)
                return _page(sessions, limit, lambda items, more: _session_page(rid, items, more))
            case p.WhoAmI():
                session_id = rt.session_id_for_token(request.token)
                return p.SessionReply(id=rid, session=rt.get_session(session_id))
            case p.GetSchedulerStatus():
                return p.SchedulerReply(id=rid, scheduler=rt.scheduler_status())
            case p.GetBacklog():
                limit = _page_limit(request.limit)
                backlog = rt.backlog(
                    workspace=request.workspace,
                    include_paused=request.include_paused,
                    after=request.after,
                    limit=min(limit, BACKLOG_MAX_PAGE),
                )
                return p.BacklogReply(id=rid, backlog=backlog)
            case p.ListStuck():
                threshold = request.threshold
                if threshold is None:
                    threshold = DEFAULT_STUCK_THRESHOLD
                elif not math.isfinite(threshold) or threshold < 0:
                    raise InvalidInput(
                        f"threshold must be zero or positive seconds, got {threshold}"
                    )
                return p.StuckReply(id=rid, runs=rt.stuck(threshold=threshold), threshold=threshold)
            case p.GetTimeline():
                if request.after_seq < 0:
                    raise InvalidInput("after_seq must be zero or positive")
                limit = _page_limit(request.limit)
                events = rt.timeline(request.task_id, after_seq=request.after_seq, limit=limit + 1)
                return _page(events, limit, lambda items, more: _event_page(rid, items, more))
            case p.InspectTask():
                return p.InspectReply(id=rid, view=rt.inspect_task(request.task_id))
            case p.InspectRun():
                return p.InspectReply(id=rid, view=rt.inspect_run(request.run_id))
        raise InvalidInput(f"unhandled request {type(request).__name__}")  # pragma: no cover

    async def _operate(self, conn: _Connection, request: p.AnyRequest) -> p.Reply:
        """The task-graph, operator and HZL requests."""
        rt = self.runtime
        rid = request.id
        who = _Who(actor=SOCKET_OPERATOR, origin=conn.origin())
        match request:
            case p.PublishTask():
                task = await rt.publish(request.task_id, start=request.start, **who)
                return p.TaskReply(id=rid, task=task)
            case p.ApproveTask():
                return p.RunReply(id=rid, run=await rt.approve(request.task_id, **who))
            case p.RejectTask():
                task = await rt.reject(request.task_id, reason=request.reason, **who)
                return p.TaskReply(id=rid, task=task)
            case p.UpdateTask():
                task = await rt.update_task(request.task_id, request.changes, **who)
                return p.TaskReply(id=rid, task=task)
            case p.DeleteTask():
                return p.TaskReply(id=rid, task=await rt.delete_task(request.task_id, **who))
            case p.AddDependency():
                task = await rt.add_dependency(request.task_id, request.blocked_by, **who)
                return p.TaskReply(id=rid, task=task)
            case p.RemoveDependency():
                task = await rt.remove_dependency(request.task_id, request.blocked_by, **who)
                return p.TaskReply(id=rid, task=task)
            case p.PauseTask():
                task = await rt.pause_task(request.task_id, reason=request.reason, **who)
                return p.TaskReply(id=rid, task=task)
            case p.ResumeTask():
                return p.TaskReply(id=rid, task=await rt.resume_task(request.task_id, **who))
            case p.CancelTask():
                task = await rt.cancel_task(request.task_id, reason=request.reason, **who)
                return p.TaskReply(id=rid, task=task)
            case p.CancelRun():
                run = await rt.cancel_run(request.run_id, reason=request.reason, **who)
                return p.RunReply(id=rid, run=run)
            case p.RetryRun():
                return p.RetryReply(id=rid, result=await rt.retry_run(request.run_id, **who))
            case p.ForceReleaseRun():
                run = await rt.force_release(request.run_id, reason=request.reason, **who)
                return p.RunReply(id=rid, run=run)
            case p.ForceFailRun():
                run = await rt.force_fail(request.run_id, reason=request.reason, **who)
                return p.RunReply(id=rid, run=run)
            case p.BulkForceRuns():
                bulk = rt.bulk_force_release if request.action == "release" else rt.bulk_force_fail
                result = await bulk(request.run_ids, reason=request.reason, **who)
                return p.BulkReply(id=rid, result=result)
            case p.PauseScheduler():
                status = await rt.pause_scheduler(reason=request.reason, **who)
                return p.SchedulerReply(id=rid, scheduler=status)
            case p.ResumeScheduler():
                status = await rt.resume_scheduler(reason=request.reason, **who)
                return p.SchedulerReply(id=rid, scheduler=status)
            case p.DrainScheduler():
                options: dict[str, Any] = {"reason": request.reason, **who}
                if request.timeout is not None:
                    options["timeout"] = request.timeout
                return p.DrainReply(id=rid, drain=await rt.drain_scheduler(**options))
            case p.CheckpointTask():
                actor = SOCKET_OPERATOR
                if request.token is not None:
                    actor = Actor(kind="agent_session", ref=rt.session_id_for_token(request.token))
                task = await rt.checkpoint(
                    request.task_id,
                    request.note,
                    author=request.author,
                    actor=actor,
                    origin=conn.origin(),
                )
                return p.TaskReply(id=rid, task=task)
            case p.StealRun():
                session_id = rt.session_id_for_token(request.token)
                claim = await rt.steal(
                    request.task_id,
                    session_id,
                    force=request.force,
                    lease_seconds=request.lease_seconds,
                    reason=request.reason,
                    actor=Actor(kind="agent_session", ref=session_id),
                    origin=conn.origin(),
                )
                return p.ClaimReply(id=rid, claim=claim)
        raise InvalidInput(f"unhandled request {type(request).__name__}")  # pragma: no cover

    async def _finish_and_claim(
        self,
        conn: _Connection,
        request: p.CompleteRun | p.FailRun | p.ReleaseRun,
        after: p.NextClaim,
    ) -> p.Reply:
        rt = self.runtime
        session_id = rt.session_id_for_token(request.token)
        flight = conn.inflight[request.id]
        claim_options: dict[str, Any] = {
            "wait": after.wait,
            "timeout": after.timeout,
            "lease_seconds": after.lease_seconds,
            "workspace": after.workspace,
            "scope": after.scope,
            "priority_min": after.priority_min,
            "stop_waiting": flight.scope,
        }
        match request:
            case p.CompleteRun():
                finished = await rt.complete_and_next(
                    session_id, request.run_id, result=request.result, **claim_options
                )
            case p.FailRun():
                finished = await rt.fail_and_next(
                    session_id,
                    request.run_id,
                    error=request.error,
                    metadata=request.metadata,
                    **claim_options,
                )
            case p.ReleaseRun():
                finished = await rt.release_and_next(
                    session_id, request.run_id, reason=request.reason, **claim_options
                )
        if finished.no_claim is not None and flight.why == "shutdown":
            finished.no_claim = NoClaim(
                code=SHUTTING_DOWN, message="the server is shutting down; nothing was claimed"
            )
        return p.FinishedReply(id=request.id, finished=finished)

    async def _follow(self, conn: _Connection, request: p.FollowEvents) -> p.Reply:
        if request.after_seq < 0:
            raise InvalidInput("after_seq must be zero or positive")
        async for event in self.runtime.follow_events(
            after_seq=request.after_seq, task_id=request.task_id
        ):
            if not await conn.send(p.EventItem(id=request.id, event=event)):
                break
        return p.StreamEnd(id=request.id, reason="closed")

    def status(self) -> p.ServerStatus:
        rt = self.runtime.status()
        return p.ServerStatus(
            version=self.version,
            protocol=p.PROTOCOL_VERSION,
            pid=os.getpid(),
            socket=str(self.path),
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


class _Who(TypedDict):
    """Who a write over the socket is stamped with."""

    actor: Actor
    origin: Origin


_OPERATOR_REQUESTS: Final = (
    p.PublishTask,
    p.ApproveTask,
    p.RejectTask,
    p.UpdateTask,
    p.DeleteTask,
    p.AddDependency,
    p.RemoveDependency,
    p.PauseTask,
    p.ResumeTask,
    p.CancelTask,
    p.CancelRun,
    p.RetryRun,
    p.ForceReleaseRun,
    p.ForceFailRun,
    p.BulkForceRuns,
    p.PauseScheduler,
    p.ResumeScheduler,
    p.DrainScheduler,
    p.CheckpointTask,
    p.StealRun,
)
# Requests answered from memory without a command (see SocketServer._answer).
_READ_REQUESTS: Final = (
    p.GetStatus,
    p.ShowTask,
    p.GetRun,
    p.ListTasks,
    p.ListEvents,
    p.GetSession,
    p.ListSessions,
    p.WhoAmI,
    p.GetSchedulerStatus,
    p.GetBacklog,
    p.ListStuck,
    p.GetTimeline,
    p.InspectTask,
    p.InspectRun,
)


def _claims_next(request: p.AnyRequest) -> TypeGuard[p.CompleteRun | p.FailRun | p.ReleaseRun]:
    """A complete, fail or release that asks to claim the next run in the same request."""
    return isinstance(request, p.CompleteRun | p.FailRun | p.ReleaseRun) and (
        request.next is not None
    )


# ------------------------------------------------------------------------------ paging
def _page_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    return min(limit, MAX_PAGE)


def _after(sessions: list[Session], after: str | None) -> list[Session]:
    if after is None:
        return sessions
    for index, session in enumerate(sessions):
        if session.id == after:
            return sessions[index + 1 :]
    return []


def _page(items: Sequence[T], limit: int, make: Callable[[list[T], bool], p.Reply]) -> p.Reply:
    """Up to ``limit`` items in one reply, fewer if that many would not fit in a frame."""
    count = min(len(items), limit)
    while True:
        reply = make(list(items[:count]), count < len(items))
        if count <= 1 or len(p.encode_message(reply)) <= p.MAX_FRAME_BYTES - _PAGE_SLACK:
            return reply
        count //= 2


def _task_page(rid: int, tasks: list[Task], more: bool) -> p.Reply:
    return p.TaskList(id=rid, tasks=tasks, next_after=tasks[-1].id if more and tasks else None)


def _event_page(rid: int, events: list[Event], more: bool) -> p.Reply:
    return p.EventList(
        id=rid, events=events, next_after_seq=events[-1].seq if more and events else None
    )


def _session_page(rid: int, sessions: list[Session], more: bool) -> p.Reply:
    return p.SessionList(
        id=rid, sessions=sessions, next_after=sessions[-1].id if more and sessions else None
    )


async def serve_socket(
    runtime: Runtime,
    path: str | os.PathLike[str],
    *,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    limits: ServerLimits | None = None,
    task_status: trio.TaskStatus[SocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``runtime`` on a Unix socket at ``path`` until cancelled or shut down.

    With ``await nursery.start(serve_socket, rt, path)`` the caller gets the
    :class:`SocketServer` once the socket is listening, and may call its ``shutdown()``.
    """
    server = SocketServer(
        runtime, path, max_inflight=max_inflight, shutdown_grace=shutdown_grace, limits=limits
    )
    await server.run(task_status=task_status)


# ------------------------------------------------------------------- `runlease serve`
class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, event name and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(line, default=str)


def configure_logging(stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Send runlease's log records to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("runlease")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def run_server(
    socket_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    durability: Durability = "durable",
    clock: Callable[[], float] | None = None,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    workspace_roots: Mapping[str, str | os.PathLike[str]] | None = None,
    allow_agent_force: bool = False,
    fresh_store: bool = False,
    limits: ServerLimits | None = None,
) -> None:
    """Run a server in the foreground until SIGINT or SIGTERM, then stop gracefully.

    ``workspace_roots`` maps a workspace id ("" for global tasks) to the directory its
    completion-contract artifacts are checked under. ``allow_agent_force`` lets sessions
    use the force operations (see :func:`open_runtime`). ``fresh_store`` is passed to
    :func:`open_runtime` (start empty where the database is missing or empty).
    ``limits`` bounds what clients may hold (:class:`ServerLimits`). The soft open-file
    limit is raised towards the hard one first, so the connection cap is not lowered
    needlessly.

    Raises the :class:`RunleaseError` that stopped it from starting (a locked data dir, a
    live server on the socket, an unsafe socket directory).
    """
    try:
        trio.run(
            _serve_until_signalled,
            Path(socket_path),
            data_dir,
            durability,
            clock,
            shutdown_grace,
            workspace_roots,
            allow_agent_force,
            fresh_store,
            limits,
        )
    except BaseExceptionGroup as group:
        raise _single_error(group) from None


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one RunleaseError a nursery wrapped, so callers see a plain error; else the group."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    errors = [leaf for leaf in leaves if isinstance(leaf, RunleaseError)]
    if len(leaves) == 1 and errors:
        return errors[0]
    return group


async def _serve_until_signalled(
    socket_path: Path,
    data_dir: str | os.PathLike[str] | None,
    durability: Durability,
    clock: Callable[[], float] | None,
    shutdown_grace: float,
    workspace_roots: Mapping[str, str | os.PathLike[str]] | None = None,
    allow_agent_force: bool = False,
    fresh_store: bool = False,
    limits: ServerLimits | None = None,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        log.info(
            "starting",
            extra={
                "fields": {
                    "pid": os.getpid(),
                    "data_dir": None if data_dir is None else str(data_dir),
                    "durability": durability if data_dir is not None else "memory",
                }
            },
        )
        try:
            before, after = raise_fd_limit()
        except (OSError, ValueError) as exc:
            log.warning("fd_limit_unknown", extra={"fields": {"error": str(exc)}})
        else:
            log.info("fd_limit", extra={"fields": {"soft_before": before, "soft": after}})
        async with open_runtime(
            clock,
            data_dir=data_dir,
            durability=durability,
            workspace_roots=workspace_roots,
            allow_agent_force=allow_agent_force,
            fresh_store=fresh_store,
        ) as rt:
            report = getattr(rt, "boot_report", None)
            if report is not None:
                log.info(
                    "recovered",
                    extra={
                        "fields": {
                            "snapshot_seq": report.snapshot_seq,
                            "replayed": report.replayed,
                            "orphaned_leases": len(report.orphaned_leases),
                            "expired_sessions": len(report.expired_sessions),
                        }
                    },
                )
            if data_dir is not None:
                _make_private_if_socket_dir(Path(data_dir), socket_path)
            # The recovered state lives as long as the server: keep the cyclic collector
            # from rescanning it on every full collection (those pauses showed up as
            # 100-300 ms tails in expiry lateness at 100k leases).
            gc.collect()
            gc.freeze()
            async with trio.open_nursery() as nursery:
                server: SocketServer = await nursery.start(
                    _serve_with_grace, rt, socket_path, shutdown_grace, limits
                )
                log.info(
                    "listening",
                    extra={"fields": {"socket": str(socket_path), "pid": os.getpid()}},
                )
                nursery.start_soon(_watch_signals, signals, server, nursery.cancel_scope)
                await server.wait_stopped()
                nursery.cancel_scope.cancel()
            log.info("closing_runtime")
    log.info("stopped")


async def _serve_with_grace(
    rt: Runtime,
    path: Path,
    shutdown_grace: float,
    limits: ServerLimits | None,
    *,
    task_status: trio.TaskStatus[SocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_socket(
        rt, path, shutdown_grace=shutdown_grace, limits=limits, task_status=task_status
    )


async def _watch_signals(signals: Any, server: SocketServer, scope: trio.CancelScope) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("signal_received", extra={"fields": {"signal": name, "action": "drain"}})
            server.shutdown()
        else:
            log.warning("signal_received", extra={"fields": {"signal": name, "action": "stop_now"}})
            scope.cancel()
            return


def _make_private_if_socket_dir(directory: Path, socket_path: Path) -> None:
    """runlease's own data dir holds the socket: keep it 0700 (it holds secrets too)."""
    with contextlib.suppress(OSError):
        if directory.resolve() != socket_path.parent.resolve():
            return
        info = directory.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(directory, 0o700)


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_SHUTDOWN_GRACE",
    "JsonLogFormatter",
    "ServerLimits",
    "SocketServer",
    "bind_unix_socket",
    "configure_logging",
    "peer_credentials",
    "run_server",
    "serve_socket",
]
