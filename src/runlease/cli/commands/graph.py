"""``runlease task``: operator changes to tasks and their graph (publish, approve, reject,
update, delete, depend, undepend, pause, resume, cancel, unblock). Each prints the task
after it, or the run it changed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from runlease.cli.context import connect, json_arg, json_param, owner, show
from runlease.cli.durations import duration
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.core.model import Priority
from runlease.errors import UsageError


def task_publish(
    task_id: str,
    /,
    *,
    start: Annotated[
        bool, Param(help="Also enqueue its first run (unless it needs manual approval).")
    ] = True,
) -> int:
    """Publish a draft task so it can run (again on a published task: shows it unchanged,
    with "already": true).

    Parameters
    ----------
    task_id
        The draft to publish.
    """
    with connect() as client:
        task = client.publish_task(task_id, start=start)
    return show({"task": plain(task), **({"already": True} if task.already else {})})


def task_approve(task_id: str, /) -> int:
    """Approve a task that waits for manual approval (or was rejected): its run is
    enqueued. On a task approved already it shows the run it has, with "already": true.

    Parameters
    ----------
    task_id
        The task to approve.
    """
    with connect() as client:
        run = client.approve_task(task_id)
    return show({"run": plain(run), **({"already": True} if run.already else {})})


def task_reject(
    task_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why it is rejected.")] = None,
) -> int:
    """Reject a task that waits for approval: it stays blocked (approval_state rejected)
    until someone approves it; nothing is canceled.

    Parameters
    ----------
    task_id
        The task to reject.
    """
    with connect() as client:
        task = client.reject_task(task_id, reason=reason)
    return show({"task": plain(task)})


def task_update(
    task_id: str,
    /,
    *,
    title: Annotated[str | None, Param(help="A new title.")] = None,
    description: Annotated[str | None, Param(help="A new description.")] = None,
    priority: Annotated[Priority | None, Param(help="A new priority.")] = None,
    max_attempts: Annotated[int | None, Param(help="Runs allowed, 1 to 10.")] = None,
    metadata: Annotated[
        str | None, json_param(help="A JSON object replacing the task's metadata.")
    ] = None,
    capability: Annotated[
        list[str] | None, Param(help="Replace the required capabilities (repeatable).")
    ] = None,
    preferred_capability: Annotated[
        list[str] | None, Param(help="Replace the preferred capabilities (repeatable).")
    ] = None,
    owner_session: Annotated[str | None, Param(help="Assign it to this SESSION_ID.")] = None,
    owner_agent: Annotated[str | None, Param(help="Assign it to this agent's pool.")] = None,
    no_owner: Annotated[bool, Param(negative=(), help="Remove its assignee.")] = False,
    auto_enqueue: Annotated[
        Literal["on", "off"] | None,
        Param(help="on: start a run by itself once its last dependency completes."),
    ] = None,
    stale_after: Annotated[
        float | None,
        duration(help="SECONDS without progress before `task stuck` lists it; 0 clears it."),
    ] = None,
    approval_policy: Annotated[
        Literal["none", "manual"] | None,
        Param(help="manual: a task that never ran waits for `task approve`; none: no gate."),
    ] = None,
    tag: Annotated[list[str] | None, Param(help="Replace the tags (repeatable).")] = None,
    add_tag: Annotated[list[str] | None, Param(help="Add this TAG (repeatable).")] = None,
    remove_tag: Annotated[list[str] | None, Param(help="Remove this TAG (repeatable).")] = None,
    changes: Annotated[
        str | None,
        json_param(help='Raw changes as a JSON object, e.g. \'{"title": "x"}\' (merged first).'),
    ] = None,
) -> int:
    """Change a task's mutable fields. Immutable ones (scope, workspace_id, parent_task_id,
    required_artifacts) are refused with IMMUTABLE_FIELD.

    Parameters
    ----------
    task_id
        The task to change.
    """
    wanted: dict[str, Any] = dict(json_arg(changes, "--changes", object_only=True) or {})
    flags = {
        "title": title,
        "description": description,
        "priority": priority,
        "max_attempts": max_attempts,
        "metadata": json_arg(metadata, "--metadata", object_only=True),
        "required_capabilities": capability,
        "preferred_capabilities": preferred_capability,
        "approval_policy": approval_policy,
    }
    wanted.update({key: value for key, value in flags.items() if value is not None})
    if auto_enqueue is not None:
        wanted["auto_enqueue_on_ready"] = auto_enqueue == "on"
    if stale_after is not None:
        wanted["stale_after"] = stale_after or None
    assignee = owner(owner_session, owner_agent)
    if no_owner and assignee is not None:
        raise UsageError("--no-owner cannot be combined with --owner-session or --owner-agent")
    if assignee is not None:
        wanted["owner"] = {"kind": assignee.kind, "ref": assignee.ref}
    elif no_owner:
        wanted["owner"] = None
    if tag is not None and (add_tag or remove_tag):
        raise UsageError(
            "--tag replaces the tags; it cannot be combined with --add-tag or --remove-tag"
        )
    if tag is not None:
        wanted["tags"] = tag
    elif add_tag or remove_tag:
        wanted["tags"] = {"add": add_tag or [], "remove": remove_tag or []}
    if not wanted:
        raise UsageError("nothing to change: give at least one field option or --changes")
    with connect() as client:
        task = client.update_task(task_id, wanted)
    return show({"task": plain(task)})


def task_delete(task_id: str, /) -> int:
    """Delete a task and its finished runs (refused while it has children or open runs).

    Parameters
    ----------
    task_id
        The task to delete.
    """
    with connect() as client:
        task = client.delete_task(task_id)
    return show({"task": plain(task)})


def task_depend(
    task_id: str,
    /,
    *,
    on: Annotated[str, Param(help="The BLOCKER task that must complete first.")],
) -> int:
    """Make a task wait for another to complete (it is blocked until then).

    Parameters
    ----------
    task_id
        The task that waits.
    """
    with connect() as client:
        task = client.add_dependency(task_id, on)
    return show({"task": plain(task)})


def task_undepend(
    task_id: str,
    /,
    *,
    on: Annotated[str, Param(help="The BLOCKER task to stop waiting for.")],
) -> int:
    """Remove a dependency edge.

    Parameters
    ----------
    task_id
        The task that waits.
    """
    with connect() as client:
        task = client.remove_dependency(task_id, on)
    return show({"task": plain(task)})


def task_pause(
    task_id: str,
    /,
    *,
    reason: Annotated[str, Param(help="Why it is paused.")],
) -> int:
    """Pause a task and its descendants: their queued runs are not claimed until resumed.

    Parameters
    ----------
    task_id
        The task to pause.
    """
    with connect() as client:
        task = client.pause_task(task_id, reason=reason)
    return show({"task": plain(task)})


def task_resume(task_id: str, /) -> int:
    """Resume a paused task.

    Parameters
    ----------
    task_id
        The task to resume.
    """
    with connect() as client:
        task = client.resume_task(task_id)
    return show({"task": plain(task)})


def task_unblock(
    task_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why the block is cleared.")] = None,
) -> int:
    """Operator: clear the block a session placed on the task's run (`task block`); the
    run goes back to the queue.

    Parameters
    ----------
    task_id
        The blocked task.
    """
    with connect() as client:
        run = client.unblock_task(task_id, reason=reason)
    return show({"run": plain(run)})


def task_cancel(
    task_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why it is canceled.")] = None,
) -> int:
    """Cancel a task, its open runs and every open descendant.

    Parameters
    ----------
    task_id
        The task to cancel.
    """
    with connect() as client:
        task = client.cancel_task(task_id, reason=reason)
    return show({"task": plain(task)})
