"""Which status changes runs and tasks may make, written as data, and the one check of them.

``RUN_TRANSITIONS[status][action]`` is the status an action moves a run to; a pair missing
from the table is refused with ``INVALID_TRANSITION`` by :func:`move_run` /
:func:`next_run_status`, always with the same message shape (the object, its status, the
action, and what that status allows). Handlers run their own checks first (lease holder,
reason, rate limit), then the table decides whether the move itself is allowed.

A task's status is derived from its records (:func:`task_status`): the flags ``canceled`` and
``draft``, its current run, and its open blockers. ``TASK_TRANSITIONS`` lists the actions
taken on the task itself and the status each leads to. Edits that only change what the
derivation reads (``pause``, ``depend``, ``change_attempts``) keep the status they find, and
the new status shows once the task is settled; the table says from which statuses they are
allowed at all.

Pure: no IO, no clock, no state of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, TypeVar

from runlease.core.model import (
    CLOSED_TASK_STATUSES,
    LEASED_RUN_STATUSES,
    Run,
    RunStatus,
    Task,
    TaskStatus,
)
from runlease.errors import INVALID_TRANSITION, InvalidInput

RunAction = Literal[
    "claim",  # a session takes the queued run
    "steal",  # a session takes the run over, from the queue or from another lease
    "heartbeat",  # the holder renews its lease
    "complete",
    "fail",
    "release",  # the lease ends early and the run goes back to the queue
    "block",  # the holder parks the run for a person
    "expire",  # the lease ran out and the run goes back to the queue
    "give_up",  # the lease ran out once too often: parked instead of requeued
    "cancel",
    "force_release",
    "force_fail",
    "retry",  # a new run follows this one; this one stays failed
    "recover",  # an operator puts a parked run back in the queue
    "unblock",  # an operator clears a block: the parked run goes back to the queue
    "starve",  # no live session could take the queued run for too long: parked
]

_LEASED_MOVES: Final[dict[RunAction, RunStatus]] = {
    "heartbeat": "running",
    "complete": "completed",
    "fail": "failed",
    "release": "queued",
    "block": "needs_attention",
    "expire": "queued",
    "give_up": "needs_attention",
    "steal": "claimed",
    "cancel": "canceled",
    "force_release": "queued",
    "force_fail": "failed",
}

RUN_TRANSITIONS: Final[Mapping[RunStatus, Mapping[RunAction, RunStatus]]] = {
    "queued": {
        "claim": "claimed",
        "steal": "claimed",
        "cancel": "canceled",
        "force_fail": "failed",
        "starve": "needs_attention",
    },
    "claimed": _LEASED_MOVES,
    "running": _LEASED_MOVES,
    "needs_attention": {
        "cancel": "canceled",
        "force_fail": "failed",
        "recover": "queued",
        "unblock": "queued",
    },
    "completed": {},
    "failed": {"retry": "failed"},
    "canceled": {},
}

TaskAction = Literal[
    "publish",  # a draft becomes a real task
    "approve",  # a manual-approval task gets its run
    "reject",  # records a refusal: the task stays blocked until approved
    "cancel",
    "pause",
    "depend",  # gains a blocker
    "change_attempts",  # its attempt budget changes
    "reopen",  # a finished task gets a new run, with a fresh attempt budget
]


def _open_task_row(
    status: TaskStatus, moves: Mapping[TaskAction, TaskStatus] = {}
) -> dict[TaskAction, TaskStatus]:
    """An open task can be canceled, and edited without its status moving."""
    row: dict[TaskAction, TaskStatus] = {
        "cancel": "canceled",
        "pause": status,
        "depend": status,
        "change_attempts": status,
    }
    row.update(moves)
    return row


TASK_TRANSITIONS: Final[Mapping[TaskStatus, Mapping[TaskAction, TaskStatus]]] = {
    # A rejection records the decision and leaves the task where it was: a draft stays a
    # draft, a task awaiting approval stays blocked and may be approved later.
    "draft": _open_task_row("draft", {"publish": "pending", "reject": "draft"}),
    # Never started: a task awaiting approval is blocked, not pending.
    "pending": _open_task_row("pending"),
    # A task awaiting approval is blocked; approving it queues its run, which is ready
    # unless a dependency is still open (then it stays blocked until that completes).
    "blocked": _open_task_row("blocked", {"approve": "ready", "reject": "blocked"}),
    "ready": _open_task_row("ready"),
    "in_progress": _open_task_row("in_progress"),
    "needs_attention": _open_task_row("needs_attention"),
    # Reopening puts the task back in the queue, or behind its blockers if one reopened too.
    "completed": {"reopen": "ready"},
    "failed": {"reopen": "ready"},
    "canceled": {},
}

S = TypeVar("S", bound=str)
A = TypeVar("A", bound=str)


def transition(table: Mapping[S, Mapping[A, S]], kind: str, ident: str, status: S, action: A) -> S:
    """The status ``action`` leads to from ``status``, or INVALID_TRANSITION saying why not."""
    moves = table[status]
    target = moves.get(action)
    if target is None:
        if moves:
            allowed = f"a {status} {kind} allows: " + ", ".join(_spoken(a) for a in moves)
        else:
            allowed = f"a {status} {kind} is final"
        raise InvalidInput(
            f"{kind} {ident} is {status}; cannot {_spoken(action)} it ({allowed})",
            code=INVALID_TRANSITION,
        )
    return target


def _spoken(action: str) -> str:
    return action.replace("_", "-")


def next_run_status(run: Run, action: RunAction) -> RunStatus:
    """Check a run action without applying it (for checks that must precede any change)."""
    return transition(RUN_TRANSITIONS, "run", run.id, run.status, action)


def move_run(run: Run, action: RunAction) -> RunStatus:
    """Apply a run action: set the status the table gives, or refuse having changed nothing.

    Returns the status the run had, so callers can undo what it implied (leave the queue,
    end the lease).
    """
    before = run.status
    target = RUN_TRANSITIONS[before].get(action)  # the claim path's fast way through
    run.status = (
        target if target is not None else transition(RUN_TRANSITIONS, "run", run.id, before, action)
    )
    return before


def check_task(task: Task, action: TaskAction) -> TaskStatus:
    """Refuse a task action its status does not allow; the status it leads to otherwise.

    Tasks are never assigned the result: their status is always :func:`task_status`.
    """
    return transition(TASK_TRANSITIONS, "task", task.id, task.status, action)


def task_status(task: Task, run: Run | None, tasks: Mapping[str, Task]) -> TaskStatus:
    """A task's status, from its flags, its current run and its blockers (looked up in
    ``tasks``). The only place a task status is computed.

    ``canceled`` and ``draft`` come first; then the run decides, as AGH derives it:

    - no run: ``blocked`` while a manual approval is outstanding (nothing moves until someone
      decides); ``ready`` once its dependencies are satisfied (it had some, and each has
      completed or was removed); ``pending`` otherwise (never started, nothing said it may);
    - a failed run with attempts left: ``ready`` (it can be started or retried now);
    - any ``ready`` or ``pending`` task with a blocker that has not completed is ``blocked``.
    """
    if task.canceled:
        return "canceled"
    if task.draft:
        return "draft"
    status: TaskStatus
    if run is None:
        if awaiting_approval(task):
            return "blocked"
        status = "ready" if task.had_dependencies else "pending"
    elif run.status == "queued" or (run.status == "failed" and run.attempt < task.max_attempts):
        status = "ready"
    elif run.status in LEASED_RUN_STATUSES:
        return "in_progress"
    elif run.status == "completed":
        return "completed"
    elif run.status == "canceled":
        return "canceled"
    elif run.status == "failed":
        return "failed"  # no attempt left
    else:
        return "needs_attention"
    if task.blocked_by and open_blockers(task, tasks):
        return "blocked"
    return status


def awaiting_approval(task: Task) -> bool:
    """A manual-approval task nobody has approved yet (pending, or rejected and open to
    a new decision)."""
    return task.approval_policy == "manual" and task.approval_state != "approved"


def open_blockers(task: Task, tasks: Mapping[str, Task]) -> list[str]:
    """The blockers of a task that have not completed yet (at most MAX_DEPENDENCIES)."""
    return [b for b in task.blocked_by if tasks[b].status != "completed"]


def is_closed(task: Task) -> bool:
    return task.status in CLOSED_TASK_STATUSES
