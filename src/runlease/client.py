"""Talk to a runlease server over its Unix socket, from programs that do not embed it.

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
"""

from __future__ import annotations

import errno
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from runlease import protocol as p
from runlease.core.model import (
    ApprovalPolicy,
    BulkResult,
    Claim,
    Event,
    Finished,
    Heartbeat,
    Ownership,
    Priority,
    RetryResult,
    Run,
    Scope,
    Session,
    SessionReleased,
    Task,
    TaskStatus,
)
from runlease.core.views import Backlog, DrainResult, InspectView, SchedulerStatus, StuckRun
from runlease.errors import (
    SERVER_UNAVAILABLE,
    InternalError,
    RunleaseError,
    Unavailable,
    error_for_code,
)
from runlease.paths import default_socket_path

if TYPE_CHECKING:
    from runlease.runtime.client import AsyncClient, open_client

CLIENT_NAME: Final = "runlease-python"
RECEIVE_BYTES: Final = 64 * 1024
# How long drain_scheduler waits on the server when no timeout is given (its default).
DEFAULT_DRAIN_WAIT: Final = 30.0
# Backoff between connect attempts while the server's listen backlog is full.
RETRY_FIRST_DELAY: Final = 0.001
RETRY_MAX_DELAY: Final = 0.05
# A connect that may succeed if tried again: the backlog is full (EAGAIN), or a signal
# interrupted it. ECONNREFUSED is not among them: on a Unix socket it means nobody listens.
RETRYABLE_CONNECT_ERRORS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})

R = TypeVar("R", bound=p.Reply)


# ------------------------------------------------------------- shared by both clients
def resolve_socket(path: str | os.PathLike[str] | None) -> Path:
    """The socket to use: ``path``, else $RUNLEASE_SOCKET, else the default data dir's."""
    return Path(path).expanduser() if path is not None else default_socket_path()


def unreachable(path: Path, exc: BaseException | str) -> Unavailable:
    reason = exc if isinstance(exc, str) else (getattr(exc, "strerror", None) or str(exc))
    return Unavailable(
        f"cannot reach the runlease server at {path}: {reason}; is `runlease serve` running "
        "with this socket (--socket or RUNLEASE_SOCKET)?",
        code=SERVER_UNAVAILABLE,
    )


class ConnectBackoff:
    """When to try a connect again, shared by both clients.

    A server busy accepting a burst of clients has a full listen backlog, and a connect
    then fails with EAGAIN at once. That is worth retrying, with a jittered delay doubling
    from 1 ms to 50 ms (so a crowd does not retry in lockstep), until ``timeout`` seconds
    from the first attempt; any other error is final.
    """

    def __init__(
        self,
        path: Path,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.attempts = 0
        self._clock = clock
        self._jitter = jitter
        self._deadline = clock() + timeout
        self._delay = RETRY_FIRST_DELAY

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
        delay = self._delay * (0.5 + self._jitter())
        self._delay = min(self._delay * 2, RETRY_MAX_DELAY)
        return min(delay, left)


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


def closed_by_server(path: Path) -> Unavailable:
    return Unavailable(
        f"the runlease server at {path} closed the connection", code=SERVER_UNAVAILABLE
    )


def check_reply(reply: p.AnyReply, expected: type[R]) -> R:
    """The reply if it has the expected type; its error if it is one; else a bug."""
    if isinstance(reply, expected):
        return reply
    if isinstance(reply, p.ErrorReply):
        raise error_for_code(reply.code, reply.message)
    raise InternalError(
        f"the server answered {type(reply).__name__} where {expected.__name__} was expected"
    )


def hello(rid: int, client: str = CLIENT_NAME) -> p.Hello:
    return p.Hello(id=rid, versions=list(p.SUPPORTED_VERSIONS), client=client)


# ------------------------------------------------------------------------ sync client
class Client:
    """A synchronous connection to a runlease server. Not safe to share between threads.

    ``session_token`` is used by the session-scoped calls (claim_next, heartbeat, complete,
    fail, release, block, whoami) unless a call passes its own ``token``. ``reply_timeout``
    bounds how long a call waits for its reply (None: forever); a waiting claim gets its own
    timeout on top, and a followed event stream waits as long as it is read.

    If the server closed the connection while no call was running (it closes idle ones),
    the next call connects again by itself. A connect retries for ``connect_timeout``
    seconds while the server's queue of new connections is full.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        session_token: str | None = None,
        connect_timeout: float = 5.0,
        reply_timeout: float | None = None,
        client_name: str = CLIENT_NAME,
    ) -> None:
        self.path = resolve_socket(path)
        self.client_name = client_name
        self.session_token = session_token
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.welcome: p.Welcome | None = None
        self._sock: socket.socket | None = None
        self._buffer = p.FrameBuffer()
        self._next_id = 1
        self._broken: RunleaseError | None = None

    # ------------------------------------------------------------------ connection
    def connect(self) -> Client:
        if self._sock is not None:
            return self
        self._sock = connect_unix(self.path, self.connect_timeout)
        self._buffer = p.FrameBuffer()
        self.welcome = None
        try:
            self.welcome = self._call(hello(self._take_id(), self.client_name), p.Welcome)
        except BaseException:
            self.close()
            raise
        return self

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
            self.connect()
        assert self._sock is not None
        return self._sock

    def _send(self, request: p.Request) -> None:
        frame = p.encode_frame(request)
        if self.welcome is not None and self._sock is not None and self._closed_between_calls():
            # Nothing was pending on the old connection, so nothing is lost: start afresh.
            self.close()
        sock = self._socket()
        try:
            sock.sendall(frame)
        except OSError as exc:
            raise self._break(unreachable(self.path, exc)) from None

    def _closed_between_calls(self) -> bool:
        """Whether the server closed this connection while no call was running on it (an
        idle timeout, a restart); reads what already arrived without waiting."""
        sock = self._sock
        assert sock is not None
        timeout = sock.gettimeout()
        sock.settimeout(0.0)  # with a timeout, recv would first wait for data
        try:
            while True:
                try:
                    data = sock.recv(RECEIVE_BYTES)
                except (BlockingIOError, InterruptedError):
                    return False  # still open, nothing more to read now
                except OSError:
                    return True
                if not data:
                    return True
                # Late replies to abandoned requests are skipped by the next call as
                # usual; a closing notice (CONNECTION_TIMEOUT) comes with the end of
                # the stream.
                self._buffer.feed(data)
        finally:
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
                sock.settimeout(timeout)
                data = sock.recv(RECEIVE_BYTES)
            except TimeoutError:
                raise self._break(
                    unreachable(self.path, f"no reply within {timeout} seconds")
                ) from None
            except OSError as exc:
                raise self._break(unreachable(self.path, exc)) from None
            if not data:
                raise self._break(closed_by_server(self.path))
            self._buffer.feed(data)

    def _receive_for(self, rid: int, timeout: float | None = None) -> p.AnyReply:
        while True:
            reply = self._receive(timeout)
            if reply.id == rid:
                return reply
            # A late reply to something abandoned earlier (a cancelled stream): skip it.

    def _call(self, request: p.Request, expected: type[R], *, wait: float | None = 0.0) -> R:
        """Send, then wait for the reply: ``reply_timeout`` plus ``wait`` (None: forever)."""
        self._send(request)
        timeout = None if wait is None or self.reply_timeout is None else self.reply_timeout + wait
        return check_reply(self._receive_for(request.id, timeout), expected)

    def _token(self, token: str | None) -> str | None:
        return token if token is not None else self.session_token

    # ---------------------------------------------------------------------- status
    def status(self) -> p.ServerStatus:
        return self._call(p.GetStatus(id=self._take_id()), p.StatusReply).status

    # ----------------------------------------------------------------------- tasks
    def create_task(
        self,
        title: str,
        *,
        description: str = "",
        priority: Priority = "medium",
        workspace: str | None = None,
        scope: Scope | None = None,
        max_attempts: int | None = None,
        metadata: dict[str, Any] | None = None,
        capabilities: Iterable[str] = (),
        start: bool = False,
        parent: str | None = None,
        preferred_capabilities: Iterable[str] = (),
        owner: Ownership | None = None,
        draft: bool = False,
        approval_policy: ApprovalPolicy = "none",
        required_artifacts: Iterable[str] = (),
    ) -> Task:
        request = p.CreateTask(
            id=self._take_id(),
            title=title,
            description=description,
            priority=priority,
            workspace=workspace,
            scope=scope,
            max_attempts=max_attempts,
            metadata=metadata,
            capabilities=_strings(capabilities),
            start=start,
            parent=parent,
            preferred_capabilities=_strings(preferred_capabilities),
            owner=owner,
            draft=draft,
            approval_policy=approval_policy,
            required_artifacts=_strings(required_artifacts),
        )
        return self._call(request, p.TaskReply).task

    def start_task(self, task_id: str, *, idempotency_key: str | None = None) -> Run:
        """Enqueue the task's next run; a repeated ``idempotency_key`` returns the same run."""
        request = p.StartTask(id=self._take_id(), task_id=task_id, idempotency_key=idempotency_key)
        return self._call(request, p.RunReply).run

    def show_task(self, task_id: str) -> p.TaskDetail:
        """The task and all its runs, oldest first."""
        return self._call(p.ShowTask(id=self._take_id(), task_id=task_id), p.TaskDetail)

    def get_task(self, task_id: str) -> Task:
        return self.show_task(task_id).task

    def get_run(self, run_id: str) -> Run:
        return self._call(p.GetRun(id=self._take_id(), run_id=run_id), p.RunReply).run

    def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        workspace: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """Tasks in creation order; every page of them when ``limit`` is None."""
        out: list[Task] = []
        cursor = after
        while True:
            want = None if limit is None else limit - len(out)
            page = self._call(
                p.ListTasks(
                    id=self._take_id(), status=status, workspace=workspace, after=cursor, limit=want
                ),
                p.TaskList,
            )
            out.extend(page.tasks)
            cursor = page.next_after
            if cursor is None or (limit is not None and len(out) >= limit):
                return out

    def events(self, *, task_id: str | None = None, after_seq: int = 0) -> list[Event]:
        """Events the server still holds after ``after_seq``, oldest first."""
        out: list[Event] = []
        cursor: int | None = after_seq
        while cursor is not None:
            page = self._call(
                p.ListEvents(id=self._take_id(), task_id=task_id, after_seq=cursor), p.EventList
            )
            out.extend(page.events)
            cursor = page.next_after_seq
        return out

    @contextmanager
    def follow_events(
        self, *, task_id: str | None = None, after_seq: int = 0
    ) -> Iterator[Iterator[Event]]:
        """Buffered events after ``after_seq``, then live ones, until the block exits::

        with client.follow_events(task_id=t) as events:
            for event in events: ...
        """
        rid = self._take_id()
        self._send(p.FollowEvents(id=rid, task_id=task_id, after_seq=after_seq))
        stream = _EventStream(self, rid)
        try:
            yield stream
        finally:
            if not stream.ended and self._broken is None and self._sock is not None:
                stream.cancel()

    # -------------------------------------------------------------------- sessions
    def open_session(
        self,
        *,
        agent: str = "agent",
        parent: str | None = None,
        ttl: float | None = None,
        capabilities: Iterable[str] = (),
        auto_stop_on_parent: bool = True,
    ) -> tuple[Session, str]:
        """Open a session; returns it and its bearer token (shown only this once)."""
        reply = self._call(
            p.OpenSession(
                id=self._take_id(),
                agent=agent,
                parent=parent,
                ttl=ttl,
                capabilities=_strings(capabilities),
                auto_stop_on_parent=auto_stop_on_parent,
            ),
            p.SessionOpened,
        )
        return reply.session, reply.token

    def stop_session(self, session_id: str, *, reason: str | None = None) -> SessionReleased:
        request = p.StopSession(id=self._take_id(), session_id=session_id, reason=reason)
        return self._call(request, p.SessionReleasedReply).released

    def get_session(self, session_id: str) -> Session:
        request = p.GetSession(id=self._take_id(), session_id=session_id)
        return self._call(request, p.SessionReply).session

    def list_sessions(self, *, live_only: bool = False) -> list[Session]:
        out: list[Session] = []
        cursor: str | None = None
        while True:
            page = self._call(
                p.ListSessions(id=self._take_id(), live_only=live_only, after=cursor),
                p.SessionList,
            )
            out.extend(page.sessions)
            cursor = page.next_after
            if cursor is None:
                return out

    def whoami(self, *, token: str | None = None) -> Session:
        """The session the token belongs to."""
        request = p.WhoAmI(id=self._take_id(), token=self._token(token))
        return self._call(request, p.SessionReply).session

    # ---------------------------------------------------------------------- leases
    def claim_next(
        self,
        *,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Scope | None = None,
        priority_min: str | int | None = None,
        token: str | None = None,
    ) -> Claim:
        request = p.ClaimNext(
            id=self._take_id(),
            token=self._token(token),
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )
        # A waiting claim may legitimately take as long as its own timeout.
        extra = 0.0 if not wait else timeout
        return self._call(request, p.ClaimReply, wait=extra).claim

    def heartbeat(
        self, run_id: str, *, lease_seconds: float | None = None, token: str | None = None
    ) -> Heartbeat:
        request = p.HeartbeatRun(
            id=self._take_id(),
            token=self._token(token),
            run_id=run_id,
            lease_seconds=lease_seconds,
        )
        return self._call(request, p.HeartbeatReply).heartbeat

    def complete(self, run_id: str, *, result: Any = None, token: str | None = None) -> Run:
        request = p.CompleteRun(
            id=self._take_id(), token=self._token(token), run_id=run_id, result=result
        )
        return self._call(request, p.RunReply).run

    def fail(
        self,
        run_id: str,
        *,
        error: str,
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> Run:
        request = p.FailRun(
            id=self._take_id(),
            token=self._token(token),
            run_id=run_id,
            error=error,
            metadata=metadata,
        )
        return self._call(request, p.RunReply).run

    def release(self, run_id: str, *, reason: str | None = None, token: str | None = None) -> Run:
        request = p.ReleaseRun(
            id=self._take_id(), token=self._token(token), run_id=run_id, reason=reason
        )
        return self._call(request, p.RunReply).run

    def block(self, run_id: str, *, reason: str, token: str | None = None) -> Run:
        request = p.BlockRun(
            id=self._take_id(), token=self._token(token), run_id=run_id, reason=reason
        )
        return self._call(request, p.RunReply).run

    # ------------------------------------------- task graph and operator controls
    def publish_task(self, task_id: str, *, start: bool = True) -> Task:
        """Publish a draft; with ``start`` (and no manual approval) enqueue its run."""
        request = p.PublishTask(id=self._take_id(), task_id=task_id, start=start)
        return self._call(request, p.TaskReply).task

    def approve_task(self, task_id: str) -> Run:
        """Approve a task awaiting manual approval; returns the run it enqueued."""
        request = p.ApproveTask(id=self._take_id(), task_id=task_id)
        return self._call(request, p.RunReply).run

    def reject_task(self, task_id: str, *, reason: str | None = None) -> Task:
        request = p.RejectTask(id=self._take_id(), task_id=task_id, reason=reason)
        return self._call(request, p.TaskReply).task

    def update_task(self, task_id: str, changes: Mapping[str, Any]) -> Task:
        """Change mutable fields; an immutable one raises IMMUTABLE_FIELD."""
        request = p.UpdateTask(id=self._take_id(), task_id=task_id, changes=dict(changes))
        return self._call(request, p.TaskReply).task

    def delete_task(self, task_id: str) -> Task:
        request = p.DeleteTask(id=self._take_id(), task_id=task_id)
        return self._call(request, p.TaskReply).task

    def add_dependency(self, task_id: str, blocked_by: str) -> Task:
        """``task_id`` waits until ``blocked_by`` completes."""
        request = p.AddDependency(id=self._take_id(), task_id=task_id, blocked_by=blocked_by)
        return self._call(request, p.TaskReply).task

    def remove_dependency(self, task_id: str, blocked_by: str) -> Task:
        request = p.RemoveDependency(id=self._take_id(), task_id=task_id, blocked_by=blocked_by)
        return self._call(request, p.TaskReply).task

    def pause_task(self, task_id: str, *, reason: str) -> Task:
        request = p.PauseTask(id=self._take_id(), task_id=task_id, reason=reason)
        return self._call(request, p.TaskReply).task

    def resume_task(self, task_id: str) -> Task:
        request = p.ResumeTask(id=self._take_id(), task_id=task_id)
        return self._call(request, p.TaskReply).task

    def cancel_task(self, task_id: str, *, reason: str | None = None) -> Task:
        request = p.CancelTask(id=self._take_id(), task_id=task_id, reason=reason)
        return self._call(request, p.TaskReply).task

    def cancel_run(self, run_id: str, *, reason: str | None = None) -> Run:
        request = p.CancelRun(id=self._take_id(), run_id=run_id, reason=reason)
        return self._call(request, p.RunReply).run

    def retry_run(self, run_id: str) -> RetryResult:
        request = p.RetryRun(id=self._take_id(), run_id=run_id)
        return self._call(request, p.RetryReply).result

    def force_release(self, run_id: str, *, reason: str) -> Run:
        request = p.ForceReleaseRun(id=self._take_id(), run_id=run_id, reason=reason)
        return self._call(request, p.RunReply).run

    def force_fail(self, run_id: str, *, reason: str) -> Run:
        request = p.ForceFailRun(id=self._take_id(), run_id=run_id, reason=reason)
        return self._call(request, p.RunReply).run

    def bulk_force_release(self, run_ids: Iterable[str], *, reason: str) -> BulkResult:
        request = p.BulkForceRuns(
            id=self._take_id(), action="release", run_ids=_strings(run_ids), reason=reason
        )
        return self._call(request, p.BulkReply).result

    def bulk_force_fail(self, run_ids: Iterable[str], *, reason: str) -> BulkResult:
        request = p.BulkForceRuns(
            id=self._take_id(), action="fail", run_ids=_strings(run_ids), reason=reason
        )
        return self._call(request, p.BulkReply).result

    def pause_scheduler(self, *, reason: str | None = None) -> SchedulerStatus:
        request = p.PauseScheduler(id=self._take_id(), reason=reason)
        return self._call(request, p.SchedulerReply).scheduler

    def resume_scheduler(self, *, reason: str | None = None) -> SchedulerStatus:
        request = p.ResumeScheduler(id=self._take_id(), reason=reason)
        return self._call(request, p.SchedulerReply).scheduler

    def drain_scheduler(
        self, *, timeout: float | None = None, reason: str | None = None
    ) -> DrainResult:
        """Pause the scheduler and wait until no lease is active or ``timeout`` seconds pass."""
        request = p.DrainScheduler(id=self._take_id(), timeout=timeout, reason=reason)
        wait = DEFAULT_DRAIN_WAIT if timeout is None else timeout
        return self._call(request, p.DrainReply, wait=wait).drain

    def scheduler_status(self) -> SchedulerStatus:
        return self._call(p.GetSchedulerStatus(id=self._take_id()), p.SchedulerReply).scheduler

    def backlog(
        self,
        *,
        workspace: str | None = None,
        include_paused: bool = True,
        after: str | None = None,
        limit: int | None = None,
    ) -> Backlog:
        """One page of queued runs with their task; page on with ``next_after``."""
        request = p.GetBacklog(
            id=self._take_id(),
            workspace=workspace,
            include_paused=include_paused,
            after=after,
            limit=limit,
        )
        return self._call(request, p.BacklogReply).backlog

    def checkpoint(
        self, task_id: str, note: str, *, author: str | None = None, token: str | None = None
    ) -> Task:
        """Add a progress note to the task's history (as the session when a token is at hand)."""
        request = p.CheckpointTask(
            id=self._take_id(),
            token=self._token(token),
            task_id=task_id,
            note=note,
            author=author,
        )
        return self._call(request, p.TaskReply).task

    def stuck(self, *, threshold: float | None = None) -> list[StuckRun]:
        """Expired leases, then leased runs idle (no heartbeat or checkpoint) past ``threshold``."""
        reply = self._call(p.ListStuck(id=self._take_id(), threshold=threshold), p.StuckReply)
        return reply.runs

    def steal(
        self,
        task_id: str,
        *,
        force: bool = False,
        lease_seconds: float | None = None,
        reason: str | None = None,
        token: str | None = None,
    ) -> Claim:
        """Take the task's current run for this session: only if its lease ran out, or ``force``."""
        request = p.StealRun(
            id=self._take_id(),
            token=self._token(token),
            task_id=task_id,
            force=force,
            lease_seconds=lease_seconds,
            reason=reason,
        )
        return self._call(request, p.ClaimReply).claim

    def timeline(self, task_id: str, *, after_seq: int = 0) -> list[Event]:
        """The task's retained events after ``after_seq``, oldest first."""
        out: list[Event] = []
        cursor: int | None = after_seq
        while cursor is not None:
            page = self._call(
                p.GetTimeline(id=self._take_id(), task_id=task_id, after_seq=cursor), p.EventList
            )
            out.extend(page.events)
            cursor = page.next_after_seq
        return out

    def inspect_task(self, task_id: str) -> InspectView:
        request = p.InspectTask(id=self._take_id(), task_id=task_id)
        return self._call(request, p.InspectReply).view

    def inspect_run(self, run_id: str) -> InspectView:
        request = p.InspectRun(id=self._take_id(), run_id=run_id)
        return self._call(request, p.InspectReply).view

    # ------------------------------------------------------- finish, then claim
    def complete_and_next(
        self,
        run_id: str,
        *,
        result: Any = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Scope | None = None,
        priority_min: str | int | None = None,
        token: str | None = None,
    ) -> Finished:
        """Complete the run and claim the session's next one in one round trip.

        A refused finish raises its error and claims nothing. Otherwise the result holds
        the finished run and either ``claim`` or ``no_claim`` (why nothing was claimed,
        normally NO_CLAIMABLE_RUN): finding nothing is not an error.
        """
        next_claim = p.NextClaim(
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )
        request = p.CompleteRun(
            id=self._take_id(),
            token=self._token(token),
            run_id=run_id,
            result=result,
            next=next_claim,
        )
        return self._finish(request, next_claim)

    def fail_and_next(
        self,
        run_id: str,
        *,
        error: str,
        metadata: dict[str, Any] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Scope | None = None,
        priority_min: str | int | None = None,
        token: str | None = None,
    ) -> Finished:
        """Fail the run and claim the session's next one (see :meth:`complete_and_next`)."""
        next_claim = p.NextClaim(
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )
        request = p.FailRun(
            id=self._take_id(),
            token=self._token(token),
            run_id=run_id,
            error=error,
            metadata=metadata,
            next=next_claim,
        )
        return self._finish(request, next_claim)

    def release_and_next(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Scope | None = None,
        priority_min: str | int | None = None,
        token: str | None = None,
    ) -> Finished:
        """Release the run and claim the session's next one (see :meth:`complete_and_next`)."""
        next_claim = p.NextClaim(
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )
        request = p.ReleaseRun(
            id=self._take_id(),
            token=self._token(token),
            run_id=run_id,
            reason=reason,
            next=next_claim,
        )
        return self._finish(request, next_claim)

    def _finish(self, request: p.Request, next_claim: p.NextClaim) -> Finished:
        extra = 0.0 if not next_claim.wait else next_claim.timeout
        return self._call(request, p.FinishedReply, wait=extra).finished


class _EventStream:
    """The iterator behind :meth:`Client.follow_events`."""

    def __init__(self, client: Client, rid: int) -> None:
        self._client = client
        self._rid = rid
        self.ended = False

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self.ended:
            raise StopIteration
        reply = self._client._receive_for(self._rid)
        if isinstance(reply, p.EventItem):
            return reply.event
        self.ended = True
        if isinstance(reply, p.StreamEnd):
            raise StopIteration
        check_reply(reply, p.EventItem)  # raises the error the server sent
        raise StopIteration  # pragma: no cover

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
    path: str | os.PathLike[str] | None = None, *, session_token: str | None = None
) -> Client:
    """A connected :class:`Client` (close it, or use ``with``)."""
    return Client(path, session_token=session_token).connect()


def _strings(values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise TypeError("pass a list of strings, not one string")
    return list(values)


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
    "check_reply",
    "connect",
    "open_client",
    "resolve_socket",
    "unreachable",
]
