"""The embedded runtime's reads: copies of this process's in-memory view, without awaiting.

That view may include writes whose commit is still running, which a crash would take back.
Before showing what a read returned outside the process, ``await rt.settled()``, or compute
the answer with ``await rt.read(fn)``, which does both (every read operation over the
socket goes through it).
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Iterable
from typing import Unpack

import msgspec

from runlease.actors.clock import RuntimeClock
from runlease.actors.system import ActorSystem
from runlease.core import context, finding, stuck, views
from runlease.core.finding import TaskFilters
from runlease.core.machine import Machine, snapshot_run, snapshot_task
from runlease.core.model import AccessToken, Event, Run, Session, Task
from runlease.errors import InvalidInput
from runlease.operations import DEFAULT_STUCK_THRESHOLD
from runlease.runtime.history import EVERYTHING, EventHistory

# The newest events of a task that ``show_task`` includes (``timeline`` pages them all).
SHOWN_EVENTS = 256


class RuntimeStatus(msgspec.Struct, kw_only=True, tag="status"):
    tasks: int
    queued_runs: int
    leased_runs: int
    live_sessions: int
    waiting_claimers: int
    last_event_seq: int
    durability: str
    recovered: bool = True


class MemoryReads:
    """The sync reads of :class:`~runlease.runtime.runtime.Runtime`."""

    _machine: Machine
    _clock: RuntimeClock
    history: EventHistory
    _system: ActorSystem
    durability: str

    # ---------------------------------------------------------------------- tasks
    def get_task(self, task_id: str) -> Task:
        return snapshot_task(self._machine.get_task(task_id))

    def get_run(self, run_id: str) -> Run:
        return snapshot_run(self._machine.get_run(run_id))

    def list_tasks(
        self, *, after: str | None = None, limit: int | None = None, **filters: Unpack[TaskFilters]
    ) -> list[Task]:
        """Tasks matching every filter, in creation order; page with ``after`` (the last id
        of the previous page) and ``limit``. The filters: see core/finding.py."""
        found = finding.find_tasks(self._machine, after=after, limit=limit, **filters)
        return [snapshot_task(task) for task in found]

    def runs_of(self, task_id: str) -> list[Run]:
        """Every run of a task, oldest first (follows previous_run_id back from the current)."""
        task = self._machine.get_task(task_id)
        chain: list[Run] = []
        run_id = task.current_run_id
        while run_id is not None:
            run = self._machine.runs[run_id]
            chain.append(snapshot_run(run))
            run_id = run.previous_run_id
        chain.reverse()
        return chain

    def show_task(self, task_id: str) -> views.TaskDetail:
        """A task with every run, its checkpoints, graph edges and its newest events."""
        task = self._machine.get_task(task_id)
        return views.task_detail(
            self._machine, task, self.history.recent(SHOWN_EVENTS, task_id=task.id)
        )

    def pause_state(self, task_id: str) -> views.PauseState:
        """Direct and effective (inherited from an ancestor) pause of a task."""
        return views.pause_state(self._machine, self._machine.get_task(task_id))

    # --------------------------------------------------------------------- tokens
    def access_tokens(self) -> list[AccessToken]:
        """Every access token, oldest first (hashes only; the secrets are never kept)."""
        return [msgspec.structs.replace(t) for t in self._machine.access_tokens.values()]

    # ------------------------------------------------------------------- sessions
    def get_session(self, session_id: str) -> Session:
        return msgspec.structs.replace(self._machine.get_session(session_id))

    def list_sessions(self, *, live_only: bool = False) -> list[Session]:
        """Sessions, oldest first. With ``live_only`` each shows its age and when it last
        made a request (``age_seconds``, ``last_active_at``): what an operator looks at to
        find forgotten sessions. The full listing stays a plain copy of the records."""
        if not live_only:
            return [msgspec.structs.replace(s) for s in self._machine.sessions.values()]
        now = self._clock.now()
        activity = self._system.activity
        out: list[Session] = []
        for session in self._machine.sessions.values():
            if session.state == "live":
                view = msgspec.structs.replace(session)
                view.last_active_at = activity.last_active(session)
                view.age_seconds = round(max(0.0, now - session.opened_at), 1)
                out.append(view)
        return out

    # ------------------------------------------------------------------ scheduler
    def scheduler_status(self) -> views.SchedulerStatus:
        return views.scheduler_status(self._machine, self._clock.now())

    def overview(self, *, limit: int = views.DEFAULT_OVERVIEW_ROWS) -> views.Overview:
        """Counts, queue depth by workspace and priority, the ``limit`` leases that run
        out first and the ``limit`` most recently active live sessions."""
        return views.overview(
            self._machine,
            self._clock.now(),
            limit=limit,
            last_active=self._system.activity.last_active,
            waiting_claimers=len(self._system.waiters),
            last_event_seq=self.history.last_seq,
        )

    def backlog(
        self,
        *,
        workspace: str | None = None,
        include_paused: bool = True,
        after: str | None = None,
        limit: int = 100,
    ) -> views.Backlog:
        """Queued runs with their task (claimable and held back), paged by run id."""
        return views.backlog(
            self._machine,
            workspace_id=workspace,
            include_paused=include_paused,
            after=after,
            limit=limit,
        )

    def stuck(self, *, threshold: float = DEFAULT_STUCK_THRESHOLD) -> list[views.StuckRun]:
        """Leased runs whose lease has run out (not yet expired by the clock), runs the
        clock requeued after their lease ran out and nobody claimed since, then leased runs
        with no heartbeat or checkpoint for longer than their task's ``stale_after`` (or
        ``threshold`` seconds for tasks without one). See core/stuck.py."""
        if not math.isfinite(threshold) or threshold < 0:
            raise InvalidInput(f"threshold must be zero or positive seconds, got {threshold}")
        return stuck.stuck(self._machine, self._clock.now(), threshold=threshold)

    # ---------------------------------------------------------- audit, inspect
    def timeline(
        self, task_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """A task's events after ``after_seq``, oldest first (every one still in the
        history when ``limit`` is None; see :class:`~runlease.runtime.history.EventHistory`
        for what is kept). For a live stream use :meth:`follow_events` with ``task_id``
        and ``after_seq``.
        """
        self._machine.get_task(task_id)
        return self.history.read(
            after_seq=after_seq, limit=EVERYTHING if limit is None else limit, task_id=task_id
        )

    def context_bundle(self, session_id: str, run_id: str) -> context.ContextBundle:
        """The context bundle of ``run_id`` for ``session_id``, which must hold its live
        lease (see core/context.py); recent events come from the task's timeline."""
        now = self._clock.now()
        run = context.holder_run(self._machine, session_id, run_id, now)
        events = self.recent_task_events(run.task_id, context.MAX_CONTEXT_EVENTS)
        return context.build_bundle(self._machine, run, now, events)

    def recent_task_events(self, task_id: str, limit: int) -> list[Event]:
        """The newest ``limit`` retained events of a task, oldest first."""
        self._machine.get_task(task_id)
        return self.history.recent(limit, task_id=task_id) if limit > 0 else []

    def inspect_task(self, task_id: str) -> views.InspectView:
        """Current run, bound session, recent runs and events (claim hashes as 8-hex
        prefixes), scheduler and pause state, ``diagnostics`` each with its remedy, and the
        deterministic ``next_action`` (see core/views.py: next_action, diagnostics)."""
        task = self._machine.get_task(task_id)
        events = self.history.recent(views.RECENT_EVENTS, task_id=task.id)
        return views.inspect(self._machine, task, self._clock.now(), events)

    def inspect_run(self, run_id: str) -> views.InspectView:
        run = self._machine.get_run(run_id)
        task = self._machine.tasks[run.task_id]
        return views.inspect(
            self._machine,
            task,
            self._clock.now(),
            [
                e
                for e in self.history.recent(SHOWN_EVENTS, task_id=task.id)
                if e.run_id in (None, run_id)
            ],
            target_run=run,
        )

    # --------------------------------------------------------------------- events
    def events(
        self,
        *,
        after_seq: int = 0,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Acknowledged events after ``after_seq`` matching every filter given (``kinds``:
        any of these event types), oldest first; all that the history keeps unless
        ``limit`` is given."""
        return self.history.read(
            after_seq=after_seq,
            limit=EVERYTHING if limit is None else limit,
            task_id=task_id,
            run_id=run_id,
            session_id=session_id,
            kinds=_kinds(kinds),
        )

    def get_event(self, seq: int) -> Event:
        """One event by sequence (EVENT_NOT_FOUND: compacted away, or not written yet)."""
        return self.history.get(seq)

    def follow_events(
        self,
        *,
        after_seq: int = 0,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Matching events after ``after_seq``, then new ones as they are acknowledged."""
        return self.history.follow(
            after_seq=after_seq,
            task_id=task_id,
            run_id=run_id,
            session_id=session_id,
            kinds=_kinds(kinds),
        )

    def status(self) -> RuntimeStatus:
        machine = self._machine
        return RuntimeStatus(
            tasks=len(machine.tasks),
            queued_runs=len(machine.index),
            leased_runs=sum(1 for _ in machine.leased_runs()),
            live_sessions=sum(1 for s in machine.sessions.values() if s.state == "live"),
            waiting_claimers=len(self._system.waiters),
            last_event_seq=self.history.last_seq,
            durability=self.durability,
        )


def _kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        raise InvalidInput("kinds must be a list of event types, not one string")
    return frozenset(kinds)
