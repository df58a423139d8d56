"""``runlease scheduler``: pause, resume, drain, status, backlog."""

from __future__ import annotations

from typing import Annotated

from runlease.cli.context import connect, show
from runlease.cli.durations import duration
from runlease.cli.output import plain
from runlease.cli.params import Param


def scheduler_pause(*, reason: Annotated[str | None, Param(help="Why claims stop.")] = None) -> int:
    """Stop handing out runs (lease expiry, heartbeats and finishes carry on)."""
    with connect() as client:
        status = client.pause_scheduler(reason=reason)
    return show({"scheduler": plain(status)})


def scheduler_resume(
    *, reason: Annotated[str | None, Param(help="Why claims start again.")] = None
) -> int:
    """Hand out runs again."""
    with connect() as client:
        status = client.resume_scheduler(reason=reason)
    return show({"scheduler": plain(status)})


def scheduler_drain(
    *,
    timeout: Annotated[
        float | None, duration(help="Stop waiting after SECONDS (default 30).")
    ] = None,
    reason: Annotated[str | None, Param(help="Why.")] = None,
) -> int:
    """Pause the scheduler and wait until no lease is active; report what remains.

    The scheduler stays paused afterwards (scheduler resume). Exit 0 either way: see
    completed, timed_out and remaining_claims.
    """
    with connect() as client:
        drain = client.drain_scheduler(timeout=timeout, reason=reason)
    document = plain(drain)
    return show({"scheduler": document.pop("status"), **document})


def scheduler_status() -> int:
    """Paused or not, active leases, queued and claimable runs, paused tasks."""
    with connect() as client:
        status = client.scheduler_status()
    return show({"scheduler": plain(status)})


def scheduler_backlog(
    *,
    limit: Annotated[int | None, Param(help="At most this many runs (default 100).")] = None,
    after: Annotated[str | None, Param(help="Start after this RUN_ID (next_after).")] = None,
    workspace: Annotated[str | None, Param(help="Only runs of this workspace.")] = None,
) -> int:
    """Queued runs with their task and what holds each back (gate), one page at a time."""
    with connect() as client:
        backlog = client.backlog(workspace=workspace, after=after, limit=limit)
    return show(
        {"backlog": plain(backlog.runs), "total": backlog.total, "next_after": backlog.next_after}
    )
