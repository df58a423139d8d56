"""The embedded API: ``async with open_runtime() as rt`` and the session handle."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import trio

from runlease.actors.clock import RuntimeClock
from runlease.actors.commit import Committer, MemoryCommitter
from runlease.actors.requests import Request
from runlease.actors.system import ActorSystem
from runlease.core import views
from runlease.core.commands import (
    AddDependency,
    AnyCommand,
    ApproveTask,
    BlockRun,
    BulkForceRuns,
    CancelRun,
    CancelTask,
    CheckpointTask,
    ClaimNext,
    CompleteRun,
    CreateTask,
    DeleteTask,
    FailRun,
    FinishAndClaim,
    ForceFailRun,
    ForceReleaseRun,
    HeartbeatRun,
    OpenSession,
    PauseScheduler,
    PauseTask,
    PublishTask,
    RejectTask,
    ReleaseRun,
    ReleaseSessionLeases,
    RemoveDependency,
    ResumeScheduler,
    ResumeTask,
    RetryRun,
    StartTask,
    StealRun,
    StopSession,
    UpdateTask,
)
from runlease.core.ids import (
    CLAIM_TOKEN_PREFIX,
    SESSION_TOKEN_PREFIX,
    IdGenerator,
    hash_token,
    new_secret_token,
)
from runlease.core.machine import Machine, Outcome, snapshot_run, snapshot_task
from runlease.core.model import (
    Actor,
    ApprovalPolicy,
    BulkResult,
    Claim,
    Event,
    Finished,
    Heartbeat,
    NoClaim,
    Origin,
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
from runlease.errors import (
    AUTONOMY_SESSION_REQUIRED,
    FORBIDDEN_OPERATOR_ACTION,
    NO_CLAIMABLE_RUN,
    REQUEST_CANCELLED,
    RUNTIME_CLOSED,
    WORKSPACE_ROOT_UNKNOWN,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
    Unavailable,
)
from runlease.persistence.store import DEFAULT_MAP_SIZE, Store
from runlease.runtime.events import EventFeed
from runlease.runtime.journal import (
    DEFAULT_SNAPSHOT_EVERY_RECORDS,
    DEFAULT_SNAPSHOT_EVERY_SECONDS,
    BootReport,
    JournalCommitter,
    SnapshotPolicy,
    load_machine,
    recovery_commands,
    run_snapshotter,
    take_snapshot,
)

DEFAULT_EVENT_CAPACITY = 10_000
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_STUCK_THRESHOLD = 600.0
# Where completion-contract paths are resolved: workspace id ("" global) -> directory, or a
# function of the workspace id (None global) -> directory or None.
WorkspaceRoots = (
    Mapping[str, str | os.PathLike[str]] | Callable[[str | None], str | os.PathLike[str] | None]
)
# Stamped on writes made through the embedded API and on operator writes without an actor.
EMBEDDED = Origin(kind="embedded")
OPERATOR = Actor(kind="human", ref="operator")
Durability = Literal["durable", "relaxed"]
T = TypeVar("T")


class RuntimeStatus(msgspec.Struct, kw_only=True, tag="status"):
    tasks: int
    queued_runs: int
    leased_runs: int
    live_sessions: int
    waiting_claimers: int
    last_event_seq: int
    durability: str
    recovered: bool = True


class Runtime:
    """One lease runtime. Create it with :func:`open_runtime`; all methods are trio-native.

    Writes go through the actors and return once acknowledged (durable when a journal is
    configured). The sync reads return copies of this process's in-memory view without a
    round trip; that view may include writes whose commit is still running, which a crash
    would take back. Before showing state outside the process (a reply to another program,
    a log line another system acts on), ``await rt.settled()`` after the read, or compute
    the answer with ``await rt.read(fn)``, which does both.
    """

    def __init__(
        self,
        machine: Machine,
        clock: RuntimeClock,
        *,
        event_capacity: int = DEFAULT_EVENT_CAPACITY,
        durability: str = "memory",
        workspace_roots: WorkspaceRoots | None = None,
        allow_agent_force: bool = False,
    ) -> None:
        self._workspace_roots = workspace_roots
        self._allow_agent_force = allow_agent_force
        self._machine = machine
        self._clock = clock
        self._ids = IdGenerator()
        self._feed = EventFeed(event_capacity)
        self._committer: Committer = MemoryCommitter(self._acknowledge)
        self._system = ActorSystem(machine, clock, self._committer)
        self._inflight: set[Request] = set()
        self._closed = False
        self.durability = durability
        self.boot_report: BootReport | None = None

    def use_committer(self, committer: Committer) -> None:
        """Swap in a durable committer before the runtime starts serving."""
        self._committer = committer
        self._system.committer = committer

    async def settled(self) -> None:
        """Return once every change this process has applied so far is durable.

        The barrier between a sync read and showing its result outside the process. If a
        commit fails meanwhile, memory is rolled back to the journal and this returns too:
        read again then (:meth:`read` does that for you).
        """
        committer = self._committer
        await committer.settle(committer.submitted_seq, committer.generation)

    async def read(self, compute: Callable[[], T]) -> T:
        """``compute()`` against memory, returned only once everything it may show is durable.

        ``compute`` must not await: the answer is one consistent view. If memory was rolled
        back to the journal while waiting (a failed commit), it is computed again from the
        rolled-back state, so the answer never shows a change a crash could take back. A
        RunleaseError it raises (e.g. not found) is held back the same way.
        """
        committer = self._committer
        while True:
            seq, generation = committer.submitted_seq, committer.generation
            error: RunleaseError | None = None
            try:
                value = compute()
            except RunleaseError as exc:
                error = exc
            await committer.settle(seq, generation)
            if committer.generation == generation:
                if error is not None:
                    raise error
                return value

    def _acknowledge(self, request: Request | None, outcome: Outcome) -> None:
        if outcome.events:
            self._feed.publish(outcome.events)
        if request is not None:
            request.resolve(outcome.reply, outcome.error)

    # ----------------------------------------------------------------- plumbing
    def _new_id(self, prefix: str) -> str:
        return self._ids.new(prefix, self._clock.now())

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the runtime is closed", code=RUNTIME_CLOSED)

    def _check_operator_action(self, command: AnyCommand) -> None:
        """Refuse a force operation asked for by a session, unless the host allows it.

        Force operations override another holder's lease, so they belong to operators.
        This is decided here, before the command reaches the machine, so the journal holds
        only commands that were allowed and replaying it never depends on this setting.
        """
        if self._allow_agent_force:
            return
        if isinstance(command, StealRun):
            if not command.force:
                return  # steal --if-expired is an agent's own action
            what = "steal --force"
            instead = (
                "ask an operator to free the run (`runlease run force-release RUN --reason "
                "...` without a session token), then claim it"
            )
        elif isinstance(command, ForceReleaseRun):
            what = "force-release"
            instead = "run it as the operator (without a session token)"
        elif isinstance(command, ForceFailRun):
            what = "force-fail"
            instead = "run it as the operator (without a session token)"
        elif isinstance(command, BulkForceRuns):
            what = f"bulk force-{command.action}"
            instead = "run it as the operator (without a session token)"
        else:
            return
        actor = command.actor
        session_id = getattr(command, "session_id", None)
        if actor is None and session_id:
            actor = Actor(kind="agent_session", ref=session_id)  # the machine's default
        if actor is not None and actor.kind == "agent_session":
            raise LeaseRefused(
                f"{what} is an operator action and session {actor.ref} may not use it; "
                f"{instead}, or let agents force with `runlease serve --allow-agent-force` / "
                "open_runtime(allow_agent_force=True)",
                code=FORBIDDEN_OPERATOR_ACTION,
            )

    async def _call(self, command: AnyCommand) -> Any:
        self._check_open()
        self._check_operator_action(command)
        if command.origin is None:
            command.origin = EMBEDDED
        request = Request(command)
        self._inflight.add(request)
        try:
            await self._system.send(request)
            await request.done.wait()
        finally:
            self._inflight.discard(request)
        return request.result()

    # -------------------------------------------------------------------- tasks
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
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """Create a task; with ``start=True`` also enqueue its first run.

        ``parent`` makes it a child task (depth <= 8, <= 64 children per parent, else
        GRAPH_LIMIT_EXCEEDED). ``draft`` creates it unrunnable until :meth:`publish`;
        ``approval_policy="manual"`` makes :meth:`approve` the only way to enqueue it.
        ``owner`` assigns it to one session (kind agent_session) or to a pool of sessions
        by agent name (kind pool): only they may claim it. ``preferred_capabilities``
        order claimers after priority: among runs of equal priority a session gets the one
        whose preferred capabilities it offers most. ``required_artifacts`` is the
        completion contract: paths relative to the workspace root (``workspace_roots``
        of :func:`open_runtime`) that must exist before a run may complete.
        """
        command = CreateTask(
            now=0.0,
            task_id=self._new_id("tsk"),
            title=title,
            description=description,
            priority=priority,
            scope=scope,
            workspace_id=workspace,
            max_attempts=max_attempts,
            metadata=metadata,
            required_capabilities=_string_list(capabilities, "capabilities"),
            start_run_id=self._new_id("run") if start else None,
            parent_task_id=parent,
            preferred_capabilities=_string_list(preferred_capabilities, "preferred_capabilities"),
            owner=owner,
            draft=draft,
            approval_policy=approval_policy,
            required_artifacts=_string_list(required_artifacts, "required_artifacts"),
            actor=actor,
            origin=origin,
        )
        task: Task = await self._call(command)
        return task

    async def start(
        self,
        task_id: str,
        *,
        idempotency_key: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Run:
        """Enqueue a new run of a task (its next attempt).

        With ``idempotency_key``, a repeat with the same key on the same task returns the
        run the first call made and enqueues nothing.
        """
        run: Run = await self._call(
            StartTask(
                now=0.0,
                task_id=task_id,
                run_id=self._new_id("run"),
                idempotency_key=idempotency_key,
                actor=actor,
                origin=origin,
            )
        )
        return run

    def get_task(self, task_id: str) -> Task:
        """This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process."""
        return snapshot_task(self._machine.get_task(task_id))

    def get_run(self, run_id: str) -> Run:
        """This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process."""
        return snapshot_run(self._machine.get_run(run_id))

    def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        workspace: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """Tasks in creation order, optionally filtered; page with ``after`` and ``limit``.

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        if limit is not None and limit < 0:
            raise InvalidInput("limit must be zero or positive")
        out: list[Task] = []
        seen_after = after is None
        for task in self._machine.tasks.values():
            if not seen_after:
                seen_after = task.id == after
                continue
            if status is not None and task.status != status:
                continue
            if workspace is not None and task.workspace_id != workspace:
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append(snapshot_task(task))
        return out

    def runs_of(self, task_id: str) -> list[Run]:
        """Every run of a task, oldest first (follows previous_run_id back from the current).

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        task = self._machine.get_task(task_id)
        chain: list[Run] = []
        run_id = task.current_run_id
        while run_id is not None:
            run = self._machine.runs[run_id]
            chain.append(snapshot_run(run))
            run_id = run.previous_run_id
        chain.reverse()
        return chain

    # ----------------------------------------------------------------- sessions
    async def open_session(
        self,
        *,
        agent: str = "agent",
        parent: str | None = None,
        ttl: float | None = None,
        capabilities: Iterable[str] = (),
        auto_stop_on_parent: bool = True,
    ) -> SessionHandle:
        """Open a session for an agent in this process (no bearer token needed)."""
        session = await self._open_session(
            agent, parent, ttl, capabilities, auto_stop_on_parent, token_hash=None
        )
        return SessionHandle(self, session.id)

    async def open_session_with_token(
        self,
        *,
        agent: str = "agent",
        parent: str | None = None,
        ttl: float | None = None,
        capabilities: Iterable[str] = (),
        auto_stop_on_parent: bool = True,
    ) -> tuple[Session, str]:
        """Open a session for an out-of-process agent: returns it and its bearer token.

        The token (``rl_session_...``) is returned once; only its hash is kept, and
        :meth:`session_id_for_token` maps a presented token back to the session.
        """
        token = new_secret_token(SESSION_TOKEN_PREFIX)
        session = await self._open_session(
            agent, parent, ttl, capabilities, auto_stop_on_parent, token_hash=hash_token(token)
        )
        return session, token

    async def _open_session(
        self,
        agent: str,
        parent: str | None,
        ttl: float | None,
        capabilities: Iterable[str],
        auto_stop_on_parent: bool,
        *,
        token_hash: str | None,
    ) -> Session:
        session: Session = await self._call(
            OpenSession(
                now=0.0,
                session_id=self._new_id("ses"),
                agent=agent,
                parent_id=parent,
                ttl_seconds=ttl,
                auto_stop_on_parent=auto_stop_on_parent,
                capabilities=_string_list(capabilities, "capabilities"),
                session_token_hash=token_hash,
            )
        )
        return session

    def session_id_for_token(self, token: str | None) -> str:
        """The session a bearer token belongs to; AUTONOMY_SESSION_REQUIRED if none."""
        if not token:
            raise LeaseRefused(
                "this command needs a session token (--session-token or "
                "RUNLEASE_SESSION_TOKEN); get one from `runlease session open`",
                code=AUTONOMY_SESSION_REQUIRED,
            )
        session_id = None
        if token.startswith(SESSION_TOKEN_PREFIX):
            session_id = self._machine.session_by_token_hash.get(hash_token(token))
        if session_id is None:
            raise LeaseRefused(
                "the session token is not recognised; open a session and use its token",
                code=AUTONOMY_SESSION_REQUIRED,
            )
        return session_id

    def session(self, session_id: str) -> SessionHandle:
        """A handle for an existing session (raises SESSION_NOT_FOUND if there is none)."""
        self._machine.get_session(session_id)
        return SessionHandle(self, session_id)

    def get_session(self, session_id: str) -> Session:
        """This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process."""
        return msgspec.structs.replace(self._machine.get_session(session_id))

    def list_sessions(self, *, live_only: bool = False) -> list[Session]:
        """This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process."""
        return [
            msgspec.structs.replace(s)
            for s in self._machine.sessions.values()
            if not live_only or s.state == "live"
        ]

    async def stop_session(self, session_id: str, *, reason: str | None = None) -> SessionReleased:
        """Stop a session: release its lease and stop its auto-stopping children."""
        result: SessionReleased = await self._call(
            StopSession(now=0.0, session_id=session_id, reason=reason)
        )
        return result

    async def release_session_leases(self, session_id: str, *, reason: str) -> SessionReleased:
        """Put a session's leased run back in the queue without stopping the session."""
        result: SessionReleased = await self._call(
            ReleaseSessionLeases(now=0.0, session_id=session_id, reason=reason)
        )
        return result

    # ------------------------------------------------------------------- leases
    async def claim_next(
        self,
        session_id: str | None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
    ) -> Claim:
        """Claim the best queued run this session may take.

        Filters: ``workspace`` (only that workspace's tasks), ``scope="global"`` (only
        tasks without a workspace), ``priority_min`` (a priority name or rank; lower ones
        are skipped). Tasks assigned to another session or pool, drafts, paused or
        dependency-blocked tasks are never handed out, and nothing is while the scheduler
        is paused.

        With ``wait=True`` the claimer parks until an enqueue makes work available (FIFO
        among waiters) or ``timeout`` seconds pass, then raises NO_CLAIMABLE_RUN.
        """
        self._check_open()
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or math.isnan(timeout)
            or timeout < 0
        ):
            raise InvalidInput(f"timeout must be zero or positive seconds, got {timeout!r}")
        command = ClaimNext(
            now=0.0,
            session_id=session_id,
            claim_token_hash=_new_claim_hash(),
            lease_seconds=lease_seconds,
            workspace_id=workspace,
            scope=scope,
            priority_min=views.priority_rank(priority_min),
            origin=EMBEDDED,
        )
        request = Request(command, wait=wait)
        self._inflight.add(request)
        try:
            await self._system.send(request)
            if not wait or timeout is None:
                await request.done.wait()
            else:
                with trio.move_on_after(timeout):
                    await request.done.wait()
            if not request.done.is_set():
                if not request.assigned:
                    request.abandoned = True
                    raise NotFound(
                        f"no claimable run arrived within {timeout} seconds",
                        code=NO_CLAIMABLE_RUN,
                    )
                # The claim was made as the timeout fired: it must still reach the caller.
                with trio.CancelScope(shield=True):
                    await request.done.wait()
        finally:
            if not request.done.is_set() and not request.assigned:
                request.abandoned = True
            self._inflight.discard(request)
        claim: Claim = request.result()
        return claim

    async def heartbeat(
        self, session_id: str | None, run_id: str, *, lease_seconds: float | None = None
    ) -> Heartbeat:
        result: Heartbeat = await self._call(
            HeartbeatRun(now=0.0, session_id=session_id, run_id=run_id, lease_seconds=lease_seconds)
        )
        return result

    async def complete(self, session_id: str | None, run_id: str, *, result: Any = None) -> Run:
        """Complete a leased run. If the task has a completion contract, its artifacts are
        checked on disk first; missing ones refuse with COMPLETION_CONTRACT_UNMET."""
        command = await self._with_artifacts(
            CompleteRun(now=0.0, session_id=session_id, run_id=run_id, result=result)
        )
        run: Run = await self._call(command)
        return run

    async def fail(
        self,
        session_id: str | None,
        run_id: str,
        *,
        error: str,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        run: Run = await self._call(
            FailRun(now=0.0, session_id=session_id, run_id=run_id, error=error, metadata=metadata)
        )
        return run

    async def release(
        self, session_id: str | None, run_id: str, *, reason: str | None = None
    ) -> Run:
        run: Run = await self._call(
            ReleaseRun(now=0.0, session_id=session_id, run_id=run_id, reason=reason)
        )
        return run

    async def block(self, session_id: str | None, run_id: str, *, reason: str) -> Run:
        run: Run = await self._call(
            BlockRun(now=0.0, session_id=session_id, run_id=run_id, reason=reason)
        )
        return run

    # ------------------------------------------------------- finish, then claim
    async def complete_and_next(
        self,
        session_id: str | None,
        run_id: str,
        *,
        result: Any = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
        stop_waiting: trio.CancelScope | None = None,
    ) -> Finished:
        """Complete the session's run, then claim its next one, in one step.

        The claim part follows the rules of :meth:`claim_next` (filters, ``wait``,
        ``timeout``). A refused finish raises its error and claims nothing. Once the finish
        is applied the result always reports it: ``claim`` holds the new claim, or
        ``no_claim`` says why there is none (NO_CLAIMABLE_RUN, also when the wait timed
        out). In durable mode the finish is journaled before the claim and the call returns
        once both are. ``stop_waiting`` is a scope the caller may cancel to end the wait
        early; the finish is then still reported, with ``no_claim`` REQUEST_CANCELLED.
        """
        finish = await self._with_artifacts(
            CompleteRun(now=0.0, session_id=session_id, run_id=run_id, result=result)
        )
        return await self._finish_and_claim(
            finish,
            wait,
            timeout,
            lease_seconds,
            workspace,
            stop_waiting,
            scope=scope,
            priority_min=priority_min,
        )

    async def fail_and_next(
        self,
        session_id: str | None,
        run_id: str,
        *,
        error: str,
        metadata: dict[str, Any] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
        stop_waiting: trio.CancelScope | None = None,
    ) -> Finished:
        """Fail the session's run, then claim its next one (see :meth:`complete_and_next`)."""
        finish = FailRun(
            now=0.0, session_id=session_id, run_id=run_id, error=error, metadata=metadata
        )
        return await self._finish_and_claim(
            finish,
            wait,
            timeout,
            lease_seconds,
            workspace,
            stop_waiting,
            scope=scope,
            priority_min=priority_min,
        )

    async def release_and_next(
        self,
        session_id: str | None,
        run_id: str,
        *,
        reason: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
        stop_waiting: trio.CancelScope | None = None,
    ) -> Finished:
        """Release the session's run, then claim its next one (see :meth:`complete_and_next`).

        The claim follows the ordinary rules, so the released run itself is a candidate:
        it keeps its place at the front of its priority band.
        """
        finish = ReleaseRun(now=0.0, session_id=session_id, run_id=run_id, reason=reason)
        return await self._finish_and_claim(
            finish,
            wait,
            timeout,
            lease_seconds,
            workspace,
            stop_waiting,
            scope=scope,
            priority_min=priority_min,
        )

    async def _finish_and_claim(
        self,
        finish: CompleteRun | FailRun | ReleaseRun,
        wait: bool,
        timeout: float | None,
        lease_seconds: float | None,
        workspace: str | None,
        stop_waiting: trio.CancelScope | None,
        *,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
    ) -> Finished:
        self._check_open()
        _check_timeout(timeout)
        command = FinishAndClaim(
            now=0.0,
            finish=finish,
            claim=ClaimNext(
                now=0.0,
                session_id=finish.session_id,
                claim_token_hash=_new_claim_hash(),
                lease_seconds=lease_seconds,
                workspace_id=workspace,
                scope=scope,
                priority_min=views.priority_rank(priority_min),
            ),
        )
        request = Request(command, wait=wait)
        self._inflight.add(request)
        try:
            await self._system.send(request)
            gave_up: RunleaseError | None = None
            if not wait:
                await request.done.wait()
            else:
                with stop_waiting or contextlib.nullcontext():
                    with trio.move_on_after(math.inf if timeout is None else timeout):
                        await request.done.wait()
                if not request.done.is_set():
                    gave_up = (
                        NotFound(
                            f"no claimable run arrived within {timeout} seconds",
                            code=NO_CLAIMABLE_RUN,
                        )
                        if stop_waiting is None or not stop_waiting.cancel_called
                        else Unavailable("the wait was cancelled", code=REQUEST_CANCELLED)
                    )
            if not request.done.is_set():
                part = request.finish_part
                if part is not None and not request.assigned:
                    # Parked and nothing claimed yet: leave the queue of waiters (it skips
                    # abandoned requests) and report the finish alone.
                    request.abandoned = True
                    request.resolve(None, gave_up)
                else:
                    # Either not applied yet (an abandoned request is applied without
                    # parking) or a claim was made as the wait ended: its reply must come.
                    request.abandoned = not request.assigned
                with trio.CancelScope(shield=True):
                    await request.done.wait()
            return await self._finished(request)
        finally:
            if not request.done.is_set() and not request.assigned:
                request.abandoned = True  # the caller is gone: do not wait on its behalf
            self._inflight.discard(request)

    async def _finished(self, request: Request) -> Finished:
        part = request.finish_part
        if part is None:
            # Applied as one command: its reply holds both parts, or the finish's refusal.
            finished: Finished = request.result()
            return finished
        # The finish was journaled on its own; its reply is durable once it resolves.
        self._inflight.add(part)
        try:
            with trio.CancelScope(shield=True):
                await part.done.wait()
        finally:
            self._inflight.discard(part)
        alone: Finished = part.result()
        if request.error is None:
            claim: Claim = request.reply
            return Finished(run=alone.run, claim=claim)
        error = request.error
        return Finished(run=alone.run, no_claim=NoClaim(code=error.code, message=error.message))

    # ------------------------------------------------- task lifecycle
    # Every write below accepts ``actor`` (who: Actor(kind, ref)) and ``origin`` (through
    # which surface: Origin(kind, ref)); both are stamped on the events it emits. The
    # embedded API defaults origin to Origin(kind="embedded"); operator operations default
    # the actor to Actor(kind="human", ref="operator").

    async def publish(
        self,
        task_id: str,
        *,
        start: bool = True,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """Publish a draft. With ``start`` (and no manual approval) enqueue its first run."""
        task = self._machine.get_task(task_id)
        run_id = self._new_id("run") if start and task.approval_policy == "none" else None
        result: Task = await self._call(
            PublishTask(now=0.0, task_id=task_id, run_id=run_id, actor=actor, origin=origin)
        )
        return result

    async def approve(
        self, task_id: str, *, actor: Actor | None = None, origin: Origin | None = None
    ) -> Run:
        """Approve a task with manual approval; enqueues its run and returns it."""
        run: Run = await self._call(
            ApproveTask(
                now=0.0,
                task_id=task_id,
                run_id=self._new_id("run"),
                actor=actor or OPERATOR,
                origin=origin,
            )
        )
        return run

    async def reject(
        self,
        task_id: str,
        *,
        reason: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """Reject a task awaiting approval: it (and its open descendants) are canceled."""
        task: Task = await self._call(
            RejectTask(
                now=0.0, task_id=task_id, reason=reason, actor=actor or OPERATOR, origin=origin
            )
        )
        return task

    async def update_task(
        self,
        task_id: str,
        changes: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """Change mutable fields (MUTABLE_TASK_FIELDS: title, description, priority,
        max_attempts, metadata, required_capabilities, preferred_capabilities, owner).

        An immutable field (scope, workspace_id, parent_task_id, required_artifacts,
        approval_policy, id) raises IMMUTABLE_FIELD; ``owner`` takes {"kind", "ref"} or None.
        """
        task: Task = await self._call(
            UpdateTask(now=0.0, task_id=task_id, changes=dict(changes), actor=actor, origin=origin)
        )
        return task

    async def delete_task(
        self, task_id: str, *, actor: Actor | None = None, origin: Origin | None = None
    ) -> Task:
        """Delete a task and its finished runs. Refused with TASK_HAS_CHILDREN while it has
        child tasks and TASK_HAS_ACTIVE_RUNS while a run is queued, leased or parked. Its
        dependents lose the edge (and may become claimable). Returns the deleted record."""
        task: Task = await self._call(
            DeleteTask(now=0.0, task_id=task_id, actor=actor, origin=origin)
        )
        return task

    async def add_dependency(
        self,
        task_id: str,
        blocked_by: str,
        *,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """``task_id`` waits for ``blocked_by`` to complete (edge kind ``blocks``).

        At most MAX_DEPENDENCIES (32) per task (GRAPH_LIMIT_EXCEEDED); a self edge or one
        that closes a cycle raises DEPENDENCY_CYCLE. Until every blocker completes the
        task is ``blocked`` and its queued run is never claimed.
        """
        task: Task = await self._call(
            AddDependency(
                now=0.0, task_id=task_id, blocked_by=blocked_by, actor=actor, origin=origin
            )
        )
        return task

    async def remove_dependency(
        self,
        task_id: str,
        blocked_by: str,
        *,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        task: Task = await self._call(
            RemoveDependency(
                now=0.0, task_id=task_id, blocked_by=blocked_by, actor=actor, origin=origin
            )
        )
        return task

    async def pause_task(
        self,
        task_id: str,
        *,
        reason: str,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """Pause a task and, through it, all its descendants: their queued runs are not
        claimed until resumed. Runs already leased carry on."""
        task: Task = await self._call(
            PauseTask(
                now=0.0, task_id=task_id, reason=reason, actor=actor or OPERATOR, origin=origin
            )
        )
        return task

    async def resume_task(
        self, task_id: str, *, actor: Actor | None = None, origin: Origin | None = None
    ) -> Task:
        task: Task = await self._call(
            ResumeTask(now=0.0, task_id=task_id, actor=actor or OPERATOR, origin=origin)
        )
        return task

    def pause_state(self, task_id: str) -> views.PauseState:
        """Direct and effective (inherited from an ancestor) pause of a task.

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        return views.pause_state(self._machine, self._machine.get_task(task_id))

    async def cancel_task(
        self,
        task_id: str,
        *,
        reason: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """Cancel a task and every descendant that is not closed yet; their queued or
        leased runs are canceled (a lease ends and its session is free to claim again)."""
        task: Task = await self._call(
            CancelTask(
                now=0.0, task_id=task_id, reason=reason, actor=actor or OPERATOR, origin=origin
            )
        )
        return task

    # ------------------------------------------------------------ run controls
    async def cancel_run(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Run:
        run: Run = await self._call(
            CancelRun(now=0.0, run_id=run_id, reason=reason, actor=actor or OPERATOR, origin=origin)
        )
        return run

    async def retry_run(
        self, run_id: str, *, actor: Actor | None = None, origin: Origin | None = None
    ) -> RetryResult:
        """Queue a new run after a failed one (previous_run_id links them).

        RETRY_CHAIN_TOO_DEEP past MAX_RETRY_CHAIN (10) runs; ATTEMPTS_EXHAUSTED past the
        task's max_attempts."""
        result: RetryResult = await self._call(
            RetryRun(
                now=0.0,
                run_id=run_id,
                new_run_id=self._new_id("run"),
                actor=actor or OPERATOR,
                origin=origin,
            )
        )
        return result

    async def force_release(
        self,
        run_id: str,
        *,
        reason: str,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Run:
        """Operator: take a claimed run back to the queue. A reason is required
        (FORCE_REASON_REQUIRED); FORCE_RATE_LIMIT (10) per actor and task per minute."""
        run: Run = await self._call(
            ForceReleaseRun(
                now=0.0, run_id=run_id, reason=reason, actor=actor or OPERATOR, origin=origin
            )
        )
        return run

    async def force_fail(
        self,
        run_id: str,
        *,
        reason: str,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Run:
        """Operator: fail a run (failure_kind operator_forced). Same reason and rate rules
        as :meth:`force_release`."""
        run: Run = await self._call(
            ForceFailRun(
                now=0.0, run_id=run_id, reason=reason, actor=actor or OPERATOR, origin=origin
            )
        )
        return run

    async def bulk_force_release(
        self,
        run_ids: Iterable[str],
        *,
        reason: str,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> BulkResult:
        """Force-release up to MAX_BULK_RUN_IDS (50) runs; one item per run says how it went."""
        return await self._bulk("release", run_ids, reason, actor, origin)

    async def bulk_force_fail(
        self,
        run_ids: Iterable[str],
        *,
        reason: str,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> BulkResult:
        return await self._bulk("fail", run_ids, reason, actor, origin)

    async def _bulk(
        self,
        action: str,
        run_ids: Iterable[str],
        reason: str,
        actor: Actor | None,
        origin: Origin | None,
    ) -> BulkResult:
        result: BulkResult = await self._call(
            BulkForceRuns(
                now=0.0,
                action=action,
                run_ids=_string_list(run_ids, "run_ids"),
                reason=reason,
                actor=actor or OPERATOR,
                origin=origin,
            )
        )
        return result

    # --------------------------------------------------------------- scheduler
    async def pause_scheduler(
        self,
        *,
        reason: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> views.SchedulerStatus:
        """Stop all claims (they find NO_CLAIMABLE_RUN; waiters keep waiting). Lease expiry,
        heartbeats and finishes carry on."""
        await self._call(
            PauseScheduler(now=0.0, reason=reason, actor=actor or OPERATOR, origin=origin)
        )
        return await self.read(self.scheduler_status)

    async def resume_scheduler(
        self,
        *,
        reason: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> views.SchedulerStatus:
        await self._call(
            ResumeScheduler(now=0.0, reason=reason, actor=actor or OPERATOR, origin=origin)
        )
        return await self.read(self.scheduler_status)

    async def drain_scheduler(
        self,
        *,
        timeout: float = DEFAULT_DRAIN_TIMEOUT,
        reason: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> views.DrainResult:
        """Pause the scheduler (if it is not already) and wait until no lease is active or
        ``timeout`` seconds pass; report how many leases remain. The scheduler stays paused:
        resume it with :meth:`resume_scheduler`."""
        _check_timeout(timeout)
        started = self._clock.now()
        if not self._machine.scheduler.paused:
            await self._call(
                PauseScheduler(
                    now=0.0,
                    reason=reason or "drain",
                    actor=actor or OPERATOR,
                    origin=origin,
                )
            )
        with trio.move_on_after(timeout):
            while self._machine.leased_count():
                self._check_open()
                await self._feed.wait_changed()

        def result() -> views.DrainResult:
            remaining = self._machine.leased_count()
            return views.DrainResult(
                status=self.scheduler_status(),
                completed=remaining == 0,
                timed_out=remaining > 0,
                remaining_claims=remaining,
                started_at=started,
                completed_at=self._clock.now(),
            )

        return await self.read(result)

    def scheduler_status(self) -> views.SchedulerStatus:
        """This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process."""
        return views.scheduler_status(self._machine, self._clock.now())

    def backlog(
        self,
        *,
        workspace: str | None = None,
        include_paused: bool = True,
        after: str | None = None,
        limit: int = 100,
    ) -> views.Backlog:
        """Queued runs with their task (claimable and held back), paged by run id.

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        return views.backlog(
            self._machine,
            workspace_id=workspace,
            include_paused=include_paused,
            after=after,
            limit=limit,
        )

    # --------------------------------------------------------------- HZL verbs
    async def checkpoint(
        self,
        task_id: str,
        note: str,
        *,
        author: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Task:
        """Record a progress note in the task's history (the last MAX_CHECKPOINTS_KEPT are
        kept in the task record). It also counts as progress of a leased run for
        :meth:`stuck`; it does not extend the lease (that is a heartbeat)."""
        task: Task = await self._call(
            CheckpointTask(
                now=0.0, task_id=task_id, note=note, author=author, actor=actor, origin=origin
            )
        )
        return task

    def stuck(self, *, threshold: float = DEFAULT_STUCK_THRESHOLD) -> list[views.StuckRun]:
        """Leased runs whose lease has run out (not yet expired by the clock), then those
        with no heartbeat or checkpoint for more than ``threshold`` seconds.

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        return views.stuck(self._machine, self._clock.now(), threshold=threshold)

    async def steal(
        self,
        task_id: str,
        session_id: str | None,
        *,
        force: bool = False,
        lease_seconds: float | None = None,
        reason: str | None = None,
        actor: Actor | None = None,
        origin: Origin | None = None,
    ) -> Claim:
        """Give the task's current run to ``session_id`` under a new lease.

        Without ``force`` (``steal --if-expired``) it succeeds only if, at the moment the
        command applies, the lease has run out (or the clock already requeued the run
        after an expiry and nobody claimed it since); otherwise LEASE_NOT_EXPIRED. The
        check and the hand-over are one step, so of many concurrent steals one wins.
        ``force`` takes a live lease too. It is an operator action: refused with
        FORBIDDEN_OPERATOR_ACTION when the actor is a session (the default actor when none
        is given) unless the runtime was opened with ``allow_agent_force=True``; pass an
        operator ``actor`` to steal on a session's behalf.
        """
        claim: Claim = await self._call(
            StealRun(
                now=0.0,
                task_id=task_id,
                session_id=session_id,
                claim_token_hash=_new_claim_hash(),
                force=force,
                lease_seconds=lease_seconds,
                reason=reason,
                actor=actor,
                origin=origin,
            )
        )
        return claim

    def show(self, task_id: str) -> views.TaskDetail:
        """A task with every run, its checkpoints, graph edges and retained events.

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        return views.task_detail(
            self._machine, self._machine.get_task(task_id), self._feed.timeline(task_id)
        )

    # ---------------------------------------------------------- audit, inspect
    def timeline(
        self, task_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """A task's retained events after ``after_seq``, oldest first.

        Retention: in memory, the newest 256 events of each of the 10,000 most recently
        active tasks since this process started (see runtime/events.py). Every event has
        a global ``seq``, ``actor`` and ``origin``; for a live stream use
        :meth:`follow_events` with ``task_id`` and ``after_seq``.

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        self._machine.get_task(task_id)
        return self._feed.timeline(task_id, after_seq=after_seq, limit=limit)

    def inspect_task(self, task_id: str) -> views.InspectView:
        """Current run, bound session, recent runs and events, scheduler and pause state,
        and the deterministic ``next_action`` (see core/views.py:next_action).

        This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process.
        """
        task = self._machine.get_task(task_id)
        return views.inspect(self._machine, task, self._clock.now(), self._feed.timeline(task_id))

    def inspect_run(self, run_id: str) -> views.InspectView:
        """This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process."""
        run = self._machine.get_run(run_id)
        task = self._machine.tasks[run.task_id]
        return views.inspect(
            self._machine,
            task,
            self._clock.now(),
            [e for e in self._feed.timeline(task.id) if e.run_id in (None, run_id)],
            target_run=run,
        )

    # ------------------------------------------------------ completion contracts
    async def _with_artifacts(self, command: CompleteRun) -> CompleteRun:
        """Check the task's completion contract on disk and record the result in the
        command (the core refuses to complete without it). No contract: unchanged."""
        run = self._machine.runs.get(command.run_id)
        if run is None:
            return command
        task = self._machine.tasks[run.task_id]
        if not task.required_artifacts:
            return command
        root = self._workspace_root(task.workspace_id)
        paths = list(task.required_artifacts)
        missing = await trio.to_thread.run_sync(_missing_artifacts, root, paths)
        command.checked_artifacts = paths
        command.missing_artifacts = missing
        return command

    def _workspace_root(self, workspace_id: str | None) -> Path:
        roots = self._workspace_roots
        root: str | os.PathLike[str] | None = None
        if callable(roots):
            root = roots(workspace_id)
        elif roots is not None:
            root = roots.get(workspace_id or "")
        if root is None:
            where = f"workspace {workspace_id}" if workspace_id else "global tasks"
            raise InvalidInput(
                f"no workspace root is configured for {where}; pass workspace_roots to "
                "open_runtime to check completion contracts",
                code=WORKSPACE_ROOT_UNKNOWN,
            )
        return Path(root)

    # ------------------------------------------------------------------- events
    def events(self, *, after_seq: int = 0, task_id: str | None = None) -> list[Event]:
        """Recent acknowledged events (a bounded buffer), oldest first."""
        return self._feed.recent(after_seq=after_seq, task_id=task_id)

    def follow_events(
        self, *, after_seq: int = 0, task_id: str | None = None
    ) -> AsyncIterator[Event]:
        """Buffered events after ``after_seq``, then new ones as they are acknowledged."""
        return self._feed.follow(after_seq=after_seq, task_id=task_id)

    def status(self) -> RuntimeStatus:
        """This process's view, which may include writes still committing: await
        :meth:`settled` before showing it outside the process."""
        machine = self._machine
        return RuntimeStatus(
            tasks=len(machine.tasks),
            queued_runs=len(machine.index),
            leased_runs=sum(1 for _ in machine.leased_runs()),
            live_sessions=sum(1 for s in machine.sessions.values() if s.state == "live"),
            waiting_claimers=len(self._system.waiters),
            last_event_seq=machine.last_seq,
            durability=self.durability,
        )

    # -------------------------------------------------------------------- close
    async def _serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self._system.run(task_status=task_status)

    async def _drain(self) -> None:
        """Stop taking requests, let those in flight finish and their records commit."""
        self._closed = True
        self._system.fail_waiters(Unavailable("the runtime is shutting down", code=RUNTIME_CLOSED))
        while self._inflight:
            request = next(iter(self._inflight))
            await request.done.wait()
            self._inflight.discard(request)
        await self._committer.flush()

    def _close(self) -> None:
        self._closed = True
        error = Unavailable("the runtime closed before answering", code=RUNTIME_CLOSED)
        self._system.fail_waiters(error)
        for request in list(self._inflight):
            if not request.done.is_set():
                request.resolve(None, error)
            part = request.finish_part
            if part is not None and not part.done.is_set():
                part.resolve(None, error)
        self._feed.close()


class SessionHandle:
    """What an agent holds: its session id and the lease operations bound to it."""

    def __init__(self, runtime: Runtime, session_id: str) -> None:
        self._runtime = runtime
        self.id = session_id

    def __repr__(self) -> str:
        return f"SessionHandle(id={self.id!r})"

    def info(self) -> Session:
        return self._runtime.get_session(self.id)

    async def claim_next(
        self,
        *,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
    ) -> Claim:
        return await self._runtime.claim_next(
            self.id,
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )

    async def heartbeat(self, run_id: str, *, lease_seconds: float | None = None) -> Heartbeat:
        return await self._runtime.heartbeat(self.id, run_id, lease_seconds=lease_seconds)

    async def complete(self, run_id: str, *, result: Any = None) -> Run:
        return await self._runtime.complete(self.id, run_id, result=result)

    async def fail(self, run_id: str, *, error: str, metadata: dict[str, Any] | None = None) -> Run:
        return await self._runtime.fail(self.id, run_id, error=error, metadata=metadata)

    async def release(self, run_id: str, *, reason: str | None = None) -> Run:
        return await self._runtime.release(self.id, run_id, reason=reason)

    async def block(self, run_id: str, *, reason: str) -> Run:
        return await self._runtime.block(self.id, run_id, reason=reason)

    async def stop(self, *, reason: str | None = None) -> SessionReleased:
        return await self._runtime.stop_session(self.id, reason=reason)

    async def steal(
        self, task_id: str, *, force: bool = False, lease_seconds: float | None = None
    ) -> Claim:
        return await self._runtime.steal(task_id, self.id, force=force, lease_seconds=lease_seconds)

    async def checkpoint(self, task_id: str, note: str, *, author: str | None = None) -> Task:
        return await self._runtime.checkpoint(
            task_id, note, author=author, actor=Actor(kind="agent_session", ref=self.id)
        )

    async def complete_and_next(
        self,
        run_id: str,
        *,
        result: Any = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
    ) -> Finished:
        """Complete ``run_id`` and claim the next run in one step (see Runtime)."""
        return await self._runtime.complete_and_next(
            self.id,
            run_id,
            result=result,
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )

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
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
    ) -> Finished:
        """Fail ``run_id`` and claim the next run in one step (see Runtime)."""
        return await self._runtime.fail_and_next(
            self.id,
            run_id,
            error=error,
            metadata=metadata,
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )

    async def release_and_next(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        workspace: str | None = None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: str | int | None = None,
    ) -> Finished:
        """Release ``run_id`` and claim the next run in one step (see Runtime)."""
        return await self._runtime.release_and_next(
            self.id,
            run_id,
            reason=reason,
            wait=wait,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )


def _new_claim_hash() -> str:
    """The hash of a fresh claim token; the token itself is dropped here.

    Callers are resolved by (session, run id), so nothing needs the raw token after the
    grant: only its hash goes into the command, the journal and the snapshot.
    """
    return hash_token(new_secret_token(CLAIM_TOKEN_PREFIX))


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise InvalidInput(f"timeout must be zero or positive seconds, got {timeout!r}")


def _missing_artifacts(root: Path, paths: list[str]) -> list[str]:
    """The contract paths that do not exist under ``root`` (or resolve outside it)."""
    base = root.resolve()
    missing: list[str] = []
    for path in paths:
        target = (base / path).resolve()
        if not target.is_relative_to(base) or not target.exists():
            missing.append(path)
    return missing


def _string_list(values: Iterable[str], field: str) -> list[str]:
    if isinstance(values, str):
        raise InvalidInput(f"{field} must be a list of strings, not one string")
    return list(values)


@asynccontextmanager
async def open_runtime(
    clock: Callable[[], float] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    durability: Durability = "durable",
    event_capacity: int = DEFAULT_EVENT_CAPACITY,
    snapshot_every_records: int = DEFAULT_SNAPSHOT_EVERY_RECORDS,
    snapshot_every_seconds: float = DEFAULT_SNAPSHOT_EVERY_SECONDS,
    map_size: int | None = None,
    workspace_roots: WorkspaceRoots | None = None,
    allow_agent_force: bool = False,
    fresh_store: bool = False,
) -> AsyncIterator[Runtime]:
    """Run a lease runtime for the duration of the block.

    Without ``data_dir`` all state is in memory and lost at exit. With it, every change is
    journaled to LMDB before it is acknowledged: ``durable`` syncs each group commit to disk
    (survives an OS crash or power loss); ``relaxed`` skips the sync (survives a crash of
    this process, not of the machine). Boot loads the newest valid snapshot, replays the
    journal, expires leases that ran out while it was down (reason ``orphaned_on_boot``)
    and stops sessions whose TTL passed, all before the block starts.

    ``clock`` returns wall time in epoch seconds; by default wall time is read once and then
    advanced with trio's clock, so ``MockClock`` drives lease expiry in tests.

    ``workspace_roots`` locates the directory that completion-contract paths are relative
    to: a mapping from workspace id ("" for global tasks) to a directory, or a function of
    the workspace id (None for global tasks) returning one (or None if unknown).

    Force operations (``steal(force=True)``, ``force_release``, ``force_fail`` and the bulk
    forms) are operator actions: a session asking for one gets FORBIDDEN_OPERATOR_ACTION
    unless ``allow_agent_force`` is true.

    Boot never starts the clock earlier than the newest time the recovered state recorded,
    so a wall clock stepped back while the runtime was down cannot lengthen a lease.

    Storage fails closed: a data dir whose database is gone or empty raises
    ``Unavailable(code=STORE_MISSING)``, damaged storage ``STORAGE_CORRUPT``.
    ``fresh_store=True`` accepts a missing or empty database and starts a new, empty store
    there (discarding the old identity); it never discards a database that holds data.
    """
    if durability not in ("durable", "relaxed"):
        raise InvalidInput(f"durability must be durable or relaxed, not {durability!r}")
    if data_dir is None:
        runtime = Runtime(
            Machine(),
            RuntimeClock(clock),
            event_capacity=event_capacity,
            workspace_roots=workspace_roots,
            allow_agent_force=allow_agent_force,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime._serve)
                try:
                    yield runtime
                finally:
                    runtime._close()
                    nursery.cancel_scope.cancel()
        finally:
            runtime._close()
        return

    policy = SnapshotPolicy(snapshot_every_records, snapshot_every_seconds)
    store = await trio.to_thread.run_sync(
        lambda: Store.open(
            Path(data_dir),
            durability=durability,
            map_size=map_size or DEFAULT_MAP_SIZE,
            fresh=fresh_store,
        )
    )
    try:
        report = BootReport()
        machine = await trio.to_thread.run_sync(load_machine, store, report)
        runtime = Runtime(
            machine,
            # Never start before the newest time the recovered state has seen.
            RuntimeClock(clock, floor=machine.high_water),
            event_capacity=event_capacity,
            durability=durability,
            workspace_roots=workspace_roots,
            allow_agent_force=allow_agent_force,
        )
        runtime.boot_report = report
        committer = JournalCommitter(
            store, machine, runtime._acknowledge, on_rollback=runtime._system.after_rollback
        )
        runtime.use_committer(committer)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(committer.run)
                await nursery.start(runtime._serve)
                # Recovery runs through the actors, so it is journaled like any change,
                # and it finishes before the caller can send a single request.
                for command in recovery_commands(machine, runtime._clock.now(), report):
                    await runtime._call(command)
                # Armed only now, so every lease that ran out while down was expired above
                # as orphaned_on_boot rather than by the clock as an ordinary expiry.
                runtime._system.arm_deadlines_of_live_state()
                await nursery.start(run_snapshotter, machine, committer, policy)
                try:
                    yield runtime
                finally:
                    with trio.move_on_after(SHUTDOWN_GRACE_SECONDS) as scope:
                        scope.shield = True
                        await runtime._drain()
                        if committer.failure is None and committer.records_since_snapshot:
                            await take_snapshot(machine, committer).done.wait()
                    runtime._close()
                    nursery.cancel_scope.cancel()
        finally:
            runtime._close()
    finally:
        await trio.to_thread.run_sync(store.close)


SHUTDOWN_GRACE_SECONDS = 30.0
