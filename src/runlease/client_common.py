"""What the two clients share: finding the socket, connecting, and turning a request into
what goes on the wire and a reply back into the value the request answers.

The transports differ (the trio client pipelines on one connection, the synchronous one
makes one call at a time on a plain socket); everything else lives here, once.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypeVar, cast

import msgspec

from runlease import protocol as p
from runlease.errors import (
    CONNECTION_TIMEOUT,
    SERVER_BUSY,
    SERVER_UNAVAILABLE,
    SHUTTING_DOWN,
    InternalError,
    InvalidInput,
    Unavailable,
    error_for_code,
)
from runlease.operations import ClaimNext, FinishRequest, Request, SessionRequest
from runlease.paths import ENV_ACCESS_TOKEN, default_socket_path

if TYPE_CHECKING:
    import ssl

CLIENT_NAME: Final = "runlease-python"
RECEIVE_BYTES: Final = 64 * 1024
# Backoff between connect attempts while the server's listen backlog is full.
RETRY_FIRST_DELAY: Final = 0.001
RETRY_MAX_DELAY: Final = 0.05
# A connect that may succeed if tried again: the backlog is full (EAGAIN), or a signal
# interrupted it. ECONNREFUSED is not among them: on a Unix socket it means nobody listens.
RETRYABLE_CONNECT_ERRORS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
# Backoff between attempts to reach a server that went away (a restart takes a while).
RECONNECT_FIRST_DELAY: Final = 0.05
RECONNECT_MAX_DELAY: Final = 2.0
# What a server that is away or starting up answers (the others stand, however long one
# waits).
OUTAGE_CODES: Final = frozenset(
    {SERVER_UNAVAILABLE, SERVER_BUSY, SHUTTING_DOWN, CONNECTION_TIMEOUT}
)
# How long a client waits, in total, for a server that went away to come back.
DEFAULT_RECONNECT_TIMEOUT: Final = 30.0

# The reason recorded on a lease released because the caller it was made for had been
# cancelled (the asyncio embedding and the anyio client hand such claims back).
ABANDONED_CLAIM_REASON: Final = "abandoned: the caller was cancelled before it got the claim"

R = TypeVar("R")
ReplyT = TypeVar("ReplyT", bound=p.Reply)
RequestT = TypeVar("RequestT", bound=Request[Any])

# Where a client finds a server that is not on the local default socket, and the files its
# TLS connection uses: the CA bundle that vouches for the server, and for mutual TLS the
# client's own certificate and key.
ENV_SERVER: Final = "RUNLEASE_SERVER"
ENV_TLS_CA: Final = "RUNLEASE_TLS_CA"
ENV_TLS_CERT: Final = "RUNLEASE_TLS_CERT"
ENV_TLS_KEY: Final = "RUNLEASE_TLS_KEY"
UNIX_SCHEME: Final = "unix:"
TCP_SCHEME: Final = "tcp://"
# Plain TCP, for a server started with --insecure-plaintext (or on loopback without TLS).
PLAINTEXT_TCP_SCHEME: Final = "tcp+plaintext://"


class ServerAddress(NamedTuple):
    """Where a server listens: a Unix socket (``path``) or a TCP host and port.

    ``tls`` says whether a TCP connection speaks TLS (``tcp://``, the default) or plain
    bytes (``tcp+plaintext://``); a Unix socket never does.
    """

    kind: Literal["unix", "tcp"]
    path: Path | None = None
    host: str = ""
    port: int = 0
    tls: bool = False

    @classmethod
    def unix(cls, path: str | os.PathLike[str]) -> ServerAddress:
        return cls("unix", path=Path(path).expanduser())

    @classmethod
    def parse(cls, text: str) -> ServerAddress:
        """``unix:/path``, ``tcp://host:port``, ``tcp+plaintext://host:port`` or a plain
        path (a Unix socket). IPv6 hosts go in brackets: ``tcp://[::1]:7070``."""
        if text.startswith(UNIX_SCHEME):
            path = text[len(UNIX_SCHEME) :]
            if path.startswith("//"):  # unix:///path, the URL spelling
                path = path[2:]
            if not path:
                raise InvalidInput(f"{text!r} names no socket path (unix:/path/to/socket)")
            return cls.unix(path)
        for scheme, tls in ((TCP_SCHEME, True), (PLAINTEXT_TCP_SCHEME, False)):
            if text.startswith(scheme):
                host, port = _host_port(text, text[len(scheme) :])
                return cls("tcp", host=host, port=port, tls=tls)
        if "://" in text:
            raise InvalidInput(
                f"unknown server address {text!r}: use unix:/path, tcp://host:port or "
                "tcp+plaintext://host:port"
            )
        if not text:
            raise InvalidInput("the server address is empty")
        return cls.unix(text)

    @property
    def local(self) -> bool:
        """Whether this is the owner-only Unix socket."""
        return self.kind == "unix"

    @property
    def url(self) -> str:
        if self.kind == "unix":
            return f"{UNIX_SCHEME}{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = TCP_SCHEME if self.tls else PLAINTEXT_TCP_SCHEME
        return f"{scheme}{host}:{self.port}"

    def __str__(self) -> str:
        return str(self.path) if self.kind == "unix" else self.url


def _host_port(text: str, rest: str) -> tuple[str, int]:
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        ok = bool(sep)
    else:
        host, _, port_text = rest.rpartition(":")
        ok = ":" not in host
    if not ok or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidInput(f"{text!r} is not host:port (like tcp://127.0.0.1:7070)")
    return host, int(port_text)


def resolve_address(
    target: str | os.PathLike[str] | ServerAddress | None,
    env: Mapping[str, str] | None = None,
) -> ServerAddress:
    """The server to reach: ``target`` (an address, a URL or a socket path), else
    $RUNLEASE_SERVER, else the Unix socket :func:`resolve_socket` finds."""
    if isinstance(target, ServerAddress):
        return target
    if isinstance(target, str):
        return ServerAddress.parse(target)
    if target is not None:
        return ServerAddress.unix(target)
    url = (os.environ if env is None else env).get(ENV_SERVER)
    if url:
        return ServerAddress.parse(url)
    return ServerAddress.unix(default_socket_path())


class TlsFiles(NamedTuple):
    """What a client's TLS connection trusts and shows: ``ca`` (a PEM bundle; None: the
    system's), and for mutual TLS ``cert`` and ``key`` (the key may sit in ``cert``)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, ca: Path | None = None) -> TlsFiles:
        """``ca`` if given, else $RUNLEASE_TLS_CA; the client pair from $RUNLEASE_TLS_CERT
        and $RUNLEASE_TLS_KEY."""
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(name)
            return Path(value).expanduser() if value else None

        return cls(ca=ca or path(ENV_TLS_CA), cert=path(ENV_TLS_CERT), key=path(ENV_TLS_KEY))

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the server's certificate and name."""
        import ssl  # only TLS connections pay for loading it

        try:
            if self.ca is not None:
                context = ssl.create_default_context(cafile=os.fspath(self.ca))
            else:
                context = ssl.create_default_context()
            if self.cert is not None:
                context.load_cert_chain(
                    os.fspath(self.cert), None if self.key is None else os.fspath(self.key)
                )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(
                f"cannot load the client's TLS files ({ENV_TLS_CA}, {ENV_TLS_CERT}, "
                f"{ENV_TLS_KEY}): {exc}"
            ) from None
        return context


def resolve_socket(path: str | os.PathLike[str] | None) -> Path:
    """The socket to use: ``path``, else $RUNLEASE_SOCKET, else the default data dir's."""
    return Path(path).expanduser() if path is not None else default_socket_path()


def unreachable(path: Path | ServerAddress, exc: BaseException | str) -> Unavailable:
    reason = exc if isinstance(exc, str) else (getattr(exc, "strerror", None) or str(exc))
    if isinstance(path, ServerAddress) and not path.local:
        return Unavailable(
            f"cannot reach the runlease server at {path.url}: {reason}; is `runlease serve "
            f"--listen` running there, and does {ENV_TLS_CA} (--tls-ca) vouch for its "
            "certificate?",
            code=SERVER_UNAVAILABLE,
        )
    return Unavailable(
        f"cannot reach the runlease server at {path}: {reason}; is `runlease serve` running "
        "with this socket (--socket or RUNLEASE_SOCKET)?",
        code=SERVER_UNAVAILABLE,
    )


def closed_by_server(path: Path | ServerAddress) -> Unavailable:
    return ConnectionLost(f"the runlease server at {path} closed the connection")


class ConnectionLost(Unavailable):
    """The connection to the server ended (it closed, restarted, or the socket broke).

    ``sent``: whether a request had gone out on it and was waiting for its answer when it
    ended, so the server may have applied it. A client that reconnects decides from this
    and the request's ``may_resend`` whether to send it again.
    """

    def __init__(self, message: str, *, sent: bool = True, code: str = SERVER_UNAVAILABLE) -> None:
        super().__init__(message, code=code)
        self.sent = sent


def lost(
    path: Path | ServerAddress, exc: BaseException | str, *, sent: bool = True
) -> ConnectionLost:
    """The connection to ``path`` broke (``exc`` says how)."""
    reason = exc if isinstance(exc, str) else (getattr(exc, "strerror", None) or str(exc))
    return ConnectionLost(
        f"lost the connection to the runlease server at {path}: {reason}", sent=sent
    )


def outcome_unknown(path: Path | ServerAddress, request: Request[Any]) -> Unavailable:
    """What to say about a request that went out on a connection that then ended, and that
    may not be sent again: the server may or may not have applied it."""
    op = request.__struct_config__.tag
    return Unavailable(
        f"{op} was sent, but the runlease server at {path} closed the connection before "
        "answering: it may have been applied; check with a read (show, list, events) "
        "before sending it again",
        code=SERVER_UNAVAILABLE,
    )


class ConnectBackoff:
    """When to try a connect again.

    A server busy accepting a burst of clients has a full listen backlog, and a connect
    then fails with EAGAIN at once. That is worth retrying, with a jittered delay doubling
    from 1 ms to 50 ms (so a crowd does not retry in lockstep), until ``timeout`` seconds
    from the first attempt; any other error is final.
    """

    def __init__(
        self,
        path: Path | ServerAddress,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        first_delay: float = RETRY_FIRST_DELAY,
        max_delay: float = RETRY_MAX_DELAY,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.attempts = 0
        self._clock = clock
        self._jitter = jitter
        self._deadline = clock() + timeout
        self._delay = first_delay
        self._max_delay = max_delay

    @classmethod
    def for_restart(
        cls,
        path: Path | ServerAddress,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> ConnectBackoff:
        """The backoff for reaching a server that went away: slower steps (a restart takes
        a while), and any sign of an outage is worth another try until ``timeout`` (see
        :meth:`after_outage`)."""
        return cls(
            path,
            timeout,
            clock=clock,
            jitter=jitter,
            first_delay=RECONNECT_FIRST_DELAY,
            max_delay=RECONNECT_MAX_DELAY,
        )

    def remaining(self) -> float:
        return max(self._deadline - self._clock(), 0.0)

    def after_failure(self, exc: OSError) -> float:
        """Seconds to wait before the next attempt; raises the error to report instead."""
        self.attempts += 1
        if exc.errno not in RETRYABLE_CONNECT_ERRORS:
            raise unreachable(self.path, exc) from None
        left = self.remaining()
        if left <= 0:
            raise Unavailable(
                f"the runlease server at {self.path} is overloaded: its queue of new "
                f"connections stayed full for {self.timeout:g} seconds "
                f"({self.attempts} attempts); try again later",
                code=SERVER_UNAVAILABLE,
            ) from None
        return self._next_delay(left)

    def after_outage(self, error: Unavailable) -> float:
        """Seconds to wait before trying to reach a server that went away again; raises
        SERVER_UNAVAILABLE naming the address once ``timeout`` seconds have passed. An
        answer that trying again cannot change (the server refuses this user) is raised."""
        if error.code not in OUTAGE_CODES:
            raise error
        self.attempts += 1
        left = self.remaining()
        if left <= 0:
            raise Unavailable(
                f"the runlease server at {self.path} did not come back within "
                f"{self.timeout:g} seconds ({self.attempts} attempts); last: {error.message}",
                code=SERVER_UNAVAILABLE,
            ) from None
        return self._next_delay(left)

    def _next_delay(self, left: float) -> float:
        # Jittered (x0.5 to x1.5) so a crowd of clients does not retry in lockstep.
        delay = self._delay * (0.5 + self._jitter())
        self._delay = min(self._delay * 2, self._max_delay)
        return min(delay, left)


def hello(rid: int, client: str = CLIENT_NAME, auth_token: str | None = None) -> p.Hello:
    return p.Hello(
        id=rid, versions=list(p.SUPPORTED_VERSIONS), client=client, auth_token=auth_token
    )


def resolve_auth_token(token: str | None) -> str | None:
    """The access token to present: ``token``, else $RUNLEASE_TOKEN, else none ("" means
    none even when the variable is set)."""
    if token is None:
        token = os.environ.get(ENV_ACCESS_TOKEN)
    return token or None


def check_reply(reply: p.AnyReply, expected: type[ReplyT]) -> ReplyT:
    """The reply if it has the expected type; its error if it is one; else a bug."""
    if isinstance(reply, expected):
        return reply
    if isinstance(reply, p.ErrorReply):
        raise error_for_code(reply.code, reply.message)
    raise InternalError(
        f"the server answered {type(reply).__name__} where {expected.__name__} was expected"
    )


def outgoing(
    request: RequestT,
    request_id: int,
    session_token: str | None,
    *,
    then: ClaimNext | None = None,
) -> RequestT:
    """The request as it goes on the wire: numbered, carrying the client's session token
    unless it names its own, and, for a finish that claims next, carrying ``then``.

    The caller's struct is left as it was, so it may be sent again.
    """
    if then is None and request.claims_after_finish():
        raise InvalidInput(
            "a finish with next answers a Finished: use complete_and_next, fail_and_next "
            "or release_and_next"
        )
    changes: dict[str, Any] = {"id": request_id}
    if isinstance(request, SessionRequest) and request.token is None:
        changes["token"] = session_token
    if isinstance(request, FinishRequest) and then is not None:
        changes["next"] = then
    return msgspec.structs.replace(request, **changes)


# The reply class answering each request class whose answer does not depend on the
# instance, found once: reading it off the generic base walks the class's MRO.
_EXPECTED_REPLY: dict[type, type[p.Reply]] = {}


def expected_reply(request: Request[Any]) -> type[p.Reply]:
    """The reply class that carries ``request``'s answer."""
    cls = type(request)
    found = _EXPECTED_REPLY.get(cls)
    if found is None:
        found = p.reply_class(request.answers_with())
        if cls.answers_with is Request.answers_with:  # the class's own answer type
            _EXPECTED_REPLY[cls] = found
    return found


def answer(reply: p.AnyReply, request: Request[R]) -> R:
    """The value of ``request``'s type that ``reply`` carries (or the error it reports)."""
    carried = p.value_of(check_reply(reply, expected_reply(request)))
    # reply_class picked the reply that carries exactly the type the request declares.
    return cast(R, carried)


__all__ = [
    "ABANDONED_CLAIM_REASON",
    "CLIENT_NAME",
    "DEFAULT_RECONNECT_TIMEOUT",
    "ENV_SERVER",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ConnectBackoff",
    "ConnectionLost",
    "ServerAddress",
    "TlsFiles",
    "answer",
    "check_reply",
    "closed_by_server",
    "expected_reply",
    "hello",
    "lost",
    "outcome_unknown",
    "outgoing",
    "resolve_address",
    "resolve_socket",
    "unreachable",
]
