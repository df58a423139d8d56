"""The embedded API: ``async with open_runtime() as rt`` and the session handle.

:class:`Runtime` carries out every operation of :mod:`runlease.operations` in this process:
``await rt.call(request)``, or the named methods of
:class:`~runlease.operation_methods.AsyncTaskMethods` that build the request
(``rt.create_task(...)``). A :class:`SessionHandle` does the same for one session's lease
operations. The socket server runs the very same requests through the same ``execute``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from hashlib import sha256
from os import urandom
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from runlease.actors.clock import RuntimeClock
from runlease.actors.commit import Committer, MemoryCommitter
from runlease.actors.idle_sessions import DEFAULT_SESSION_IDLE_TIMEOUT, check_idle_timeout
from runlease.actors.lease_clock import LEASE_CLOCK
from runlease.actors.requests import Request as Pending
from runlease.actors.starvation_watch import check_starve_after
from runlease.actors.system import ActorSystem
from runlease.core.commands import (
    AnyCommand,
    BulkForceRuns,
    CompleteRun,
    FailRun,
    FinishAndClaim,
    FinishDrain,
    ForceFailRun,
    ForceReleaseRun,
    RecoverRun,
    ReleaseRun,
    ReleaseSessionLeases,
    StartDrain,
    StealRun,
    UnblockTask,
)
from runlease.core.commands import ClaimNext as ClaimCommand
from runlease.core.create_keys import DEFAULT_IDEMPOTENCY_WINDOW, check_window
from runlease.core.ids import (
    ACCESS_TOKEN_PREFIX,
    SESSION_TOKEN_PREFIX,
    IdGenerator,
    hash_token,
    new_secret_token,
)
from runlease.core.machine import Machine, Outcome
from runlease.core.model import (
    AccessToken,
    Actor,
    Claim,
    Finished,
    NoClaim,
    Origin,
    Session,
    SessionReleased,
)
from runlease.core.views import DrainResult
from runlease.errors import (
    AUTH_TOKEN_REFUSED,
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
from runlease.hooks import Hook
from runlease.operation_methods import AsyncLeaseMethods, AsyncTaskMethods, method
from runlease.operations import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_STUCK_THRESHOLD,
    OPERATOR,
    ClaimNext,
    FinishRequest,
    OpenSession,
    Request,
    strings,
)
from runlease.persistence.events import HistoryRetention
from runlease.persistence.store import DEFAULT_MAP_SIZE, Store
from runlease.runtime.calls import EMBEDDED, Call
from runlease.runtime.collector import GcTuning, TunedCollector
from runlease.runtime.history import DEFAULT_MEMORY_EVENTS, EventHistory, Observer
from runlease.runtime.hooks import HookService, no_hooks, open_hooks
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
from runlease.runtime.operator_log import OperatorLog
from runlease.runtime.reads import MemoryReads, RuntimeStatus
from runlease.runtime.timings import RuntimeTimings

# Events kept in memory beside a store: the recent tail that live followers read.
DEFAULT_EVENT_CAPACITY = 10_000
# The commands that may override another holder's lease (see _check_operator_action).
# Commands a session may not send unless the host lets agents force (see
# Runtime._check_operator_action); checked by type first, off the claim path's way.
_FORCE_COMMANDS = (
    StealRun,
    ForceReleaseRun,
    ForceFailRun,
    BulkForceRuns,
    RecoverRun,
    UnblockTask,
)
# Where completion-contract paths are resolved: workspace id ("" global) -> directory, or a
# function of the workspace id (None global) -> directory or None.
WorkspaceRoots = (
    Mapping[str, str | os.PathLike[str]] | Callable[[str | None], str | os.PathLike[str] | None]
)
Durability = Literal["durable", "relaxed"]
R = TypeVar("R")
T = TypeVar("T")

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_STUCK_THRESHOLD",
    "EMBEDDED",
    "OPERATOR",
    "Durability",
    "Runtime",
    "RuntimeStatus",
    "SessionHandle",
    "open_runtime",
]


class Runtime(MemoryReads, AsyncTaskMethods):
    """One lease runtime. Create it with :func:`open_runtime`; all methods are trio-native.

    Writes go through the actors and return once acknowledged (durable when a journal is
    configured); they are stamped with origin ``embedded`` and, unless :meth:`acting_as`
    names one, no actor of their own (operator actions act as the operator). The sync
    reads return copies of this process's in-memory view without a round trip; that view
    may include writes whose commit is still running, which a crash would take back.
    Before showing state outside the process, ``await rt.settled()`` after the read, or
    compute the answer with ``await rt.read(fn)``, which does both.
    """

    def __init__(
        self,
        machine: Machine,
        clock: RuntimeClock,
        *,
        history: EventHistory | None = None,
        durability: str = "memory",
        workspace_roots: WorkspaceRoots | None = None,
        allow_agent_force: bool = False,
        starve_after: float | None = None,
        idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
        session_idle_timeout: float | None = None,
    ) -> None:
        self._workspace_roots = workspace_roots
        self._allow_agent_force = allow_agent_force
        self._machine = machine
        self._clock = clock
        self._ids = IdGenerator()
        # The published events: timelines, inspect, ``events`` and followers read here.
        self.history = history if history is not None else EventHistory()
        self._committer: Committer = MemoryCommitter(self._acknowledge)
        self._system = ActorSystem(
            machine,
            clock,
            self._committer,
            starve_after=check_starve_after(starve_after),
            session_idle_timeout=check_idle_timeout(session_idle_timeout),
        )
        # When each session last made a request (Call.session_id touches it).
        self.activity = self._system.activity
        self._inflight: set[Pending] = set()
        self._closed = False
        self._call = Call(self)
        self.durability = durability
        # How long a create's idempotency key is kept, stamped on each keyed create.
        self.idempotency_window = check_window(idempotency_window)
        self.boot_report: BootReport | None = None
        # Set when the runtime tunes the garbage collector (``gc_tuning``): its statistics.
        self.collector: TunedCollector | None = None
        # The hooks' dispatchers and delivery log (``hook list``, ``hook retry``).
        self.hooks: HookService = no_hooks()
        # Claim, commit and hook delivery times, for the metrics (runtime/metrics.py).
        self.timings = RuntimeTimings(wall=clock.now)

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

    def _acknowledge(self, request: Pending | None, outcome: Outcome[Any]) -> None:
        if outcome.events:
            self.history.publish(outcome.events)
        if request is not None:
            request.resolve(outcome.reply, outcome.error)

    # --------------------------------------------------------------- operations
    async def call(self, request: Request[R]) -> R:
        """Carry out ``request`` in this process (see :mod:`runlease.operations`)."""
        return await request.execute(self._call)

    def acting_as(self, actor: Actor, *, origin: Origin = EMBEDDED) -> ActingRuntime:
        """The same operations, stamped with ``actor`` (and ``origin``)."""
        return ActingRuntime(self, actor, origin)

    # -------------------------------------------------------- what requests use
    def new_id(self, prefix: str) -> str:
        return self._ids.new(prefix, self._clock.now())

    @staticmethod
    def new_claim_hash() -> str:
        """The hash of a fresh claim token; the token itself is dropped here.

        Callers are resolved by (session, run id), so nothing needs the raw token after
        the grant: only its hash goes into the command, the journal and the snapshot. The
        token is never shown either, so it is hashed as its 32 random bytes, without the
        text form a holder would be given (that encoding cost more than the hash).
        """
        return "sha256:" + sha256(urandom(32)).hexdigest()

    @staticmethod
    def new_session_token() -> tuple[str, str]:
        """A fresh session bearer token and its hash (only the hash is kept)."""
        token = new_secret_token(SESSION_TOKEN_PREFIX)
        return token, hash_token(token)

    @staticmethod
    def new_access_token() -> tuple[str, str]:
        """A fresh access-token secret and its hash (only the hash is kept)."""
        secret = new_secret_token(ACCESS_TOKEN_PREFIX)
        return secret, hash_token(secret)

    def authenticate(self, secret: str) -> AccessToken:
        """The access token ``secret`` belongs to, if it is usable now; AUTH_TOKEN_REFUSED
        otherwise, saying why (unknown, revoked, expired) without echoing the secret."""
        token_id = None
        if secret.startswith(ACCESS_TOKEN_PREFIX):
            token_id = self._machine.access_token_by_hash.get(hash_token(secret))
        if token_id is None:
            raise LeaseRefused(
                "the access token is not recognised; ask an operator for one "
                "(`runlease token create`)",
                code=AUTH_TOKEN_REFUSED,
            )
        return self.token_in_force(token_id)

    def token_in_force(self, token_id: str) -> AccessToken:
        """The access token ``token_id`` if it is still usable now (a connection checks
        its token before each request, so a revoke or an expiry takes effect at once)."""
        token = self._machine.access_tokens[token_id]
        if token.revoked_at is not None:
            raise LeaseRefused(
                f"access token {token.name!r} was revoked; ask an operator for a new one",
                code=AUTH_TOKEN_REFUSED,
            )
        if not token.usable(self._clock.now()):
            raise LeaseRefused(
                f"access token {token.name!r} expired; ask an operator for a new one",
                code=AUTH_TOKEN_REFUSED,
            )
        return token

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the runtime is closed", code=RUNTIME_CLOSED)

    def _check_operator_action(self, command: AnyCommand) -> None:
        """Refuse a force operation asked for by a session, unless the host allows it.

        Force operations override another holder's lease, so they belong to operators;
        recover and unblock overrule a park that is there for a person to decide on, so
        they go with them.
        This is decided here, before the command reaches the machine, so the journal holds
        only commands that were allowed and replaying it never depends on this setting.
        """
        if self._allow_agent_force or not isinstance(command, _FORCE_COMMANDS):
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
        elif isinstance(command, RecoverRun | UnblockTask):
            what = "recover" if isinstance(command, RecoverRun) else "unblock"
            instead = "ask an operator to look at the parked run"
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

    async def submit(self, command: AnyCommand) -> Any:
        """Send a command to the actor that owns it; its reply once acknowledged."""
        self._check_open()
        self._check_operator_action(command)
        if command.origin is None:
            command.origin = EMBEDDED
        if isinstance(command, CompleteRun) and self._has_contract(command):
            command = await self._with_artifacts(command)
        pending = Pending(command)
        self._inflight.add(pending)
        try:
            await self._system.send(pending)
            await pending.outcome()
        finally:
            self._inflight.discard(pending)
        return pending.result()

    async def claim(
        self,
        command: ClaimCommand,
        options: ClaimNext,
        stop_waiting: trio.CancelScope | None = None,
    ) -> Claim:
        """Make ``command``'s claim; with ``options.wait``, park until work arrives or
        ``options.timeout`` seconds pass (then NO_CLAIMABLE_RUN).

        ``stop_waiting`` is a scope the caller may cancel to give up: a claim not made yet
        is dropped (REQUEST_CANCELLED), while one the state machine made as the scope was
        cancelled is still returned, so the caller can hand it back rather than lose it.
        """
        self._check_open()
        timing = self.timings.claims
        started = timing.clock() if timing is not None else 0.0
        wait, timeout = options.wait, options.timeout
        pending = Pending(command, wait=wait)
        self._inflight.add(pending)
        try:
            await self._system.send(pending)
            with stop_waiting or contextlib.nullcontext():
                if not wait or timeout is None:
                    await pending.outcome()
                else:
                    with trio.move_on_after(timeout):
                        await pending.outcome()
            if not pending.resolved:
                if not pending.assigned:
                    pending.abandoned = True
                    if stop_waiting is not None and stop_waiting.cancel_called:
                        raise Unavailable("the claim was cancelled", code=REQUEST_CANCELLED)
                    raise _no_claim_within(timeout)
                # The claim was made as the timeout fired: it must still reach the caller.
                with trio.CancelScope(shield=True):
                    await pending.done.wait()
        finally:
            if not pending.resolved and not pending.assigned:
                pending.abandoned = True
            self._inflight.discard(pending)
            if wait and command.session_id is not None:
                # The session was busy for the whole wait: its idle time starts at the end.
                self.activity.touch(command.session_id)
            if timing is not None:
                timing.done(started, pending.parked)
        claim: Claim = pending.result()
        return claim

    async def finish_and_claim(
        self,
        finish: CompleteRun | FailRun | ReleaseRun,
        claim: ClaimCommand,
        options: ClaimNext,
        stop_waiting: trio.CancelScope | None = None,
    ) -> Finished:
        """Apply ``finish``, then make ``claim`` (waiting as ``options`` say), as one step.

        In durable mode the finish is journaled before the claim and the call returns once
        both are. ``stop_waiting`` is a scope the caller may cancel to end the wait early;
        the finish is then still reported, with ``no_claim`` REQUEST_CANCELLED.
        """
        self._check_open()
        timing = self.timings.claims
        started = timing.clock() if timing is not None else 0.0
        if isinstance(finish, CompleteRun) and self._has_contract(finish):
            finish = await self._with_artifacts(finish)
        wait, timeout = options.wait, options.timeout
        pending = Pending(FinishAndClaim(now=0.0, finish=finish, claim=claim), wait=wait)
        self._inflight.add(pending)
        try:
            await self._system.send(pending)
            gave_up: RunleaseError | None = None
            if not wait:
                await pending.outcome()
            else:
                with stop_waiting or contextlib.nullcontext():
                    with trio.move_on_after(math.inf if timeout is None else timeout):
                        await pending.outcome()
                if not pending.resolved:
                    gave_up = (
                        _no_claim_within(timeout)
                        if stop_waiting is None or not stop_waiting.cancel_called
                        else Unavailable("the wait was cancelled", code=REQUEST_CANCELLED)
                    )
            if not pending.resolved:
                part = pending.finish_part
                if part is not None and not pending.assigned:
                    # Parked and nothing claimed yet: leave the queue of waiters (it skips
                    # abandoned requests) and report the finish alone.
                    pending.abandoned = True
                    pending.resolve(None, gave_up)
                else:
                    # Either not applied yet (an abandoned request is applied without
                    # parking) or a claim was made as the wait ended: its reply must come.
                    pending.abandoned = not pending.assigned
                with trio.CancelScope(shield=True):
                    await pending.done.wait()
            return await self._finished(pending)
        finally:
            if not pending.resolved and not pending.assigned:
                pending.abandoned = True  # the caller is gone: do not wait on its behalf
            self._inflight.discard(pending)
            if wait and claim.session_id is not None:
                self.activity.touch(claim.session_id)
            if timing is not None:
                timing.done(started, pending.parked)

    async def _finished(self, pending: Pending) -> Finished:
        part = pending.finish_part
        if part is None:
            # Applied as one command: its reply holds both parts, or the finish's refusal.
            finished: Finished = pending.result()
            return finished
        # The finish was journaled on its own; its reply is durable once it resolves.
        self._inflight.add(part)
        try:
            with trio.CancelScope(shield=True):
                await part.done.wait()
        finally:
            self._inflight.discard(part)
        alone: Finished = part.result()
        if pending.error is None:
            claim: Claim = pending.reply
            return Finished(run=alone.run, claim=claim)
        error = pending.error
        return Finished(run=alone.run, no_claim=NoClaim(code=error.code, message=error.message))

    async def drain(self, start: StartDrain, timeout: float) -> DrainResult:
        """Apply ``start`` (it pauses the scheduler unless it is paused already), wait until
        no lease is active or ``timeout`` seconds pass, record the end of the drain and
        report how many leases remain. Both ends are journaled, each with its event."""
        started = self._clock.now()
        await self.submit(start)
        finish = FinishDrain(now=0.0, started_at=started, actor=start.actor, origin=start.origin)
        try:
            with trio.move_on_after(timeout):
                while self._machine.leased_count():
                    self._check_open()
                    await self.history.wait_beyond(self.history.last_seq)
        except BaseException:
            # Cut short (the caller left, the server is stopping): the drain still ends on
            # record, so every start has its end; a runtime too far gone to record it
            # keeps the original error.
            with trio.CancelScope(shield=True), contextlib.suppress(RunleaseError):
                await self.submit(finish)
            raise
        await self.submit(finish)

        def result() -> DrainResult:
            remaining = self._machine.leased_count()
            return DrainResult(
                status=self.scheduler_status(),
                completed=remaining == 0,
                timed_out=remaining > 0,
                remaining_claims=remaining,
                started_at=started,
                completed_at=self._clock.now(),
            )

        return await self.read(result)

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
        request = OpenSession(
            agent=agent,
            parent=parent,
            ttl=ttl,
            capabilities=strings(capabilities, "capabilities"),
            auto_stop_on_parent=auto_stop_on_parent,
        )
        session: Session = await self.submit(request.command(Call(self)))
        self.session_opened(session.id)
        return SessionHandle(self, session.id)

    # For an out-of-process agent: the session and its bearer token (shown this once; only
    # its hash is kept, and session_id_for_token maps a presented token back).
    open_session_with_token = method(OpenSession)

    def session_opened(self, session_id: str) -> None:
        """Start watching a new session for idleness (see actors/idle_sessions.py)."""
        self._system.session_opened(session_id)

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

    async def release_session_leases(self, session_id: str, *, reason: str) -> SessionReleased:
        """Put a session's leased run back in the queue without stopping the session."""
        result: SessionReleased = await self.submit(
            ReleaseSessionLeases(now=0.0, session_id=session_id, reason=reason)
        )
        return result

    # ------------------------------------------------------ completion contracts
    def _has_contract(self, command: CompleteRun) -> bool:
        """Whether the run's task declares artifacts to check before it may complete."""
        run = self._machine.runs.get(command.run_id)
        return run is not None and bool(self._machine.tasks[run.task_id].required_artifacts)

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

    # -------------------------------------------------------------------- close
    async def _serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self._system.run(task_status=task_status)

    async def _drain(self) -> None:
        """Stop taking requests, let those in flight finish and their records commit."""
        self._closed = True
        self._system.fail_waiters(Unavailable("the runtime is shutting down", code=RUNTIME_CLOSED))
        while self._inflight:
            pending = next(iter(self._inflight))
            await pending.done.wait()
            self._inflight.discard(pending)
        await self._committer.flush()

    def _close(self) -> None:
        self._closed = True
        error = Unavailable("the runtime closed before answering", code=RUNTIME_CLOSED)
        self._system.fail_waiters(error)
        for pending in list(self._inflight):
            if not pending.resolved:
                pending.resolve(None, error)
            part = pending.finish_part
            if part is not None and not part.resolved:
                part.resolve(None, error)
        self.history.close()


class ActingRuntime(AsyncTaskMethods):
    """The runtime's operations stamped with a given actor: ``rt.acting_as(actor)``."""

    def __init__(self, runtime: Runtime, actor: Actor, origin: Origin) -> None:
        self._runtime = runtime
        self.actor = actor
        self.origin = origin
        self._call = Call(runtime, actor=actor, origin=origin)

    async def call(self, request: Request[R]) -> R:
        return await request.execute(self._call)


class SessionHandle(AsyncLeaseMethods):
    """What an agent holds: its session id and the lease operations bound to it.

    Its writes are stamped with the session as actor, unless :meth:`acting_as` names
    another (an operator stealing on the session's behalf).
    """

    def __init__(
        self,
        runtime: Runtime,
        session_id: str,
        *,
        actor: Actor | None = None,
        origin: Origin = EMBEDDED,
    ) -> None:
        self._runtime = runtime
        self.id = session_id
        self._actor = actor
        self._origin = origin
        self._call = Call(runtime, actor=actor, origin=origin, session_id=session_id)

    def __repr__(self) -> str:
        return f"SessionHandle(id={self.id!r})"

    async def call(self, request: Request[R]) -> R:
        return await request.execute(self._call)

    async def finish_and_claim(self, finish: FinishRequest, then: ClaimNext) -> Finished:
        return await finish.then_claim(self._call, then)

    def acting_as(self, actor: Actor, *, origin: Origin = EMBEDDED) -> SessionHandle:
        """The same session's operations, stamped with ``actor`` (and ``origin``)."""
        return SessionHandle(self._runtime, self.id, actor=actor, origin=origin)

    def info(self) -> Session:
        return self._runtime.get_session(self.id)

    async def stop(self, *, reason: str | None = None) -> SessionReleased:
        return await self._runtime.stop_session(self.id, reason=reason)


def _no_claim_within(timeout: float | None) -> NotFound:
    return NotFound(f"no claimable run arrived within {timeout} seconds", code=NO_CLAIMABLE_RUN)


def _missing_artifacts(root: Path, paths: list[str]) -> list[str]:
    """The contract paths that do not exist under ``root`` (or resolve outside it)."""
    base = root.resolve()
    missing: list[str] = []
    for path in paths:
        target = (base / path).resolve()
        if not target.is_relative_to(base) or not target.exists():
            missing.append(path)
    return missing


@asynccontextmanager
async def open_runtime(
    clock: Callable[[], float] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    durability: Durability = "durable",
    event_capacity: int | None = None,
    snapshot_every_records: int = DEFAULT_SNAPSHOT_EVERY_RECORDS,
    snapshot_every_seconds: float = DEFAULT_SNAPSHOT_EVERY_SECONDS,
    map_size: int | None = None,
    workspace_roots: WorkspaceRoots | None = None,
    allow_agent_force: bool = False,
    fresh_store: bool = False,
    starve_after: float | None = None,
    gc_tuning: GcTuning | None = None,
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
    observers: Iterable[Observer] = (),
    history_retention: HistoryRetention | None = None,
    session_idle_timeout: float | None = DEFAULT_SESSION_IDLE_TIMEOUT,
    hooks: Sequence[Hook] = (),
) -> AsyncIterator[Runtime]:
    """Run a lease runtime for the duration of the block.

    Without ``data_dir`` all state is in memory and lost at exit. With it, every change is
    journaled (a write-ahead log, checkpointed into LMDB) before it is acknowledged:
    ``durable`` flushes each group commit to disk (survives an OS crash or power loss);
    ``relaxed`` flushes shortly after the reply (survives a crash of this process, not of
    the machine). Boot loads the newest valid snapshot, replays the
    journal, expires leases that ran out while it was down (reason ``orphaned_on_boot``)
    and stops sessions whose TTL passed, all before the block starts.

    ``clock`` returns wall time in epoch seconds; by default wall time is read once and then
    advanced with trio's clock, so ``MockClock`` drives lease expiry in tests.

    ``workspace_roots`` locates the directory that completion-contract paths are relative
    to: a mapping from workspace id ("" for global tasks) to a directory, or a function of
    the workspace id (None for global tasks) returning one (or None if unknown).

    Force operations (``steal(force=True)``, ``force_release``, ``force_fail`` and the bulk
    forms) are operator actions: a session asking for one gets FORBIDDEN_OPERATOR_ACTION
    unless ``allow_agent_force`` is true; so are ``recover_run`` and ``unblock_task``.

    ``starve_after`` turns on the starvation backstop: a claimable queued run that no live
    session could take (capabilities, owner) for that many seconds is parked in
    ``needs_attention`` with reason ``starved``, for an operator to ``recover_run``. Off
    (None) by default.

    ``session_idle_timeout`` (24 h by default; None or 0 turns it off) stops a live session
    that holds no lease and has made no request for that many seconds, with reason
    ``idle``. Activity is kept in memory; a restart counts as activity for every session.

    Boot never starts the clock earlier than the newest time the recovered state recorded,
    so a wall clock stepped back while the runtime was down cannot lengthen a lease.

    Storage fails closed: a data dir whose database is gone or empty raises
    ``Unavailable(code=STORE_MISSING)``, damaged storage ``STORAGE_CORRUPT``.
    ``fresh_store=True`` accepts a missing or empty database and starts a new, empty store
    there (discarding the old identity); it never discards a database that holds data.

    ``gc_tuning`` lets the runtime tune Python's garbage collector, which is process-wide,
    so it is off unless asked for: a host that owns its process passes ``GcTuning()`` to
    freeze the recovered state after boot and any large long-lived heap after a long full
    collection, and to raise the young generation's threshold (see
    :mod:`runlease.runtime.collector`). Everything is restored when the block exits.

    ``idempotency_window`` is how many seconds a create's ``idempotency_key`` is kept
    (24 h by default): within it the same key and request answer the first task.

    Every acknowledged event goes to ``rt.history`` (:class:`EventHistory`): timelines,
    ``events``, ``get_event`` and followers read it. ``observers`` are called with each
    event once it is durable, in sequence order (see :meth:`EventHistory.add_observer`).
    ``history_retention`` says how long events are kept (default: 30 days, no count
    limit). Without ``data_dir`` the history lives in memory: the newest
    ``history_retention.max_events`` events (100,000 when it sets none, or
    ``event_capacity``). With one, the store keeps it and ``event_capacity`` (10,000) of
    the newest stay in memory for live followers.

    ``hooks`` (:class:`runlease.hooks.Hook`) send events to URLs or commands at least
    once, from the durable history, each by a dispatcher of its own; ``rt.hooks`` lists
    their deliveries and retries a failed one.
    """
    if durability not in ("durable", "relaxed"):
        raise InvalidInput(f"durability must be durable or relaxed, not {durability!r}")
    starve_after = check_starve_after(starve_after)
    idempotency_window = check_window(idempotency_window)
    session_idle_timeout = check_idle_timeout(session_idle_timeout)
    collector = None if gc_tuning is None else TunedCollector(gc_tuning)
    try:
        async with _open_runtime(
            clock,
            data_dir=data_dir,
            durability=durability,
            event_capacity=event_capacity,
            snapshot_every_records=snapshot_every_records,
            snapshot_every_seconds=snapshot_every_seconds,
            map_size=map_size,
            workspace_roots=workspace_roots,
            allow_agent_force=allow_agent_force,
            fresh_store=fresh_store,
            starve_after=starve_after,
            collector=collector,
            idempotency_window=idempotency_window,
            observers=list(observers),
            retention=history_retention or HistoryRetention(),
            session_idle_timeout=session_idle_timeout,
            hooks=hooks,
        ) as runtime:
            yield runtime
    finally:
        if collector is not None:
            collector.stop()


@asynccontextmanager
async def _open_runtime(
    clock: Callable[[], float] | None,
    *,
    data_dir: str | os.PathLike[str] | None,
    durability: Durability,
    event_capacity: int | None,
    snapshot_every_records: int,
    snapshot_every_seconds: float,
    map_size: int | None,
    workspace_roots: WorkspaceRoots | None,
    allow_agent_force: bool,
    fresh_store: bool,
    starve_after: float | None,
    collector: TunedCollector | None,
    idempotency_window: float,
    observers: list[Observer],
    retention: HistoryRetention,
    session_idle_timeout: float | None = None,
    hooks: Sequence[Hook] = (),
) -> AsyncIterator[Runtime]:
    if collector is not None:
        collector.start()
    if data_dir is None:
        memory_events = retention.max_events or event_capacity or DEFAULT_MEMORY_EVENTS
        fresh = Machine()
        history = EventHistory(capacity=memory_events, observers=observers)
        history.add_observer(OperatorLog(fresh), kinds=OperatorLog.KINDS)
        runtime = Runtime(
            fresh,
            RuntimeClock(clock),
            history=history,
            workspace_roots=workspace_roots,
            allow_agent_force=allow_agent_force,
            starve_after=starve_after,
            idempotency_window=idempotency_window,
            session_idle_timeout=session_idle_timeout,
        )
        runtime.collector = collector
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime._serve)
                if collector is not None:
                    collector.after_boot()  # nothing recovered, but the process's own heap
                try:
                    async with _running_hooks(runtime, hooks, None):
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
        # Boot's own expiries are logged as recovery until boot_finished.
        operator_log = OperatorLog(machine, booting=True)
        history = EventHistory(
            capacity=event_capacity or DEFAULT_EVENT_CAPACITY,
            # Events older than the memory ring are read from the store.
            store=store,
            start_seq=machine.last_seq,
            observers=observers,
        )
        history.add_observer(operator_log, kinds=OperatorLog.KINDS)
        runtime = Runtime(
            machine,
            # Never start before the newest time the recovered state has seen.
            RuntimeClock(clock, floor=machine.high_water),
            history=history,
            durability=durability,
            workspace_roots=workspace_roots,
            allow_agent_force=allow_agent_force,
            starve_after=starve_after,
            idempotency_window=idempotency_window,
            session_idle_timeout=session_idle_timeout,
        )
        runtime.boot_report = report
        runtime.collector = collector
        committer = JournalCommitter(
            store,
            machine,
            runtime._acknowledge,
            on_rollback=runtime._system.after_rollback,
            clock=runtime._clock.now,
            history_retention=retention,
            # Compaction keeps what followers and hooks have not read yet.
            keep_events_after=lambda: runtime.history.keep_after,
            commit_timings=runtime.timings.commits,
        )
        runtime.use_committer(committer)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(committer.run)
                await nursery.start(runtime._serve)
                # Recovery runs through the actors, so it is journaled like any change,
                # and it finishes before the caller can send a single request.
                for command in recovery_commands(machine, runtime._clock.now(), report):
                    command.origin = LEASE_CLOCK
                    await runtime.submit(command)
                # Armed only now, so every lease that ran out while down was expired above
                # as orphaned_on_boot rather than by the clock as an ordinary expiry.
                runtime._system.arm_deadlines_of_live_state()
                operator_log.boot_finished(report)
                if collector is not None:
                    # The recovered state lives as long as the runtime: out of the
                    # collector's full scans from now on.
                    collector.after_boot()
                await nursery.start(run_snapshotter, machine, committer, policy)
                try:
                    async with _running_hooks(runtime, hooks, store):
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


@asynccontextmanager
async def _running_hooks(
    runtime: Runtime, hooks: Sequence[Hook], store: Store | None
) -> AsyncIterator[None]:
    """Deliver ``hooks`` while the block runs (nothing starts when there are none)."""
    if not hooks:
        yield
        return
    async with open_hooks(
        hooks, runtime.history, store, delivery_lag=runtime.timings.hook_lag
    ) as service:
        runtime.hooks = service
        yield
