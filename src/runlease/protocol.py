"""The socket wire protocol: message types, framing and decoding. Pure: no IO, no trio.

Framing
    Every message is one frame: a 4-byte big-endian unsigned length, then that many bytes
    of msgpack. A frame body is at most :data:`MAX_FRAME_BYTES` (1 MiB). A length prefix
    above that means the stream can no longer be trusted to be in step (framing is lost):
    the server answers with ``FRAME_TOO_LARGE`` and closes the connection. Any other bad
    frame (undecodable body, unknown ``op``, wrong field types) gets an error reply and the
    connection carries on.

Messages
    Requests are msgspec Structs tagged by ``op``: the operations of
    :mod:`runlease.operations` (re-exported here), plus :class:`Hello` and :class:`Cancel`
    about the connection itself. Replies are tagged by ``reply``; the reply to an operation
    is the one that carries the type of value the operation answers (see
    :func:`reply_class`). The tags
    are stable wire names and never change meaning. Every request carries a positive ``id``
    chosen by the client and every reply echoes it, so a client may pipeline: send several
    requests before reading, and match replies by id in whatever order they come. Each
    request gets exactly one final reply; ``follow_events`` first streams zero or more
    :class:`EventItem` replies with its id and ends with :class:`StreamEnd`. Id 0 is reserved
    for replies about the connection itself (framing lost, peer refused, a frame too broken
    to carry an id).

Handshake
    The first request on a connection must be :class:`Hello`, listing the protocol versions
    the client speaks; the server answers :class:`Welcome` with the version it picked, or an
    ``UNSUPPORTED_VERSION`` error. Any other request before that gets
    ``HANDSHAKE_REQUIRED``. The hello may carry an access token (``auth_token``,
    ``rl_token_...``): the connection then acts with the token's role, every request is
    checked against the role its operation needs (``PERMISSION_DENIED``), and writes name
    the token. An unknown, revoked or expired token gets ``AUTH_TOKEN_REFUSED`` and the
    connection is closed.

Sessions
    Requests that act for a session (claim, heartbeat, complete, fail, release, block,
    whoami, steal, and checkpoint when a session writes it) carry the session's bearer
    token (``rl_session_...``) in ``token``. Raw claim tokens never appear in any message:
    leases are found from the session and the run id, and replies show only
    ``claim_token_hash``. Other writes act as the operator (actor ``human:operator``). Every
    write, a session's or the operator's, is stamped with origin ``cli`` (the runlease
    command) or ``socket``, with the peer's pid as its ref.

Finish, then claim
    ``complete``, ``fail`` and ``release`` may carry ``next`` (the claim options, a
    :class:`ClaimNext` whose id and token are unused): once the
    finish succeeds the server claims the session's next run under the rules of
    ``claim_next`` (``wait``, ``timeout``, ``lease_seconds``, ``workspace``) and answers one
    :class:`FinishedReply` holding the finished run and either the claim or ``no_claim``
    (normally ``NO_CLAIMABLE_RUN``). A refused finish is an ordinary error reply and claims
    nothing. One request, one reply: an agent's "finish, claim again" costs one round trip.

Times are float seconds since the Unix epoch on the wire.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Final, Union, cast

import msgspec

from runlease.core.context import ContextBundle
from runlease.core.model import (
    MAX_PAYLOAD_DEPTH,
    AccessToken,
    BulkResult,
    Checkpoint,
    Claim,
    Event,
    Finished,
    Heartbeat,
    RetryResult,
    Run,
    Session,
    SessionReleased,
    Task,
)
from runlease.core.views import (
    Backlog,
    DrainResult,
    InspectView,
    Overview,
    PauseState,
    SchedulerStatus,
    StuckRun,
)
from runlease.core.views import TaskDetail as TaskDetailView
from runlease.errors import (
    BAD_FRAME,
    BAD_REQUEST,
    FRAME_TOO_LARGE,
    INVALID_INPUT,
    PAYLOAD_TOO_LARGE,
    UNKNOWN_OP,
    InvalidInput,
)
from runlease.hooks import HookDelivery, HookInfo, HookReport
from runlease.operations import (
    MAX_PAGE_BYTES,
    OPERATIONS,
    AddDependency,
    ApproveTask,
    BlockRun,
    BulkForceRuns,
    CancelRun,
    CancelTask,
    CheckpointTask,
    ClaimArgs,
    ClaimNext,
    ClaimOptions,
    ClaimRun,
    ClaimTask,
    CompleteRun,
    CreateTask,
    CreateToken,
    DeleteTask,
    DrainScheduler,
    EventPage,
    FailRun,
    FinishRequest,
    FollowEvents,
    ForceFailRun,
    ForceReleaseRun,
    GetBacklog,
    GetContext,
    GetEvent,
    GetOverview,
    GetRun,
    GetSchedulerStatus,
    GetSession,
    GetStatus,
    GetTimeline,
    HeartbeatRun,
    InspectRun,
    InspectTask,
    IssuedToken,
    ListEvents,
    ListHookDeliveries,
    ListSessions,
    ListStuck,
    ListTasks,
    ListTokens,
    NextClaim,
    OpenedSession,
    OpenSession,
    Operation,
    PauseScheduler,
    PauseTask,
    PublishTask,
    ReadRequest,
    RecoverRun,
    RejectTask,
    ReleaseRun,
    RemoveDependency,
    ReopenTask,
    Request,
    ResumeScheduler,
    ResumeTask,
    RetryHookDelivery,
    RetryRun,
    RevokeToken,
    ServerStatus,
    SessionPage,
    SessionRequest,
    ShowTask,
    StartTask,
    StealRun,
    StopSession,
    StuckList,
    TaskPage,
    TokenList,
    UnblockTask,
    UpdateTask,
    WhoAmI,
)

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
MAX_FRAME_BYTES: Final = 1024 * 1024
assert MAX_PAGE_BYTES < MAX_FRAME_BYTES
HEADER: Final = struct.Struct(">I")
HEADER_BYTES: Final = HEADER.size
# Id 0 marks a reply about the connection rather than about one request.
CONNECTION_ID: Final = 0
# The client name the `runlease` CLI sends in hello: the server stamps its writes origin "cli".
CLI_CLIENT_NAME: Final = "runlease-cli"


# ------------------------------------------------------------------------------- replies
class Reply(msgspec.Struct, kw_only=True, tag_field="reply", omit_defaults=True):
    """Base of every reply: ``id`` is the request's (0 for connection-level replies).

    A reply to an operation carries its value in its one field (``TaskReply.task``), or,
    when ``spreads`` names the value's type, spreads the value's fields over its own.
    """

    id: int
    spreads: ClassVar[type | None] = None


class Welcome(Reply, tag="welcome"):
    version: int
    server: str
    pid: int


class ErrorReply(Reply, tag="error"):
    code: str
    message: str


class Ok(Reply, tag="ok"):
    pass


class StatusReply(Reply, tag="status"):
    status: ServerStatus


class TaskReply(Reply, tag="task"):
    task: Task


class TaskDetail(Reply, tag="task_detail"):
    """A task with its whole history (``show``): every run oldest first, its checkpoints,
    retained events, graph edges and pause state. Fields after ``runs`` came later and have
    defaults."""

    spreads = TaskDetailView

    task: Task
    runs: list[Run]
    checkpoints: list[Checkpoint] = []
    events: list[Event] = []
    children: list[str] = []
    blocked_by: list[str] = []
    open_dependencies: list[str] = []
    dependents: list[str] = []
    pause: PauseState | None = None


class RunReply(Reply, tag="run"):
    run: Run


class TaskList(Reply, tag="tasks"):
    """One page of tasks; ``next_after`` is the cursor for the next page, None at the end."""

    spreads = TaskPage

    tasks: list[Task]
    next_after: str | None = None


class EventList(Reply, tag="events"):
    spreads = EventPage
    events: list[Event]
    next_after_seq: int | None = None


class EventItem(Reply, tag="event"):
    """One event of a ``follow_events`` stream (not final)."""

    event: Event


class EventReply(Reply, tag="event_record"):
    """One event, the answer to ``get_event`` (final, unlike a stream's EventItem)."""

    event: Event


class StreamEnd(Reply, tag="end"):
    """The final reply of a stream: why it ended (``closed``, ``cancelled``, ``shutdown``)."""

    reason: str


class SessionOpened(Reply, tag="session_opened"):
    spreads = OpenedSession
    session: Session
    token: str


class SessionReply(Reply, tag="session"):
    session: Session


class SessionList(Reply, tag="sessions"):
    spreads = SessionPage
    sessions: list[Session]
    next_after: str | None = None


class SessionReleasedReply(Reply, tag="session_released"):
    released: SessionReleased


class ClaimReply(Reply, tag="claim"):
    claim: Claim


class HeartbeatReply(Reply, tag="heartbeat"):
    heartbeat: Heartbeat


class FinishedReply(Reply, tag="finished"):
    """The answer to a finish carrying ``next``: the finished run and the claim part."""

    finished: Finished


class RetryReply(Reply, tag="retry"):
    """The failed run and the new queued run that follows it."""

    result: RetryResult


class BulkReply(Reply, tag="bulk"):
    """One outcome per run of a bulk force operation, in the order asked."""

    result: BulkResult


class SchedulerReply(Reply, tag="scheduler"):
    scheduler: SchedulerStatus


class DrainReply(Reply, tag="drain"):
    drain: DrainResult


class BacklogReply(Reply, tag="backlog"):
    backlog: Backlog


class OverviewReply(Reply, tag="overview"):
    overview: Overview


class StuckReply(Reply, tag="stuck"):
    spreads = StuckList
    runs: list[StuckRun]
    threshold: float


class InspectReply(Reply, tag="inspect"):
    view: InspectView


class ContextReply(Reply, tag="context"):
    """The context bundle of a leased run, for the session holding it."""

    bundle: ContextBundle


class HookListReply(Reply, tag="hooks"):
    """The configured hooks and one page of their deliveries, newest first."""

    spreads = HookReport
    hooks: list[HookInfo]
    deliveries: list[HookDelivery]


class HookDeliveryReply(Reply, tag="hook_delivery"):
    delivery: HookDelivery


class TokenIssued(Reply, tag="token_issued"):
    """A new access token and its secret, which is shown only in this reply."""

    spreads = IssuedToken
    token: AccessToken
    secret: str


class AccessTokenReply(Reply, tag="access_token"):
    token: AccessToken


class TokenListReply(Reply, tag="tokens"):
    spreads = TokenList
    tokens: list[AccessToken]


AnyReply = (
    Welcome
    | ErrorReply
    | Ok
    | StatusReply
    | TaskReply
    | TaskDetail
    | RunReply
    | TaskList
    | EventList
    | EventItem
    | StreamEnd
    | SessionOpened
    | SessionReply
    | SessionList
    | SessionReleasedReply
    | ClaimReply
    | HeartbeatReply
    | FinishedReply
    | RetryReply
    | BulkReply
    | SchedulerReply
    | DrainReply
    | BacklogReply
    | OverviewReply
    | StuckReply
    | InspectReply
    | EventReply
    | ContextReply
    | HookListReply
    | HookDeliveryReply
    | TokenIssued
    | AccessTokenReply
    | TokenListReply
)


# ---------------------------------------------------------- requests about the connection
class Hello(Request[Welcome], tag="hello"):
    """The first request on a connection: the protocol versions the client speaks."""

    versions: list[int]
    client: str = ""
    # An access token (``rl_token_...``): the connection then acts with its role. Required
    # on a connection that is not the owner-only local socket.
    auth_token: str | None = None


class Cancel(Request[Ok], tag="cancel"):
    """Stop an in-flight request of this connection (a stream, or a waiting claim)."""

    target: int


# The wire union: the connection's own requests and every operation of the table.
REQUEST_TYPES: Final[tuple[type[Request[Any]], ...]] = (
    Hello,
    Cancel,
    *(entry.request for entry in OPERATIONS.values()),
)
OPS: Final[frozenset[str]] = frozenset(str(t.__struct_config__.tag) for t in REQUEST_TYPES)
AnyRequest = Request[Any]


# ------------------------------------------------------------------- replies to values
def _carriers() -> dict[type, tuple[type[Reply], str | None]]:
    out: dict[type, tuple[type[Reply], str | None]] = {}
    for cls in _VALUE_REPLIES:
        if cls.spreads is not None:
            out[cls.spreads] = (cls, None)
            continue
        (field,) = [f for f in msgspec.structs.fields(cls) if f.name != "id"]
        out[cast(type, field.type)] = (cls, field.name)
    return out


_VALUE_REPLIES: Final[tuple[type[Reply], ...]] = (
    StatusReply,
    TaskReply,
    TaskDetail,
    RunReply,
    TaskList,
    EventList,
    SessionOpened,
    SessionReply,
    SessionList,
    SessionReleasedReply,
    ClaimReply,
    HeartbeatReply,
    FinishedReply,
    RetryReply,
    BulkReply,
    SchedulerReply,
    DrainReply,
    BacklogReply,
    OverviewReply,
    StuckReply,
    InspectReply,
    EventReply,
    ContextReply,
    HookListReply,
    HookDeliveryReply,
    TokenIssued,
    AccessTokenReply,
    TokenListReply,
)
_CARRIERS: Final = _carriers()


def reply_class(value_type: type) -> type[Reply]:
    """The reply that carries values of ``value_type`` (Task -> TaskReply)."""
    return _CARRIERS[value_type][0]


def reply_to(request_id: int, value: object) -> Reply:
    """The reply carrying ``value``, the answer to request ``request_id``."""
    cls, field = _CARRIERS[type(value)]
    if field is not None:
        return cls(id=request_id, **{field: value})
    return cls(id=request_id, **{name: getattr(value, name) for name in _CARRIED[cls]})


def value_of(reply: Reply) -> object:
    """The value a reply carries (the inverse of :func:`reply_to`)."""
    names = _CARRIED[type(reply)]
    if reply.spreads is not None:
        return reply.spreads(**{name: getattr(reply, name) for name in names})
    (field,) = names
    return getattr(reply, field)


def _carried_fields(cls: type[Reply]) -> tuple[str, ...]:
    # The class's own field tuple: msgspec.structs.fields would resolve the type hints of
    # the whole class on every reply (it showed up as a quarter of a socket round trip).
    return tuple(name for name in cls.__struct_fields__ if name != "id")


# What each reply carries, worked out once: a reply is decoded on every call.
_CARRIED: Final[dict[type[Reply], tuple[str, ...]]] = {
    cls: _carried_fields(cls) for cls in _VALUE_REPLIES
}


# One encoder and one typed decoder per direction, built once and reused.
_encoder = msgspec.msgpack.Encoder()
_request_decoder: msgspec.msgpack.Decoder[AnyRequest] = msgspec.msgpack.Decoder(
    cast(Any, Union[REQUEST_TYPES])  # noqa: UP007 - a union built from the table
)
_reply_decoder: msgspec.msgpack.Decoder[AnyReply] = msgspec.msgpack.Decoder(AnyReply)
_any_decoder = msgspec.msgpack.Decoder()


# ------------------------------------------------------------------------------- framing
_NO_HEADER: Final = bytes(HEADER_BYTES)


def append_frame(out: bytearray, message: Request[Any] | Reply) -> None:
    """Append ``message`` to ``out`` as one frame, encoded in place.

    Replies bound for one peer go into one buffer and leave in one send; encoding straight
    into it costs no intermediate body and no concatenation. Raises
    InvalidInput(PAYLOAD_TOO_LARGE), leaving ``out`` as it was, rather than produce a frame
    the peer must refuse.
    """
    start = len(out)
    out += _NO_HEADER
    _encoder.encode_into(message, out, start + HEADER_BYTES)
    size = len(out) - start - HEADER_BYTES
    if size > MAX_FRAME_BYTES:
        del out[start:]
        raise InvalidInput(
            f"message is {size} bytes; a frame may hold at most {MAX_FRAME_BYTES}",
            code=PAYLOAD_TOO_LARGE,
        )
    HEADER.pack_into(out, start, size)


def encode_frame(message: Request[Any] | Reply) -> bytes:
    """One message as a frame: length prefix plus msgpack body.

    Raises InvalidInput(FRAME_TOO_LARGE) rather than produce a frame the peer must refuse.
    """
    out = bytearray()
    append_frame(out, message)
    return bytes(out)


def frame_bytes(body: bytes) -> bytes:
    """Wrap an already-encoded body (tests use it to send hand-made bodies)."""
    return HEADER.pack(len(body)) + body


class FramingLost(InvalidInput):
    """A length prefix above the limit: the byte stream is out of step for good."""

    def __init__(self, declared: int, limit: int = MAX_FRAME_BYTES, *, why: str = "") -> None:
        super().__init__(
            f"frame length prefix says {declared} bytes; the limit is {limit}{why}, "
            "so the stream cannot be trusted and the connection will close",
            code=FRAME_TOO_LARGE,
        )
        self.declared = declared
        self.limit = limit


class FrameBuffer:
    """Sans-IO reassembly: feed received bytes, take complete frame bodies out.

    Frames are read in place from a start offset; the consumed head is dropped once per
    feed rather than once per frame, so a feed holding many frames costs no quadratic
    shuffling. Once framing is lost every further :meth:`next_frame` raises
    :class:`FramingLost` again; the owner is expected to close the connection.
    """

    __slots__ = ("_data", "_lost", "_max", "_start", "_why")

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._data = bytearray()
        self._start = 0  # where the unread bytes begin in _data
        self._max = max_frame
        self._why = ""
        self._lost: FramingLost | None = None

    def __len__(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._data) - self._start

    @property
    def max_frame(self) -> int:
        return self._max

    def limit(self, max_frame: int, why: str = "") -> None:
        """Change the largest frame accepted from now on; ``why`` explains it in the error.

        A server lowers it until the handshake is done (a hello is tiny), so a client that
        never says hello cannot make it hold a megabyte.
        """
        self._max = max_frame
        self._why = why

    @property
    def partial_size(self) -> int:
        """The declared body size of the incomplete frame at the head, 0 if there is none.

        Known as soon as its length prefix has arrived: what the frame will hold once
        complete, so an owner can budget memory before the body comes in.
        """
        start = self._start
        if self._lost is not None or len(self._data) - start < HEADER_BYTES:
            return 0
        (size,) = HEADER.unpack_from(self._data, start)
        if size > self._max or len(self._data) - start >= HEADER_BYTES + size:
            return 0
        return int(size)

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost is not None:
            return
        if self._start:
            del self._data[: self._start]
            self._start = 0
        self._data += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None until more bytes arrive."""
        if self._lost is not None:
            raise self._lost
        data = self._data
        start = self._start
        available = len(data) - start
        if available < HEADER_BYTES:
            if not available and start:
                data.clear()
                self._start = 0
            return None
        (size,) = HEADER.unpack_from(data, start)
        if size > self._max:
            self._lost = FramingLost(size, self._max, why=self._why)
            data.clear()
            self._start = 0
            raise self._lost
        end = start + HEADER_BYTES + size
        if len(data) < end:
            return None
        body = bytes(data[start + HEADER_BYTES : end])
        self._start = end
        return body

    def frames(self) -> list[bytes]:
        """Every complete frame body available now (raises FramingLost like next_frame)."""
        out: list[bytes] = []
        while (body := self.next_frame()) is not None:
            out.append(body)
        return out


# ------------------------------------------------------------------------------ decoding
class RequestRejected(InvalidInput):
    """A frame that is not a valid request; ``request_id`` is 0 when none could be read."""

    def __init__(self, request_id: int, message: str, *, code: str) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id


def decode_request(body: bytes) -> AnyRequest:
    """Decode one request body, or raise :class:`RequestRejected` saying what is wrong.

    Never raises anything else, whatever the bytes.
    """
    try:
        request = _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        detail = str(exc)
    except RecursionError:
        # Nesting too deep to decode at all (the request id is inside it, so unknown).
        raise RequestRejected(
            CONNECTION_ID,
            "the request nests objects and arrays too deeply to decode; payloads may nest "
            f"at most {MAX_PAYLOAD_DEPTH} levels",
            code=INVALID_INPUT,
        ) from None
    except Exception as exc:  # DecodeError, or anything odd msgspec meets in garbage
        raise RequestRejected(
            CONNECTION_ID, f"frame is not valid msgpack: {_short(exc)}", code=BAD_FRAME
        ) from None
    else:
        if request.id >= 1:
            return request
        detail = "a request needs an id of 1 or more (0 is reserved for the connection)"
    # The body is msgpack but not a valid request: find its id and op to say why.
    try:
        raw = _any_decoder.decode(body)
    except Exception:  # pragma: no cover - the typed decode already parsed it
        raw = None
    if not isinstance(raw, dict):
        raise RequestRejected(
            CONNECTION_ID, "a request must be a msgpack map with an op and an id", code=BAD_FRAME
        )
    raw_id = raw.get("id")
    request_id = (
        raw_id
        if isinstance(raw_id, int) and not isinstance(raw_id, bool) and 1 <= raw_id < 2**63
        else CONNECTION_ID
    )
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        shown = repr(op)[:60] if op is not None else "none"
        raise RequestRejected(
            request_id,
            f"unknown op {shown}; this server knows: {', '.join(sorted(OPS))}",
            code=UNKNOWN_OP,
        )
    raise RequestRejected(request_id, f"bad {op} request: {detail}", code=BAD_REQUEST)


def decode_reply(body: bytes) -> AnyReply:
    """Decode one reply body (client side); a malformed reply is a BAD_FRAME error."""
    try:
        return _reply_decoder.decode(body)
    except Exception as exc:
        raise InvalidInput(
            f"the server sent a reply this client cannot read: {_short(exc)}", code=BAD_FRAME
        ) from None


def encode_message(message: Request[Any] | Reply) -> bytes:
    """The msgpack body of a message, without the length prefix."""
    return _encoder.encode(message)


def choose_version(offered: list[int]) -> int | None:
    """The newest version both sides speak, or None."""
    common = set(offered) & set(SUPPORTED_VERSIONS)
    return max(common) if common else None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# The operations are re-exported: a wire message is an operation's request struct.
__all__ = [
    "CLI_CLIENT_NAME",
    "CONNECTION_ID",
    "HEADER",
    "HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_PAGE_BYTES",
    "OPERATIONS",
    "OPS",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "SUPPORTED_VERSIONS",
    "AccessTokenReply",
    "AddDependency",
    "AnyReply",
    "AnyRequest",
    "ApproveTask",
    "BacklogReply",
    "BlockRun",
    "BulkForceRuns",
    "BulkReply",
    "Cancel",
    "CancelRun",
    "CancelTask",
    "CheckpointTask",
    "ClaimArgs",
    "ClaimNext",
    "ClaimOptions",
    "ClaimReply",
    "ClaimRun",
    "ClaimTask",
    "CompleteRun",
    "ContextReply",
    "CreateTask",
    "CreateToken",
    "DeleteTask",
    "DrainReply",
    "DrainScheduler",
    "ErrorReply",
    "EventItem",
    "EventList",
    "EventPage",
    "EventReply",
    "FailRun",
    "FinishRequest",
    "FinishedReply",
    "FollowEvents",
    "ForceFailRun",
    "ForceReleaseRun",
    "FrameBuffer",
    "FramingLost",
    "GetBacklog",
    "GetContext",
    "GetEvent",
    "GetOverview",
    "GetRun",
    "GetSchedulerStatus",
    "GetSession",
    "GetStatus",
    "GetTimeline",
    "HeartbeatReply",
    "HeartbeatRun",
    "Hello",
    "HookDeliveryReply",
    "HookListReply",
    "InspectReply",
    "InspectRun",
    "InspectTask",
    "IssuedToken",
    "ListEvents",
    "ListHookDeliveries",
    "ListSessions",
    "ListStuck",
    "ListTasks",
    "ListTokens",
    "NextClaim",
    "Ok",
    "OpenSession",
    "OpenedSession",
    "Operation",
    "OverviewReply",
    "PauseScheduler",
    "PauseTask",
    "PublishTask",
    "ReadRequest",
    "RecoverRun",
    "RejectTask",
    "ReleaseRun",
    "RemoveDependency",
    "ReopenTask",
    "Reply",
    "Request",
    "RequestRejected",
    "ResumeScheduler",
    "ResumeTask",
    "RetryHookDelivery",
    "RetryReply",
    "RetryRun",
    "RevokeToken",
    "RunReply",
    "SchedulerReply",
    "ServerStatus",
    "SessionList",
    "SessionOpened",
    "SessionPage",
    "SessionReleasedReply",
    "SessionReply",
    "SessionRequest",
    "ShowTask",
    "StartTask",
    "StatusReply",
    "StealRun",
    "StopSession",
    "StreamEnd",
    "StuckList",
    "StuckReply",
    "TaskDetail",
    "TaskList",
    "TaskPage",
    "TaskReply",
    "TokenIssued",
    "TokenList",
    "TokenListReply",
    "UnblockTask",
    "UpdateTask",
    "Welcome",
    "WhoAmI",
    "append_frame",
    "choose_version",
    "decode_reply",
    "decode_request",
    "encode_frame",
    "encode_message",
    "frame_bytes",
    "reply_class",
    "reply_to",
    "value_of",
]
