"""The starvation backstop: a queued run that no live session could take is parked.

A run waits in the queue until some session claims it; if no live session offers the
capabilities its task requires (or the task is owned by a session or pool that is not
there), it would wait forever without anyone noticing. The watch in the shell (off by
default) asks :func:`unclaimable_runs` now and then and, for a run that stayed unclaimable
for the configured time, sends :class:`~runlease.core.commands.StarveRun`. The handler
checks again against the state it is applied to, so a session that arrived meanwhile
saves the run, and replaying the journal makes the same decision.

A parked starved run carries error and reason ``starved``; ``run recover`` puts it back.
Held runs (draft, paused, blocked) and a paused scheduler are an operator's choice, not
starvation, so they are never parked. Nothing here runs on the claim path.
"""

from __future__ import annotations

from runlease.core import lifecycle, validate
from runlease.core.claims import could_claim
from runlease.core.commands import StarveRun
from runlease.core.model import ERROR_STARVED, Run
from runlease.core.outcome import Outcome
from runlease.core.registry import handles
from runlease.core.state import State, snapshot_run


def unclaimable_runs(m: State) -> list[str]:
    """The claimable queued runs that no live session could take, in no particular order.

    O(queued runs) plus O(live sessions) per distinct (capabilities, owner) of their tasks;
    empty while the scheduler is paused.
    """
    if m.scheduler.paused:
        return []
    live = [s for s in m.sessions.values() if s.state == "live"]
    verdict: dict[tuple[tuple[str, ...], str | None], bool] = {}
    out: list[str] = []
    for run_id in m.index.run_ids():
        task = m.tasks[m.runs[run_id].task_id]
        key = (task.required_capabilities, m.owner_key(task))
        served = verdict.get(key)
        if served is None:
            served = verdict[key] = any(could_claim(m, s, task) for s in live)
        if not served:
            out.append(run_id)
    return out


def _starving(m: State, run: Run) -> bool:
    if run.status != "queued" or run.id not in m.index or m.scheduler.paused:
        return False
    task = m.tasks[run.task_id]
    return not any(could_claim(m, s, task) for s in m.sessions.values())


@handles(StarveRun)
def starve_run(m: State, cmd: StarveRun) -> Outcome[Run | None]:
    waited = validate.positive_seconds(cmd.waited_seconds, "waited_seconds")
    run = m.runs.get(cmd.run_id)
    if run is None or not _starving(m, run):
        return Outcome(reply=None)  # claimed, canceled, held back or servable since
    m.unqueue(run)
    lifecycle.move_run(run, "starve")
    run.error = ERROR_STARVED
    run.reason = ERROR_STARVED
    m.settle(m.tasks[run.task_id], run, cmd.now)
    event = m.run_event("run_starved", cmd.now, run, data={"waited_seconds": waited})
    return Outcome(reply=snapshot_run(run), events=[event])
