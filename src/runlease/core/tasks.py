"""Tasks: create, start, publish, approve, reject, update, delete, checkpoint, reopen, unblock.

Every field a task is created or updated with is checked here (sizes, names, the owner, the
completion contract); the status moves these actions may make are in
:mod:`runlease.core.lifecycle`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runlease.core import create_keys, lifecycle, validate
from runlease.core.commands import (
    ApproveTask,
    CheckpointTask,
    CreateTask,
    DeleteTask,
    PublishTask,
    RejectTask,
    ReopenTask,
    StartTask,
    UnblockTask,
    UpdateTask,
)
from runlease.core.graph import auto_start, forget_dependent
from runlease.core.model import (
    DEFAULT_MAX_ATTEMPTS,
    FINAL_RUN_STATUSES,
    IMMUTABLE_TASK_FIELDS,
    LEASED_RUN_STATUSES,
    MAX_CHECKPOINTS_KEPT,
    MAX_DESCRIPTION_CHARS,
    MAX_DIRECT_CHILDREN,
    MAX_HIERARCHY_DEPTH,
    MAX_MAX_ATTEMPTS,
    MAX_METADATA_BYTES,
    MAX_NAME_CHARS,
    MAX_NOTE_CHARS,
    MAX_REQUIRED_ARTIFACTS,
    MAX_RETRY_CHAIN,
    MAX_TITLE_CHARS,
    MUTABLE_TASK_FIELDS,
    OWNER_KINDS,
    PRIORITY_RANK,
    REASON_UNBLOCKED,
    SETTLED_RUN_STATUSES,
    Checkpoint,
    Ownership,
    Run,
    Task,
)
from runlease.core.outcome import Outcome
from runlease.core.registry import handles
from runlease.core.state import State, snapshot_run, snapshot_task
from runlease.errors import (
    APPROVAL_REQUIRED,
    GRAPH_LIMIT_EXCEEDED,
    IMMUTABLE_FIELD,
    INVALID_SCOPE_BINDING,
    INVALID_TRANSITION,
    RETRY_CHAIN_TOO_DEEP,
    TASK_HAS_ACTIVE_RUNS,
    TASK_HAS_CHILDREN,
    TASK_IS_DRAFT,
    InvalidInput,
)


# ------------------------------------------------------------------------- create
@handles(CreateTask)
def create_task(m: State, cmd: CreateTask) -> Outcome[Task]:
    key = None
    if cmd.idempotency_key is not None:
        key = create_keys.check_key(cmd.idempotency_key)
        if cmd.idempotency_window is not None:
            create_keys.check_window(cmd.idempotency_window)
        # Looked up before anything else is checked: a retry answers the task its key
        # made even if the request would no longer pass (its parent canceled since, ...).
        earlier = create_keys.earlier_task_id(m.create_keys, cmd, key)
        if earlier is not None:
            task = m.tasks.get(earlier)
            if task is None:
                raise create_keys.deleted_task(earlier, key)
            reply = snapshot_task(task)
            reply.already = True
            return Outcome(reply=reply)
    if cmd.task_id in m.tasks:
        raise InvalidInput(f"task {cmd.task_id!r} already exists")
    title = validate.text(cmd.title, "title", max_chars=MAX_TITLE_CHARS)
    description = validate.text(
        cmd.description, "description", max_chars=MAX_DESCRIPTION_CHARS, required=False
    )
    priority = _priority(cmd.priority)
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
    tags = m.shared_tags(validate.tags(cmd.tags))
    owner = _owner(cmd.owner)
    artifacts = _artifact_paths(cmd.required_artifacts)
    if cmd.approval_policy not in ("none", "manual"):
        raise InvalidInput(f"approval_policy must be none or manual, not {cmd.approval_policy!r}")
    auto_enqueue = _auto_enqueue(cmd.auto_enqueue_on_ready, cmd.approval_policy)
    stale_after = _stale_after(cmd.stale_after)
    if cmd.start_run_id is not None:
        check_new_run_id(m, cmd.start_run_id)
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
        parent = m.get_task(cmd.parent_task_id)
        _check_scope_binding(parent, scope, workspace_id)
        canceled = m.canceled_ancestor(parent)
        if canceled is not None:
            raise InvalidInput(
                f"task {canceled} above the parent is canceled; no new children below it",
                code=INVALID_TRANSITION,
            )
        if m.depth(parent) >= MAX_HIERARCHY_DEPTH:
            raise InvalidInput(
                f"parent task {parent.id} is at depth {MAX_HIERARCHY_DEPTH}, the deepest "
                "a task may nest",
                code=GRAPH_LIMIT_EXCEEDED,
            )
        if len(m.subtasks.get(parent.id, ())) >= MAX_DIRECT_CHILDREN:
            raise InvalidInput(
                f"parent task {parent.id} already has {MAX_DIRECT_CHILDREN} children (the limit)",
                code=GRAPH_LIMIT_EXCEEDED,
            )

    task = Task(
        id=cmd.task_id,
        title=title,
        description=description,
        priority=priority,
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
        auto_enqueue_on_ready=auto_enqueue,
        stale_after=stale_after,
        tags=tags,
        created_at=cmd.now,
        updated_at=cmd.now,
    )
    m.tasks[task.id] = task
    m.settle(task, None, cmd.now)
    if parent is not None:
        m.subtasks.setdefault(parent.id, []).append(task.id)
    events = [
        m.event(
            "task_created",
            cmd.now,
            task_id=task.id,
            data={"parent_task_id": cmd.parent_task_id} if cmd.parent_task_id else None,
        )
    ]
    queued = False
    if cmd.start_run_id is not None:
        events.append(m.enqueue(task, None, cmd.start_run_id, cmd.now))
        queued = cmd.start_run_id in m.index
    if key is not None:
        create_keys.remember(m.create_keys, cmd, key, task.id)
    return Outcome(reply=snapshot_task(task), events=events, queued=queued)


def _check_scope_binding(parent: Task, scope: str, workspace_id: str | None) -> None:
    """A child of a workspace-scoped task lives in that same workspace: its work belongs
    to the parent's workspace, and only sessions of that workspace may claim it."""
    if parent.scope != "workspace":
        return
    if scope != "workspace" or workspace_id != parent.workspace_id:
        where = "a global task" if workspace_id is None else f"workspace {workspace_id!r}"
        raise InvalidInput(
            f"parent task {parent.id} belongs to workspace {parent.workspace_id!r}; "
            f"its children must be in that workspace too, not in {where}",
            code=INVALID_SCOPE_BINDING,
        )


# -------------------------------------------------------------------------- start
def existing_run(run: Run) -> Run:
    """The reply to a repeated start or approve: the run the task already has, marked so
    the caller can tell nothing new was enqueued."""
    reply = snapshot_run(run)
    reply.already = True
    return reply


@handles(StartTask)
def start_task(m: State, cmd: StartTask) -> Outcome[Run]:
    task = m.get_task(cmd.task_id)
    if cmd.idempotency_key is not None:
        validate.text(cmd.idempotency_key, "idempotency_key", max_chars=MAX_NAME_CHARS)
        earlier = m.idempotency.get((task.id, cmd.idempotency_key))
        if earlier is not None:
            # The same request again: answer with the run it made, change nothing.
            return Outcome(reply=existing_run(m.runs[earlier]))
    current = m.current_run(task)
    if current is not None and current.status not in SETTLED_RUN_STATUSES:
        # Queued or leased: the task already has its run. Starting it again is answered
        # with that run (a retry after a lost reply must not fail or enqueue a second).
        return Outcome(reply=existing_run(current))
    check_startable(task)
    check_new_run_id(m, cmd.run_id)
    if current is not None:
        if current.status in ("completed", "canceled"):
            anew = current.status == "completed"
            raise InvalidInput(
                f"task {task.id} is {current.status}; it cannot be started again"
                + (f" (`runlease task reopen {task.id}` runs it anew)" if anew else ""),
                code=INVALID_TRANSITION,
            )
        if current.attempt >= task.max_attempts:
            raise InvalidInput(
                f"task {task.id} has used all {task.max_attempts} attempts",
                code=INVALID_TRANSITION,
            )
        # Attempts bound the chain of runs, except after a reopen restarted the count.
        check_chain_room(m, task, "a new run")
    event = m.enqueue(task, current, cmd.run_id, cmd.now)
    run = m.runs[cmd.run_id]
    if cmd.idempotency_key is not None:
        run.idempotency_key = cmd.idempotency_key
        m.idempotency[(task.id, cmd.idempotency_key)] = run.id
    return Outcome(reply=snapshot_run(run), events=[event], queued=run.id in m.index)


def check_startable(task: Task) -> None:
    """Refuse a new run for a canceled task, a draft, or one still awaiting approval."""
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


def check_chain_room(m: State, task: Task, what: str) -> None:
    """Refuse one more run when the task's chain of runs is already at MAX_RETRY_CHAIN."""
    chain = sum(1 for _ in m.run_chain(task))
    if chain + 1 > MAX_RETRY_CHAIN:
        raise InvalidInput(
            f"task {task.id} already has a chain of {chain} runs; "
            f"{what} would exceed {MAX_RETRY_CHAIN}",
            code=RETRY_CHAIN_TOO_DEEP,
        )


def check_new_run_id(m: State, run_id: str) -> None:
    if run_id in m.runs:
        raise InvalidInput(f"run {run_id!r} already exists")


# -------------------------------------------------------- publish, approve, reject
@handles(PublishTask)
def publish_task(m: State, cmd: PublishTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    if not task.draft and not task.canceled:
        # Published already: answer the task as it is (its current_run_id names the run
        # the first publish started, if any) and change nothing.
        reply = snapshot_task(task)
        reply.already = True
        return Outcome(reply=reply)
    lifecycle.check_task(task, "publish")
    if cmd.run_id is not None:
        check_new_run_id(m, cmd.run_id)
        if task.approval_policy == "manual":
            raise InvalidInput(
                f"task {task.id} needs approval before a run can be enqueued",
                code=APPROVAL_REQUIRED,
            )
    task.draft = False
    m.settle(task, None, cmd.now)
    events = [m.event("task_published", cmd.now, task_id=task.id)]
    queued = False
    if cmd.run_id is not None:
        events.append(m.enqueue(task, None, cmd.run_id, cmd.now))
        queued = cmd.run_id in m.index
    return Outcome(reply=snapshot_task(task), events=events, queued=queued)


def _check_awaiting_approval(task: Task) -> None:
    """Approve and reject decide a manual-approval task that is pending or was rejected
    (a rejection can be revisited); an approved task has had its decision."""
    if task.approval_policy != "manual" or task.approval_state not in ("pending", "rejected"):
        raise InvalidInput(
            f"task {task.id} is not awaiting approval "
            f"(policy {task.approval_policy}, state {task.approval_state})",
            code=INVALID_TRANSITION,
        )


@handles(ApproveTask)
def approve_task(m: State, cmd: ApproveTask) -> Outcome[Run]:
    task = m.get_task(cmd.task_id)
    current = m.current_run(task)
    if task.approval_state == "approved" and current is not None:
        # Approved already: answer the run the task has (whatever became of it).
        return Outcome(reply=existing_run(current))
    _check_awaiting_approval(task)
    if task.draft:
        raise InvalidInput(f"task {task.id} is a draft; publish it first", code=TASK_IS_DRAFT)
    lifecycle.check_task(task, "approve")
    check_new_run_id(m, cmd.run_id)
    task.approval_state = "approved"
    events = [m.event("task_approved", cmd.now, task_id=task.id)]
    events.append(m.enqueue(task, None, cmd.run_id, cmd.now))
    return Outcome(
        reply=snapshot_run(m.runs[cmd.run_id]),
        events=events,
        queued=cmd.run_id in m.index,
    )


@handles(RejectTask)
def reject_task(m: State, cmd: RejectTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    reason = validate.optional_text(cmd.reason, "reason")
    _check_awaiting_approval(task)
    lifecycle.check_task(task, "reject")
    # A rejection is a decision, not an ending: the task stays blocked, nothing below it
    # changes, and a later approve (or switching the policy to none) can still let it run.
    task.approval_state = "rejected"
    m.settle(task, None, cmd.now)
    events = [m.event("task_rejected", cmd.now, task_id=task.id, data={"reason": reason})]
    return Outcome(reply=snapshot_task(task), events=events)


# ------------------------------------------------------------------------- update
@handles(UpdateTask)
def update_task(m: State, cmd: UpdateTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
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
            new[field] = _priority(value)
        elif field == "max_attempts":
            new[field] = _max_attempts(value)
            lifecycle.check_task(task, "change_attempts")
        elif field == "metadata":
            new[field] = validate.json_object(value, "metadata", max_bytes=MAX_METADATA_BYTES)
        elif field in ("required_capabilities", "preferred_capabilities"):
            new[field] = validate.capabilities(value, field)
        elif field == "auto_enqueue_on_ready":
            policy = cmd.changes.get("approval_policy", task.approval_policy)
            new[field] = _auto_enqueue(value, policy)
        elif field == "stale_after":
            new[field] = _stale_after(value)
        elif field == "approval_policy":
            new[field] = _approval_policy(value)
        elif field == "tags":
            new[field] = m.shared_tags(_new_tags(task.tags, value))
        else:  # owner
            new[field] = _owner(value)
    run = m.current_run(task)
    if "approval_policy" in new and new["approval_policy"] != task.approval_policy:
        new["approval_state"] = _approval_state_after(task, new, run)
    reindex = run is not None and run.id in m.index
    if reindex:
        assert run is not None
        m.index.discard(run.id)
    for field, value in new.items():
        setattr(task, field, value)
    if reindex:
        assert run is not None
        m.index_run(task, run)
    m.settle(task, run, cmd.now)
    event = m.event("task_updated", cmd.now, task_id=task.id, data={"fields": sorted(new)})
    return Outcome(reply=snapshot_task(task), events=[event])


def _new_tags(current: tuple[str, ...], value: object) -> tuple[str, ...]:
    """A task's tags after an update: a list replaces them; {"add": [...], "remove":
    [...]} changes them in place, so concurrent edits of different tags both stand."""
    if not isinstance(value, dict):
        return validate.tags(value)
    unknown = set(value) - {"add", "remove"}
    if unknown:
        raise InvalidInput(
            f"a tags change takes a list, or an object with add and remove; not {sorted(unknown)}"
        )
    added = validate.tags(value.get("add", []), "tags add")
    removed = set(validate.tags(value.get("remove", []), "tags remove"))
    return validate.tags([t for t in (*current, *added) if t not in removed])


# ------------------------------------------------------------------------- delete
@handles(DeleteTask)
def delete_task(m: State, cmd: DeleteTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    if m.subtasks.get(task.id):
        raise InvalidInput(
            f"task {task.id} has {len(m.subtasks[task.id])} child task(s); delete them first",
            code=TASK_HAS_CHILDREN,
        )
    chain = list(m.run_chain(task))
    # A parked run that a later run replaced is history, like a finished one: nothing can
    # bring it back (recover takes only the current run), so it must not pin the task.
    active = [
        r
        for r in chain
        if r.status not in FINAL_RUN_STATUSES
        and (r.status != "needs_attention" or r.id == task.current_run_id)
    ]
    if active:
        raise InvalidInput(
            f"task {task.id} has open run(s) {', '.join(_open_run_remedy(r) for r in active)}",
            code=TASK_HAS_ACTIVE_RUNS,
        )
    was_open = task.status != "completed"
    for run in chain:
        del m.runs[run.id]
        if run.idempotency_key is not None:
            m.idempotency.pop((task.id, run.idempotency_key), None)
    if task.parent_task_id is not None:
        m.subtasks[task.parent_task_id].remove(task.id)
        if not m.subtasks[task.parent_task_id]:
            del m.subtasks[task.parent_task_id]
    for blocker in task.blocked_by:
        forget_dependent(m, blocker, task.id)
    m.paused_tasks.discard(task.id)
    del m.tasks[task.id]
    events = [m.event("task_deleted", cmd.now, task_id=task.id)]
    freed = sorted(m.dependents.pop(task.id, ()))
    for dependent_id in freed:
        dependent = m.tasks[dependent_id]
        dependent.blocked_by = tuple(b for b in dependent.blocked_by if b != task.id)
        m.resettle(dependent, cmd.now)
    queued = m.regate(freed)
    if was_open:
        queued = auto_start(m, freed, cmd.now, events) or queued
    return Outcome(reply=snapshot_task(task), events=events, queued=queued)


def _open_run_remedy(run: Run) -> str:
    """An open run and how an operator closes it, for the refusal of a delete."""
    if run.status == "needs_attention":
        return (
            f"{run.id} (parked: `runlease run recover {run.id}` requeues it, "
            f"`runlease run cancel {run.id}` closes it)"
        )
    return f"{run.id} ({run.status}: `runlease run cancel {run.id}` closes it)"


# ------------------------------------------------------------------ reopen, unblock
@handles(ReopenTask)
def reopen_task(m: State, cmd: ReopenTask) -> Outcome[Run]:
    """Give a completed or failed task a new queued run with a fresh attempt budget.

    The new run follows the chain of runs (bounded by MAX_RETRY_CHAIN). A task below a
    canceled one stays closed. A completed task that reopens blocks its dependents again
    until it completes once more; those already running carry on.
    """
    task = m.get_task(cmd.task_id)
    reason = validate.optional_text(cmd.reason, "reason")
    lifecycle.check_task(task, "reopen")
    check_startable(task)
    canceled = m.canceled_ancestor(task)
    if canceled is not None:
        # A cancel closes everything below it for good; reopening would undo that.
        raise InvalidInput(
            f"task {canceled} above task {task.id} is canceled; it cannot run again",
            code=INVALID_TRANSITION,
        )
    check_new_run_id(m, cmd.run_id)
    check_chain_room(m, task, "reopening")
    previous = m.current_run(task)
    was = task.status
    events = [
        m.event("task_reopened", cmd.now, task_id=task.id, data={"from": was, "reason": reason})
    ]
    events.append(m.enqueue(task, previous, cmd.run_id, cmd.now, attempt=1))
    dependents = sorted(m.dependents.get(task.id, ()))
    if was == "completed":
        for dependent_id in dependents:
            m.resettle(m.tasks[dependent_id], cmd.now)
        m.regate(dependents)
    run = m.runs[cmd.run_id]
    return Outcome(reply=snapshot_run(run), events=events, queued=run.id in m.index)


@handles(UnblockTask)
def unblock_task(m: State, cmd: UnblockTask) -> Outcome[Run]:
    """Clear the block a session placed on the task's current run: it goes back to the
    queue with its attempt, and any session may claim it."""
    task = m.get_task(cmd.task_id)
    reason = validate.optional_text(cmd.reason, "reason")
    run = m.current_run(task)
    if run is None or run.status != "needs_attention" or run.error is not None:
        state = "no run" if run is None else f"run {run.id} {run.status}"
        if run is not None and run.status == "needs_attention":
            state += f" ({run.error}; `runlease run recover {run.id}` requeues it)"
        raise InvalidInput(
            f"task {task.id} is not blocked by a session ({state})", code=INVALID_TRANSITION
        )
    blocked_by = run.session_id
    block_reason = run.reason
    lifecycle.move_run(run, "unblock")
    m.record_requeue(run, "unblock", cmd.now)
    run.reason = reason or REASON_UNBLOCKED
    m.index_run(task, run)
    m.settle(task, run, cmd.now)
    event = m.run_event(
        "run_unblocked",
        cmd.now,
        run,
        data={"reason": reason, "blocked_by": blocked_by, "block_reason": block_reason},
    )
    return Outcome(reply=snapshot_run(run), events=[event], queued=run.id in m.index)


# --------------------------------------------------------------------- checkpoint
@handles(CheckpointTask)
def checkpoint(m: State, cmd: CheckpointTask) -> Outcome[Task]:
    task = m.get_task(cmd.task_id)
    note = validate.text(cmd.note, "note", max_chars=MAX_NOTE_CHARS)
    author = validate.optional_text(cmd.author, "author", max_chars=MAX_NAME_CHARS)
    if author is None and m.actor is not None:
        author = m.actor.ref
    run = m.current_run(task)
    run_id = None
    if run is not None and run.status in LEASED_RUN_STATUSES:
        run.checkpoint_at = cmd.now
        run_id = run.id
    task.checkpoints = (
        *task.checkpoints[-(MAX_CHECKPOINTS_KEPT - 1) :],
        Checkpoint(at=cmd.now, note=note, author=author, run_id=run_id),
    )
    event = m.event(
        "checkpoint",
        cmd.now,
        task_id=task.id,
        run_id=run_id,
        data={"note": note, "author": author},
    )
    return Outcome(reply=snapshot_task(task), events=[event])


# ------------------------------------------------------------------ field checks
def _auto_enqueue(value: Any, approval_policy: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"auto_enqueue_on_ready must be true or false; got {value!r}")
    if value and approval_policy == "manual":
        raise InvalidInput(
            "a task with manual approval is started by approving it, not automatically",
            code=APPROVAL_REQUIRED,
        )
    return value


def _approval_policy(value: Any) -> Any:
    if value not in ("none", "manual"):
        raise InvalidInput(f"approval_policy must be none or manual, not {value!r}")
    return value


def _approval_state_after(task: Task, new: dict[str, Any], run: Run | None) -> str:
    """The approval state a policy change leaves.

    Switching to none drops the gate (``not_required``), so a task that waited for a
    decision becomes startable. Switching to manual gates the next first run only: a task
    that never ran now waits for approval (``pending``); one that already has a run keeps
    it and counts as ``approved`` (what is queued or running is not pulled back, and its
    retries need no new decision). Manual approval and auto-enqueue exclude each other.
    """
    if new["approval_policy"] == "none":
        return "not_required"
    if new.get("auto_enqueue_on_ready", task.auto_enqueue_on_ready):
        raise InvalidInput(
            "a task that starts by itself (auto_enqueue_on_ready) cannot need manual "
            "approval; turn auto_enqueue_on_ready off in the same update",
            code=APPROVAL_REQUIRED,
        )
    return "pending" if run is None else "approved"


def _stale_after(value: Any) -> float | None:
    return None if value is None else validate.positive_seconds(value, "stale_after")


def _priority(value: Any) -> Any:
    if value not in PRIORITY_RANK:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITY_RANK)}; got {value!r}")
    return value


def _max_attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_ATTEMPTS:
        raise InvalidInput(
            f"max_attempts must be a whole number from 1 to {MAX_MAX_ATTEMPTS}; got {value!r}"
        )
    return value


def _owner(value: Any) -> Ownership | None:
    """A task's owner, checked whether it arrives decoded (a dict) or as an Ownership: a
    struct built in Python is not validated by msgspec, and an unknown kind would make the
    claim index treat the owner as a pool."""
    if value is None:
        return None
    try:
        owner = msgspec.convert(value, Ownership)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"owner must be {{kind: agent_session|pool, ref}}: {exc}") from None
    if owner.kind not in OWNER_KINDS:
        raise InvalidInput(
            f"owner kind must be one of {', '.join(sorted(OWNER_KINDS))}; got {owner.kind!r}"
        )
    validate.name(owner.ref, "owner ref")
    return owner


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
