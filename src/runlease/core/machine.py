"""The state machine: ``Machine.apply(command)`` is the one way the state changes.

``apply`` checks the command against the current state and either raises a
:class:`runlease.errors.RunleaseError` having changed nothing, or changes the state and
returns an :class:`Outcome`: the reply for the caller, the events emitted, and what the
shell must do next (schedule a deadline, wake waiting claimers). No trio, no IO, no clock:
the time is the command's ``now``, and ids and claim-token hashes arrive inside the command.
The machine never holds a raw claim token: a lease is identified by its hash, and callers are
resolved by (session, run id).

One exception to "raise having changed nothing": a claim whose session still holds a lease
that is already past its deadline first expires that lease (an event), then reports the
claim's own error in ``Outcome.error``. The shell journals such an outcome like any other.

Where the rest lives: the records and their bookkeeping in :mod:`~runlease.core.state`, the
allowed status moves in :mod:`~runlease.core.lifecycle`, and one handler per command,
grouped by concern, in :mod:`~runlease.core.leases`, :mod:`~runlease.core.sessions`,
:mod:`~runlease.core.tasks`, :mod:`~runlease.core.graph`,
:mod:`~runlease.core.operator_actions` and :mod:`~runlease.core.starvation` (each registers
its handlers with ``@handles``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

# Imported for their ``@handles`` registrations: together they handle every command.
from runlease.core import (
    graph,
    invariants,
    leases,
    lifecycle,
    operator_actions,
    sessions,
    starvation,
    tasks,
    tokens,  # noqa: F401 - registers its handlers
)
from runlease.core.commands import Command
from runlease.core.create_keys import CreateKey
from runlease.core.model import (
    FINAL_RUN_STATUSES,
    PRIORITY_RANK,
    AccessToken,
    Run,
    SchedulerState,
    Session,
    Task,
)
from runlease.core.outcome import LEASE_DEADLINE, SESSION_DEADLINE, Deadline, Outcome
from runlease.core.registry import dispatch
from runlease.core.state import State, awaits_new_holder, snapshot_run, snapshot_task

__all__ = [
    "LEASE_DEADLINE",
    "SESSION_DEADLINE",
    "Deadline",
    "Machine",
    "Outcome",
    "snapshot_run",
    "snapshot_task",
]

_HANDLER_MODULES = (graph, leases, operator_actions, sessions, starvation, tasks)

R = TypeVar("R")


class Machine(State):
    """The whole in-memory state of one runtime and the one entry point that changes it."""

    def apply(self, command: Command[R]) -> Outcome[R]:
        return dispatch(self, command)

    def check_invariants(self) -> None:
        """Raise AssertionError if the state breaks a lease rule (used by tests)."""
        invariants.check(self)

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
        create_keys: Iterable[CreateKey] = (),
        access_tokens: Iterable[AccessToken] = (),
    ) -> Machine:
        """Rebuild a machine from its records (a decoded snapshot); the records are adopted.

        ``leased`` lists the leased run ids in the order the leases were taken;
        ``create_keys`` the idempotency keys of creates, oldest first. Derived
        state is recomputed: ``children`` in session order (the order they were opened in),
        and the claim index from the queued runs, so claims come out in exactly the order
        the original machine would hand them out.

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
            if task.tags:
                task.tags = machine.shared_tags(task.tags)
            if task.status == "pending":
                # Records written before awaiting approval was derived as blocked, and a
                # failed run with attempts left as ready, stored pending for both; only
                # that status can differ from today's derivation, so only it is redone.
                task.status = lifecycle.task_status(task, machine.current_run(task), machine.tasks)
        machine.queue_seq = queue_seq
        unnumbered: list[Run] = []
        for run in machine.runs.values():
            if run.idempotency_key is not None:
                machine.idempotency[(run.task_id, run.idempotency_key)] = run.id
            if run.queue_seq > machine.queue_seq:
                machine.queue_seq = run.queue_seq
            elif run.queue_seq == 0 and run.status not in FINAL_RUN_STATUSES:
                unnumbered.append(run)
        unnumbered.sort(key=lambda r: (r.queued_at, r.id))
        for run in unnumbered:
            machine.queue_seq += 1
            run.queue_seq = machine.queue_seq

        def queued() -> Iterator[tuple[Any, ...]]:
            for run in machine.runs.values():
                if run.status == "queued":
                    task = machine.tasks[run.task_id]
                    if machine.gate(task) is not None:
                        machine.held.add(run.id)
                        continue
                    yield (
                        run.id,
                        PRIORITY_RANK[task.priority],
                        run.queue_seq,
                        task.workspace_id,
                        machine.capability_set(task.required_capabilities),
                        machine.capability_set(task.preferred_capabilities),
                        machine.owner_key(task),
                        machine.capability_set(task.tags),
                    )

        machine.index.add_many(queued())
        machine.lost_leases = {
            run.id: None for run in machine.runs.values() if awaits_new_holder(run)
        }
        machine.leased = dict.fromkeys(leased)
        machine.create_keys = {entry.key: entry for entry in create_keys}
        for token in access_tokens:
            machine.access_tokens[token.id] = token
            machine.access_token_by_hash[token.token_hash] = token.id
        machine.last_seq = last_seq
        machine.high_water = high_water
        if scheduler is not None:
            machine.scheduler = scheduler
        return machine
