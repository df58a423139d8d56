"""The named methods every surface offers: each builds its request and hands it to ``call``.

Most are one line, ``create_task = method(op.CreateTask)``: the method takes exactly the
request's fields (checked by mypy) and answers the request's reply type. The embedded
runtime gets the task and operator methods, the session handle the lease methods, and the
trio client all of them plus the reads. The synchronous client's copy,
``operation_methods_sync.py``, is generated from this file (``python -m
runlease.gen_sync``); a test fails when it is stale, so edit this file, never that one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar, Unpack

import msgspec

from runlease import operations as op
from runlease.core.finding import ListFilters
from runlease.core.model import AccessToken, BulkResult, Event, Finished, Session, Task
from runlease.core.views import StuckRun
from runlease.operations import ClaimArgs, ClaimNext, FinishRequest, Request, strings

R = TypeVar("R")
P = ParamSpec("P")


class AsyncCaller(ABC):
    """A surface that can carry out a request: the runtime, a session handle, a client."""

    @abstractmethod
    async def call(self, request: Request[R]) -> R:
        """Carry out ``request`` and answer its reply (``CreateTask`` answers a Task)."""


def method(request: Callable[P, Request[R]]) -> Callable[Concatenate[AsyncCaller, P], Awaitable[R]]:
    """A method taking the fields of ``request`` and answering its reply."""

    async def call(self: AsyncCaller, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.call(request(*args, **kwargs))

    call.__doc__ = request.__doc__
    return call


class AsyncTaskMethods(AsyncCaller):
    """Tasks, the graph, runs and the scheduler: what the host or an operator does."""

    create_task = method(op.CreateTask)
    start_task = method(op.StartTask)
    publish_task = method(op.PublishTask)
    approve_task = method(op.ApproveTask)
    reject_task = method(op.RejectTask)
    update_task = method(op.UpdateTask)
    delete_task = method(op.DeleteTask)
    add_dependency = method(op.AddDependency)
    remove_dependency = method(op.RemoveDependency)
    pause_task = method(op.PauseTask)
    resume_task = method(op.ResumeTask)
    cancel_task = method(op.CancelTask)
    reopen_task = method(op.ReopenTask)
    unblock_task = method(op.UnblockTask)
    checkpoint = method(op.CheckpointTask)
    cancel_run = method(op.CancelRun)
    retry_run = method(op.RetryRun)
    recover_run = method(op.RecoverRun)
    force_release = method(op.ForceReleaseRun)
    force_fail = method(op.ForceFailRun)
    pause_scheduler = method(op.PauseScheduler)
    resume_scheduler = method(op.ResumeScheduler)
    drain_scheduler = method(op.DrainScheduler)
    stop_session = method(op.StopSession)
    hook_deliveries = method(op.ListHookDeliveries)
    retry_hook_delivery = method(op.RetryHookDelivery)
    create_token = method(op.CreateToken)
    revoke_token = method(op.RevokeToken)

    async def bulk_force_release(self, run_ids: Iterable[str], *, reason: str) -> BulkResult:
        """Force-release up to 50 runs; one outcome per run, in the order given."""
        return await self.call(
            op.BulkForceRuns(action="release", run_ids=strings(run_ids, "run_ids"), reason=reason)
        )

    async def bulk_force_fail(self, run_ids: Iterable[str], *, reason: str) -> BulkResult:
        """Force-fail up to 50 runs; one outcome per run, in the order given."""
        request = op.BulkForceRuns(
            action="fail", run_ids=strings(run_ids, "run_ids"), reason=reason
        )
        return await self.call(request)


class AsyncLeaseMethods(AsyncCaller):
    """What a session does with its leases (the session is the caller's)."""

    @abstractmethod
    async def finish_and_claim(self, finish: FinishRequest, then: ClaimNext) -> Finished:
        """Apply ``finish``, then claim the session's next run under ``then``."""

    claim_next = method(op.ClaimNext)
    claim_run = method(op.ClaimRun)
    claim_task = method(op.ClaimTask)
    heartbeat = method(op.HeartbeatRun)
    complete = method(op.CompleteRun)
    fail = method(op.FailRun)
    release = method(op.ReleaseRun)
    block = method(op.BlockRun)
    steal = method(op.StealRun)
    checkpoint = method(op.CheckpointTask)
    context = method(op.GetContext)

    async def complete_and_next(
        self,
        run_id: str,
        *,
        result: Any = None,
        token: str | None = None,
        **claim: Unpack[ClaimArgs],
    ) -> Finished:
        """Complete the run and claim the session's next one in one step; finding nothing
        to claim is not an error (``no_claim`` says why)."""
        finish = op.CompleteRun(run_id, result=result, token=token)
        return await self.finish_and_claim(finish, ClaimNext(**claim))

    async def fail_and_next(
        self,
        run_id: str,
        *,
        error: str,
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
        **claim: Unpack[ClaimArgs],
    ) -> Finished:
        """Fail the run and claim the session's next one (see complete_and_next)."""
        finish = op.FailRun(run_id, error=error, metadata=metadata, token=token)
        return await self.finish_and_claim(finish, ClaimNext(**claim))

    async def release_and_next(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        token: str | None = None,
        **claim: Unpack[ClaimArgs],
    ) -> Finished:
        """Release the run and claim the session's next one (see complete_and_next)."""
        finish = op.ReleaseRun(run_id, reason=reason, token=token)
        return await self.finish_and_claim(finish, ClaimNext(**claim))


class AsyncClientMethods(AsyncTaskMethods, AsyncLeaseMethods):
    """Everything, plus the reads a client makes over the wire (paged for you)."""

    status = method(op.GetStatus)
    open_session = method(op.OpenSession)
    whoami = method(op.WhoAmI)
    get_session = method(op.GetSession)
    show_task = method(op.ShowTask)
    get_run = method(op.GetRun)
    scheduler_status = method(op.GetSchedulerStatus)
    backlog = method(op.GetBacklog)
    overview = method(op.GetOverview)
    inspect_task = method(op.InspectTask)
    inspect_run = method(op.InspectRun)
    get_event = method(op.GetEvent)

    async def list_tokens(self) -> list[AccessToken]:
        """Every access token, oldest first, with its role and state (never a secret)."""
        return (await self.call(op.ListTokens())).tokens

    async def get_task(self, task_id: str) -> Task:
        return (await self.show_task(task_id)).task

    async def stuck(self, *, threshold: float | None = None) -> list[StuckRun]:
        """Expired leases, then leased runs idle past ``threshold`` seconds (600)."""
        return (await self.call(op.ListStuck(threshold=threshold))).runs

    async def list_tasks(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        available: bool = False,
        **filters: Unpack[ListFilters],
    ) -> list[Task]:
        """Tasks matching every filter, in creation order; every page of them when
        ``limit`` is None. ``available``: what this client's session could claim now."""
        out: list[Task] = []
        while limit is None or len(out) < limit:
            want = None if limit is None else limit - len(out)
            page = await self.call(
                op.ListTasks(after=after, limit=want, available=available, **filters)
            )
            out.extend(page.tasks)
            if (after := page.next_after) is None:
                break
        return out

    async def list_sessions(self, *, live_only: bool = False) -> list[Session]:
        out: list[Session] = []
        after: str | None = None
        while True:
            page = await self.call(op.ListSessions(live_only=live_only, after=after))
            out.extend(page.sessions)
            if (after := page.next_after) is None:
                return out

    async def events(
        self,
        *,
        task_id: str | None = None,
        after_seq: int = 0,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events after ``after_seq`` matching every filter given (``kinds``: any of these
        event types), oldest first; every page of them when ``limit`` is None."""
        request = op.ListEvents(
            task_id=task_id,
            after_seq=after_seq,
            run_id=run_id,
            session_id=session_id,
            kinds=None if kinds is None else strings(kinds, "kinds"),
            limit=limit,
        )
        return await self._every_event(request, limit)

    async def timeline(self, task_id: str, *, after_seq: int = 0) -> list[Event]:
        """The task's retained events after ``after_seq``, oldest first."""
        return await self._every_event(op.GetTimeline(task_id=task_id, after_seq=after_seq))

    async def _every_event(
        self, request: op.ListEvents | op.GetTimeline, limit: int | None = None
    ) -> list[Event]:
        """Every page of events from ``request``'s after_seq on, up to ``limit`` of them."""
        out: list[Event] = []
        while True:
            page = await self.call(request)
            out.extend(page.events)
            if page.next_after_seq is None or (limit is not None and len(out) >= limit):
                return out
            request = msgspec.structs.replace(request, after_seq=page.next_after_seq)
            if limit is not None:
                request = msgspec.structs.replace(request, limit=limit - len(out))
