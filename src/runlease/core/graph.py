"""The task graph: dependencies, pause and resume, and canceling a task with its subtree.

A task with a blocker that has not completed is ``blocked`` and its queued run is held out
of the claim index; a paused task holds back its own run and every descendant's. Every
change here re-checks the gates of the tasks it touches (``State.regate``).
"""

from __future__ import annotations

from runlease.core import lifecycle, validate
from runlease.core.commands import (
    AddDependency,
    CancelTask,
    PauseTask,
    RemoveDependency,
    ResumeTask,
)
from runlease.core.model import FINAL_RUN_STATUSES, MAX_DEPENDENCIES, MAX_REASON_CHARS, Event, Task
from runlease.core.outcome import Outcome
from runlease.core.registry import handles
from runlease.core.state import State, snapshot_task
from runlease.errors import (
    DEPENDENCY_CYCLE,
    DEPENDENCY_NOT_FOUND,
    GRAPH_LIMIT_EXCEEDED,
    INVALID_TRANSITION,
    InvalidInput,
    NotFound,
)


# --------------------------------------------------------------------- dependencies
@handles(AddDependency)
def add_dependency(m: State, cmd: AddDependency) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    blocker = m.get_task(cmd.blocked_by)
    if blocker.id == task.id:
        raise InvalidInput(f"task {task.id} cannot depend on itself", code=DEPENDENCY_CYCLE)
    if blocker.id in task.blocked_by:
        raise InvalidInput(
            f"task {task.id} already depends on {blocker.id}", code=INVALID_TRANSITION
        )
    lifecycle.check_task(task, "depend")
    if len(task.blocked_by) >= MAX_DEPENDENCIES:
        raise InvalidInput(
            f"task {task.id} already has {MAX_DEPENDENCIES} dependencies (the limit)",
            code=GRAPH_LIMIT_EXCEEDED,
        )
    if _depends_on(m, blocker.id, task.id):
        raise InvalidInput(
            f"{blocker.id} already depends (directly or not) on {task.id}; "
            "the edge would close a cycle",
            code=DEPENDENCY_CYCLE,
        )
    task.blocked_by = (*task.blocked_by, blocker.id)
    task.had_dependencies = True
    m.dependents.setdefault(blocker.id, set()).add(task.id)
    m.resettle(task, cmd.now)
    m.regate([task.id])
    event = m.event(
        "dependency_added",
        cmd.now,
        task_id=task.id,
        data={"blocked_by": blocker.id, "kind": "blocks", "blocked": task.status == "blocked"},
    )
    return Outcome(reply=snapshot_task(task), events=[event])


def _depends_on(m: State, start: str, target: str) -> bool:
    """True if ``start`` reaches ``target`` along blocked_by edges."""
    seen = {start}
    stack = [start]
    while stack:
        for nxt in m.tasks[stack.pop()].blocked_by:
            if nxt == target:
                return True
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


@handles(RemoveDependency)
def remove_dependency(m: State, cmd: RemoveDependency) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    if cmd.blocked_by not in task.blocked_by:
        raise NotFound(
            f"task {task.id} does not depend on {cmd.blocked_by}", code=DEPENDENCY_NOT_FOUND
        )
    task.blocked_by = tuple(b for b in task.blocked_by if b != cmd.blocked_by)
    forget_dependent(m, cmd.blocked_by, task.id)
    m.resettle(task, cmd.now)
    queued = m.regate([task.id])
    event = m.event(
        "dependency_removed", cmd.now, task_id=task.id, data={"blocked_by": cmd.blocked_by}
    )
    return Outcome(reply=snapshot_task(task), events=[event], queued=queued)


def forget_dependent(m: State, blocker_id: str, task_id: str) -> None:
    """Drop the reverse edge blocker -> task (and the blocker's entry once it is empty)."""
    dependents = m.dependents[blocker_id]
    dependents.discard(task_id)
    if not dependents:
        del m.dependents[blocker_id]


# -------------------------------------------------------------------- pause, resume
@handles(PauseTask)
def pause_task(m: State, cmd: PauseTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    reason = validate.text(cmd.reason, "reason", max_chars=MAX_REASON_CHARS)
    if task.paused:
        raise InvalidInput(f"task {task.id} is already paused", code=INVALID_TRANSITION)
    lifecycle.check_task(task, "pause")
    task.paused = True
    task.paused_reason = reason
    task.paused_at = cmd.now
    task.paused_by = m.actor.ref if m.actor is not None else None
    task.updated_at = cmd.now
    m.paused_tasks.add(task.id)
    affected = [task.id, *m.descendants(task.id)]
    m.regate(affected)
    event = m.event(
        "task_paused",
        cmd.now,
        task_id=task.id,
        data={"reason": reason, "descendants": len(affected) - 1},
    )
    return Outcome(reply=snapshot_task(task), events=[event])


@handles(ResumeTask)
def resume_task(m: State, cmd: ResumeTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    if not task.paused:
        raise InvalidInput(f"task {task.id} is not paused", code=INVALID_TRANSITION)
    task.paused = False
    task.paused_reason = None
    task.paused_at = None
    task.paused_by = None
    task.updated_at = cmd.now
    m.paused_tasks.discard(task.id)
    queued = m.regate([task.id, *m.descendants(task.id)])
    event = m.event("task_resumed", cmd.now, task_id=task.id)
    return Outcome(reply=snapshot_task(task), events=[event], queued=queued)


# --------------------------------------------------------------------------- cancel
@handles(CancelTask)
def cancel_task(m: State, cmd: CancelTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    reason = validate.optional_text(cmd.reason, "reason") or "canceled"
    lifecycle.check_task(task, "cancel")
    events: list[Event] = []
    cancel_tree(m, task, reason, cmd.now, events)
    return Outcome(reply=snapshot_task(task), events=events)


def cancel_tree(m: State, root: Task, reason: str, now: float, events: list[Event]) -> None:
    """Cancel a task and every descendant that is not closed, with their live runs."""
    for task_id in (root.id, *m.descendants(root.id)):
        task = m.tasks[task_id]
        if task.canceled or (task_id != root.id and lifecycle.is_closed(task)):
            continue
        run = m.current_run(task)
        canceled_run = None
        if run is not None and run.status not in FINAL_RUN_STATUSES:
            m.stop_run(run, "cancel", reason, now)
            canceled_run = run.id
        task.canceled = True
        task.cancel_reason = reason
        m.settle(task, run, now)
        events.append(
            m.event(
                "task_canceled",
                now,
                task_id=task.id,
                run_id=canceled_run,
                data={"reason": reason, "cascade_from": None if task is root else root.id},
            )
        )
