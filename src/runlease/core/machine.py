"""Every lease and task transition, in one pure module.

``Machine.apply(command)`` checks the command against the current state and either raises a
:class:`runlease.errors.RunleaseError` having changed nothing, or changes the state and
returns an :class:`Outcome`: the reply for the caller, the events emitted, and what the
shell must do next (schedule a deadline, wake waiting claimers). No trio, no IO, no clock:
the time is the command's ``now``, and ids and claim tokens arrive inside the command.

One exception to "raise having changed nothing": a claim whose session still holds a lease
that is already past its deadline first expires that lease (an event), then reports the
claim's own error in ``Outcome.error``. The shell journals such an outcome like any other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from runlease.core import validate
from runlease.core.commands import (
    AnyCommand,
    BlockRun,
    ClaimNext,
    CompleteRun,
    CreateTask,
    ExpireLease,
    ExpireSession,
    FailRun,
    FinishAndClaim,
    HeartbeatRun,
    OpenSession,
    ReleaseRun,
    ReleaseSessionLeases,
    StartTask,
    StopSession,
)
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_token, token_matches
from runlease.core.index import ClaimIndex
from runlease.core.model import (
    DEFAULT_MAX_ATTEMPTS,
    ERROR_LEASE_RECOVERY_EXHAUSTED,
    LEASED_RUN_STATUSES,
    MAX_DESCRIPTION_CHARS,
    MAX_MAX_ATTEMPTS,
    MAX_METADATA_BYTES,
    MAX_REASON_CHARS,
    MAX_RESULT_BYTES,
    MAX_TITLE_CHARS,
    PRIORITY_RANK,
    REASON_LEASE_EXPIRED,
    REASON_PARENT_STOPPED,
    REASON_SESSION_STOPPED,
    REASON_TTL_EXPIRED,
    SESSION_RELEASE_REASONS,
    Claim,
    Event,
    Finished,
    Heartbeat,
    LeaseView,
    NoClaim,
    Run,
    Session,
    SessionReleased,
    Task,
    TaskStatus,
)
from runlease.errors import (
    AUTONOMY_FOREIGN_RUN,
    AUTONOMY_LEASE_ALREADY_HELD,
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    AUTONOMY_SESSION_REQUIRED,
    INVALID_TRANSITION,
    NO_CLAIMABLE_RUN,
    RUN_NOT_FOUND,
    SESSION_NOT_FOUND,
    SESSION_STOPPED,
    TASK_NOT_FOUND,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
)

MAX_ERROR_CHARS = 8 * 1024
_TOKEN_HASH = re.compile(r"sha256:[0-9a-f]{64}")

# (deadline, kind, id): what the lease clock must watch after this step.
Deadline = tuple[float, str, str]
LEASE_DEADLINE = "lease"
SESSION_DEADLINE = "session"


class Outcome(msgspec.Struct, kw_only=True):
    reply: Any = None
    events: list[Event] = []
    deadlines: list[Deadline] = []
    # True when a run entered the queue, so waiting claimers should try again.
    queued: bool = False
    error: RunleaseError | None = None


def derive_task_status(task: Task, run: Run | None) -> TaskStatus:
    """A task's status follows from its current run (the reference's derivation rules)."""
    if run is None:
        return "pending"
    status = run.status
    if status == "queued":
        return "ready"
    if status in LEASED_RUN_STATUSES:
        return "in_progress"
    if status == "failed":
        # A failure with attempts left leaves the task startable again.
        return "failed" if run.attempt >= task.max_attempts else "pending"
    if status == "completed":
        return "completed"
    if status == "canceled":
        return "canceled"
    return "needs_attention"


def snapshot_task(task: Task) -> Task:
    copy = msgspec.structs.replace(task)
    if task.metadata is not None:
        copy.metadata = validate.copy_payload(task.metadata)
    return copy


def snapshot_run(run: Run) -> Run:
    copy = msgspec.structs.replace(run)
    if run.result is not None:
        copy.result = validate.copy_payload(run.result)
    if run.failure_metadata is not None:
        copy.failure_metadata = validate.copy_payload(run.failure_metadata)
    return copy


class Machine:
    """The whole in-memory state of one runtime and the transitions over it."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.runs: dict[str, Run] = {}
        self.sessions: dict[str, Session] = {}
        self.children: dict[str, list[str]] = {}
        self.session_by_token_hash: dict[str, str] = {}
        self.index = ClaimIndex()
        self.last_seq = 0
        # Raw claim tokens of live leases, by run id. They never leave this object: runs and
        # replies carry only the hash, and callers are resolved by (session, run_id).
        self._tokens: dict[str, str] = {}
        self._handlers: dict[type[Any], Callable[[Any], Outcome]] = {
            CreateTask: self._create_task,
            StartTask: self._start_task,
            OpenSession: self._open_session,
            StopSession: self._stop_session,
            ReleaseSessionLeases: self._release_session_leases,
            ExpireSession: self._expire_session,
            ClaimNext: self._claim_next,
            HeartbeatRun: self._heartbeat,
            CompleteRun: self._complete,
            FailRun: self._fail,
            ReleaseRun: self._release,
            BlockRun: self._block,
            ExpireLease: self._expire_lease,
            FinishAndClaim: self._finish_and_claim,
        }

    # ------------------------------------------------------------------ entry point
    def apply(self, command: AnyCommand) -> Outcome:
        handler = self._handlers.get(type(command))
        if handler is None:
            raise InvalidInput(f"unknown command {type(command).__name__}")
        return handler(command)

    def adopt(self, other: Machine) -> None:
        """Take over another machine's whole state (used to roll back to the journal)."""
        self.tasks = other.tasks
        self.runs = other.runs
        self.sessions = other.sessions
        self.children = other.children
        self.session_by_token_hash = other.session_by_token_hash
        self.index = other.index
        self.last_seq = other.last_seq
        self._tokens = other._tokens

    # ------------------------------------------------------------------------ reads
    def get_task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}", code=TASK_NOT_FOUND)
        return task

    def get_run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}", code=RUN_NOT_FOUND)
        return run

    def get_session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}", code=SESSION_NOT_FOUND)
        return session

    def leased_runs(self) -> Iterator[Run]:
        for run_id in self._tokens:
            yield self.runs[run_id]

    def claim_token_for_tests(self, run_id: str) -> str | None:
        """Only for tests that prove the token never escapes; not used by the runtime."""
        return self._tokens.get(run_id)

    # -------------------------------------------------------------------- snapshots
    def live_tokens(self) -> dict[str, str]:
        """A copy of the raw claim tokens of live leases, by run id, for the snapshot codec.

        Snapshots must carry them so a restored lease still accepts its holder; nothing
        else may read them.
        """
        return dict(self._tokens)

    @classmethod
    def restore(
        cls,
        *,
        tasks: Iterable[Task],
        runs: Iterable[Run],
        sessions: Iterable[Session],
        tokens: dict[str, str],
        last_seq: int,
    ) -> Machine:
        """Rebuild a machine from its records (a decoded snapshot); the records are adopted.

        Derived state is recomputed: ``children`` in session order (the order they were
        opened in), and the claim index from the queued runs through ``_index``, so claims
        come out in exactly the order the original machine would hand them out.
        """
        machine = cls()
        machine.tasks = {task.id: task for task in tasks}
        machine.runs = {run.id: run for run in runs}
        machine.sessions = {session.id: session for session in sessions}
        for session in machine.sessions.values():
            if session.token_hash is not None:
                machine.session_by_token_hash[session.token_hash] = session.id
            if session.parent_id is not None:
                machine.children.setdefault(session.parent_id, []).append(session.id)
        caps_of: dict[tuple[str, ...], frozenset[str]] = {}

        def queued() -> Iterator[tuple[str, int, float, str | None, frozenset[str]]]:
            for run in machine.runs.values():
                if run.status == "queued":
                    task = machine.tasks[run.task_id]
                    caps = caps_of.get(task.required_capabilities)
                    if caps is None:
                        caps = caps_of[task.required_capabilities] = frozenset(
                            task.required_capabilities
                        )
                    yield (
                        run.id,
                        PRIORITY_RANK[task.priority],
                        run.queued_at,
                        task.workspace_id,
                        caps,
                    )

        machine.index.add_many(queued())
        machine._tokens = dict(tokens)
        machine.last_seq = last_seq
        return machine

    # ----------------------------------------------------------------- tasks, runs
    def _create_task(self, cmd: CreateTask) -> Outcome:
        if cmd.task_id in self.tasks:
            raise InvalidInput(f"task {cmd.task_id!r} already exists")
        title = validate.text(cmd.title, "title", max_chars=MAX_TITLE_CHARS)
        description = validate.text(
            cmd.description, "description", max_chars=MAX_DESCRIPTION_CHARS, required=False
        )
        if cmd.priority not in PRIORITY_RANK:
            raise InvalidInput(
                f"priority must be one of {', '.join(PRIORITY_RANK)}; got {cmd.priority!r}"
            )
        workspace_id = (
            None if cmd.workspace_id is None else validate.name(cmd.workspace_id, "workspace_id")
        )
        scope = cmd.scope or ("workspace" if workspace_id is not None else "global")
        if scope == "workspace" and workspace_id is None:
            raise InvalidInput("a workspace-scoped task needs a workspace_id")
        if scope == "global" and workspace_id is not None:
            raise InvalidInput("a global task cannot have a workspace_id; use scope=workspace")
        if scope not in ("global", "workspace"):
            raise InvalidInput(f"scope must be global or workspace; got {scope!r}")
        max_attempts = DEFAULT_MAX_ATTEMPTS if cmd.max_attempts is None else cmd.max_attempts
        if (
            isinstance(max_attempts, bool)
            or not isinstance(max_attempts, int)
            or not 1 <= max_attempts <= MAX_MAX_ATTEMPTS
        ):
            raise InvalidInput(
                f"max_attempts must be a whole number from 1 to {MAX_MAX_ATTEMPTS}; "
                f"got {max_attempts!r}"
            )
        metadata = validate.json_object(cmd.metadata, "metadata", max_bytes=MAX_METADATA_BYTES)
        caps = validate.capabilities(cmd.required_capabilities, "required_capabilities")
        if cmd.start_run_id is not None and cmd.start_run_id in self.runs:
            raise InvalidInput(f"run {cmd.start_run_id!r} already exists")

        task = Task(
            id=cmd.task_id,
            title=title,
            description=description,
            priority=cmd.priority,
            scope=scope,
            workspace_id=workspace_id,
            max_attempts=max_attempts,
            metadata=metadata,
            required_capabilities=caps,
            created_at=cmd.now,
            updated_at=cmd.now,
        )
        self.tasks[task.id] = task
        events = [self._event("task_created", cmd.now, task_id=task.id)]
        queued = False
        if cmd.start_run_id is not None:
            events.append(self._enqueue(task, None, cmd.start_run_id, cmd.now))
            queued = True
        return Outcome(reply=snapshot_task(task), events=events, queued=queued)

    def _start_task(self, cmd: StartTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        if cmd.run_id in self.runs:
            raise InvalidInput(f"run {cmd.run_id!r} already exists")
        current = self.runs[task.current_run_id] if task.current_run_id else None
        if current is not None:
            if current.status == "queued" or current.status in LEASED_RUN_STATUSES:
                raise InvalidInput(
                    f"task {task.id} already has run {current.id} ({current.status}); "
                    "wait for it to finish before starting another",
                    code=INVALID_TRANSITION,
                )
            if current.status in ("completed", "canceled"):
                raise InvalidInput(
                    f"task {task.id} is {current.status}; it cannot be started again",
                    code=INVALID_TRANSITION,
                )
            if current.attempt >= task.max_attempts:
                raise InvalidInput(
                    f"task {task.id} has used all {task.max_attempts} attempts",
                    code=INVALID_TRANSITION,
                )
        event = self._enqueue(task, current, cmd.run_id, cmd.now)
        return Outcome(reply=snapshot_run(self.runs[cmd.run_id]), events=[event], queued=True)

    def _enqueue(self, task: Task, previous: Run | None, run_id: str, now: float) -> Event:
        run = Run(
            id=run_id,
            task_id=task.id,
            attempt=1 if previous is None else previous.attempt + 1,
            previous_run_id=None if previous is None else previous.id,
            queued_at=now,
        )
        self.runs[run_id] = run
        task.current_run_id = run_id
        self._index(task, run)
        self._settle_task(task, run, now)
        return self._event(
            "run_queued", now, task_id=task.id, run_id=run_id, data={"attempt": run.attempt}
        )

    def _index(self, task: Task, run: Run) -> None:
        self.index.add(
            run.id,
            rank=PRIORITY_RANK[task.priority],
            queued_at=run.queued_at,
            workspace_id=task.workspace_id,
            capabilities=frozenset(task.required_capabilities),
        )

    def _settle_task(self, task: Task, run: Run | None, now: float) -> None:
        task.status = derive_task_status(task, run)
        task.updated_at = now
        task.closed_at = now if task.status in ("completed", "failed", "canceled") else None

    # --------------------------------------------------------------------- sessions
    def _open_session(self, cmd: OpenSession) -> Outcome:
        if cmd.session_id in self.sessions:
            raise InvalidInput(f"session {cmd.session_id!r} already exists")
        agent = validate.name(cmd.agent, "agent")
        caps = validate.capabilities(cmd.capabilities, "capabilities")
        ttl_deadline = None
        if cmd.ttl_seconds is not None:
            ttl_deadline = cmd.now + validate.positive_seconds(cmd.ttl_seconds, "ttl")
        if cmd.parent_id is not None:
            parent = self.get_session(cmd.parent_id)
            if parent.state != "live":
                raise LeaseRefused(
                    f"parent session {parent.id} is stopped; open the child under a live one",
                    code=SESSION_STOPPED,
                )
        token_hash = cmd.session_token_hash
        if token_hash is not None and (
            not _TOKEN_HASH.fullmatch(token_hash) or token_hash in self.session_by_token_hash
        ):
            raise InvalidInput("session token hash is malformed or already in use")
        session = Session(
            id=cmd.session_id,
            token_hash=token_hash,
            agent=agent,
            parent_id=cmd.parent_id,
            ttl_deadline=ttl_deadline,
            auto_stop_on_parent=cmd.auto_stop_on_parent,
            capabilities=caps,
            opened_at=cmd.now,
        )
        self.sessions[session.id] = session
        if token_hash is not None:
            self.session_by_token_hash[token_hash] = session.id
        if cmd.parent_id is not None:
            self.children.setdefault(cmd.parent_id, []).append(session.id)
        event = self._event(
            "session_opened",
            cmd.now,
            session_id=session.id,
            data={"agent": agent, "parent_id": cmd.parent_id, "ttl_deadline": ttl_deadline},
        )
        deadlines = [] if ttl_deadline is None else [(ttl_deadline, SESSION_DEADLINE, session.id)]
        return Outcome(reply=msgspec.structs.replace(session), events=[event], deadlines=deadlines)

    def _stop_session(self, cmd: StopSession) -> Outcome:
        session = self.get_session(cmd.session_id)
        reason = validate.optional_text(cmd.reason, "reason") or REASON_SESSION_STOPPED
        return self._stop_tree(session, reason, REASON_SESSION_STOPPED, cmd.now)

    def _expire_session(self, cmd: ExpireSession) -> Outcome:
        session = self.get_session(cmd.session_id)
        if (
            session.state != "live"
            or session.ttl_deadline is None
            or session.ttl_deadline > cmd.now
        ):
            return Outcome()  # stopped already, or the deadline is not reached yet
        return self._stop_tree(session, REASON_TTL_EXPIRED, REASON_TTL_EXPIRED, cmd.now)

    def _release_session_leases(self, cmd: ReleaseSessionLeases) -> Outcome:
        session = self.get_session(cmd.session_id)
        if cmd.reason not in SESSION_RELEASE_REASONS:
            raise InvalidInput(
                f"reason must be one of {', '.join(sorted(SESSION_RELEASE_REASONS))}; "
                f"got {cmd.reason!r}"
            )
        reply = SessionReleased(session_id=session.id, reason=cmd.reason)
        events: list[Event] = []
        queued = self._drop_session_lease(session, cmd.reason, cmd.now, events, reply)
        return Outcome(reply=reply, events=events, queued=queued)

    def _stop_tree(self, root: Session, stop_reason: str, lease_reason: str, now: float) -> Outcome:
        """Stop a session and, depth first, its live auto-stopping descendants."""
        reply = SessionReleased(session_id=root.id, reason=lease_reason)
        events: list[Event] = []
        queued = False
        stack: list[tuple[Session, str, str]] = [(root, stop_reason, lease_reason)]
        while stack:
            session, why_stop, why_release = stack.pop()
            if session.state != "live":
                continue
            queued |= self._drop_session_lease(session, why_release, now, events, reply)
            session.state = "stopped"
            session.stopped_at = now
            session.stop_reason = why_stop
            reply.stopped_session_ids.append(session.id)
            events.append(
                self._event(
                    "session_stopped", now, session_id=session.id, data={"reason": why_stop}
                )
            )
            for child_id in self.children.get(session.id, ()):
                child = self.sessions[child_id]
                if child.state == "live" and child.auto_stop_on_parent:
                    stack.append((child, REASON_PARENT_STOPPED, REASON_PARENT_STOPPED))
        return Outcome(reply=reply, events=events, queued=queued)

    def _drop_session_lease(
        self,
        session: Session,
        reason: str,
        now: float,
        events: list[Event],
        reply: SessionReleased,
    ) -> bool:
        if session.lease_run_id is None:
            return False
        run = self.runs[session.lease_run_id]
        previous_hash = run.claim_token_hash
        self._end_lease(run, session)
        self._requeue(run, reason, now)
        reply.released_run_ids.append(run.id)
        events.append(
            self._event(
                "lease_released",
                now,
                task_id=run.task_id,
                run_id=run.id,
                session_id=session.id,
                data={"reason": reason, "previous_claim_token_hash": previous_hash},
            )
        )
        return True

    # ----------------------------------------------------------------------- leases
    def _live_session(self, session_id: str | None) -> Session:
        if not session_id:
            raise LeaseRefused(
                "this operation needs a session; open one and pass its id",
                code=AUTONOMY_SESSION_REQUIRED,
            )
        session = self.get_session(session_id)
        if session.state != "live":
            raise LeaseRefused(
                f"session {session.id} is stopped ({session.stop_reason}); open a new session",
                code=SESSION_STOPPED,
            )
        return session

    def _claim_next(self, cmd: ClaimNext) -> Outcome:
        session = self._live_session(cmd.session_id)
        seconds, clamped = validate.lease_seconds(cmd.lease_seconds)
        if cmd.workspace_id is not None:
            validate.name(cmd.workspace_id, "workspace_id")
        if not cmd.claim_token.startswith(CLAIM_TOKEN_PREFIX):
            raise InvalidInput("claim token has the wrong form (a runtime bug)")
        events: list[Event] = []
        queued = False
        if session.lease_run_id is not None:
            held = self.runs[session.lease_run_id]
            assert held.lease_until is not None
            if held.lease_until > cmd.now:
                raise LeaseRefused(
                    f"session {session.id} already holds the lease on run {held.id}; "
                    "complete, fail, release or block it before claiming another",
                    code=AUTONOMY_LEASE_ALREADY_HELD,
                )
            # Its deadline passed but the clock has not caught up yet: expire it now.
            expired = self._expire(held, REASON_LEASE_EXPIRED, cmd.now)
            events.append(expired.events[0])
            queued = expired.queued

        run_id = self.index.take(
            workspace_id=cmd.workspace_id, offered=frozenset(session.capabilities)
        )
        if run_id is None:
            where = f" in workspace {cmd.workspace_id}" if cmd.workspace_id else ""
            error = NotFound(
                f"no queued run{where} that session {session.id} can take "
                f"(capabilities: {', '.join(session.capabilities) or 'none'})",
                code=NO_CLAIMABLE_RUN,
            )
            if events:
                return Outcome(events=events, queued=queued, error=error)
            raise error
        run = self.runs[run_id]
        task = self.tasks[run.task_id]
        lease_until = cmd.now + seconds
        run.status = "claimed"
        run.session_id = session.id
        run.claimed_by = session.agent
        run.claim_token_hash = hash_token(cmd.claim_token)
        run.lease_until = lease_until
        run.claimed_at = cmd.now
        run.heartbeat_at = cmd.now
        run.reason = None
        self._tokens[run_id] = cmd.claim_token
        session.lease_run_id = run_id
        self._settle_task(task, run, cmd.now)
        events.append(
            self._event(
                "run_claimed",
                cmd.now,
                task_id=task.id,
                run_id=run_id,
                session_id=session.id,
                data={
                    "attempt": run.attempt,
                    "lease_until": lease_until,
                    "claim_token_hash": run.claim_token_hash,
                    "agent": session.agent,
                },
            )
        )
        lease = LeaseView(
            run_id=run_id,
            session_id=session.id,
            lease_until=lease_until,
            claim_token_hash=run.claim_token_hash,
            lease_seconds=seconds,
            lease_seconds_clamped=clamped,
        )
        return Outcome(
            reply=Claim(task=snapshot_task(task), run=snapshot_run(run), lease=lease),
            events=events,
            deadlines=[(lease_until, LEASE_DEADLINE, run_id)],
            queued=queued,
        )

    def _resolve_lease(
        self, session_id: str | None, run_id: str, now: float
    ) -> tuple[Session, Run]:
        """Find the lease a session holds on a run, or say exactly why it does not."""
        session = self._live_session(session_id)
        if session.lease_run_id is None:
            raise LeaseRefused(
                f"session {session.id} holds no lease (on {run_id} or any run); "
                "it may have expired or been released",
                code=AUTONOMY_NO_ACTIVE_LEASE,
            )
        if session.lease_run_id != run_id:
            raise LeaseRefused(
                f"session {session.id} holds the lease on {session.lease_run_id}, not {run_id}",
                code=AUTONOMY_FOREIGN_RUN,
            )
        run = self.runs[run_id]
        assert run.lease_until is not None
        if run.lease_until <= now:
            raise LeaseRefused(
                f"the lease of session {session.id} on {run_id} expired at "
                f"{run.lease_until:.3f}; claim again",
                code=AUTONOMY_LEASE_EXPIRED,
            )
        token = self._tokens.get(run_id)
        if token is None or not token_matches(token, run.claim_token_hash):
            # Defence in depth: the token is the fence; never act without a match.
            raise LeaseRefused(
                f"the lease on {run_id} no longer matches session {session.id}",
                code=AUTONOMY_LEASE_EXPIRED,
            )
        return session, run

    def _heartbeat(self, cmd: HeartbeatRun) -> Outcome:
        seconds, clamped = validate.lease_seconds(cmd.lease_seconds)
        session, run = self._resolve_lease(cmd.session_id, cmd.run_id, cmd.now)
        lease_until = cmd.now + seconds
        run.lease_until = lease_until
        run.heartbeat_at = cmd.now
        run.status = "running"
        assert run.claim_token_hash is not None
        event = self._event(
            "lease_renewed",
            cmd.now,
            task_id=run.task_id,
            run_id=run.id,
            session_id=session.id,
            data={"lease_until": lease_until},
        )
        lease = LeaseView(
            run_id=run.id,
            session_id=session.id,
            lease_until=lease_until,
            claim_token_hash=run.claim_token_hash,
            lease_seconds=seconds,
            lease_seconds_clamped=clamped,
        )
        return Outcome(
            reply=Heartbeat(run=snapshot_run(run), lease=lease),
            events=[event],
            deadlines=[(lease_until, LEASE_DEADLINE, run.id)],
        )

    def _complete(self, cmd: CompleteRun) -> Outcome:
        result = (
            None
            if cmd.result is None
            else validate.json_payload(cmd.result, "result", max_bytes=MAX_RESULT_BYTES)
        )
        session, run = self._resolve_lease(cmd.session_id, cmd.run_id, cmd.now)
        self._end_lease(run, session)
        run.status = "completed"
        run.ended_at = cmd.now
        run.result = result
        self._settle_task(self.tasks[run.task_id], run, cmd.now)
        event = self._event(
            "run_completed", cmd.now, task_id=run.task_id, run_id=run.id, session_id=session.id
        )
        return Outcome(reply=snapshot_run(run), events=[event])

    def _fail(self, cmd: FailRun) -> Outcome:
        error = validate.text(cmd.error, "error", max_chars=MAX_ERROR_CHARS)
        metadata = validate.json_object(cmd.metadata, "metadata", max_bytes=MAX_METADATA_BYTES)
        session, run = self._resolve_lease(cmd.session_id, cmd.run_id, cmd.now)
        self._end_lease(run, session)
        run.status = "failed"
        run.ended_at = cmd.now
        run.error = error
        run.failure_metadata = metadata
        task = self.tasks[run.task_id]
        self._settle_task(task, run, cmd.now)
        event = self._event(
            "run_failed",
            cmd.now,
            task_id=run.task_id,
            run_id=run.id,
            session_id=session.id,
            data={"error": error, "attempts_left": max(task.max_attempts - run.attempt, 0)},
        )
        return Outcome(reply=snapshot_run(run), events=[event])

    def _release(self, cmd: ReleaseRun) -> Outcome:
        reason = validate.optional_text(cmd.reason, "reason") or "released"
        session, run = self._resolve_lease(cmd.session_id, cmd.run_id, cmd.now)
        previous_hash = run.claim_token_hash
        self._end_lease(run, session)
        self._requeue(run, reason, cmd.now)
        event = self._event(
            "lease_released",
            cmd.now,
            task_id=run.task_id,
            run_id=run.id,
            session_id=session.id,
            data={"reason": reason, "previous_claim_token_hash": previous_hash},
        )
        return Outcome(reply=snapshot_run(run), events=[event], queued=True)

    def _block(self, cmd: BlockRun) -> Outcome:
        reason = validate.text(cmd.reason, "reason", max_chars=MAX_REASON_CHARS)
        session, run = self._resolve_lease(cmd.session_id, cmd.run_id, cmd.now)
        self._end_lease(run, session)
        run.status = "needs_attention"
        run.reason = reason
        self._settle_task(self.tasks[run.task_id], run, cmd.now)
        event = self._event(
            "run_blocked",
            cmd.now,
            task_id=run.task_id,
            run_id=run.id,
            session_id=session.id,
            data={"reason": reason},
        )
        return Outcome(reply=snapshot_run(run), events=[event])

    def _finish_and_claim(self, cmd: FinishAndClaim) -> Outcome:
        claim = cmd.claim
        finish = cmd.finish
        if not isinstance(finish, CompleteRun | FailRun | ReleaseRun):
            raise InvalidInput("only complete, fail and release can be followed by a claim")
        if claim.session_id != finish.session_id:
            raise InvalidInput("the finish and the claim must be made by the same session")
        # The claim part's own inputs are checked before the finish changes anything, so a
        # bad claim part refuses the whole step instead of leaving half of it applied.
        validate.lease_seconds(claim.lease_seconds)
        if claim.workspace_id is not None:
            validate.name(claim.workspace_id, "workspace_id")
        if not claim.claim_token.startswith(CLAIM_TOKEN_PREFIX):
            raise InvalidInput("claim token has the wrong form (a runtime bug)")
        # Both parts happen at this command's time, whatever the parts carry.
        if finish.now != cmd.now:
            finish = msgspec.structs.replace(finish, now=cmd.now)
        if claim.now != cmd.now:
            claim = msgspec.structs.replace(claim, now=cmd.now)
        done = self.apply(finish)  # a refusal raises here, having changed nothing
        events = list(done.events)
        try:
            claimed = self._claim_next(claim)
        except RunleaseError as exc:
            # The session is live and holds no lease now, so this is NO_CLAIMABLE_RUN; the
            # finish stands either way and the reply says why nothing was claimed.
            return Outcome(
                reply=Finished(
                    run=done.reply, no_claim=NoClaim(code=exc.code, message=exc.message)
                ),
                events=events,
                deadlines=done.deadlines,
                queued=done.queued,
            )
        # Only a claim that first expires a stale lease of its own reports an error in its
        # outcome, and the finish has just ended this session's lease.
        assert claimed.error is None
        events.extend(claimed.events)
        return Outcome(
            reply=Finished(run=done.reply, claim=claimed.reply),
            events=events,
            deadlines=[*done.deadlines, *claimed.deadlines],
            queued=done.queued or claimed.queued,
        )

    def _expire_lease(self, cmd: ExpireLease) -> Outcome:
        run = self.get_run(cmd.run_id)
        if run.status not in LEASED_RUN_STATUSES:
            return Outcome()  # finished or released before the clock fired
        assert run.lease_until is not None
        if run.lease_until > cmd.now:
            return Outcome()  # renewed since this deadline was scheduled
        reason = validate.text(cmd.reason, "reason", max_chars=MAX_REASON_CHARS)
        return self._expire(run, reason, cmd.now)

    def _expire(self, run: Run, reason: str, now: float) -> Outcome:
        assert run.session_id is not None
        session = self.sessions[run.session_id]
        previous = {
            "previous_session_id": session.id,
            "previous_lease_until": run.lease_until,
            "previous_claim_token_hash": run.claim_token_hash,
        }
        self._end_lease(run, session)
        run.recovery_count += 1
        task = self.tasks[run.task_id]
        if run.attempt + run.recovery_count >= task.max_attempts:
            # Give up instead of handing a poison run out forever; a human decides.
            run.status = "needs_attention"
            run.error = ERROR_LEASE_RECOVERY_EXHAUSTED
            run.reason = reason
            self._settle_task(task, run, now)
            outcome = "needs_attention"
            queued = False
        else:
            self._requeue(run, reason, now)
            outcome = "requeued"
            queued = True
        event = self._event(
            "lease_expired",
            now,
            task_id=run.task_id,
            run_id=run.id,
            session_id=session.id,
            data={
                **previous,
                "reason": reason,
                "recovery_count": run.recovery_count,
                "outcome": outcome,
            },
        )
        return Outcome(reply=snapshot_run(run), events=[event], queued=queued)

    def _end_lease(self, run: Run, session: Session) -> None:
        """Drop the lease from both sides; the run keeps session_id as history."""
        run.claim_token_hash = None
        run.lease_until = None
        self._tokens.pop(run.id, None)
        session.lease_run_id = None

    def _requeue(self, run: Run, reason: str, now: float) -> None:
        # The run keeps its original queued_at, so recovered work goes back to the front
        # of its priority band instead of behind everything queued since.
        run.status = "queued"
        run.reason = reason
        task = self.tasks[run.task_id]
        self._index(task, run)
        self._settle_task(task, run, now)

    def _event(
        self,
        kind: str,
        at: float,
        *,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        self.last_seq += 1
        return Event(
            seq=self.last_seq,
            kind=kind,
            at=at,
            task_id=task_id,
            run_id=run_id,
            session_id=session_id,
            data=data or {},
        )

    # ------------------------------------------------------------------- invariants
    def check_invariants(self) -> None:
        """Raise AssertionError if the state breaks a lease rule (used by tests)."""
        holders: dict[str, str] = {}
        for session in self.sessions.values():
            if session.lease_run_id is None:
                continue
            assert session.state == "live", f"stopped session {session.id} holds a lease"
            assert session.lease_run_id not in holders, "two sessions lease one run"
            holders[session.lease_run_id] = session.id
        for run in self.runs.values():
            leased = run.status in LEASED_RUN_STATUSES
            assert (run.claim_token_hash is not None) == leased, f"hash iff leased: {run.id}"
            assert (run.id in self._tokens) == leased, f"token iff leased: {run.id}"
            assert (run.id in self.index) == (run.status == "queued"), f"index: {run.id}"
            if leased:
                assert holders.get(run.id) == run.session_id, f"lease holder of {run.id}"
                assert run.lease_until is not None
                token = self._tokens[run.id]
                assert token_matches(token, run.claim_token_hash)
            else:
                assert run.id not in holders, f"session holds non-leased run {run.id}"
        for task in self.tasks.values():
            current = self.runs.get(task.current_run_id) if task.current_run_id else None
            assert task.status == derive_task_status(task, current), f"status of {task.id}"
        assert len(self.index) == sum(1 for r in self.runs.values() if r.status == "queued")
