"""The machine's state and the bookkeeping every handler shares.

:class:`State` owns the records (tasks, runs, sessions) and the structures derived from them
(the claim index, the held set, the task graph maps). Its methods are the small steps the
handlers in ``leases``, ``sessions``, ``graph``, ``tasks`` and ``operator`` are made of, and
each keeps the derived structures in step with the records: a queued run is in the claim
index exactly when its task is claimable, a lease is on both the run and the session, a
task's status is always what :func:`runlease.core.lifecycle.task_status` says.

Run statuses change only through :func:`runlease.core.lifecycle.move_run`. Nothing here
reads a clock or does IO: times arrive as ``now`` from the command being applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from runlease.core import lifecycle, validate
from runlease.core.create_keys import CreateKey
from runlease.core.index import ClaimIndex
from runlease.core.lifecycle import RunAction
from runlease.core.model import (
    CLOSED_TASK_STATUSES,
    LEASED_RUN_STATUSES,
    PRIORITY_RANK,
    REASON_LEASE_EXPIRED,
    REASON_ORPHANED_ON_BOOT,
    AccessToken,
    Actor,
    Event,
    LeaseLoss,
    LeaseView,
    Origin,
    Run,
    SchedulerState,
    Session,
    Task,
)
from runlease.errors import (
    AUTONOMY_SESSION_REQUIRED,
    RUN_NOT_FOUND,
    SESSION_NOT_FOUND,
    SESSION_STOPPED,
    TASK_NOT_FOUND,
    LeaseRefused,
    NotFound,
)


def snapshot_task(task: Task) -> Task:
    """A copy of a task for a reply: the caller may change it without touching the state."""
    copy = msgspec.structs.replace(task)
    if task.metadata is not None:
        copy.metadata = validate.copy_payload(task.metadata)
    return copy


def snapshot_run(run: Run) -> Run:
    """A copy of a run for a reply (payloads included)."""
    copy = msgspec.structs.replace(run)
    if run.result is not None:
        copy.result = validate.copy_payload(run.result)
    if run.failure_metadata is not None:
        copy.failure_metadata = validate.copy_payload(run.failure_metadata)
    return copy


def awaits_new_holder(run: Run) -> bool:
    """A queued run that lost its lease to expiry (at run time or at boot) and that nobody
    has claimed since: what ``steal --if-expired`` may take and ``stuck`` reports."""
    return run.status == "queued" and run.reason in (REASON_LEASE_EXPIRED, REASON_ORPHANED_ON_BOOT)


class State:
    """The whole in-memory state of one runtime."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.runs: dict[str, Run] = {}
        self.sessions: dict[str, Session] = {}
        self.children: dict[str, list[str]] = {}
        self.session_by_token_hash: dict[str, str] = {}
        # Access tokens by id, in the order they were made, and their ids by secret hash.
        self.access_tokens: dict[str, AccessToken] = {}
        self.access_token_by_hash: dict[str, str] = {}
        self.index = ClaimIndex()
        self.last_seq = 0
        # One shared frozenset per distinct capability (or tag) tuple: a new one per
        # queued run would cost ~200 bytes each at a million tasks.
        self._capability_sets: dict[tuple[str, ...], frozenset[str]] = {}
        # One shared tuple per distinct tag list, for the same reason.
        self._tag_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        # Run ids of live leases, in the order the leases were taken (an ordered set). The
        # lease's token hash is on the run; raw tokens are never kept.
        self.leased: dict[str, None] = {}
        # The newest ``now`` of any command that changed the state (a high-water mark). Boot
        # never lets the clock start before it, so a wall clock stepped back while the
        # runtime was down cannot stretch a recovered lease beyond its granted length.
        self.high_water = 0.0
        # The enqueue counter: each newly queued run takes the next value as its place in
        # the queue (Run.queue_seq), which is deterministic on replay, unlike wall time.
        self.queue_seq = 0
        # Task graph. Persistent truth lives in the Task records (parent_task_id, blocked_by,
        # paused); these are derived from them and rebuilt on restore.
        self.subtasks: dict[str, list[str]] = {}
        self.dependents: dict[str, set[str]] = {}
        self.paused_tasks: set[str] = set()
        # Queued runs whose task is gated (draft, paused, blocked): out of the claim index.
        self.held: set[str] = set()
        # (task id, idempotency key) -> run id, from Run.idempotency_key.
        self.idempotency: dict[tuple[str, str], str] = {}
        # Idempotency keys of creates, oldest first (see runlease.core.create_keys).
        self.create_keys: dict[str, CreateKey] = {}
        self.scheduler = SchedulerState()
        # Runs put back in the queue because their lease ran out, in that order; ``stuck``
        # lists those nobody has claimed since (see :meth:`lost_lease_runs`). Entries that
        # were claimed, canceled or deleted since are dropped lazily.
        self.lost_leases: dict[str, None] = {}
        self._lost_leases_kept = 0
        # Who is applying the current command and through which surface (stamped on every
        # event it emits).
        self.actor: Actor | None = None
        self.origin: Origin | None = None

    def adopt(self, other: State) -> None:
        """Take over another machine's whole state (used to roll back to the journal)."""
        self.tasks = other.tasks
        self.runs = other.runs
        self.sessions = other.sessions
        self.children = other.children
        self.session_by_token_hash = other.session_by_token_hash
        self.access_tokens = other.access_tokens
        self.access_token_by_hash = other.access_token_by_hash
        self.index = other.index
        self.last_seq = other.last_seq
        self.leased = other.leased
        self.high_water = other.high_water
        self.queue_seq = other.queue_seq
        self.subtasks = other.subtasks
        self.dependents = other.dependents
        self.paused_tasks = other.paused_tasks
        self.held = other.held
        self.idempotency = other.idempotency
        self.create_keys = other.create_keys
        self.scheduler = other.scheduler
        self.lost_leases = other.lost_leases
        self._lost_leases_kept = other._lost_leases_kept

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

    def current_run(self, task: Task) -> Run | None:
        return self.runs.get(task.current_run_id) if task.current_run_id else None

    def leased_runs(self) -> Iterator[Run]:
        for run_id in self.leased:
            yield self.runs[run_id]

    def leased_run_ids(self) -> list[str]:
        """The run ids of live leases, in the order the leases were taken."""
        return list(self.leased)

    def leased_count(self) -> int:
        return len(self.leased)

    def capability_set(self, capabilities: tuple[str, ...]) -> frozenset[str]:
        found = self._capability_sets.get(capabilities)
        if found is None:
            found = self._capability_sets[capabilities] = frozenset(capabilities)
        return found

    def shared_tags(self, tags: tuple[str, ...]) -> tuple[str, ...]:
        """The one tuple the state keeps for this tag list (tasks share it)."""
        return self._tag_tuples.setdefault(tags, tags)

    def live_session(self, session_id: str | None) -> Session:
        """The session a lease operation acts for; it must be named and live."""
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

    # ------------------------------------------------------------------------ events
    def event(
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
            actor=self.actor,
            origin=self.origin,
        )

    def run_event(
        self,
        kind: str,
        at: float,
        run: Run,
        *,
        session_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        """An event about one run, filed under its task too."""
        return self.event(
            kind, at, task_id=run.task_id, run_id=run.id, session_id=session_id, data=data
        )

    # ------------------------------------------------------------------ task graph
    def ancestors(self, task: Task) -> Iterator[Task]:
        """The task itself, then its parent, up to the root."""
        current: Task | None = task
        while current is not None:
            yield current
            parent = current.parent_task_id
            current = self.tasks.get(parent) if parent is not None else None

    def pauser_of(self, task: Task) -> str | None:
        """The id of the task whose pause applies to this one (itself or an ancestor)."""
        return next((t.id for t in self.ancestors(task) if t.paused), None)

    def canceled_ancestor(self, task: Task) -> str | None:
        """The id of the first canceled task among ``task`` and its ancestors."""
        return next((t.id for t in self.ancestors(task) if t.canceled), None)

    def depth(self, task: Task) -> int:
        return sum(1 for _ in self.ancestors(task))

    def descendants(self, task_id: str) -> list[str]:
        """Every task below ``task_id``, parents before children (creation order)."""
        out: list[str] = []
        stack = list(reversed(self.subtasks.get(task_id, ())))
        while stack:
            child = stack.pop()
            out.append(child)
            stack.extend(reversed(self.subtasks.get(child, ())))
        return out

    def open_dependencies(self, task: Task) -> list[str]:
        """The blockers of a task that have not completed yet."""
        return lifecycle.open_blockers(task, self.tasks)

    def run_chain(self, task: Task) -> Iterator[Run]:
        """Every run of a task, newest first (each run links to the one before it)."""
        run_id = task.current_run_id
        while run_id is not None:
            run = self.runs[run_id]
            yield run
            run_id = run.previous_run_id

    def lost_lease_runs(self) -> Iterator[Run]:
        """Queued runs whose lease ran out and that nobody has claimed since."""
        for run_id in self.lost_leases:
            run = self.runs.get(run_id)
            if run is not None and awaits_new_holder(run):
                yield run

    def _note_lost_lease(self, run: Run) -> None:
        """Remember a run the lease clock put back in the queue, and drop the stale entries
        once they could make up half of the map (amortised O(1) per expiry)."""
        self.lost_leases[run.id] = None
        if len(self.lost_leases) > max(64, 2 * self._lost_leases_kept):
            self.lost_leases = {r.id: None for r in self.lost_lease_runs()}
            self._lost_leases_kept = len(self.lost_leases)

    # ---------------------------------------------------------------------- gating
    # A queued run sits in the claim index only while its task is claimable; a draft,
    # (effectively) paused or dependency-blocked task's queued run waits in ``held``
    # instead. Every change that can open or close a gate re-checks the tasks it touches
    # (``regate``), so claims never scan for eligibility.

    def gate(self, task: Task) -> str | None:
        """Why the task's queued run may not be claimed now (draft/paused/blocked), or None."""
        if task.draft:
            return "draft"
        if self.paused_tasks and self.pauser_of(task) is not None:
            return "paused"
        if self.open_dependencies(task):
            return "blocked"
        return None

    def owner_key(self, task: Task) -> str | None:
        """The claim index's key for a task's owner: ``s:<session>`` or ``p:<agent>``."""
        owner = task.owner
        if owner is None:
            return None
        return ("s:" if owner.kind == "agent_session" else "p:") + owner.ref

    def index_run(self, task: Task, run: Run) -> None:
        """Put a queued run where it belongs: the claim index, or ``held`` if gated."""
        if self.gate(task) is not None:
            self.held.add(run.id)
            return
        self.index.add(
            run.id,
            rank=PRIORITY_RANK[task.priority],
            seq=run.queue_seq,
            workspace_id=task.workspace_id,
            capabilities=self.capability_set(task.required_capabilities),
            preferred=self.capability_set(task.preferred_capabilities),
            owner=self.owner_key(task),
            tags=self.capability_set(task.tags),
        )

    def unqueue(self, run: Run) -> None:
        """Take a queued run out of the index or the held set (it is leaving the queue)."""
        if not self.index.discard(run.id):
            self.held.discard(run.id)

    def regate(self, task_ids: Iterable[str]) -> bool:
        """Move the queued runs of these tasks between index and held; True if any opened."""
        opened = False
        for task_id in task_ids:
            task = self.tasks[task_id]
            run = self.current_run(task)
            if run is None or run.status != "queued":
                continue
            gated = self.gate(task) is not None
            if gated and run.id in self.index:
                self.index.discard(run.id)
                self.held.add(run.id)
            elif not gated and run.id in self.held:
                self.held.discard(run.id)
                self.index_run(task, run)
                opened = True
        return opened

    # ------------------------------------------------------------------ task status
    def settle(self, task: Task, run: Run | None, now: float) -> None:
        """Recompute a task's status after a change to it or its current run."""
        task.status = lifecycle.task_status(task, run, self.tasks)
        task.updated_at = now
        task.closed_at = now if task.status in CLOSED_TASK_STATUSES else None

    def resettle(self, task: Task, now: float) -> None:
        self.settle(task, self.current_run(task), now)

    # ---------------------------------------------------------------------- runs
    def enqueue(
        self,
        task: Task,
        previous: Run | None,
        run_id: str,
        now: float,
        *,
        attempt: int | None = None,
    ) -> Event:
        """Create the task's next run, queued (or held, if the task is gated).

        The run continues ``previous``'s attempt count unless ``attempt`` says otherwise.
        """
        self.queue_seq += 1
        if attempt is None:
            attempt = 1 if previous is None else previous.attempt + 1
        run = Run(
            id=run_id,
            task_id=task.id,
            attempt=attempt,
            previous_run_id=None if previous is None else previous.id,
            queued_at=now,
            queue_seq=self.queue_seq,
        )
        self.runs[run_id] = run
        task.current_run_id = run_id
        self.index_run(task, run)
        self.settle(task, run, now)
        return self.event(
            "run_queued", now, task_id=task.id, run_id=run_id, data={"attempt": run.attempt}
        )

    def requeue(self, run: Run, action: RunAction, reason: str, now: float) -> None:
        """Put a run whose lease just ended back in the queue.

        The run keeps its place (queue_seq), so recovered work goes back to the front of
        its priority band instead of behind everything queued since.
        """
        lifecycle.move_run(run, action)
        run.reason = reason
        task = self.tasks[run.task_id]
        self.index_run(task, run)
        self.settle(task, run, now)
        if action == "expire":
            self._note_lost_lease(run)

    def grant(
        self,
        run: Run,
        session: Session,
        action: RunAction,
        token_hash: str,
        seconds: float,
        clamped: bool,
        now: float,
    ) -> LeaseView:
        """Give ``session`` a fresh lease on ``run`` (out of the queue, or just unleased).

        Everything the previous holder left on the run (checkpoint time, release reason) is
        cleared: the new lease starts clean.
        """
        lifecycle.move_run(run, action)
        run.session_id = session.id
        run.claimed_by = session.agent
        run.claim_token_hash = token_hash
        run.lease_until = now + seconds
        run.claimed_at = now
        run.heartbeat_at = now
        run.checkpoint_at = None
        run.reason = None
        loss = run.lease_loss
        if loss is not None and loss.session_id == session.id:
            run.lease_loss = None  # the session has the run again: its old loss is moot
        self.leased[run.id] = None
        session.lease_run_id = run.id
        self.settle(self.tasks[run.task_id], run, now)
        return self.lease_view(run, seconds, clamped)

    def lease_view(self, run: Run, seconds: float, clamped: bool) -> LeaseView:
        """The public summary of the lease a run is under (its token's hash, never a token)."""
        assert run.session_id is not None
        assert run.lease_until is not None
        assert run.claim_token_hash is not None
        return LeaseView(
            run_id=run.id,
            session_id=run.session_id,
            lease_until=run.lease_until,
            claim_token_hash=run.claim_token_hash,
            lease_seconds=seconds,
            lease_seconds_clamped=clamped,
        )

    def end_lease(self, run: Run, session: Session) -> None:
        """Drop the lease from both sides; the run keeps session_id as history."""
        run.claim_token_hash = None
        run.lease_until = None
        self.leased.pop(run.id, None)
        session.lease_run_id = None

    def record_loss(self, run: Run, cause: str, now: float, *, by: str | None = None) -> None:
        """Note on the run that its last holder lost it without finishing it (call before
        the lease is dropped), so a late call from that session hears why."""
        assert run.session_id is not None
        run.lease_loss = LeaseLoss(
            session_id=run.session_id, at=now, cause=cause, by=by, lease_until=run.lease_until
        )

    def record_requeue(self, run: Run, cause: str, now: float) -> None:
        """A parked run goes back to the queue by an operator's hand. Its last holder's
        block (or whatever parked it) no longer stands, so a late call from that session
        must not be taken for a repeat of its own finish: note the change as a loss, unless
        the session's loss of this run is already on record (its lease ran out: that says
        more)."""
        loss = run.lease_loss
        if run.session_id is None or (loss is not None and loss.session_id == run.session_id):
            return
        actor = self.actor
        self.record_loss(run, cause, now, by=None if actor is None else f"{actor.kind}:{actor.ref}")

    def stop_run(self, run: Run, action: RunAction, reason: str, now: float) -> str | None:
        """End a run that is queued, leased or parked: out of the queue, lease dropped.

        Returns the claim hash it had if it was leased. The session that held the run last
        (leased, or finished by it and still showing that) is told later that the run was
        taken from it, and by whom.
        """
        previous_hash = run.claim_token_hash
        before = lifecycle.move_run(run, action)  # refuses before anything changed
        if run.session_id is not None:
            actor = self.actor
            self.record_loss(
                run, action, now, by=None if actor is None else f"{actor.kind}:{actor.ref}"
            )
        if before == "queued":
            self.unqueue(run)
        elif before in LEASED_RUN_STATUSES:
            assert run.session_id is not None
            self.end_lease(run, self.sessions[run.session_id])
        run.ended_at = now
        run.reason = reason
        return previous_hash
