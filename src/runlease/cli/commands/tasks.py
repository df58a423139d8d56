"""``runlease task``: create, start and read tasks (create, start, reopen, show, list,
events, timeline, inspect, stuck, checkpoint)."""

from __future__ import annotations

from typing import Annotated, Literal

from runlease.cli.context import connect, json_arg, json_param, owner, show, show_event
from runlease.cli.durations import duration
from runlease.cli.output import INSPECT_TABLE, plain
from runlease.cli.params import Param
from runlease.core.finding import ListFilters
from runlease.core.model import Priority, TaskStatus


def task_create(
    title: str,
    /,
    *,
    description: str = "",
    priority: Priority = "medium",
    workspace: Annotated[str | None, Param(help="Scope the task to a workspace.")] = None,
    max_attempts: Annotated[int | None, Param(help="Runs allowed, 1 to 10.")] = None,
    capability: Annotated[
        list[str] | None, Param(help="A capability a session needs (repeatable).")
    ] = None,
    metadata: Annotated[str | None, json_param(help="A JSON object kept with the task.")] = None,
    start: Annotated[bool, Param(help="Also enqueue its first run.")] = False,
    parent: Annotated[str | None, Param(help="Make it a child of this TASK_ID.")] = None,
    preferred_capability: Annotated[
        list[str] | None,
        Param(help="A capability to prefer among equal priorities (repeatable)."),
    ] = None,
    owner_session: Annotated[str | None, Param(help="Only this SESSION_ID may claim it.")] = None,
    owner_agent: Annotated[
        str | None, Param(help="Only sessions of this agent name (a pool) may claim it.")
    ] = None,
    draft: Annotated[
        bool, Param(negative=(), help="Create it as a draft (publish it later).")
    ] = False,
    approval: Annotated[
        Literal["none", "manual"],
        Param(help="manual: its run is enqueued only once approved."),
    ] = "none",
    artifact: Annotated[
        list[str] | None,
        Param(help="A PATH (relative to the workspace root) required to complete (repeatable)."),
    ] = None,
    auto_enqueue: Annotated[
        bool,
        Param(negative=(), help="Start a run by itself once its last dependency completes."),
    ] = False,
    stale_after: Annotated[
        float | None,
        duration(help="SECONDS without heartbeat or checkpoint after which `task stuck` lists it."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Param(
            help="Repeat with the same KEY and request and get the same task back "
            '(with "already": true); another request with it is refused with CONFLICT.'
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, Param(help="A TAG to find and claim it by (repeatable).")
    ] = None,
) -> int:
    """Create a task.

    Parameters
    ----------
    title
        What the task is.
    """
    meta = json_arg(metadata, "--metadata", object_only=True)
    assignee = owner(owner_session, owner_agent)
    with connect() as client:
        task = client.create_task(
            title,
            description=description,
            priority=priority,
            workspace=workspace,
            max_attempts=max_attempts,
            capabilities=capability or [],
            metadata=meta,
            start=start,
            parent=parent,
            preferred_capabilities=preferred_capability or [],
            owner=assignee,
            draft=draft,
            approval_policy=approval,
            required_artifacts=artifact or [],
            auto_enqueue_on_ready=auto_enqueue,
            stale_after=stale_after,
            idempotency_key=idempotency_key,
            tags=tag or [],
        )
    return show({"task": plain(task), **({"already": True} if task.already else {})})


def task_start(
    task_id: str,
    /,
    *,
    idempotency_key: Annotated[
        str | None, Param(help="Repeat with the same KEY and get the same run back.")
    ] = None,
) -> int:
    """Enqueue a run of a task (its next attempt). A task whose run is queued or leased
    already shows that run, with "already": true, and nothing new is enqueued.

    Parameters
    ----------
    task_id
        The task to start.
    """
    with connect() as client:
        run = client.start_task(task_id, idempotency_key=idempotency_key)
    return show({"run": plain(run), **({"already": True} if run.already else {})})


def task_reopen(
    task_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why it runs again.")] = None,
) -> int:
    """Give a completed or failed task a new queued run, with a fresh attempt budget.

    Parameters
    ----------
    task_id
        The task to reopen.
    """
    with connect() as client:
        run = client.reopen_task(task_id, reason=reason)
    return show({"run": plain(run)})


def task_show(task_id: str, /) -> int:
    """Show a task with its full history: runs, checkpoints, events, graph edges, pause.

    Parameters
    ----------
    task_id
        The task to show.
    """
    with connect() as client:
        detail = client.show_task(task_id)
    document = plain(detail)
    document.pop("id", None)
    return show(document)


def task_list(
    *,
    status: Annotated[TaskStatus | None, Param(help="Only tasks in this status.")] = None,
    priority: Annotated[Priority | None, Param(help="Only tasks of this priority.")] = None,
    tag: Annotated[
        list[str] | None, Param(help="Only tasks carrying this TAG (repeatable: all must match).")
    ] = None,
    owner: Annotated[
        str | None, Param(help="Only tasks assigned to this SESSION_ID or agent pool name.")
    ] = None,
    parent: Annotated[str | None, Param(help="Only the direct children of this TASK_ID.")] = None,
    root: Annotated[
        str | None, Param(help="Only this TASK_ID and the tasks below it, at any depth.")
    ] = None,
    workspace: Annotated[str | None, Param(help="Only tasks of this workspace.")] = None,
    search: Annotated[
        str | None,
        Param(help="Only tasks whose title or description contains TEXT (any case)."),
    ] = None,
    available: Annotated[
        bool,
        Param(negative=(), help="Only tasks this session could claim now (needs a session)."),
    ] = False,
    limit: Annotated[int | None, Param(help="At most this many tasks (one page).")] = None,
    after: Annotated[
        str | None, Param(help="Continue after this TASK_ID (the next_after of a page).")
    ] = None,
) -> int:
    """List tasks in creation order, filtered (every filter must hold).

    With --limit the output carries "next_after": pass it as --after for the next page
    (null once there is no more).
    """
    filters: ListFilters = {
        "status": status,
        "priority": priority,
        "tags": tag or [],
        "owner": owner,
        "parent": parent,
        "root": root,
        "workspace": workspace,
        "search": search,
    }
    with connect() as client:
        if limit is None:
            tasks = client.list_tasks(after=after, available=available, **filters)
            return show({"tasks": plain(tasks)})
        # One more than asked says whether another page follows.
        tasks = client.list_tasks(after=after, limit=limit + 1, available=available, **filters)
    more = len(tasks) > limit
    tasks = tasks[:limit]
    next_after = tasks[-1].id if more and tasks else None
    return show({"tasks": plain(tasks), "next_after": next_after})


def task_events(
    task_id: str,
    /,
    *,
    follow: Annotated[
        bool, Param(help="Keep printing new events (one JSON object per line).")
    ] = False,
    after_seq: Annotated[
        int,
        Param(
            name=["--after", "--after-seq"],
            help="Only events after this SEQ; resume a follow with the last seq printed.",
        ),
    ] = 0,
) -> int:
    """Show a task's events; with --follow, keep streaming them until interrupted.

    Parameters
    ----------
    task_id
        The task whose events to show.
    """
    with connect() as client:
        client.show_task(task_id)  # a clear TASK_NOT_FOUND instead of an empty stream
        if not follow:
            events = client.events(task_id=task_id, after_seq=after_seq)
            return show({"events": plain(events)})
        with client.follow_events(task_id=task_id, after_seq=after_seq) as stream:
            for event in stream:
                show_event(plain(event))
    return 0


def task_timeline(
    task_id: str,
    /,
    *,
    after_seq: Annotated[
        int, Param(name=["--after", "--after-seq"], help="Only events after this SEQ.")
    ] = 0,
) -> int:
    """A task's audit events (actor, origin, kind, data), oldest first, from its whole
    retained history.

    Parameters
    ----------
    task_id
        The task.
    """
    with connect() as client:
        events = client.timeline(task_id, after_seq=after_seq)
    return show({"events": plain(events)})


def task_inspect(task_id: str, /) -> int:
    """What a task is doing, what should happen next (next_action) and what is wrong
    (diagnostics, each with the command that remedies it).

    Parameters
    ----------
    task_id
        The task.
    """
    with connect() as client:
        view = client.inspect_task(task_id)
    return show(plain(view), table=INSPECT_TABLE)


def task_stuck(
    *,
    threshold: Annotated[
        float | None,
        duration(
            help="Seconds without heartbeat or checkpoint that count as stuck (600), for "
            "tasks without their own --stale-after."
        ),
    ] = None,
) -> int:
    """List runs whose lease ran out (still leased, or requeued and not claimed since),
    then leased runs idle past their task's stale-after or the threshold."""
    with connect() as client:
        runs = client.stuck(threshold=threshold)
    return show({"stuck": plain(runs)})


def task_checkpoint(
    task_id: str,
    note: str,
    /,
    *,
    author: Annotated[str | None, Param(help="Who writes the note.")] = None,
) -> int:
    """Add a progress note to a task's history (not a heartbeat: the lease is unchanged).

    Parameters
    ----------
    task_id
        The task.
    note
        The progress note.
    """
    with connect() as client:
        task = client.checkpoint(task_id, note, author=author)
    return show({"task": plain(task)})
