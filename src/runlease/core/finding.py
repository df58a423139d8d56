"""Finding tasks: the filters of ``task list`` and their paging.

Every filter narrows the answer (they all must hold). Tasks come in id order, which is
creation order (ids sort by the time they were made), and a page continues strictly after
the last id of the previous one, so a task deleted between two pages cannot derail the
paging and none is shown twice.

``available_to`` asks what that session could claim right now, by the one eligibility rule
of :func:`runlease.core.claims.refusal`, in whatever workspace: the task's current run is
queued and not held back (draft, paused, blocked), the scheduler runs, and the session is
live, offers the required capabilities and is admitted by the task's owner. A lease the
session holds does not empty the answer: it is what a finish with ``--next`` could take.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Final, TypedDict, Unpack, get_args

from runlease.core import validate
from runlease.core.claims import refusal
from runlease.core.model import MAX_SEARCH_CHARS, PRIORITY_RANK, Priority, Task, TaskStatus
from runlease.core.state import State
from runlease.errors import InvalidInput

_STATUSES: Final = frozenset(get_args(TaskStatus))


class ListFilters(TypedDict, total=False):
    """The filters of a task listing any caller may use (absent or None: no filter).

    The one list of them: ``ListTasks`` declares the same fields for the wire (a test holds
    the two together) and the clients' ``list_tasks`` takes exactly these."""

    status: TaskStatus | None
    priority: Priority | None
    # Every one of them must be on the task.
    tags: list[str]
    # The assignee's ref: a session id (owner kind agent_session) or an agent pool name.
    owner: str | None
    # Direct children of this task.
    parent: str | None
    # This task and every task below it.
    root: str | None
    workspace: str | None
    # Case-insensitive substring of the title or the description.
    search: str | None


class TaskFilters(ListFilters, total=False):
    """The filters of the embedded read: those of a listing, and the session to ask
    ``available`` for (over the wire it is always the caller's own)."""

    # What this session could claim now.
    available_to: str | None


def find_tasks(
    m: State, *, after: str | None = None, limit: int | None = None, **filters: Unpack[TaskFilters]
) -> list[Task]:
    """The tasks matching every filter, in id order, after the id ``after``, at most
    ``limit`` of them. The records are the state's own: copy before handing them out."""
    if limit is not None and limit < 0:
        raise InvalidInput("limit must be zero or positive")
    matches = _matching(m, after, filters)
    if limit is None:
        return sorted(matches, key=_task_id)
    return heapq.nsmallest(limit, matches, key=_task_id)


def _task_id(task: Task) -> str:
    return task.id


def _matching(m: State, after: str | None, filters: TaskFilters) -> Iterator[Task]:
    status = filters.get("status")
    if status is not None and status not in _STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(sorted(_STATUSES))}")
    priority = filters.get("priority")
    if priority is not None and priority not in PRIORITY_RANK:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITY_RANK)}")
    raw_tags = filters.get("tags")
    tags = frozenset(validate.tags(raw_tags)) if raw_tags else frozenset()
    owner = filters.get("owner")
    workspace = filters.get("workspace")
    search = filters.get("search")
    needle = None
    if search:
        needle = validate.text(search, "search", max_chars=MAX_SEARCH_CHARS).casefold()
    root = filters.get("root")
    if root is not None:
        m.get_task(root)
    available_to = filters.get("available_to")
    session = None if available_to is None else m.get_session(available_to)
    if session is not None and m.scheduler.paused:
        return

    parent = filters.get("parent")
    candidates: Iterable[Task]
    if parent is not None:
        m.get_task(parent)
        candidates = [m.tasks[child] for child in m.subtasks.get(parent, ())]
    else:
        candidates = m.tasks.values()
    for task in candidates:
        if after is not None and task.id <= after:
            continue
        if status is not None and task.status != status:
            continue
        if priority is not None and task.priority != priority:
            continue
        if tags and not tags.issubset(task.tags):
            continue
        if owner is not None and (task.owner is None or task.owner.ref != owner):
            continue
        if workspace is not None and task.workspace_id != workspace:
            continue
        if root is not None and _top_ancestor(m, task) != root:
            continue
        if needle is not None and not (
            needle in task.title.casefold() or needle in task.description.casefold()
        ):
            continue
        if session is not None and not (
            task.current_run_id is not None
            and task.current_run_id in m.index
            and refusal(m, session, task) is None
        ):
            continue
        yield task


def _top_ancestor(m: State, task: Task) -> str:
    """The id of the task at the top of ``task``'s parent chain (at most 8 steps up)."""
    while task.parent_task_id is not None:
        task = m.tasks[task.parent_task_id]
    return task.id
