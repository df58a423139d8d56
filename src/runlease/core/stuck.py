"""``stuck``: runs that need a look, as HZL's ``task stuck`` lists them.

Three kinds, in this order, longest first within each:

- ``lease_expired``: leased, past the deadline, not yet expired by the lease clock;
- ``expired_unclaimed``: put back in the queue when the lease ran out, and nobody has
  claimed it since. The lease clock requeues a run at its exact deadline, so without this
  kind the first step of "stuck, then steal --if-expired" would find nothing;
- ``no_progress``: leased, with no heartbeat or checkpoint for longer than the task's own
  ``stale_after``, or the caller's ``threshold`` for a task without one.

Pure and read-only: O(live leases + runs that lost their lease and wait in the queue).
"""

from __future__ import annotations

import math

from runlease.core.model import Run
from runlease.core.state import State
from runlease.core.views import StuckKind, StuckRun
from runlease.errors import InvalidInput


def stuck(machine: State, now: float, *, threshold: float) -> list[StuckRun]:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise InvalidInput("threshold must be a finite number of seconds, zero or more")
    expired: list[StuckRun] = []
    idle: list[StuckRun] = []
    for run in machine.leased_runs():
        assert run.lease_until is not None
        if run.lease_until <= now:
            expired.append(
                _stuck(run, "lease_expired", run.lease_until, now, lease_until=run.lease_until)
            )
            continue
        stale_after = machine.tasks[run.task_id].stale_after
        limit = threshold if stale_after is None else stale_after
        last = last_progress(run)
        if now - last > limit:
            idle.append(
                _stuck(run, "no_progress", last, now, lease_until=run.lease_until, limit=limit)
            )
    unclaimed = [
        _stuck(run, "expired_unclaimed", last_progress(run), now)
        for run in machine.lost_lease_runs()
    ]
    for group in (expired, unclaimed, idle):
        group.sort(key=lambda s: (-s.seconds, s.run_id))
    return expired + unclaimed + idle


def last_progress(run: Run) -> float:
    """The last sign of life of a run's latest lease: heartbeat, checkpoint or claim."""
    marks = [t for t in (run.heartbeat_at, run.checkpoint_at, run.claimed_at) if t]
    return max(marks) if marks else run.queued_at


def _stuck(
    run: Run,
    kind: StuckKind,
    since: float,
    now: float,
    *,
    lease_until: float | None = None,
    limit: float | None = None,
) -> StuckRun:
    return StuckRun(
        task_id=run.task_id,
        run_id=run.id,
        session_id=run.session_id,
        kind=kind,
        since=since,
        seconds=now - since,
        lease_until=lease_until,
        threshold=limit,
    )
