"""Every lease and task transition, in one pure module.

``Machine.apply(command)`` checks the command against the current state and either raises a
:class:`runlease.errors.RunleaseError` having changed nothing, or changes the state and
returns an :class:`Outcome`: the reply for the caller, the events emitted, and what the
shell must do next (schedule a deadline, wake waiting claimers). No trio, no IO, no clock:
the time is the command's ``now``, and ids and claim-token hashes arrive inside the command.
The machine never holds a raw claim token: a lease is identified by its hash, and callers are
resolved by (session, run id).

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
    ExpireLease,
    ExpireSession,
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
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_token
from runlease.core.index import ClaimIndex
from runlease.core.model import (
    DEFAULT_MAX_ATTEMPTS,
    ERROR_LEASE_RECOVERY_EXHAUSTED,
    FAILURE_KIND_OPERATOR_FORCED,
    FORCE_RATE_LIMIT,
    FORCE_RATE_WINDOW_SECONDS,
    IMMUTABLE_TASK_FIELDS,
    LEASED_RUN_STATUSES,
    MAX_BULK_RUN_IDS,
    MAX_CHECKPOINTS_KEPT,
    MAX_DEPENDENCIES,
    MAX_DESCRIPTION_CHARS,
    MAX_DIRECT_CHILDREN,
    MAX_HIERARCHY_DEPTH,
    MAX_MAX_ATTEMPTS,
    MAX_METADATA_BYTES,
    MAX_NAME_CHARS,
    MAX_NOTE_CHARS,
    MAX_REASON_CHARS,
    MAX_REQUIRED_ARTIFACTS,
    MAX_RESULT_BYTES,
    MAX_RETRY_CHAIN,
    MAX_TITLE_CHARS,
    MUTABLE_TASK_FIELDS,
    PRIORITY_RANK,
    REASON_LEASE_EXPIRED,
    REASON_ORPHANED_ON_BOOT,
    REASON_PARENT_STOPPED,
    REASON_SESSION_STOPPED,
    REASON_TTL_EXPIRED,
    SESSION_RELEASE_REASONS,
    Actor,
    BulkItem,
    BulkResult,
    Checkpoint,
    Claim,
    Event,
    Finished,
    Heartbeat,
    LeaseView,
    NoClaim,
    Origin,
    Ownership,
    RetryResult,
    Run,
    RunStatus,
    SchedulerState,
    Session,
    SessionReleased,
    Task,
    TaskStatus,
)
from runlease.errors import (
    APPROVAL_REQUIRED,
    ATTEMPTS_EXHAUSTED,
    AUTONOMY_FOREIGN_RUN,
    AUTONOMY_LEASE_ALREADY_HELD,
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    AUTONOMY_SESSION_REQUIRED,
    BULK_TOO_LARGE,
    COMPLETION_CONTRACT_UNMET,
    DEPENDENCY_CYCLE,
    DEPENDENCY_NOT_FOUND,
    FORCE_RATE_LIMITED,
    FORCE_REASON_REQUIRED,
    GRAPH_LIMIT_EXCEEDED,
    IMMUTABLE_FIELD,
    INVALID_TRANSITION,
    LEASE_NOT_EXPIRED,
    NO_CLAIMABLE_RUN,
    RETRY_CHAIN_TOO_DEEP,
    RUN_NOT_FOUND,
    SESSION_NOT_FOUND,
    SESSION_STOPPED,
    TASK_HAS_ACTIVE_RUNS,
    TASK_HAS_CHILDREN,
    TASK_IS_DRAFT,
    TASK_NOT_FOUND,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
)

MAX_ERROR_CHARS = 8 * 1024
# Runs that can never be queued again, so they need no place in the queue.
_CLOSED_RUN_STATUSES = frozenset({"completed", "failed", "canceled"})
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
    """A task's status follows from its current run (the reference's derivation rules).

    Two task flags come first: an explicitly canceled task is ``canceled`` and a draft is
    ``draft``. The machine adds ``blocked`` on top (see ``Machine._derive``): a pending or
    ready task with a blocker that has not completed.
    """
    if task.canceled:
        return "canceled"
    if task.draft:
        return "draft"
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
        # One shared frozenset per distinct capability tuple: a new one per queued run
        # would cost ~200 bytes each at a million tasks.
        self._capability_sets: dict[tuple[str, ...], frozenset[str]] = {}
        # Run ids of live leases, in the order the leases were taken (an ordered set). The
        # lease's token hash is on the run; raw tokens are never kept.
        self._leased: dict[str, None] = {}
        # The newest ``now`` of any command that changed the state (a high-water mark). Boot
        # never lets the clock start before it, so a wall clock stepped back while the
        # runtime was down cannot stretch a recovered lease beyond its granted length.
        self.high_water = 0.0
        # The enqueue counter: each newly queued run takes the next value as its place in
        # the queue (Run.queue_seq), which is deterministic on replay, unlike wall time.
        self.queue_seq = 0
        # Task graph. Persistent truth lives in the Task records (parent_task_id, blocked_by,
        # paused); these are derived from them and rebuilt by ``restore``.
        self.subtasks: dict[str, list[str]] = {}
        self.dependents: dict[str, set[str]] = {}
        self.paused_tasks: set[str] = set()
        # Queued runs whose task is gated (draft, paused, blocked): out of the claim index.
        self.held: set[str] = set()
        # (task id, idempotency key) -> run id, from Run.idempotency_key.
        self.idempotency: dict[tuple[str, str], str] = {}
        self.scheduler = SchedulerState()
        # Who is applying the current command (stamped on its events).
        self._actor: Actor | None = None
        self._origin: Origin | None = None
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
            PublishTask: self._publish_task,
            ApproveTask: self._approve_task,
            RejectTask: self._reject_task,
            UpdateTask: self._update_task,
            DeleteTask: self._delete_task,
            AddDependency: self._add_dependency,
            RemoveDependency: self._remove_dependency,
            PauseTask: self._pause_task,
            ResumeTask: self._resume_task,
            CancelTask: self._cancel_task,
            CancelRun: self._cancel_run,
            RetryRun: self._retry_run,
            ForceReleaseRun: self._force_release,
            ForceFailRun: self._force_fail,
            BulkForceRuns: self._bulk_force,
            PauseScheduler: self._pause_scheduler,
            ResumeScheduler: self._resume_scheduler,
            CheckpointTask: self._checkpoint,
            StealRun: self._steal,
        }

    # ------------------------------------------------------------------ entry point
    def apply(self, command: AnyCommand) -> Outcome:
        handler = self._handlers.get(type(command))
        if handler is None:
            raise InvalidInput(f"unknown command {type(command).__name__}")
        self._actor = command.actor or _default_actor(command)
        self._origin = command.origin
        outcome = handler(command)
        # Only commands that emit events change the state and reach the journal, so only
        # they move the mark: replay then reaches exactly the same value.
        if outcome.events and command.now > self.high_water:
            self.high_water = command.now
        return outcome

    def capability_set(self, capabilities: tuple[str, ...]) -> frozenset[str]:
        found = self._capability_sets.get(capabilities)
        if found is None:
            found = self._capability_sets[capabilities] = frozenset(capabilities)
        return found

    def adopt(self, other: Machine) -> None:
        """Take over another machine's whole state (used to roll back to the journal)."""
        self.tasks = other.tasks
        self.runs = other.runs
        self.sessions = other.sessions
        self.children = other.children
        self.session_by_token_hash = other.session_by_token_hash
        self.index = other.index
        self.last_seq = other.last_seq
        self._leased = other._leased
        self.high_water = other.high_water
        self.queue_seq = other.queue_seq
        self.subtasks = other.subtasks
        self.dependents = other.dependents
        self.paused_tasks = other.paused_tasks
        self.held = other.held
        self.idempotency = other.idempotency
        self.scheduler = other.scheduler

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
        for run_id in self._leased:
            yield self.runs[run_id]

    def leased_run_ids(self) -> list[str]:
        """The run ids of live leases, in the order the leases were taken."""
        return list(self._leased)

    def leased_count(self) -> int:
        return len(self._leased)

    @classmethod
    def restore(
        cls,
        *,
        tasks: Iterable[Task],
        runs: Iterable[Run],
        sessions: Iterable[Session],
        last_seq: int,
        leased: Iterable[str] = (),
        scheduler: SchedulerState | None = None,
        high_water: float = 0.0,
        queue_seq: int = 0,
    ) -> Machine:
        """Rebuild a machine from its records (a decoded snapshot); the records are adopted.

        ``leased`` lists the leased run ids in the order the leases were taken. Derived
        state is recomputed: ``children`` in session order (the order they were opened in),
        and the claim index from the queued runs through ``_index``, so claims come out in
        exactly the order the original machine would hand them out.

        Records written before runs carried ``queue_seq`` are numbered here, after any
        numbered ones, in the order the old index used (queued_at, then id); only open runs
        need a place, since only they can enter the queue again.
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
        for task in machine.tasks.values():
            if task.parent_task_id is not None:
                machine.subtasks.setdefault(task.parent_task_id, []).append(task.id)
            for blocker in task.blocked_by:
                machine.dependents.setdefault(blocker, set()).add(task.id)
            if task.paused:
                machine.paused_tasks.add(task.id)
        machine.queue_seq = queue_seq
        unnumbered: list[Run] = []
        for run in machine.runs.values():
            if run.idempotency_key is not None:
                machine.idempotency[(run.task_id, run.idempotency_key)] = run.id
            if run.queue_seq > machine.queue_seq:
                machine.queue_seq = run.queue_seq
            elif run.queue_seq == 0 and run.status not in _CLOSED_RUN_STATUSES:
                unnumbered.append(run)
        unnumbered.sort(key=lambda r: (r.queued_at, r.id))
        for run in unnumbered:
            machine.queue_seq += 1
            run.queue_seq = machine.queue_seq

        def queued() -> Iterator[tuple[Any, ...]]:
            for run in machine.runs.values():
                if run.status == "queued":
                    task = machine.tasks[run.task_id]
                    if machine._gate(task) is not None:
                        machine.held.add(run.id)
                        continue
                    yield (
                        run.id,
                        PRIORITY_RANK[task.priority],
                        run.queue_seq,
                        task.workspace_id,
                        machine.capability_set(task.required_capabilities),
                        machine.capability_set(task.preferred_capabilities),
                        machine._owner_key(task),
                    )

        machine.index.add_many(queued())
        machine._leased = dict.fromkeys(leased)
        machine.last_seq = last_seq
        machine.high_water = high_water
        if scheduler is not None:
            machine.scheduler = scheduler
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
        max_attempts = _max_attempts(
            DEFAULT_MAX_ATTEMPTS if cmd.max_attempts is None else cmd.max_attempts
        )
        metadata = validate.json_object(cmd.metadata, "metadata", max_bytes=MAX_METADATA_BYTES)
        caps = validate.capabilities(cmd.required_capabilities, "required_capabilities")
        preferred = validate.capabilities(cmd.preferred_capabilities, "preferred_capabilities")
        owner = self._validate_owner(cmd.owner)
        artifacts = _artifact_paths(cmd.required_artifacts)
        if cmd.approval_policy not in ("none", "manual"):
            raise InvalidInput(
                f"approval_policy must be none or manual, not {cmd.approval_policy!r}"
            )
        if cmd.start_run_id is not None:
            self._check_new_run_id(cmd.start_run_id)
            if cmd.draft:
                raise InvalidInput(
                    "a draft cannot be started; publish it to start it", code=TASK_IS_DRAFT
                )
            if cmd.approval_policy == "manual":
                raise InvalidInput(
                    "a task with manual approval is started by approving it",
                    code=APPROVAL_REQUIRED,
                )
        parent = None
        if cmd.parent_task_id is not None:
            parent = self.get_task(cmd.parent_task_id)
            canceled = self._canceled_ancestor(parent)
            if canceled is not None:
                raise InvalidInput(
                    f"task {canceled} above the parent is canceled; no new children below it",
                    code=INVALID_TRANSITION,
                )
            if self._depth(parent) >= MAX_HIERARCHY_DEPTH:
                raise InvalidInput(
                    f"parent task {parent.id} is at depth {MAX_HIERARCHY_DEPTH}, the deepest "
                    "a task may nest",
                    code=GRAPH_LIMIT_EXCEEDED,
                )
            if len(self.subtasks.get(parent.id, ())) >= MAX_DIRECT_CHILDREN:
                raise InvalidInput(
                    f"parent task {parent.id} already has {MAX_DIRECT_CHILDREN} children "
                    "(the limit)",
                    code=GRAPH_LIMIT_EXCEEDED,
                )

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
            preferred_capabilities=preferred,
            owner=owner,
            parent_task_id=cmd.parent_task_id,
            draft=cmd.draft,
            approval_policy=cmd.approval_policy,
            approval_state="pending" if cmd.approval_policy == "manual" else "not_required",
            required_artifacts=artifacts,
            status="draft" if cmd.draft else "pending",
            created_at=cmd.now,
            updated_at=cmd.now,
        )
        self.tasks[task.id] = task
        if parent is not None:
            self.subtasks.setdefault(parent.id, []).append(task.id)
        events = [
            self._event(
                "task_created",
                cmd.now,
                task_id=task.id,
                data={"parent_task_id": cmd.parent_task_id} if cmd.parent_task_id else None,
            )
        ]
        queued = False
        if cmd.start_run_id is not None:
            events.append(self._enqueue(task, None, cmd.start_run_id, cmd.now))
            queued = cmd.start_run_id in self.index
        return Outcome(reply=snapshot_task(task), events=events, queued=queued)

    def _start_task(self, cmd: StartTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        if cmd.idempotency_key is not None:
            validate.text(cmd.idempotency_key, "idempotency_key", max_chars=MAX_NAME_CHARS)
            earlier = self.idempotency.get((task.id, cmd.idempotency_key))
            if earlier is not None:
                # The same request again: answer with the run it made, change nothing.
                return Outcome(reply=snapshot_run(self.runs[earlier]))
        self._check_startable(task)
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
        run = self.runs[cmd.run_id]
        if cmd.idempotency_key is not None:
            run.idempotency_key = cmd.idempotency_key
            self.idempotency[(task.id, cmd.idempotency_key)] = run.id
        return Outcome(reply=snapshot_run(run), events=[event], queued=run.id in self.index)

    def _enqueue(self, task: Task, previous: Run | None, run_id: str, now: float) -> Event:
        self.queue_seq += 1
        run = Run(
            id=run_id,
            task_id=task.id,
            attempt=1 if previous is None else previous.attempt + 1,
            previous_run_id=None if previous is None else previous.id,
            queued_at=now,
            queue_seq=self.queue_seq,
        )
        self.runs[run_id] = run
        task.current_run_id = run_id
        self._index(task, run)
        self._settle_task(task, run, now)
        return self._event(
            "run_queued", now, task_id=task.id, run_id=run_id, data={"attempt": run.attempt}
        )

    def _index(self, task: Task, run: Run) -> None:
        """Put a queued run where it belongs: the claim index, or ``held`` if gated."""
        if self._gate(task) is not None:
            self.held.add(run.id)
            return
        self.index.add(
            run.id,
            rank=PRIORITY_RANK[task.priority],
            seq=run.queue_seq,
            workspace_id=task.workspace_id,
            capabilities=self.capability_set(task.required_capabilities),
            preferred=self.capability_set(task.preferred_capabilities),
            owner=self._owner_key(task),
        )

    def _settle_task(self, task: Task, run: Run | None, now: float) -> None:
        task.status = self._derive(task, run)
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
        token_hash = _lease_hash(cmd)
        where_key = _claim_workspace_key(cmd.scope, cmd.workspace_id)
        if cmd.priority_min is not None and (
            isinstance(cmd.priority_min, bool) or not isinstance(cmd.priority_min, int)
        ):
            raise InvalidInput("priority_min must be a priority rank (10, 20, 30 or 40)")
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

        run_id = (
            None
            if self.scheduler.paused
            else self.index.take(
                workspace_id=where_key,
                offered=self.capability_set(session.capabilities),
                owners=(f"s:{session.id}", f"p:{session.agent}"),
                min_rank=cmd.priority_min,
            )
        )
        if run_id is None:
            where = f" in workspace {cmd.workspace_id}" if cmd.workspace_id else ""
            if self.scheduler.paused:
                where += " (the scheduler is paused)"
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
        run.claim_token_hash = token_hash
        run.lease_until = lease_until
        run.claimed_at = cmd.now
        run.heartbeat_at = cmd.now
        run.reason = None
        self._leased[run_id] = None
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
        if run_id not in self._leased or run.session_id != session.id:
            # Defence in depth: both sides must agree on the lease; never act otherwise.
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
        task = self.tasks[run.task_id]
        if task.required_artifacts:
            checked = cmd.checked_artifacts
            if checked is None or sorted(checked) != sorted(task.required_artifacts):
                raise InvalidInput(
                    f"task {task.id} has a completion contract "
                    f"({', '.join(task.required_artifacts)}) that was not checked",
                    code=COMPLETION_CONTRACT_UNMET,
                )
            missing = [p for p in task.required_artifacts if p in set(cmd.missing_artifacts)]
            if missing:
                raise InvalidInput(
                    f"task {task.id} cannot complete: required artifacts missing: "
                    f"{', '.join(missing)}",
                    code=COMPLETION_CONTRACT_UNMET,
                )
        self._end_lease(run, session)
        run.status = "completed"
        run.ended_at = cmd.now
        run.result = result
        self._settle_task(task, run, cmd.now)
        events = [
            self._event(
                "run_completed", cmd.now, task_id=run.task_id, run_id=run.id, session_id=session.id
            )
        ]
        queued = self._unblock_dependents(task, cmd.now, events)
        return Outcome(reply=snapshot_run(run), events=events, queued=queued)

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
        _claim_workspace_key(claim.scope, claim.workspace_id)
        if claim.priority_min is not None and (
            isinstance(claim.priority_min, bool) or not isinstance(claim.priority_min, int)
        ):
            raise InvalidInput("priority_min must be a priority rank (10, 20, 30 or 40)")
        _lease_hash(claim)
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
        self._leased.pop(run.id, None)
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
            actor=self._actor,
            origin=self._origin,
        )

    # ================================================================ task graph
    # Gating: a queued run sits in the claim index only while its task is claimable; a
    # draft, (effectively) paused or dependency-blocked task's queued run waits in ``held``
    # instead. Every change that can open or close a gate re-checks the tasks it touches
    # (``_regate``), so claims never scan for eligibility.

    def _gate(self, task: Task) -> str | None:
        """Why the task's queued run may not be claimed now (draft/paused/blocked), or None."""
        if task.draft:
            return "draft"
        if self.paused_tasks and self.pauser_of(task) is not None:
            return "paused"
        if self.open_dependencies(task):
            return "blocked"
        return None

    def pauser_of(self, task: Task) -> str | None:
        """The id of the task whose pause applies to this one (itself or an ancestor)."""
        current: Task | None = task
        while current is not None:
            if current.paused:
                return current.id
            parent = current.parent_task_id
            current = self.tasks.get(parent) if parent is not None else None
        return None

    def open_dependencies(self, task: Task) -> list[str]:
        """The blockers of a task that have not completed yet (at most MAX_DEPENDENCIES)."""
        return [b for b in task.blocked_by if self.tasks[b].status != "completed"]

    def descendants(self, task_id: str) -> list[str]:
        """Every task below ``task_id``, parents before children (creation order)."""
        out: list[str] = []
        stack = list(reversed(self.subtasks.get(task_id, ())))
        while stack:
            child = stack.pop()
            out.append(child)
            stack.extend(reversed(self.subtasks.get(child, ())))
        return out

    def _canceled_ancestor(self, task: Task) -> str | None:
        """The id of the first canceled task among ``task`` and its ancestors."""
        current: Task | None = task
        while current is not None:
            if current.canceled:
                return current.id
            parent = current.parent_task_id
            current = self.tasks.get(parent) if parent is not None else None
        return None

    def _depth(self, task: Task) -> int:
        depth = 1
        while task.parent_task_id is not None:
            depth += 1
            task = self.tasks[task.parent_task_id]
        return depth

    def _owner_key(self, task: Task) -> str | None:
        owner = task.owner
        if owner is None:
            return None
        return ("s:" if owner.kind == "agent_session" else "p:") + owner.ref

    def _unqueue(self, run: Run) -> None:
        """Take a queued run out of the index or the held set (it is leaving the queue)."""
        if not self.index.discard(run.id):
            self.held.discard(run.id)

    def _regate(self, task_ids: Iterable[str]) -> bool:
        """Move the queued runs of these tasks between index and held; True if any opened."""
        opened = False
        for task_id in task_ids:
            task = self.tasks[task_id]
            run = self.runs.get(task.current_run_id) if task.current_run_id else None
            if run is None or run.status != "queued":
                continue
            gated = self._gate(task) is not None
            if gated and run.id in self.index:
                self.index.discard(run.id)
                self.held.add(run.id)
            elif not gated and run.id in self.held:
                self.held.discard(run.id)
                self._index(task, run)
                opened = True
        return opened

    def _derive(self, task: Task, run: Run | None) -> TaskStatus:
        status = derive_task_status(task, run)
        if status in ("pending", "ready") and task.blocked_by and self.open_dependencies(task):
            return "blocked"
        return status

    def _check_startable(self, task: Task) -> None:
        if task.canceled:
            raise InvalidInput(f"task {task.id} is canceled", code=INVALID_TRANSITION)
        if task.draft:
            raise InvalidInput(
                f"task {task.id} is a draft; publish it before starting it", code=TASK_IS_DRAFT
            )
        if task.approval_policy == "manual" and task.approval_state != "approved":
            raise InvalidInput(
                f"task {task.id} needs approval (approval_state={task.approval_state}); "
                "approve it to enqueue a run",
                code=APPROVAL_REQUIRED,
            )

    def _closed(self, task: Task) -> bool:
        return task.status in ("completed", "failed", "canceled")

    def _check_new_run_id(self, run_id: str) -> None:
        if run_id in self.runs:
            raise InvalidInput(f"run {run_id!r} already exists")

    # ------------------------------------------------------------------ lifecycle
    def _publish_task(self, cmd: PublishTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        if not task.draft:
            raise InvalidInput(f"task {task.id} is not a draft", code=INVALID_TRANSITION)
        if cmd.run_id is not None:
            self._check_new_run_id(cmd.run_id)
            if task.approval_policy == "manual":
                raise InvalidInput(
                    f"task {task.id} needs approval before a run can be enqueued",
                    code=APPROVAL_REQUIRED,
                )
        task.draft = False
        self._settle_task(task, None, cmd.now)
        events = [self._event("task_published", cmd.now, task_id=task.id)]
        queued = False
        if cmd.run_id is not None:
            events.append(self._enqueue(task, None, cmd.run_id, cmd.now))
            queued = cmd.run_id in self.index
        return Outcome(reply=snapshot_task(task), events=events, queued=queued)

    def _approve_task(self, cmd: ApproveTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        if task.approval_policy != "manual" or task.approval_state != "pending":
            raise InvalidInput(
                f"task {task.id} is not awaiting approval "
                f"(policy {task.approval_policy}, state {task.approval_state})",
                code=INVALID_TRANSITION,
            )
        if task.draft:
            raise InvalidInput(f"task {task.id} is a draft; publish it first", code=TASK_IS_DRAFT)
        if task.canceled:
            raise InvalidInput(f"task {task.id} is canceled", code=INVALID_TRANSITION)
        self._check_new_run_id(cmd.run_id)
        task.approval_state = "approved"
        events = [self._event("task_approved", cmd.now, task_id=task.id)]
        events.append(self._enqueue(task, None, cmd.run_id, cmd.now))
        return Outcome(
            reply=snapshot_run(self.runs[cmd.run_id]),
            events=events,
            queued=cmd.run_id in self.index,
        )

    def _reject_task(self, cmd: RejectTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        reason = validate.optional_text(cmd.reason, "reason")
        if task.approval_policy != "manual" or task.approval_state != "pending":
            raise InvalidInput(f"task {task.id} is not awaiting approval", code=INVALID_TRANSITION)
        task.approval_state = "rejected"
        events = [self._event("task_rejected", cmd.now, task_id=task.id, data={"reason": reason})]
        self._cancel_tree(task, reason or "rejected", cmd.now, events)
        return Outcome(reply=snapshot_task(task), events=events)

    def _update_task(self, cmd: UpdateTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        if not isinstance(cmd.changes, dict) or not cmd.changes:
            raise InvalidInput("an update needs at least one field to change")
        for field in cmd.changes:
            if field in IMMUTABLE_TASK_FIELDS:
                raise InvalidInput(
                    f"{field} cannot change after a task is created", code=IMMUTABLE_FIELD
                )
            if field not in MUTABLE_TASK_FIELDS:
                raise InvalidInput(
                    f"unknown task field {field!r}; mutable fields: "
                    f"{', '.join(sorted(MUTABLE_TASK_FIELDS))}"
                )
        new: dict[str, Any] = {}
        for field, value in cmd.changes.items():
            if field == "title":
                new[field] = validate.text(value, "title", max_chars=MAX_TITLE_CHARS)
            elif field == "description":
                new[field] = validate.text(
                    value, "description", max_chars=MAX_DESCRIPTION_CHARS, required=False
                )
            elif field == "priority":
                if value not in PRIORITY_RANK:
                    raise InvalidInput(f"priority must be one of {', '.join(PRIORITY_RANK)}")
                new[field] = value
            elif field == "max_attempts":
                new[field] = _max_attempts(value)
                if self._closed(task):
                    raise InvalidInput(
                        f"task {task.id} is {task.status}; its attempt budget is final",
                        code=INVALID_TRANSITION,
                    )
            elif field == "metadata":
                new[field] = validate.json_object(value, "metadata", max_bytes=MAX_METADATA_BYTES)
            elif field in ("required_capabilities", "preferred_capabilities"):
                new[field] = validate.capabilities(value, field)
            else:  # owner
                new[field] = self._validate_owner(value)
        run = self.runs.get(task.current_run_id) if task.current_run_id else None
        reindex = run is not None and run.id in self.index
        if reindex:
            assert run is not None
            self.index.discard(run.id)
        for field, value in new.items():
            setattr(task, field, value)
        if reindex:
            assert run is not None
            self._index(task, run)
        self._settle_task(task, run, cmd.now)
        event = self._event("task_updated", cmd.now, task_id=task.id, data={"fields": sorted(new)})
        return Outcome(reply=snapshot_task(task), events=[event])

    def _validate_owner(self, value: Any) -> Ownership | None:
        if value is None:
            return None
        try:
            owner = msgspec.convert(value, Ownership)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"owner must be {{kind: agent_session|pool, ref}}: {exc}") from None
        validate.name(owner.ref, "owner ref")
        return owner

    def _delete_task(self, cmd: DeleteTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        if self.subtasks.get(task.id):
            raise InvalidInput(
                f"task {task.id} has {len(self.subtasks[task.id])} child task(s); "
                "delete them first",
                code=TASK_HAS_CHILDREN,
            )
        chain = self._run_chain(task)
        active = [r.id for r in chain if r.status not in ("completed", "failed", "canceled")]
        if active:
            raise InvalidInput(
                f"task {task.id} has non-terminal run(s) {', '.join(active)}; cancel them first",
                code=TASK_HAS_ACTIVE_RUNS,
            )
        for run in chain:
            del self.runs[run.id]
            if run.idempotency_key is not None:
                self.idempotency.pop((task.id, run.idempotency_key), None)
        if task.parent_task_id is not None:
            self.subtasks[task.parent_task_id].remove(task.id)
            if not self.subtasks[task.parent_task_id]:
                del self.subtasks[task.parent_task_id]
        for blocker in task.blocked_by:
            self.dependents[blocker].discard(task.id)
            if not self.dependents[blocker]:
                del self.dependents[blocker]
        self.paused_tasks.discard(task.id)
        del self.tasks[task.id]
        events = [self._event("task_deleted", cmd.now, task_id=task.id)]
        freed = sorted(self.dependents.pop(task.id, ()))
        for dependent_id in freed:
            dependent = self.tasks[dependent_id]
            dependent.blocked_by = tuple(b for b in dependent.blocked_by if b != task.id)
            self._resettle(dependent, cmd.now)
        queued = self._regate(freed)
        return Outcome(reply=snapshot_task(task), events=events, queued=queued)

    def _run_chain(self, task: Task) -> list[Run]:
        """Every run of a task, newest first (each run links to the one before it)."""
        chain: list[Run] = []
        run_id = task.current_run_id
        while run_id is not None:
            run = self.runs[run_id]
            chain.append(run)
            run_id = run.previous_run_id
        return chain

    def _resettle(self, task: Task, now: float) -> None:
        run = self.runs.get(task.current_run_id) if task.current_run_id else None
        self._settle_task(task, run, now)

    # -------------------------------------------------------------- dependencies
    def _add_dependency(self, cmd: AddDependency) -> Outcome:
        task = self.get_task(cmd.task_id)
        blocker = self.get_task(cmd.blocked_by)
        if blocker.id == task.id:
            raise InvalidInput(f"task {task.id} cannot depend on itself", code=DEPENDENCY_CYCLE)
        if blocker.id in task.blocked_by:
            raise InvalidInput(
                f"task {task.id} already depends on {blocker.id}", code=INVALID_TRANSITION
            )
        if self._closed(task):
            raise InvalidInput(
                f"task {task.id} is {task.status}; it cannot gain dependencies",
                code=INVALID_TRANSITION,
            )
        if len(task.blocked_by) >= MAX_DEPENDENCIES:
            raise InvalidInput(
                f"task {task.id} already has {MAX_DEPENDENCIES} dependencies (the limit)",
                code=GRAPH_LIMIT_EXCEEDED,
            )
        if self._depends_on(blocker.id, task.id):
            raise InvalidInput(
                f"{blocker.id} already depends (directly or not) on {task.id}; "
                "the edge would close a cycle",
                code=DEPENDENCY_CYCLE,
            )
        task.blocked_by = (*task.blocked_by, blocker.id)
        self.dependents.setdefault(blocker.id, set()).add(task.id)
        self._resettle(task, cmd.now)
        self._regate([task.id])
        event = self._event(
            "dependency_added",
            cmd.now,
            task_id=task.id,
            data={"blocked_by": blocker.id, "kind": "blocks", "blocked": task.status == "blocked"},
        )
        return Outcome(reply=snapshot_task(task), events=[event])

    def _depends_on(self, start: str, target: str) -> bool:
        """True if ``start`` reaches ``target`` along blocked_by edges."""
        seen = {start}
        stack = [start]
        while stack:
            for nxt in self.tasks[stack.pop()].blocked_by:
                if nxt == target:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    def _remove_dependency(self, cmd: RemoveDependency) -> Outcome:
        task = self.get_task(cmd.task_id)
        if cmd.blocked_by not in task.blocked_by:
            raise NotFound(
                f"task {task.id} does not depend on {cmd.blocked_by}", code=DEPENDENCY_NOT_FOUND
            )
        task.blocked_by = tuple(b for b in task.blocked_by if b != cmd.blocked_by)
        self.dependents[cmd.blocked_by].discard(task.id)
        if not self.dependents[cmd.blocked_by]:
            del self.dependents[cmd.blocked_by]
        self._resettle(task, cmd.now)
        queued = self._regate([task.id])
        event = self._event(
            "dependency_removed", cmd.now, task_id=task.id, data={"blocked_by": cmd.blocked_by}
        )
        return Outcome(reply=snapshot_task(task), events=[event], queued=queued)

    def _unblock_dependents(self, task: Task, now: float, events: list[Event]) -> bool:
        """After ``task`` completed: settle its dependents and open the ones now free."""
        dependents = sorted(self.dependents.get(task.id, ()))
        for dependent_id in dependents:
            dependent = self.tasks[dependent_id]
            before = dependent.status
            self._resettle(dependent, now)
            if not self.open_dependencies(dependent):
                events.append(
                    self._event(
                        "task_unblocked",
                        now,
                        task_id=dependent_id,
                        data={"resolved": task.id, "previous_status": before},
                    )
                )
        return self._regate(dependents)

    # ------------------------------------------------------------ pause / resume
    def _pause_task(self, cmd: PauseTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        reason = validate.text(cmd.reason, "reason", max_chars=MAX_REASON_CHARS)
        if task.paused:
            raise InvalidInput(f"task {task.id} is already paused", code=INVALID_TRANSITION)
        if self._closed(task):
            raise InvalidInput(f"task {task.id} is {task.status}", code=INVALID_TRANSITION)
        task.paused = True
        task.paused_reason = reason
        task.paused_at = cmd.now
        task.paused_by = self._actor.ref if self._actor is not None else None
        task.updated_at = cmd.now
        self.paused_tasks.add(task.id)
        affected = [task.id, *self.descendants(task.id)]
        self._regate(affected)
        event = self._event(
            "task_paused",
            cmd.now,
            task_id=task.id,
            data={"reason": reason, "descendants": len(affected) - 1},
        )
        return Outcome(reply=snapshot_task(task), events=[event])

    def _resume_task(self, cmd: ResumeTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        if not task.paused:
            raise InvalidInput(f"task {task.id} is not paused", code=INVALID_TRANSITION)
        task.paused = False
        task.paused_reason = None
        task.paused_at = None
        task.paused_by = None
        task.updated_at = cmd.now
        self.paused_tasks.discard(task.id)
        queued = self._regate([task.id, *self.descendants(task.id)])
        event = self._event("task_resumed", cmd.now, task_id=task.id)
        return Outcome(reply=snapshot_task(task), events=[event], queued=queued)

    # -------------------------------------------------------------------- cancel
    def _cancel_task(self, cmd: CancelTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        reason = validate.optional_text(cmd.reason, "reason") or "canceled"
        if self._closed(task):
            raise InvalidInput(f"task {task.id} is already {task.status}", code=INVALID_TRANSITION)
        events: list[Event] = []
        self._cancel_tree(task, reason, cmd.now, events)
        return Outcome(reply=snapshot_task(task), events=events)

    def _cancel_tree(self, root: Task, reason: str, now: float, events: list[Event]) -> None:
        """Cancel a task and every descendant that is not closed, with their live runs."""
        for task_id in (root.id, *self.descendants(root.id)):
            task = self.tasks[task_id]
            if task.canceled or (task_id != root.id and self._closed(task)):
                continue
            run = self.runs.get(task.current_run_id) if task.current_run_id else None
            canceled_run = None
            if run is not None and run.status not in ("completed", "failed", "canceled"):
                self._stop_run(run, "canceled", reason, now)
                canceled_run = run.id
            task.canceled = True
            task.cancel_reason = reason
            self._settle_task(task, run, now)
            events.append(
                self._event(
                    "task_canceled",
                    now,
                    task_id=task.id,
                    run_id=canceled_run,
                    data={"reason": reason, "cascade_from": None if task is root else root.id},
                )
            )

    def _stop_run(self, run: Run, status: RunStatus, reason: str, now: float) -> str | None:
        """End a non-terminal run (queued, leased or parked) as ``status``.

        Returns the previous claim hash if it was leased; frees the holding session."""
        previous_hash = run.claim_token_hash
        if run.status == "queued":
            self._unqueue(run)
        elif run.status in LEASED_RUN_STATUSES:
            assert run.session_id is not None
            self._end_lease(run, self.sessions[run.session_id])
        run.status = status
        run.ended_at = now
        run.reason = reason
        return previous_hash

    def _cancel_run(self, cmd: CancelRun) -> Outcome:
        run = self.get_run(cmd.run_id)
        reason = validate.optional_text(cmd.reason, "reason") or "canceled"
        if run.status in ("completed", "failed", "canceled"):
            raise InvalidInput(f"run {run.id} is already {run.status}", code=INVALID_TRANSITION)
        session_id = run.session_id if run.status in LEASED_RUN_STATUSES else None
        self._stop_run(run, "canceled", reason, cmd.now)
        task = self.tasks[run.task_id]
        self._settle_task(task, self.runs[task.current_run_id or run.id], cmd.now)
        event = self._event(
            "run_canceled",
            cmd.now,
            task_id=run.task_id,
            run_id=run.id,
            session_id=session_id,
            data={"reason": reason},
        )
        return Outcome(reply=snapshot_run(run), events=[event])

    # --------------------------------------------------------------- retry, force
    def _retry_run(self, cmd: RetryRun) -> Outcome:
        run = self.get_run(cmd.run_id)
        task = self.tasks[run.task_id]
        if run.status != "failed":
            raise InvalidInput(
                f"run {run.id} is {run.status}; only a failed run can be retried",
                code=INVALID_TRANSITION,
            )
        if task.current_run_id != run.id:
            raise InvalidInput(
                f"run {run.id} is not the latest run of task {task.id} "
                f"({task.current_run_id}); retry that one",
                code=INVALID_TRANSITION,
            )
        chain = len(self._run_chain(task))
        if chain + 1 > MAX_RETRY_CHAIN:
            raise InvalidInput(
                f"task {task.id} already has a chain of {chain} runs; "
                f"a retry would exceed {MAX_RETRY_CHAIN}",
                code=RETRY_CHAIN_TOO_DEEP,
            )
        if run.attempt + 1 > task.max_attempts:
            raise InvalidInput(
                f"task {task.id} has used all {task.max_attempts} attempts",
                code=ATTEMPTS_EXHAUSTED,
            )
        self._check_startable(task)
        self._check_new_run_id(cmd.new_run_id)
        events = [self._enqueue(task, run, cmd.new_run_id, cmd.now)]
        new = self.runs[cmd.new_run_id]
        events.append(
            self._event(
                "run_retried",
                cmd.now,
                task_id=task.id,
                run_id=new.id,
                data={"previous_run_id": run.id, "attempt": new.attempt},
            )
        )
        return Outcome(
            reply=RetryResult(previous_run=snapshot_run(run), run=snapshot_run(new)),
            events=events,
            queued=new.id in self.index,
        )

    def _force_check(self, run: Run, reason: str, now: float) -> tuple[Task, str, list[float]]:
        """Reason and rate limit of a force operation; returns the stamps to store."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("a force operation needs a reason", code=FORCE_REASON_REQUIRED)
        validate.text(reason, "reason", max_chars=MAX_REASON_CHARS)
        task = self.tasks[run.task_id]
        actor = self._actor
        key = "unknown" if actor is None else f"{actor.kind}:{actor.ref}"
        window_start = now - FORCE_RATE_WINDOW_SECONDS
        stamps = [t for t in (task.force_ops or {}).get(key, ()) if t > window_start]
        if len(stamps) >= FORCE_RATE_LIMIT:
            raise InvalidInput(
                f"{key} already forced {FORCE_RATE_LIMIT} operations on task {task.id} in the "
                f"last {FORCE_RATE_WINDOW_SECONDS:.0f} s; wait and retry",
                code=FORCE_RATE_LIMITED,
            )
        return task, key, stamps

    def _force_record(self, task: Task, key: str, stamps: list[float], now: float) -> None:
        window_start = now - FORCE_RATE_WINDOW_SECONDS
        previous = task.force_ops or {}
        kept = {k: v for k, v in previous.items() if k != key and v and v[-1] > window_start}
        kept[key] = [*stamps, now]
        task.force_ops = kept

    def _force_release(self, cmd: ForceReleaseRun) -> Outcome:
        return self._do_force_release(self.get_run(cmd.run_id), cmd.reason, cmd.now)

    def _do_force_release(self, run: Run, reason: str, now: float) -> Outcome:
        task, key, stamps = self._force_check(run, reason, now)
        if run.status not in LEASED_RUN_STATUSES:
            raise InvalidInput(
                f"run {run.id} is {run.status}; only a claimed run can be force-released",
                code=INVALID_TRANSITION,
            )
        session_id = run.session_id
        previous_hash = self._stop_run(run, "queued", reason, now)
        run.ended_at = None
        self._index(task, run)
        self._settle_task(task, run, now)
        self._force_record(task, key, stamps, now)
        event = self._event(
            "run_force_released",
            now,
            task_id=task.id,
            run_id=run.id,
            session_id=session_id,
            data={"reason": reason, "previous_claim_hash_prefix": _hash_prefix(previous_hash)},
        )
        return Outcome(reply=snapshot_run(run), events=[event], queued=run.id in self.index)

    def _force_fail(self, cmd: ForceFailRun) -> Outcome:
        return self._do_force_fail(self.get_run(cmd.run_id), cmd.reason, cmd.now)

    def _do_force_fail(self, run: Run, reason: str, now: float) -> Outcome:
        task, key, stamps = self._force_check(run, reason, now)
        if run.status in ("completed", "failed", "canceled"):
            raise InvalidInput(f"run {run.id} is already {run.status}", code=INVALID_TRANSITION)
        session_id = run.session_id if run.status in LEASED_RUN_STATUSES else None
        previous_hash = self._stop_run(run, "failed", reason, now)
        run.error = reason
        run.failure_kind = FAILURE_KIND_OPERATOR_FORCED
        self._settle_task(task, run, now)
        self._force_record(task, key, stamps, now)
        event = self._event(
            "run_force_failed",
            now,
            task_id=task.id,
            run_id=run.id,
            session_id=session_id,
            data={
                "reason": reason,
                "failure_kind": FAILURE_KIND_OPERATOR_FORCED,
                "previous_claim_hash_prefix": _hash_prefix(previous_hash),
            },
        )
        return Outcome(reply=snapshot_run(run), events=[event])

    def _bulk_force(self, cmd: BulkForceRuns) -> Outcome:
        if cmd.action not in ("release", "fail"):
            raise InvalidInput(f"bulk action must be release or fail, not {cmd.action!r}")
        if len(cmd.run_ids) > MAX_BULK_RUN_IDS:
            raise InvalidInput(
                f"{len(cmd.run_ids)} runs in one bulk request; the limit is {MAX_BULK_RUN_IDS}",
                code=BULK_TOO_LARGE,
            )
        if not cmd.run_ids:
            raise InvalidInput("a bulk request needs at least one run id")
        if not isinstance(cmd.reason, str) or not cmd.reason.strip():
            raise InvalidInput("a force operation needs a reason", code=FORCE_REASON_REQUIRED)
        one = self._do_force_release if cmd.action == "release" else self._do_force_fail
        reply = BulkResult()
        events: list[Event] = []
        queued = False
        for run_id in cmd.run_ids:
            try:
                done = one(self.get_run(run_id), cmd.reason, cmd.now)
            except RunleaseError as exc:
                reply.items.append(
                    BulkItem(run_id=run_id, ok=False, code=exc.code, message=exc.message)
                )
                continue
            events.extend(done.events)
            queued |= done.queued
            reply.items.append(BulkItem(run_id=run_id, ok=True, run=done.reply))
        return Outcome(reply=reply, events=events, queued=queued)

    # ----------------------------------------------------------------- scheduler
    def _pause_scheduler(self, cmd: PauseScheduler) -> Outcome:
        reason = validate.optional_text(cmd.reason, "reason")
        if self.scheduler.paused:
            raise InvalidInput("the scheduler is already paused", code=INVALID_TRANSITION)
        self.scheduler = SchedulerState(
            paused=True,
            paused_by=self._actor.ref if self._actor is not None else None,
            paused_at=cmd.now,
            reason=reason,
            updated_at=cmd.now,
        )
        event = self._event("scheduler_paused", cmd.now, data={"reason": reason})
        return Outcome(reply=msgspec.structs.replace(self.scheduler), events=[event])

    def _resume_scheduler(self, cmd: ResumeScheduler) -> Outcome:
        reason = validate.optional_text(cmd.reason, "reason")
        if not self.scheduler.paused:
            raise InvalidInput("the scheduler is not paused", code=INVALID_TRANSITION)
        self.scheduler = SchedulerState(paused=False, updated_at=cmd.now)
        event = self._event("scheduler_resumed", cmd.now, data={"reason": reason})
        return Outcome(
            reply=msgspec.structs.replace(self.scheduler),
            events=[event],
            queued=len(self.index) > 0,
        )

    # ------------------------------------------------------------------ HZL verbs
    def _checkpoint(self, cmd: CheckpointTask) -> Outcome:
        task = self.get_task(cmd.task_id)
        note = validate.text(cmd.note, "note", max_chars=MAX_NOTE_CHARS)
        author = validate.optional_text(cmd.author, "author", max_chars=MAX_NAME_CHARS)
        if author is None and self._actor is not None:
            author = self._actor.ref
        run = self.runs.get(task.current_run_id) if task.current_run_id else None
        run_id = None
        if run is not None and run.status in LEASED_RUN_STATUSES:
            run.checkpoint_at = cmd.now
            run_id = run.id
        task.checkpoints = (
            *task.checkpoints[-(MAX_CHECKPOINTS_KEPT - 1) :],
            Checkpoint(at=cmd.now, note=note, author=author, run_id=run_id),
        )
        event = self._event(
            "checkpoint",
            cmd.now,
            task_id=task.id,
            run_id=run_id,
            data={"note": note, "author": author},
        )
        return Outcome(reply=snapshot_task(task), events=[event])

    def _steal(self, cmd: StealRun) -> Outcome:
        session = self._live_session(cmd.session_id)
        seconds, clamped = validate.lease_seconds(cmd.lease_seconds)
        reason = validate.optional_text(cmd.reason, "reason")
        token_hash = _lease_hash(cmd)
        task = self.get_task(cmd.task_id)
        run = self.runs.get(task.current_run_id) if task.current_run_id else None
        if run is None or run.status not in ("queued", "claimed", "running"):
            raise InvalidInput(
                f"task {task.id} has no queued or claimed run to steal", code=INVALID_TRANSITION
            )
        if session.lease_run_id is not None:
            raise LeaseRefused(
                f"session {session.id} already holds the lease on run {session.lease_run_id}",
                code=AUTONOMY_LEASE_ALREADY_HELD,
            )
        missing = set(task.required_capabilities) - set(session.capabilities)
        if missing:
            raise InvalidInput(
                f"session {session.id} lacks capabilities {', '.join(sorted(missing))} "
                f"that task {task.id} requires",
                code=INVALID_TRANSITION,
            )
        previous_session_id = run.session_id if run.status != "queued" else None
        if run.status == "queued":
            if self._gate(task) is not None:
                raise InvalidInput(
                    f"task {task.id} is {self._gate(task)}; its run cannot be taken now",
                    code=INVALID_TRANSITION,
                )
            if not cmd.force and run.reason not in (REASON_LEASE_EXPIRED, REASON_ORPHANED_ON_BOOT):
                raise LeaseRefused(
                    f"run {run.id} is queued but did not lose a lease to expiry; claim it",
                    code=LEASE_NOT_EXPIRED,
                )
            previous_hash = None
            self._unqueue(run)
        else:
            assert run.lease_until is not None
            assert run.session_id is not None
            if not cmd.force and run.lease_until > cmd.now:
                raise LeaseRefused(
                    f"the lease on run {run.id} is live until {run.lease_until:.3f}; "
                    "only an expired lease can be stolen without --force",
                    code=LEASE_NOT_EXPIRED,
                )
            previous_hash = run.claim_token_hash
            self._end_lease(run, self.sessions[run.session_id])
        lease = self._grant(run, session, token_hash, seconds, clamped, cmd.now)
        self._settle_task(task, run, cmd.now)
        event = self._event(
            "run_stolen",
            cmd.now,
            task_id=task.id,
            run_id=run.id,
            session_id=session.id,
            data={
                "mode": "force" if cmd.force else "if_expired",
                "reason": reason,
                "previous_session_id": previous_session_id,
                "previous_claim_hash_prefix": _hash_prefix(previous_hash),
                "lease_until": lease.lease_until,
                "agent": session.agent,
            },
        )
        return Outcome(
            reply=Claim(task=snapshot_task(task), run=snapshot_run(run), lease=lease),
            events=[event],
            deadlines=[(lease.lease_until, LEASE_DEADLINE, run.id)],
        )

    def _grant(
        self,
        run: Run,
        session: Session,
        token_hash: str,
        seconds: float,
        clamped: bool,
        now: float,
    ) -> LeaseView:
        run.status = "claimed"
        run.session_id = session.id
        run.claimed_by = session.agent
        run.claim_token_hash = token_hash
        run.lease_until = now + seconds
        run.claimed_at = now
        run.heartbeat_at = now
        run.checkpoint_at = None
        run.reason = None
        self._leased[run.id] = None
        session.lease_run_id = run.id
        return LeaseView(
            run_id=run.id,
            session_id=session.id,
            lease_until=run.lease_until,
            claim_token_hash=run.claim_token_hash,
            lease_seconds=seconds,
            lease_seconds_clamped=clamped,
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
            assert (run.id in self._leased) == leased, f"in the lease set iff leased: {run.id}"
            queued = run.status == "queued"
            gated = queued and self._gate(self.tasks[run.task_id]) is not None
            assert (run.id in self.index) == (queued and not gated), f"index: {run.id}"
            assert (run.id in self.held) == gated, f"held: {run.id}"
            if leased:
                assert holders.get(run.id) == run.session_id, f"lease holder of {run.id}"
                assert run.lease_until is not None
                assert run.claim_token_hash is not None
                assert _TOKEN_HASH.fullmatch(run.claim_token_hash), f"hash form of {run.id}"
            else:
                assert run.id not in holders, f"session holds non-leased run {run.id}"
            if run.status not in _CLOSED_RUN_STATUSES:
                assert 0 < run.queue_seq <= self.queue_seq, f"queue place of {run.id}"
        for task in self.tasks.values():
            current = self.runs.get(task.current_run_id) if task.current_run_id else None
            assert task.status == self._derive(task, current), f"status of {task.id}"
            assert len(self._run_chain(task)) <= MAX_RETRY_CHAIN, f"retry chain of {task.id}"
            assert len(task.blocked_by) <= MAX_DEPENDENCIES
            assert len(self.subtasks.get(task.id, ())) <= MAX_DIRECT_CHILDREN
            assert self._depth(task) <= MAX_HIERARCHY_DEPTH
            assert (task.id in self.paused_tasks) == task.paused
            if task.canceled:
                for below in self.descendants(task.id):
                    closed = self._closed(self.tasks[below])
                    assert closed, f"{below} is open under canceled {task.id}"
        assert len(self.index) + len(self.held) == sum(
            1 for r in self.runs.values() if r.status == "queued"
        )


def _default_actor(command: Any) -> Actor | None:
    """Who did it, when the shell did not say: the session, or the lease clock."""
    session_id = getattr(command, "session_id", None)
    if isinstance(session_id, str) and session_id:
        return Actor(kind="agent_session", ref=session_id)
    if isinstance(command, ExpireLease | ExpireSession):
        return Actor(kind="daemon", ref="lease_clock")
    return None


def _max_attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_ATTEMPTS:
        raise InvalidInput(
            f"max_attempts must be a whole number from 1 to {MAX_MAX_ATTEMPTS}; got {value!r}"
        )
    return value


def _lease_hash(cmd: ClaimNext | StealRun) -> str:
    """The token hash a claim or steal grants its lease under.

    New commands carry the hash. Journals written before that carry the raw token, which
    is hashed here, so replaying them yields the same state and the token goes no further.
    """
    if cmd.claim_token_hash is not None:
        if not isinstance(cmd.claim_token_hash, str) or not _TOKEN_HASH.fullmatch(
            cmd.claim_token_hash
        ):
            raise InvalidInput("claim token hash has the wrong form (a runtime bug)")
        return cmd.claim_token_hash
    token = cmd.claim_token
    if not isinstance(token, str) or not token.startswith(CLAIM_TOKEN_PREFIX):
        raise InvalidInput("claim token has the wrong form (a runtime bug)")
    return hash_token(token)


def _hash_prefix(token_hash: str | None) -> str | None:
    """The first 8 hex characters of a claim-token hash (what operator events may carry)."""
    if token_hash is None:
        return None
    return token_hash.split(":", 1)[-1][:8]


def _claim_workspace_key(scope: str | None, workspace_id: str | None) -> str | None:
    """The index key a claim looks under: None any, "" global tasks only, else a workspace."""
    if scope is None:
        return workspace_id
    if scope == "global":
        if workspace_id is not None:
            raise InvalidInput("a global-scope claim cannot name a workspace")
        return ""
    if scope == "workspace":
        if workspace_id is None:
            raise InvalidInput("a workspace-scope claim needs a workspace_id")
        return workspace_id
    raise InvalidInput(f"scope must be global or workspace, not {scope!r}")


def _artifact_paths(values: Any) -> tuple[str, ...]:
    """Validate a completion contract: relative paths that stay inside the workspace root."""
    if not isinstance(values, list | tuple):
        raise InvalidInput("required_artifacts must be a list of relative paths")
    if len(values) > MAX_REQUIRED_ARTIFACTS:
        raise InvalidInput(
            f"{len(values)} required artifacts; the limit is {MAX_REQUIRED_ARTIFACTS}",
            code=GRAPH_LIMIT_EXCEEDED,
        )
    out: list[str] = []
    for value in values:
        path = validate.text(value, "required artifact", max_chars=1024)
        parts = path.replace("\\", "/").split("/")
        if path.startswith(("/", "\\")) or ".." in parts or (len(path) > 1 and path[1] == ":"):
            raise InvalidInput(
                f"required artifact {path!r} must be a path relative to the workspace root, "
                "without '..'"
            )
        if path not in out:
            out.append(path)
    return tuple(out)
