"""The trio client: ``async with open_client(path) as client``.

Same methods as the synchronous :class:`runlease.client.Client`, as coroutines. Calls from
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
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar

import trio

from runlease import protocol as p
from runlease.client import (
    ConnectBackoff,
    check_reply,
    closed_by_server,
    hello,
    resolve_socket,
    unreachable,
)
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
from runlease.errors import InternalError, RunleaseError, error_for_code

R = TypeVar("R", bound=p.Reply)

RECEIVE_BYTES: Final = 64 * 1024
STREAM_BUFFER: Final = 256
CANCEL_GRACE: Final = 1.0


class AsyncClient:
    """One connection to a runlease server. Create it with :func:`open_client`."""

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

    def _token(self, token: str | None) -> str | None:
        return token if token is not None else self.session_token

    async def _reader(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        buffer = p.FrameBuffer()
        failure: RunleaseError = closed_by_server(self.path)
        try:
            while True:
                try:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failure = unreachable(self.path, exc)
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

    async def _send(self, request: p.Request) -> None:
        frame = p.encode_frame(request)
        try:
            async with self._send_lock:
                await self._stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._failure or unreachable(self.path, exc) from None

    async def _next_reply(self, receive: trio.MemoryReceiveChannel[p.AnyReply]) -> p.AnyReply:
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            raise self._failure or closed_by_server(self.path) from None

    async def _call(self, request: p.Request, expected: type[R]) -> R:
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
        return check_reply(reply, expected)

    async def _cancel_remote(self, target: int) -> None:
        with trio.move_on_after(CANCEL_GRACE) as scope:
            scope.shield = True
            with suppress(RunleaseError):
                await self._send(p.Cancel(id=self._take_id(), target=target))

    async def _handshake(self) -> None:
        self.welcome = await self._call(hello(self._take_id()), p.Welcome)

    # -------------------------------------------------------------------- status
    async def status(self) -> p.ServerStatus:
        return (await self._call(p.GetStatus(id=self._take_id()), p.StatusReply)).status

    # --------------------------------------------------------------------- tasks
    async def create_task(
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
        return (await self._call(request, p.TaskReply)).task

    async def start_task(self, task_id: str, *, idempotency_key: str | None = None) -> Run:
        """Enqueue the task's next run; a repeated ``idempotency_key`` returns the same run."""
        request = p.StartTask(id=self._take_id(), task_id=task_id, idempotency_key=idempotency_key)
        return (await self._call(request, p.RunReply)).run

    async def show_task(self, task_id: str) -> p.TaskDetail:
        return await self._call(p.ShowTask(id=self._take_id(), task_id=task_id), p.TaskDetail)

    async def get_task(self, task_id: str) -> Task:
        return (await self.show_task(task_id)).task

    async def get_run(self, run_id: str) -> Run:
        return (await self._call(p.GetRun(id=self._take_id(), run_id=run_id), p.RunReply)).run

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        workspace: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        out: list[Task] = []
        cursor = after
        while True:
            want = None if limit is None else limit - len(out)
            page = await self._call(
                p.ListTasks(
                    id=self._take_id(), status=status, workspace=workspace, after=cursor, limit=want
                ),
                p.TaskList,
            )
            out.extend(page.tasks)
            cursor = page.next_after
            if cursor is None or (limit is not None and len(out) >= limit):
                return out

    async def events(self, *, task_id: str | None = None, after_seq: int = 0) -> list[Event]:
        out: list[Event] = []
        cursor: int | None = after_seq
        while cursor is not None:
            page = await self._call(
                p.ListEvents(id=self._take_id(), task_id=task_id, after_seq=cursor), p.EventList
            )
            out.extend(page.events)
            cursor = page.next_after_seq
        return out

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

    # ------------------------------------------------------------------ sessions
    async def open_session(
        self,
        *,
        agent: str = "agent",
        parent: str | None = None,
        ttl: float | None = None,
        capabilities: Iterable[str] = (),
        auto_stop_on_parent: bool = True,
    ) -> tuple[Session, str]:
        reply = await self._call(
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

    async def stop_session(self, session_id: str, *, reason: str | None = None) -> SessionReleased:
        request = p.StopSession(id=self._take_id(), session_id=session_id, reason=reason)
        return (await self._call(request, p.SessionReleasedReply)).released

    async def get_session(self, session_id: str) -> Session:
        request = p.GetSession(id=self._take_id(), session_id=session_id)
        return (await self._call(request, p.SessionReply)).session

    async def list_sessions(self, *, live_only: bool = False) -> list[Session]:
        out: list[Session] = []
        cursor: str | None = None
        while True:
            page = await self._call(
                p.ListSessions(id=self._take_id(), live_only=live_only, after=cursor),
                p.SessionList,
            )
            out.extend(page.sessions)
            cursor = page.next_after
            if cursor is None:
                return out

    async def whoami(self, *, token: str | None = None) -> Session:
        request = p.WhoAmI(id=self._take_id(), token=self._token(token))
        return (await self._call(request, p.SessionReply)).session

    # -------------------------------------------------------------------- leases
    async def claim_next(
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
        return (await self._call(request, p.ClaimReply)).claim

    async def heartbeat(
        self, run_id: str, *, lease_seconds: float | None = None, token: str | None = None
    ) -> Heartbeat:
        request = p.HeartbeatRun(
            id=self._take_id(),
            token=self._token(token),
            run_id=run_id,
            lease_seconds=lease_seconds,
        )
        return (await self._call(request, p.HeartbeatReply)).heartbeat

    async def complete(self, run_id: str, *, result: Any = None, token: str | None = None) -> Run:
        request = p.CompleteRun(
            id=self._take_id(), token=self._token(token), run_id=run_id, result=result
        )
        return (await self._call(request, p.RunReply)).run

    async def fail(
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
        return (await self._call(request, p.RunReply)).run

    async def release(
        self, run_id: str, *, reason: str | None = None, token: str | None = None
    ) -> Run:
        request = p.ReleaseRun(
            id=self._take_id(), token=self._token(token), run_id=run_id, reason=reason
        )
        return (await self._call(request, p.RunReply)).run

    async def block(self, run_id: str, *, reason: str, token: str | None = None) -> Run:
        request = p.BlockRun(
            id=self._take_id(), token=self._token(token), run_id=run_id, reason=reason
        )
        return (await self._call(request, p.RunReply)).run

    # ------------------------------------------- task graph and operator controls
    async def publish_task(self, task_id: str, *, start: bool = True) -> Task:
        """Publish a draft; with ``start`` (and no manual approval) enqueue its run."""
        request = p.PublishTask(id=self._take_id(), task_id=task_id, start=start)
        return (await self._call(request, p.TaskReply)).task

    async def approve_task(self, task_id: str) -> Run:
        """Approve a task awaiting manual approval; returns the run it enqueued."""
        request = p.ApproveTask(id=self._take_id(), task_id=task_id)
        return (await self._call(request, p.RunReply)).run

    async def reject_task(self, task_id: str, *, reason: str | None = None) -> Task:
        request = p.RejectTask(id=self._take_id(), task_id=task_id, reason=reason)
        return (await self._call(request, p.TaskReply)).task

    async def update_task(self, task_id: str, changes: Mapping[str, Any]) -> Task:
        """Change mutable fields; an immutable one raises IMMUTABLE_FIELD."""
        request = p.UpdateTask(id=self._take_id(), task_id=task_id, changes=dict(changes))
        return (await self._call(request, p.TaskReply)).task

    async def delete_task(self, task_id: str) -> Task:
        request = p.DeleteTask(id=self._take_id(), task_id=task_id)
        return (await self._call(request, p.TaskReply)).task

    async def add_dependency(self, task_id: str, blocked_by: str) -> Task:
        """``task_id`` waits until ``blocked_by`` completes."""
        request = p.AddDependency(id=self._take_id(), task_id=task_id, blocked_by=blocked_by)
        return (await self._call(request, p.TaskReply)).task

    async def remove_dependency(self, task_id: str, blocked_by: str) -> Task:
        request = p.RemoveDependency(id=self._take_id(), task_id=task_id, blocked_by=blocked_by)
        return (await self._call(request, p.TaskReply)).task

    async def pause_task(self, task_id: str, *, reason: str) -> Task:
        request = p.PauseTask(id=self._take_id(), task_id=task_id, reason=reason)
        return (await self._call(request, p.TaskReply)).task

    async def resume_task(self, task_id: str) -> Task:
        request = p.ResumeTask(id=self._take_id(), task_id=task_id)
        return (await self._call(request, p.TaskReply)).task

    async def cancel_task(self, task_id: str, *, reason: str | None = None) -> Task:
        request = p.CancelTask(id=self._take_id(), task_id=task_id, reason=reason)
        return (await self._call(request, p.TaskReply)).task

    async def cancel_run(self, run_id: str, *, reason: str | None = None) -> Run:
        request = p.CancelRun(id=self._take_id(), run_id=run_id, reason=reason)
        return (await self._call(request, p.RunReply)).run

    async def retry_run(self, run_id: str) -> RetryResult:
        request = p.RetryRun(id=self._take_id(), run_id=run_id)
        return (await self._call(request, p.RetryReply)).result

    async def force_release(self, run_id: str, *, reason: str) -> Run:
        request = p.ForceReleaseRun(id=self._take_id(), run_id=run_id, reason=reason)
        return (await self._call(request, p.RunReply)).run

    async def force_fail(self, run_id: str, *, reason: str) -> Run:
        request = p.ForceFailRun(id=self._take_id(), run_id=run_id, reason=reason)
        return (await self._call(request, p.RunReply)).run

    async def bulk_force_release(self, run_ids: Iterable[str], *, reason: str) -> BulkResult:
        request = p.BulkForceRuns(
            id=self._take_id(), action="release", run_ids=_strings(run_ids), reason=reason
        )
        return (await self._call(request, p.BulkReply)).result

    async def bulk_force_fail(self, run_ids: Iterable[str], *, reason: str) -> BulkResult:
        request = p.BulkForceRuns(
            id=self._take_id(), action="fail", run_ids=_strings(run_ids), reason=reason
        )
        return (await self._call(request, p.BulkReply)).result

    async def pause_scheduler(self, *, reason: str | None = None) -> SchedulerStatus:
        request = p.PauseScheduler(id=self._take_id(), reason=reason)
        return (await self._call(request, p.SchedulerReply)).scheduler

    async def resume_scheduler(self, *, reason: str | None = None) -> SchedulerStatus:
        request = p.ResumeScheduler(id=self._take_id(), reason=reason)
        return (await self._call(request, p.SchedulerReply)).scheduler

    async def drain_scheduler(
        self, *, timeout: float | None = None, reason: str | None = None
    ) -> DrainResult:
        """Pause the scheduler and wait until no lease is active or ``timeout`` seconds pass."""
        request = p.DrainScheduler(id=self._take_id(), timeout=timeout, reason=reason)
        return (await self._call(request, p.DrainReply)).drain

    async def scheduler_status(self) -> SchedulerStatus:
        return (
            await self._call(p.GetSchedulerStatus(id=self._take_id()), p.SchedulerReply)
        ).scheduler

    async def backlog(
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
        return (await self._call(request, p.BacklogReply)).backlog

    async def checkpoint(
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
        return (await self._call(request, p.TaskReply)).task

    async def stuck(self, *, threshold: float | None = None) -> list[StuckRun]:
        """Expired leases, then leased runs idle (no heartbeat or checkpoint) past ``threshold``."""
        reply = await self._call(p.ListStuck(id=self._take_id(), threshold=threshold), p.StuckReply)
        return reply.runs

    async def steal(
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
        return (await self._call(request, p.ClaimReply)).claim

    async def timeline(self, task_id: str, *, after_seq: int = 0) -> list[Event]:
        """The task's retained events after ``after_seq``, oldest first."""
        out: list[Event] = []
        cursor: int | None = after_seq
        while cursor is not None:
            page = await self._call(
                p.GetTimeline(id=self._take_id(), task_id=task_id, after_seq=cursor), p.EventList
            )
            out.extend(page.events)
            cursor = page.next_after_seq
        return out

    async def inspect_task(self, task_id: str) -> InspectView:
        request = p.InspectTask(id=self._take_id(), task_id=task_id)
        return (await self._call(request, p.InspectReply)).view

    async def inspect_run(self, run_id: str) -> InspectView:
        request = p.InspectRun(id=self._take_id(), run_id=run_id)
        return (await self._call(request, p.InspectReply)).view

    # ------------------------------------------------------- finish, then claim
    async def complete_and_next(
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
        return await self._finish(request)

    async def fail_and_next(
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
        return await self._finish(request)

    async def release_and_next(
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
        return await self._finish(request)

    async def _finish(self, request: p.Request) -> Finished:
        return (await self._call(request, p.FinishedReply)).finished


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
        check_reply(reply, p.EventItem)
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
    socket_path = resolve_socket(path)
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
    backoff = ConnectBackoff(path, timeout, clock=trio.current_time)
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


def _strings(values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise TypeError("pass a list of strings, not one string")
    return list(values)


__all__ = ["AsyncClient", "EventStream", "open_client"]
