"""Every operation of runlease, declared once.

An operation is one request struct. The struct is at the same time:

- the argument object: ``await rt.call(CreateTask("write the report", priority="high"))``
  works on the embedded runtime and on both clients, and their named methods
  (``create_task(...)``) only build it;
- the wire message: a msgspec Struct tagged by ``op`` (the tags are stable wire names);
- the table entry: ``@operation(...)`` registers it with its flags, and its generic
  parameter (``Request[Task]``) is the type of value it answers with;
- how it runs: :meth:`Request.execute` turns it into a command of the state machine (or a
  read of memory) for a :class:`~runlease.runtime.calls.Call`, which knows the runtime and
  who is asking through which surface. The embedded runtime and the socket server run
  every operation through that one method.

Adding an operation: its command and handler in ``core/``, one request class here with
``@operation``, and, if a person types it, one CLI command. The wire union, the decoder,
the server's dispatch and the clients' ``call`` follow from the table.

No trio and no IO here: ``execute`` only awaits what the call hands it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    Generic,
    Literal,
    NamedTuple,
    TypedDict,
    TypeVar,
    cast,
    get_args,
)

import msgspec

from runlease.core import commands as c
from runlease.core.context import ContextBundle
from runlease.core.finding import TaskFilters
from runlease.core.model import (
    ROLE_RANK,
    ROLES,
    AccessToken,
    Actor,
    ApprovalPolicy,
    BulkResult,
    Claim,
    Event,
    Finished,
    Heartbeat,
    Ownership,
    Priority,
    RetryResult,
    Role,
    Run,
    Scope,
    Session,
    SessionReleased,
    Task,
    TaskStatus,
)
from runlease.core.views import (
    DEFAULT_OVERVIEW_ROWS,
    Backlog,
    DrainResult,
    InspectView,
    Overview,
    SchedulerStatus,
    StuckRun,
    TaskDetail,
    priority_rank,
)
from runlease.core.views import MAX_PAGE as BACKLOG_MAX_PAGE
from runlease.errors import InvalidInput
from runlease.hooks import DeliveryStatus, HookDelivery, HookReport

if TYPE_CHECKING:
    from runlease.runtime.calls import Call

R = TypeVar("R")
T = TypeVar("T")

# Operator actions with no actor of their own act as this one.
OPERATOR: Final = Actor(kind="human", ref="operator")
DEFAULT_PAGE: Final = 500
MAX_PAGE: Final = 10_000
# A page must fit in one frame (protocol.MAX_FRAME_BYTES) with room for its envelope.
MAX_PAGE_BYTES: Final = 1024 * 1024 - 4096
DEFAULT_STUCK_THRESHOLD: Final = 600.0
DEFAULT_DRAIN_TIMEOUT: Final = 30.0

# Chosen by the client, echoed by the reply. 0 means "not sent yet": a client numbers each
# request as it sends it, and the server refuses 0 (it marks replies about the connection).
RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


# ---------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Operation:
    """One row of the table: a request type and how a surface must treat it."""

    request: type[Request[Any]]
    reply: type
    # Acts for the session whose token it carries (over the socket; embedded: the handle's).
    session: bool
    # The least role a caller must hold (see ROLES): reads are "reader", what agents do to
    # their own work "agent", and what overrules others or the host "operator". An
    # operator operation's actor defaults to the operator when the caller names none.
    role: Role
    # Only reads memory: answered once every change it could show is durable.
    read: bool
    # Streams replies (events) before its last one.
    stream: bool
    # A client may send it again on a new connection when the old one dropped before its
    # answer came: sending it twice cannot apply it twice (reads always may).
    resend: bool = False

    @property
    def tag(self) -> str:
        return str(self.request.__struct_config__.tag)


OPERATIONS: dict[str, Operation] = {}
# The request types whose actor defaults to the operator (role "operator"), by type: a
# lookup on every write.
_OPERATOR_DEFAULT: set[type] = set()
# Each request type's required role as its rank (ROLE_RANK), by type: a lookup on every
# request over the socket.
REQUIRED_RANK: dict[type, int] = {}
# The request types a client may send again after a dropped connection (Operation.resend).
_RESENDABLE: set[type] = set()


def operation(
    *,
    role: Role,
    session: bool = False,
    read: bool = False,
    stream: bool = False,
    resend: bool = False,
) -> Callable[[type[Q]], type[Q]]:
    """Register a request class in the operation table (see :class:`Operation`). The role
    has no default: every operation says who may run it."""
    if role not in ROLE_RANK:
        raise TypeError(f"role must be one of {ROLES}, got {role!r}")

    def register(cls: type[Q]) -> type[Q]:
        entry = Operation(cls, cls.reply_type(), session, role, read, stream, read or resend)
        if entry.tag in OPERATIONS:
            raise TypeError(f"two operations are tagged {entry.tag!r}")
        OPERATIONS[entry.tag] = entry
        REQUIRED_RANK[cls] = ROLE_RANK[role]
        if entry.resend:
            _RESENDABLE.add(cls)
        if role == "operator":
            _OPERATOR_DEFAULT.add(cls)
        return cls

    return register


# ----------------------------------------------------------------------- request bases
class Request(msgspec.Struct, Generic[R], kw_only=True, tag_field="op", omit_defaults=True):
    """Base of every request; ``R`` is the value it answers with."""

    id: RequestId = 0

    @classmethod
    def reply_type(cls) -> type:
        """``R``, read from the class's generic base (``Request[Task]`` -> Task)."""
        for klass in cls.__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                args = get_args(base)
                if args and not isinstance(args[0], TypeVar):
                    return cast(type, args[0])
        raise TypeError(f"{cls.__name__} does not say what it answers (Request[...])")

    def answers_with(self) -> type:
        """The type of this request's answer (a finish that claims next answers Finished)."""
        return self.reply_type()

    def long(self) -> bool:
        """Whether it may hold the server a long time: waiting for work, a stream, a drain.
        A shutting-down server ends these at once instead of letting them finish."""
        return False

    def patience(self) -> float | None:
        """Seconds the server may legitimately take on top of an ordinary reply (None: no
        bound). A synchronous client adds it to its reply timeout."""
        return 0.0

    def claims_after_finish(self) -> bool:
        """A finish that claims next: cancelling it only ends the wait of its claim part."""
        return False

    def may_resend(self) -> bool:
        """Whether a client may send this request again after its connection dropped
        before the answer came: the table's ``resend`` flag, unless the request itself
        decides (a create is safe to repeat only with an idempotency key)."""
        return type(self) in _RESENDABLE

    async def execute(self, call: Call) -> R:
        """Carry it out for ``call``: by default, apply its command and answer the reply."""
        reply = await call.runtime.submit(self.command(call))
        # The state machine answers each command with the value its request declares.
        return cast(R, reply)

    async def serve(self, call: Call) -> object:
        """What a surface that does not know the type runs (the server): the answer."""
        return await self.execute(call)

    def command(self, call: Call) -> c.AnyCommand:
        raise NotImplementedError(f"{type(self).__name__} has no command")

    def who(self, call: Call) -> _Who:
        """Actor and origin stamped on its command (and so on every event it emits)."""
        default = OPERATOR if type(self) in _OPERATOR_DEFAULT else None
        return {"actor": call.actor(default), "origin": call.origin}


class SessionRequest(Request[R], kw_only=True):
    """A request on behalf of a session: over the socket it carries the session's bearer
    token; a client fills in its own when none is given."""

    token: str | None = None


class ReadRequest(Request[R], kw_only=True):
    """A request answered from memory; the answer waits until everything it could show
    is durable (see Runtime.read)."""

    async def execute(self, call: Call) -> R:
        return await call.runtime.read(lambda: self.answer(call))

    def answer(self, call: Call) -> R:
        raise NotImplementedError


class _Who(TypedDict):
    actor: Actor | None
    origin: Any


Q = TypeVar("Q", bound=Request[Any])


# ------------------------------------------------------------------------ reply values
class ServerStatus(msgspec.Struct, kw_only=True):
    version: str
    protocol: int
    pid: int
    socket: str
    started_at: float
    uptime_seconds: float
    connections: int
    durability: str
    recovered: bool
    tasks: int
    queued_runs: int
    leased_runs: int
    live_sessions: int
    waiting_claimers: int
    last_event_seq: int


class OpenedSession(NamedTuple):
    """A session opened for an out-of-process agent and its bearer token (shown once)."""

    session: Session
    token: str


class IssuedToken(NamedTuple):
    """A new access token and its secret (shown this once; only its hash is kept)."""

    token: AccessToken
    secret: str


class TokenList(NamedTuple):
    tokens: list[AccessToken]


class TaskPage(NamedTuple):
    tasks: list[Task]
    next_after: str | None = None


class EventPage(NamedTuple):
    events: list[Event]
    next_after_seq: int | None = None


class SessionPage(NamedTuple):
    sessions: list[Session]
    next_after: str | None = None


class StuckList(NamedTuple):
    runs: list[StuckRun]
    threshold: float


# ------------------------------------------------------------------------ claim options
class ClaimArgs(TypedDict, total=False):
    """The claim options as keyword arguments (``claim_next(wait=True, timeout=30)``)."""

    wait: bool
    timeout: float | None
    lease_seconds: float | None
    workspace: str | None
    scope: Scope | None
    priority_min: str | int | None
    tags: list[str]


@operation(role="agent", session=True)
class ClaimNext(SessionRequest[Claim], tag="claim_next"):
    """Claim the best queued run the session may take; also the claim options.

    The same struct is the ``next`` of a finish that claims the session's next run; there
    its ``id`` and ``token`` are unused.

    Filters: ``workspace`` (only that workspace's tasks; without it, only tasks with no
    workspace), ``scope`` (the same said explicitly: "global" takes no workspace,
    "workspace" needs one), ``priority_min`` (a priority name or rank; lower ones are
    skipped), ``tags`` (only tasks carrying every one of them). With ``wait`` the claim
    parks until work arrives or ``timeout`` seconds pass (then NO_CLAIMABLE_RUN).
    """

    wait: bool = False
    timeout: float | None = None
    lease_seconds: float | None = None
    workspace: str | None = None
    scope: Scope | None = None
    priority_min: str | int | None = None
    tags: list[str] = []

    def long(self) -> bool:
        return self.wait

    def patience(self) -> float | None:
        return self.timeout if self.wait else 0.0

    def command(self, call: Call) -> c.ClaimNext:
        return claim_command(self, call.session_id(), call)

    async def execute(self, call: Call) -> Claim:
        return await call.runtime.claim(claim_command(self, call.session_id(), call), self)


# The ``next`` of a finish: the same options.
ClaimOptions = ClaimNext
NextClaim = ClaimNext


def claim_command(options: ClaimNext, session_id: str, call: Call) -> c.ClaimNext:
    """The state machine's claim for ``options`` (alone, or as the part after a finish)."""
    check_timeout(options.timeout)
    return c.ClaimNext(
        now=0.0,
        session_id=session_id,
        claim_token_hash=call.runtime.new_claim_hash(),
        lease_seconds=options.lease_seconds,
        workspace_id=options.workspace,
        scope=options.scope,
        priority_min=priority_rank(options.priority_min),
        tags=strings(options.tags, "tags") if options.tags else [],
        **options.who(call),
    )


class _ClaimChosen(SessionRequest[Claim], kw_only=True):
    """A claim of one chosen run, under the rules and filters of :class:`ClaimNext`."""

    lease_seconds: float | None = None
    workspace: str | None = None
    scope: Scope | None = None
    priority_min: str | int | None = None

    def target(self) -> tuple[str | None, str | None]:
        """(run id, task id): the one the caller chose."""
        raise NotImplementedError

    def command(self, call: Call) -> c.ClaimRun:
        run_id, task_id = self.target()
        return c.ClaimRun(
            now=0.0,
            session_id=call.session_id(),
            run_id=run_id,
            task_id=task_id,
            claim_token_hash=call.runtime.new_claim_hash(),
            lease_seconds=self.lease_seconds,
            workspace_id=self.workspace,
            scope=self.scope,
            priority_min=priority_rank(self.priority_min),
            **self.who(call),
        )


@operation(role="agent", session=True)
class ClaimRun(_ClaimChosen, tag="claim_run"):
    """Claim this queued run for the session, as ``claim_next`` would if it came first:
    same filters (the workspace scope included), one lease per session, not while its
    task is a draft, paused or blocked, nor while the scheduler is paused. Refused with
    NO_CLAIMABLE_RUN and the reason otherwise (RUN_NOT_FOUND if there is no such run)."""

    run_id: str

    def target(self) -> tuple[str | None, str | None]:
        return self.run_id, None


@operation(role="agent", session=True)
class ClaimTask(_ClaimChosen, tag="claim_task"):
    """Claim the task's current run for the session (see :class:`ClaimRun`)."""

    task_id: str

    def target(self) -> tuple[str | None, str | None]:
        return None, self.task_id


# -------------------------------------------------------------------------------- tasks
@operation(role="agent")
class CreateTask(Request[Task], tag="create_task"):
    """Create a task; with ``start`` also enqueue its first run.

    ``parent`` makes it a child task (depth <= 8, <= 64 children per parent, else
    GRAPH_LIMIT_EXCEEDED). ``draft`` creates it unrunnable until published;
    ``approval_policy="manual"`` makes approval the only way to enqueue it. ``owner``
    assigns it to one session (kind agent_session) or to a pool of sessions by agent name
    (kind pool): only they may claim it. ``preferred_capabilities`` order claimers after
    priority. ``required_artifacts`` is the completion contract: paths relative to the
    workspace root that must exist before a run may complete. ``auto_enqueue_on_ready``
    starts a run by itself once its last open dependency completes; ``stale_after`` is how
    many seconds without a heartbeat or checkpoint make its leased run show in ``stuck``.
    ``idempotency_key`` makes a retry safe: the same key with the same request answers the
    task it first made (``already``), with a different request it is refused with CONFLICT;
    the runtime keeps a key for its idempotency window (24 h by default).
    ``tags`` label it for ``list_tasks`` and tag-filtered claims.
    """

    title: str
    description: str = ""
    priority: Priority = "medium"
    workspace: str | None = None
    scope: Scope | None = None
    max_attempts: int | None = None
    metadata: dict[str, Any] | None = None
    capabilities: list[str] = []
    start: bool = False
    parent: str | None = None
    preferred_capabilities: list[str] = []
    owner: Ownership | None = None
    draft: bool = False
    approval_policy: ApprovalPolicy = "none"
    required_artifacts: list[str] = []
    auto_enqueue_on_ready: bool = False
    stale_after: float | None = None
    idempotency_key: str | None = None
    tags: list[str] = []

    def may_resend(self) -> bool:
        # The key makes a repeat answer the task the first one made (``already``).
        return self.idempotency_key is not None

    def command(self, call: Call) -> c.CreateTask:
        rt = call.runtime
        return c.CreateTask(
            now=0.0,
            task_id=rt.new_id("tsk"),
            title=self.title,
            description=self.description,
            priority=self.priority,
            scope=self.scope,
            workspace_id=self.workspace,
            max_attempts=self.max_attempts,
            metadata=self.metadata,
            required_capabilities=strings(self.capabilities, "capabilities"),
            start_run_id=rt.new_id("run") if self.start else None,
            parent_task_id=self.parent,
            preferred_capabilities=strings(self.preferred_capabilities, "preferred_capabilities"),
            owner=self.owner,
            draft=self.draft,
            approval_policy=self.approval_policy,
            required_artifacts=strings(self.required_artifacts, "required_artifacts"),
            auto_enqueue_on_ready=self.auto_enqueue_on_ready,
            stale_after=self.stale_after,
            idempotency_key=self.idempotency_key,
            idempotency_window=None if self.idempotency_key is None else rt.idempotency_window,
            tags=strings(self.tags, "tags"),
            **self.who(call),
        )


@operation(role="agent", resend=True)
class StartTask(Request[Run], tag="start_task"):
    """Enqueue a new run of a task (its next attempt). A task whose run is queued or
    leased already is answered with that run, marked ``already``, and a repeated
    ``idempotency_key`` on the same task with the run the first call made: neither
    enqueues anything."""

    task_id: str
    idempotency_key: str | None = None

    def command(self, call: Call) -> c.StartTask:
        return c.StartTask(
            now=0.0,
            task_id=self.task_id,
            run_id=call.runtime.new_id("run"),
            idempotency_key=self.idempotency_key,
            **self.who(call),
        )


@operation(role="reader", read=True)
class ShowTask(ReadRequest[TaskDetail], tag="show_task"):
    """A task with every run, its checkpoints, graph edges and retained events."""

    task_id: str

    def answer(self, call: Call) -> TaskDetail:
        return call.runtime.show_task(self.task_id)


@operation(role="reader", read=True)
class GetRun(ReadRequest[Run], tag="get_run"):
    run_id: str

    def answer(self, call: Call) -> Run:
        return call.runtime.get_run(self.run_id)


@operation(role="reader", read=True)
class ListTasks(ReadRequest[TaskPage], SessionRequest[TaskPage], tag="list_tasks"):
    """One page of the tasks matching every filter, in creation order; ``next_after``
    continues it. ``tags``: the task has all of them; ``owner``: its assignee's ref (a
    session id or an agent pool name); ``parent``: its direct children; ``root``: that
    task and everything below it; ``search``: a case-insensitive substring of the title or
    the description; ``available``: what the caller's session could claim now (needs a
    session)."""

    status: TaskStatus | None = None
    workspace: str | None = None
    after: str | None = None
    limit: int | None = None
    priority: Priority | None = None
    tags: list[str] = []
    owner: str | None = None
    parent: str | None = None
    root: str | None = None
    search: str | None = None
    available: bool = False

    def filters(self, call: Call) -> TaskFilters:
        """The filters of the embedded read (``available`` becomes the caller's session)."""
        return TaskFilters(
            status=self.status,
            priority=self.priority,
            tags=self.tags,
            owner=self.owner,
            parent=self.parent,
            root=self.root,
            workspace=self.workspace,
            search=self.search,
            available_to=call.session_id() if self.available else None,
        )

    def answer(self, call: Call) -> TaskPage:
        limit = page_limit(self.limit)
        tasks = call.runtime.list_tasks(after=self.after, limit=limit + 1, **self.filters(call))
        return page(tasks, limit, lambda items, more: TaskPage(items, _last(items, more).id))


@operation(role="reader", read=True)
class ListEvents(ReadRequest[EventPage], tag="events"):
    """One page of acknowledged events after ``after_seq``, oldest first, matching every
    filter given (``kinds``: any of these event types); ``next_after_seq`` continues it."""

    task_id: str | None = None
    after_seq: int = 0
    limit: int | None = None
    run_id: str | None = None
    session_id: str | None = None
    kinds: list[str] | None = None

    def answer(self, call: Call) -> EventPage:
        limit = page_limit(self.limit)
        events = call.runtime.events(
            after_seq=self.after_seq,
            task_id=self.task_id,
            run_id=self.run_id,
            session_id=self.session_id,
            kinds=self.kinds,
            limit=limit + 1,
        )
        return page(events, limit, _event_page)


@operation(role="reader", read=True)
class GetEvent(ReadRequest[Event], tag="get_event"):
    """One event by its sequence; EVENT_NOT_FOUND says whether it was compacted away
    (older than the history's retention) or is not written yet."""

    seq: int

    def answer(self, call: Call) -> Event:
        return call.runtime.get_event(self.seq)


@operation(role="reader", read=True, stream=True)
class FollowEvents(Request[Event], tag="follow_events"):
    """Matching events after ``after_seq`` (filters as in ``events``), then new ones as
    they are acknowledged. Resuming with the last seq seen repeats and skips nothing."""

    task_id: str | None = None
    after_seq: int = 0
    run_id: str | None = None
    session_id: str | None = None
    kinds: list[str] | None = None

    def long(self) -> bool:
        return True

    def patience(self) -> float | None:
        return None


# ----------------------------------------------------------------------------- sessions
@operation(role="agent")
class OpenSession(Request[OpenedSession], tag="open_session"):
    """Open a session for an agent; the answer holds its bearer token (kept only hashed)."""

    agent: str = "agent"
    parent: str | None = None
    ttl: float | None = None
    capabilities: list[str] = []
    auto_stop_on_parent: bool = True

    async def execute(self, call: Call) -> OpenedSession:
        token, token_hash = call.runtime.new_session_token()
        session: Session = await call.runtime.submit(self.command(call, token_hash))
        call.runtime.session_opened(session.id)
        return OpenedSession(session, token)

    def command(self, call: Call, token_hash: str | None = None) -> c.OpenSession:
        if self.parent is not None:
            # An agent token opens children only under its own sessions.
            call.check_session(self.parent)
        return c.OpenSession(
            now=0.0,
            session_id=call.runtime.new_id("ses"),
            agent=self.agent,
            parent_id=self.parent,
            ttl_seconds=self.ttl,
            auto_stop_on_parent=self.auto_stop_on_parent,
            capabilities=strings(self.capabilities, "capabilities"),
            session_token_hash=token_hash,
            token_id=call.token_id,
            **self.who(call),
        )


@operation(role="agent")
class StopSession(Request[SessionReleased], tag="stop_session"):
    """Stop a session: release its lease and stop its auto-stopping children."""

    session_id: str
    reason: str | None = None

    def command(self, call: Call) -> c.StopSession:
        call.check_session(self.session_id)
        return c.StopSession(
            now=0.0, session_id=self.session_id, reason=self.reason, **self.who(call)
        )


@operation(role="reader", read=True)
class GetSession(ReadRequest[Session], tag="get_session"):
    session_id: str

    def answer(self, call: Call) -> Session:
        return call.runtime.get_session(self.session_id)


@operation(role="reader", read=True)
class ListSessions(ReadRequest[SessionPage], tag="list_sessions"):
    live_only: bool = False
    after: str | None = None
    limit: int | None = None

    def answer(self, call: Call) -> SessionPage:
        limit = page_limit(self.limit)
        sessions = call.runtime.list_sessions(live_only=self.live_only)
        if self.after is not None:
            ids = [s.id for s in sessions]
            sessions = sessions[ids.index(self.after) + 1 :] if self.after in ids else []
        return page(sessions, limit, lambda items, more: SessionPage(items, _last(items, more).id))


@operation(role="reader", session=True, read=True)
class WhoAmI(SessionRequest[Session], tag="whoami"):
    """The session the caller acts for."""

    async def execute(self, call: Call) -> Session:
        return await call.runtime.read(lambda: call.runtime.get_session(call.session_id()))


# ------------------------------------------------------------------------------- leases
@operation(role="agent", session=True, resend=True)
class HeartbeatRun(SessionRequest[Heartbeat], tag="heartbeat"):
    """Renew the session's lease on a run: lease_until = now + lease_seconds."""

    run_id: str
    lease_seconds: float | None = None

    def command(self, call: Call) -> c.HeartbeatRun:
        return c.HeartbeatRun(
            now=0.0,
            session_id=call.session_id(),
            run_id=self.run_id,
            lease_seconds=self.lease_seconds,
            **self.who(call),
        )


class FinishRequest(SessionRequest[Run], kw_only=True):
    """A finish of the session's run; with ``next`` it also claims the session's next run
    and answers :class:`~runlease.core.model.Finished`.

    A refused finish raises its error and claims nothing. Once the finish is applied the
    answer always reports it: ``claim`` holds the new claim, or ``no_claim`` says why there
    is none (NO_CLAIMABLE_RUN, also when the wait timed out).
    """

    next: ClaimNext | None = None

    def answers_with(self) -> type:
        return Run if self.next is None else Finished

    def long(self) -> bool:
        return self.next is not None and self.next.wait

    def patience(self) -> float | None:
        return 0.0 if self.next is None else self.next.patience()

    def claims_after_finish(self) -> bool:
        return self.next is not None

    def may_resend(self) -> bool:
        # A repeated finish answers ``already``; its claim part would claim a second run.
        return self.next is None and super().may_resend()

    async def execute(self, call: Call) -> Run:
        if self.next is not None:
            raise InvalidInput(
                "a finish with next answers a Finished: use complete_and_next, fail_and_next "
                "or release_and_next"
            )
        run: Run = await call.runtime.submit(self.finish_command(call))
        return run

    async def serve(self, call: Call) -> object:
        if self.next is None:
            return await self.execute(call)
        return await self.then_claim(call, self.next)

    async def then_claim(self, call: Call, options: ClaimNext) -> Finished:
        finish = self.finish_command(call)
        claim = claim_command(options, call.session_id(), call)
        return await call.runtime.finish_and_claim(finish, claim, options, call.stop_waiting)

    def command(self, call: Call) -> c.AnyCommand:
        return self.finish_command(call)

    def finish_command(self, call: Call) -> c.CompleteRun | c.FailRun | c.ReleaseRun:
        raise NotImplementedError


@operation(role="agent", session=True, resend=True)
class CompleteRun(FinishRequest, tag="complete"):
    """Complete the session's run. A completion contract's artifacts are checked on disk
    first; missing ones refuse with COMPLETION_CONTRACT_UNMET."""

    run_id: str
    result: Any = None

    def finish_command(self, call: Call) -> c.CompleteRun:
        return c.CompleteRun(
            now=0.0,
            session_id=call.session_id(),
            run_id=self.run_id,
            result=self.result,
            **self.who(call),
        )


@operation(role="agent", session=True, resend=True)
class FailRun(FinishRequest, tag="fail"):
    """End the session's run as failed."""

    run_id: str
    error: str
    metadata: dict[str, Any] | None = None

    def finish_command(self, call: Call) -> c.FailRun:
        return c.FailRun(
            now=0.0,
            session_id=call.session_id(),
            run_id=self.run_id,
            error=self.error,
            metadata=self.metadata,
            **self.who(call),
        )


@operation(role="agent", session=True, resend=True)
class ReleaseRun(FinishRequest, tag="release"):
    """Give the run back to the queue (same attempt). With ``next`` the released run is
    itself a candidate: it keeps its place at the front of its priority band."""

    run_id: str
    reason: str | None = None

    def finish_command(self, call: Call) -> c.ReleaseRun:
        return c.ReleaseRun(
            now=0.0,
            session_id=call.session_id(),
            run_id=self.run_id,
            reason=self.reason,
            **self.who(call),
        )


@operation(role="agent", session=True)
class BlockRun(SessionRequest[Run], tag="block"):
    """Park the session's run as needs_attention for a human, ending the lease."""

    run_id: str
    reason: str

    def command(self, call: Call) -> c.BlockRun:
        return c.BlockRun(
            now=0.0,
            session_id=call.session_id(),
            run_id=self.run_id,
            reason=self.reason,
            **self.who(call),
        )


# ------------------------------------------------------------- task lifecycle and graph
@operation(role="agent", resend=True)
class PublishTask(Request[Task], tag="publish_task"):
    """Publish a draft; with ``start`` (and no manual approval) enqueue its first run. A
    task published already is answered as it is, marked ``already``, and nothing changes
    (its ``current_run_id`` names its run, if it has one)."""

    task_id: str
    start: bool = True

    def command(self, call: Call) -> c.PublishTask:
        rt = call.runtime
        enqueue = self.start and rt.get_task(self.task_id).approval_policy == "none"
        return c.PublishTask(
            now=0.0,
            task_id=self.task_id,
            run_id=rt.new_id("run") if enqueue else None,
            **self.who(call),
        )


@operation(role="operator", resend=True)
class ApproveTask(Request[Run], tag="approve_task"):
    """Approve a task awaiting manual approval (pending, or rejected earlier); enqueues its
    run and answers it. A task approved already is answered with the run it has, marked
    ``already``, and nothing changes."""

    task_id: str

    def command(self, call: Call) -> c.ApproveTask:
        return c.ApproveTask(
            now=0.0, task_id=self.task_id, run_id=call.runtime.new_id("run"), **self.who(call)
        )


@operation(role="operator")
class RejectTask(Request[Task], tag="reject_task"):
    """Reject a task awaiting approval: ``approval_state`` becomes ``rejected`` and the
    task stays blocked, nothing below it changes, and it can still be approved later."""

    task_id: str
    reason: str | None = None

    def command(self, call: Call) -> c.RejectTask:
        return c.RejectTask(now=0.0, task_id=self.task_id, reason=self.reason, **self.who(call))


@operation(role="agent")
class UpdateTask(Request[Task], tag="update_task"):
    """Change mutable fields (title, description, priority, max_attempts, metadata,
    required_capabilities, preferred_capabilities, owner, auto_enqueue_on_ready,
    stale_after, approval_policy, tags); any other raises IMMUTABLE_FIELD. ``tags`` takes
    a list (replaces them) or {"add": [...], "remove": [...]}. ``owner`` takes
    {"kind", "ref"} or None. Switching ``approval_policy`` to none clears the approval
    state; to manual makes a task that never ran wait for approval, while a task that has
    a run keeps it and counts as approved."""

    task_id: str
    changes: dict[str, Any]

    def command(self, call: Call) -> c.UpdateTask:
        return c.UpdateTask(
            now=0.0, task_id=self.task_id, changes=dict(self.changes), **self.who(call)
        )


@operation(role="operator")
class DeleteTask(Request[Task], tag="delete_task"):
    """Delete a task and its finished runs; answers the deleted record. Refused with
    TASK_HAS_CHILDREN while it has children and TASK_HAS_ACTIVE_RUNS while a run is
    queued or leased, or its current run is parked (recover or cancel it first; a parked
    run a later run replaced is history). Its dependents lose the edge."""

    task_id: str

    def command(self, call: Call) -> c.DeleteTask:
        return c.DeleteTask(now=0.0, task_id=self.task_id, **self.who(call))


@operation(role="agent")
class AddDependency(Request[Task], tag="add_dependency"):
    """``task_id`` waits for ``blocked_by`` to complete. At most 32 per task
    (GRAPH_LIMIT_EXCEEDED); a self edge or a cycle raises DEPENDENCY_CYCLE."""

    task_id: str
    blocked_by: str

    def command(self, call: Call) -> c.AddDependency:
        return c.AddDependency(
            now=0.0, task_id=self.task_id, blocked_by=self.blocked_by, **self.who(call)
        )


@operation(role="agent")
class RemoveDependency(Request[Task], tag="remove_dependency"):
    task_id: str
    blocked_by: str

    def command(self, call: Call) -> c.RemoveDependency:
        return c.RemoveDependency(
            now=0.0, task_id=self.task_id, blocked_by=self.blocked_by, **self.who(call)
        )


@operation(role="operator")
class PauseTask(Request[Task], tag="pause_task"):
    """Pause a task and its descendants: their queued runs wait until resumed; runs
    already leased carry on."""

    task_id: str
    reason: str

    def command(self, call: Call) -> c.PauseTask:
        return c.PauseTask(now=0.0, task_id=self.task_id, reason=self.reason, **self.who(call))


@operation(role="operator")
class ResumeTask(Request[Task], tag="resume_task"):
    task_id: str

    def command(self, call: Call) -> c.ResumeTask:
        return c.ResumeTask(now=0.0, task_id=self.task_id, **self.who(call))


@operation(role="operator")
class CancelTask(Request[Task], tag="cancel_task"):
    """Cancel a task and every open descendant; their queued or leased runs are canceled."""

    task_id: str
    reason: str | None = None

    def command(self, call: Call) -> c.CancelTask:
        return c.CancelTask(now=0.0, task_id=self.task_id, reason=self.reason, **self.who(call))


@operation(role="operator")
class ReopenTask(Request[Run], tag="reopen_task"):
    """Give a completed or failed task a new queued run with a fresh attempt budget
    (attempt 1, linked to the last run); answers the new run. A reopened task blocks its
    dependents again until it completes. RETRY_CHAIN_TOO_DEEP past 10 runs."""

    task_id: str
    reason: str | None = None

    def command(self, call: Call) -> c.ReopenTask:
        return c.ReopenTask(
            now=0.0,
            task_id=self.task_id,
            run_id=call.runtime.new_id("run"),
            reason=self.reason,
            **self.who(call),
        )


@operation(role="operator")
class UnblockTask(Request[Run], tag="unblock_task"):
    """Operator: clear the block a session placed on the task's run (``block``); the run
    goes back to the queue with its attempt. A session asking gets
    FORBIDDEN_OPERATOR_ACTION unless the host allows agents to force."""

    task_id: str
    reason: str | None = None

    def command(self, call: Call) -> c.UnblockTask:
        return c.UnblockTask(now=0.0, task_id=self.task_id, reason=self.reason, **self.who(call))


# --------------------------------------------------------------------------- run controls
@operation(role="operator")
class CancelRun(Request[Run], tag="cancel_run"):
    run_id: str
    reason: str | None = None

    def command(self, call: Call) -> c.CancelRun:
        return c.CancelRun(now=0.0, run_id=self.run_id, reason=self.reason, **self.who(call))


@operation(role="operator")
class RetryRun(Request[RetryResult], tag="retry_run"):
    """Queue a new run after a failed one (previous_run_id links them);
    RETRY_CHAIN_TOO_DEEP past 10 runs, ATTEMPTS_EXHAUSTED past max_attempts."""

    run_id: str

    def command(self, call: Call) -> c.RetryRun:
        return c.RetryRun(
            now=0.0, run_id=self.run_id, new_run_id=call.runtime.new_id("run"), **self.who(call)
        )


@operation(role="operator")
class RecoverRun(Request[Run], tag="recover_run"):
    """Operator: put the task's parked (needs_attention) run back in the queue, whatever
    parked it: a block, too many lost leases, or starvation. It keeps its attempt and its
    place; its lost-lease count starts again. A session asking gets
    FORBIDDEN_OPERATOR_ACTION unless the host allows agents to force."""

    run_id: str
    reason: str | None = None

    def command(self, call: Call) -> c.RecoverRun:
        return c.RecoverRun(now=0.0, run_id=self.run_id, reason=self.reason, **self.who(call))


@operation(role="operator")
class ForceReleaseRun(Request[Run], tag="force_release"):
    """Operator: take a claimed run back to the queue. A reason is required
    (FORCE_REASON_REQUIRED); at most 10 per actor and task per minute."""

    run_id: str
    reason: str

    def command(self, call: Call) -> c.ForceReleaseRun:
        return c.ForceReleaseRun(now=0.0, run_id=self.run_id, reason=self.reason, **self.who(call))


@operation(role="operator")
class ForceFailRun(Request[Run], tag="force_fail"):
    """Operator: fail a run (failure_kind operator_forced); rules as force_release."""

    run_id: str
    reason: str

    def command(self, call: Call) -> c.ForceFailRun:
        return c.ForceFailRun(now=0.0, run_id=self.run_id, reason=self.reason, **self.who(call))


@operation(role="operator")
class BulkForceRuns(Request[BulkResult], tag="bulk_force"):
    """Force-release or force-fail up to 50 runs; one outcome per run, in order."""

    action: Literal["release", "fail"]
    run_ids: list[str]
    reason: str

    def command(self, call: Call) -> c.BulkForceRuns:
        return c.BulkForceRuns(
            now=0.0,
            action=self.action,
            run_ids=strings(self.run_ids, "run_ids"),
            reason=self.reason,
            **self.who(call),
        )


# ------------------------------------------------------------------------------ scheduler
class _SchedulerSwitch(Request[SchedulerStatus], kw_only=True):
    """Pause or resume claims; answers the scheduler's status afterwards."""

    reason: str | None = None

    async def execute(self, call: Call) -> SchedulerStatus:
        await call.runtime.submit(self.command(call))
        return await call.runtime.read(call.runtime.scheduler_status)


@operation(role="operator")
class PauseScheduler(_SchedulerSwitch, tag="pause_scheduler"):
    """Stop all claims (they find NO_CLAIMABLE_RUN; waiters keep waiting). Lease expiry,
    heartbeats and finishes carry on."""

    def command(self, call: Call) -> c.PauseScheduler:
        return c.PauseScheduler(now=0.0, reason=self.reason, **self.who(call))


@operation(role="operator")
class ResumeScheduler(_SchedulerSwitch, tag="resume_scheduler"):
    def command(self, call: Call) -> c.ResumeScheduler:
        return c.ResumeScheduler(now=0.0, reason=self.reason, **self.who(call))


@operation(role="operator")
class DrainScheduler(Request[DrainResult], tag="drain_scheduler"):
    """Pause the scheduler (if it is not already) and wait until no lease is active or
    ``timeout`` seconds pass (30 when not given); the scheduler stays paused."""

    timeout: float | None = None
    reason: str | None = None

    def long(self) -> bool:
        return True

    def patience(self) -> float | None:
        return DEFAULT_DRAIN_TIMEOUT if self.timeout is None else self.timeout

    def command(self, call: Call) -> c.StartDrain:
        return c.StartDrain(now=0.0, reason=self.reason or "drain", **self.who(call))

    async def execute(self, call: Call) -> DrainResult:
        timeout = DEFAULT_DRAIN_TIMEOUT if self.timeout is None else self.timeout
        check_timeout(timeout)
        return await call.runtime.drain(self.command(call), timeout)


@operation(role="reader", read=True)
class GetSchedulerStatus(ReadRequest[SchedulerStatus], tag="scheduler_status"):
    def answer(self, call: Call) -> SchedulerStatus:
        return call.runtime.scheduler_status()


@operation(role="reader", read=True)
class GetBacklog(ReadRequest[Backlog], tag="backlog"):
    """One page of queued runs with their task (claimable and held back), by run id."""

    workspace: str | None = None
    include_paused: bool = True
    after: str | None = None
    limit: int | None = None

    def answer(self, call: Call) -> Backlog:
        return call.runtime.backlog(
            workspace=self.workspace,
            include_paused=self.include_paused,
            after=self.after,
            limit=min(page_limit(self.limit), BACKLOG_MAX_PAGE),
        )


@operation(role="reader", read=True)
class GetOverview(ReadRequest[Overview], tag="overview"):
    """What an operator watches: counts, queue depth by workspace and priority, the
    ``limit`` leases that run out first and the most recently active live sessions
    (50 of each when not given)."""

    limit: int | None = None

    def answer(self, call: Call) -> Overview:
        return call.runtime.overview(
            limit=DEFAULT_OVERVIEW_ROWS if self.limit is None else self.limit
        )


# ------------------------------------------------------------------------------ HZL verbs
@operation(role="agent")
class CheckpointTask(SessionRequest[Task], tag="checkpoint"):
    """Record a progress note in the task's history (as the session when there is one).
    It counts as progress for ``stuck``; it does not extend a lease."""

    task_id: str
    note: str
    author: str | None = None

    def command(self, call: Call) -> c.CheckpointTask:
        return c.CheckpointTask(
            now=0.0, task_id=self.task_id, note=self.note, author=self.author, **self.who(call)
        )


@operation(role="reader", read=True)
class ListStuck(ReadRequest[StuckList], tag="stuck"):
    """Leased runs whose lease ran out, then those without a heartbeat or checkpoint for
    more than ``threshold`` seconds (600 when not given)."""

    threshold: float | None = None

    def answer(self, call: Call) -> StuckList:
        threshold = DEFAULT_STUCK_THRESHOLD if self.threshold is None else self.threshold
        return StuckList(call.runtime.stuck(threshold=threshold), threshold)


@operation(role="agent", session=True)
class StealRun(SessionRequest[Claim], tag="steal"):
    """Give the task's current run to the session under a new lease.

    Without ``force`` (``--if-expired``) only while its lease has run out (or the clock
    requeued it after an expiry and nobody claimed it since), else LEASE_NOT_EXPIRED; the
    check and the hand-over are one step. ``force`` takes a live lease too: an operator
    action, refused for a session actor with FORBIDDEN_OPERATOR_ACTION unless the host
    allows agents to force.
    """

    task_id: str
    force: bool = False
    lease_seconds: float | None = None
    reason: str | None = None

    def command(self, call: Call) -> c.StealRun:
        return c.StealRun(
            now=0.0,
            task_id=self.task_id,
            session_id=call.session_id(),
            claim_token_hash=call.runtime.new_claim_hash(),
            force=self.force,
            lease_seconds=self.lease_seconds,
            reason=self.reason,
            **self.who(call),
        )


@operation(role="reader", read=True)
class GetTimeline(ReadRequest[EventPage], tag="timeline"):
    """One page of a task's events after ``after_seq``, oldest first, from its whole
    retained history."""

    task_id: str
    after_seq: int = 0
    limit: int | None = None

    def answer(self, call: Call) -> EventPage:
        if self.after_seq < 0:
            raise InvalidInput("after_seq must be zero or positive")
        limit = page_limit(self.limit)
        events = call.runtime.timeline(self.task_id, after_seq=self.after_seq, limit=limit + 1)
        return page(events, limit, _event_page)


@operation(role="reader", read=True)
class InspectTask(ReadRequest[InspectView], tag="inspect_task"):
    """Current run, bound session, recent runs and events (claim hashes as 8-hex
    prefixes), ``diagnostics`` each with its remedy, and the ``next_action``."""

    task_id: str

    def answer(self, call: Call) -> InspectView:
        return call.runtime.inspect_task(self.task_id)


@operation(role="reader", read=True)
class InspectRun(ReadRequest[InspectView], tag="inspect_run"):
    """Inspect of the run's task, with this run as the target and only its events."""

    run_id: str

    def answer(self, call: Call) -> InspectView:
        return call.runtime.inspect_run(self.run_id)


@operation(role="reader", session=True, read=True)
class GetContext(SessionRequest[ContextBundle], tag="get_context"):
    """The context bundle of a run, for the session holding its lease: the task, the run,
    earlier attempts, last checkpoints, recent events and limits, within a byte bound."""

    run_id: str

    async def execute(self, call: Call) -> ContextBundle:
        return await call.runtime.read(
            lambda: call.runtime.context_bundle(call.session_id(), self.run_id)
        )


@operation(role="reader", read=True)
class GetStatus(ReadRequest[ServerStatus], tag="status"):
    """Counts of the runtime, and of the server when asked over the socket."""

    def answer(self, call: Call) -> ServerStatus:
        return call.status()


# -------------------------------------------------------------------------------- hooks
@operation(role="operator", read=True)
class ListHookDeliveries(Request[HookReport], tag="hook_list"):
    """The configured hooks and their deliveries, newest first, filtered by ``status``
    (pending, delivered, failed) and ``hook`` (a hook's name)."""

    status: DeliveryStatus | None = None
    hook: str | None = None
    limit: int | None = None

    async def execute(self, call: Call) -> HookReport:
        return call.runtime.hooks.report(status=self.status, hook=self.hook, limit=self.limit)


@operation(role="operator")
class RetryHookDelivery(Request[HookDelivery], tag="hook_retry"):
    """Send a failed delivery again (a new round of attempts); answers it, now pending."""

    delivery_id: str

    async def execute(self, call: Call) -> HookDelivery:
        return call.runtime.hooks.retry(self.delivery_id)


# ------------------------------------------------------------------------------- tokens
@operation(role="operator")
class CreateToken(Request[IssuedToken], tag="create_token"):
    """Make an access token for ``role``; the answer holds its secret, shown only here."""

    name: str
    role: Role
    ttl: float | None = None

    async def execute(self, call: Call) -> IssuedToken:
        secret, secret_hash = call.runtime.new_access_token()
        token: AccessToken = await call.runtime.submit(
            c.CreateToken(
                now=0.0,
                token_id=call.runtime.new_id("tok"),
                name=self.name,
                role=self.role,
                token_hash=secret_hash,
                ttl_seconds=self.ttl,
                **self.who(call),
            )
        )
        return IssuedToken(token, secret)


@operation(role="operator")
class RevokeToken(Request[AccessToken], tag="revoke_token"):
    """Revoke a token by id, or by the name of a live one; its connections are refused
    from their next request on."""

    token: str

    def command(self, call: Call) -> c.RevokeToken:
        return c.RevokeToken(now=0.0, ref=self.token, **self.who(call))


@operation(role="operator", read=True)
class ListTokens(ReadRequest[TokenList], tag="list_tokens"):
    """Every token, oldest first, with its role and state (never a secret)."""

    def answer(self, call: Call) -> TokenList:
        return TokenList(call.runtime.access_tokens())


# ------------------------------------------------------------------------------- helpers
def strings(values: Iterable[str], field: str) -> list[str]:
    """A list of strings from any iterable of them; one string is a mistake, not a list."""
    if isinstance(values, str):
        raise InvalidInput(f"{field} must be a list of strings, not one string")
    return list(values)


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise InvalidInput(f"timeout must be zero or positive seconds, got {timeout!r}")


def page_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    return min(limit, MAX_PAGE)


def page(items: Sequence[T], limit: int, make: Callable[[list[T], bool], R]) -> R:
    """Up to ``limit`` items in one page, fewer if that many would not fit in a frame."""
    count = min(len(items), limit)
    while True:
        result = make(list(items[:count]), count < len(items))
        if count <= 1 or len(msgspec.msgpack.encode(result)) <= MAX_PAGE_BYTES:
            return result
        count //= 2


class _Cursor(NamedTuple):
    id: str | None


def _last(items: Sequence[Task] | Sequence[Session], more: bool) -> _Cursor:
    """The cursor that continues a page: the last id when more follow, else None."""
    return _Cursor(items[-1].id if more and items else None)


def _event_page(events: list[Event], more: bool) -> EventPage:
    return EventPage(events, events[-1].seq if more and events else None)
