"""The embedded runtime's reads: copies of this process's in-memory view, without awaiting.

That view may include writes whose commit is still running, which a crash would take back.
Before showing what a read returned outside the process, ``await rt.settled()``, or compute
the answer with ``await rt.read(fn)``, which does both (every read operation over the
socket goes through it).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Unpack

import msgspec

from runlease.actors.clock import RuntimeClock
from runlease.actors.system import ActorSystem
from runlease.core import finding, stuck, views
from runlease.core.finding import TaskFilters
from runlease.core.machine import Machine, snapshot_run, snapshot_task
from runlease.core.model import Event, Run, Session, Task
from runlease.errors import InvalidInput
from runlease.operations import DEFAULT_STUCK_THRESHOLD
from runlease.runtime.events import EventFeed


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
    _feed: EventFeed
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
        """A task with every run, its checkpoints, graph edges and retained events."""
        return views.task_detail(
            self._machine, self._machine.get_task(task_id), self._feed.timeline(task_id)
        )

    def pause_state(self, task_id: str) -> views.PauseState:
        """Direct and effective (inherited from an ancestor) pause of a task."""
        return views.pause_state(self._machine, self._machine.get_task(task_id))

    # ------------------------------------------------------------------- sessions
    def get_session(self, session_id: str) -> Session:
        return msgspec.structs.replace(self._machine.get_session(session_id))

    def list_sessions(self, *, live_only: bool = False) -> list[Session]:
        return [
            msgspec.structs.replace(s)
            for s in self._machine.sessions.values()
            if not live_only or s.state == "live"
        ]

    # ------------------------------------------------------------------ scheduler
    def scheduler_status(self) -> views.SchedulerStatus:
        return views.scheduler_status(self._machine, self._clock.now())

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
        """A task's retained events after ``after_seq``, oldest first.

        Retention: in memory, the newest 256 events of each of the 10,000 most recently
        active tasks since this process started (see runtime/events.py). For a live stream
        use :meth:`follow_events` with ``task_id`` and ``after_seq``.
        """
        self._machine.get_task(task_id)
        return self._feed.timeline(task_id, after_seq=after_seq, limit=limit)

    def inspect_task(self, task_id: str) -> views.InspectView:
        """Current run, bound session, recent runs and events (claim hashes as 8-hex
        prefixes), scheduler and pause state, ``diagnostics`` each with its remedy, and the
        deterministic ``next_action`` (see core/views.py: next_action, diagnostics)."""
        task = self._machine.get_task(task_id)
        return views.inspect(self._machine, task, self._clock.now(), self._feed.timeline(task_id))

    def inspect_run(self, run_id: str) -> views.InspectView:
        run = self._machine.get_run(run_id)
        task = self._machine.tasks[run.task_id]
        return views.inspect(
            self._machine,
            task,
            self._clock.now(),
            [e for e in self._feed.timeline(task.id) if e.run_id in (None, run_id)],
            target_run=run,
        )

    # --------------------------------------------------------------------- events
    def events(self, *, after_seq: int = 0, task_id: str | None = None) -> list[Event]:
        """Recent acknowledged events (a bounded buffer), oldest first."""
        return self._feed.recent(after_seq=after_seq, task_id=task_id)

    def follow_events(
        self, *, after_seq: int = 0, task_id: str | None = None
    ) -> AsyncIterator[Event]:
        """Buffered events after ``after_seq``, then new ones as they are acknowledged."""
        return self._feed.follow(after_seq=after_seq, task_id=task_id)

    def status(self) -> RuntimeStatus:
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
