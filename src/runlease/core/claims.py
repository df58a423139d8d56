"""Who may claim what, and the claim of a chosen run.

:func:`refusal` is the one statement of the claim rules for one (session, task) pair:
the session is live, offers every capability the task requires, is admitted by the task's
owner, and, when its claim's filters are known, looks in the task's workspace and accepts
its priority. The claim index applies the same rules in bulk for ``task next``; inspect's
``next_action``, the starvation watch and the claim by id ask this function, so they
cannot disagree about who could take a run.

Scope: a claim that names no workspace looks at tasks with no workspace only; a
workspace's tasks are claimed only by a claim that names that workspace. So an agent
started without a workspace never takes another workspace's work.
"""

from __future__ import annotations

from runlease.core.commands import ClaimRun
from runlease.core.leases import check_claim, expire_stale_lease, grant_claim
from runlease.core.model import PRIORITY_RANK, Claim, Session, Task
from runlease.core.outcome import Outcome, refused_after_changes
from runlease.core.registry import handles
from runlease.core.state import State
from runlease.errors import (
    NO_CLAIMABLE_RUN,
    InvalidInput,
    NotFound,
)


def refusal(
    m: State,
    session: Session,
    task: Task,
    *,
    where: str | None = None,
    min_rank: int | None = None,
) -> str | None:
    """Why ``session`` may not take ``task``'s queued run, or None if it may.

    ``where`` is the workspace view the claim looks at ("" for tasks with no workspace);
    None leaves it open (the session could name the task's workspace), which is what the
    views that ask "could anyone take this?" want.
    """
    if session.state != "live":
        return f"session {session.id} is stopped"
    owner = task.owner
    if owner is not None:
        mine = session.id if owner.kind == "agent_session" else session.agent
        if owner.ref != mine:
            whom = "session" if owner.kind == "agent_session" else "agent pool"
            return f"task {task.id} is assigned to {whom} {owner.ref}"
    required = m.capability_set(task.required_capabilities)
    if required and not required <= m.capability_set(session.capabilities):
        missing = sorted(required - set(session.capabilities))
        return f"session {session.id} lacks the capabilities {', '.join(missing)}"
    if where is not None and where != (task.workspace_id or ""):
        if task.workspace_id is None:
            return f"task {task.id} has no workspace and the claim names workspace {where}"
        if not where:
            return (
                f"task {task.id} belongs to workspace {task.workspace_id}; "
                "a claim that names no workspace takes only tasks without one"
            )
        return f"task {task.id} belongs to workspace {task.workspace_id}, not {where}"
    if min_rank is not None and PRIORITY_RANK[task.priority] < min_rank:
        return f"task {task.id} has priority {task.priority}, below the claim's minimum"
    return None


def could_claim(m: State, session: Session, task: Task) -> bool:
    """Whether ``session`` is live and may take ``task``'s run, in whatever workspace."""
    return refusal(m, session, task) is None


@handles(ClaimRun)
def claim_run(m: State, cmd: ClaimRun) -> Outcome[Claim]:
    """Claim the run the caller chose (a run id, or a task's current run) under the rules
    of ``task next``; refused with the reason when ``task next`` could not hand it out."""
    session = m.live_session(cmd.session_id)
    inputs = check_claim(cmd)
    if (cmd.run_id is None) == (cmd.task_id is None):
        raise InvalidInput("a claim by id names exactly one of run_id and task_id")
    if cmd.run_id is not None:
        run = m.get_run(cmd.run_id)
        task = m.tasks[run.task_id]
        target = f"run {run.id}"
    else:
        assert cmd.task_id is not None
        task = m.get_task(cmd.task_id)
        current = m.current_run(task)
        target = f"task {task.id}"
        if current is None:
            raise NotFound(f"task {task.id} has no run to claim; start it", code=NO_CLAIMABLE_RUN)
        run = current
    # As for ``task next``: a live lease refuses, one past its deadline is expired first.
    events, queued = expire_stale_lease(m, session, cmd.now)
    why = _why_not(m, session, task, run.id, inputs.where, cmd.priority_min)
    if why is not None:
        error = NotFound(f"cannot claim {target}: {why}", code=NO_CLAIMABLE_RUN)
        if events:
            return refused_after_changes(error, events, queued=queued)
        raise error
    m.index.discard(run.id)
    return grant_claim(m, session, run, inputs, cmd.now, events, queued, chosen=True)


def _why_not(
    m: State, session: Session, task: Task, run_id: str, where: str, min_rank: int | None
) -> str | None:
    """Why ``task next`` with these filters could not hand this run to this session."""
    run = m.runs[run_id]
    if task.current_run_id != run_id:
        return f"it is not the current run of task {task.id} ({run.status})"
    if run.status != "queued":
        holder = f" by session {run.session_id}" if run.lease_until is not None else ""
        return f"run {run_id} is {run.status}{holder}; only a queued run can be claimed"
    if m.scheduler.paused:
        return "the scheduler is paused"
    if run_id not in m.index:
        gate = m.gate(task) or "held back"
        return f"task {task.id} is {gate}; its run cannot be taken now"
    return refusal(m, session, task, where=where, min_rank=min_rank)
