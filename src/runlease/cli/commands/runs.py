"""``runlease run``: operator controls on runs (inspect, cancel, retry, recover,
force-release, force-fail and their bulk forms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from runlease.cli.context import connect, show
from runlease.cli.output import INSPECT_TABLE, plain
from runlease.cli.params import Param
from runlease.core.model import BulkItem
from runlease.errors import UsageError


def run_inspect(run_id: str, /) -> int:
    """A run in the context of its task, with the next_action and diagnostics.

    Parameters
    ----------
    run_id
        The run.
    """
    with connect() as client:
        view = client.inspect_run(run_id)
    return show(plain(view), table=INSPECT_TABLE)


def run_cancel(
    run_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why it is canceled.")] = None,
) -> int:
    """Cancel a queued or leased run (a lease ends; its session may claim again).

    Parameters
    ----------
    run_id
        The run.
    """
    with connect() as client:
        run = client.cancel_run(run_id, reason=reason)
    return show({"run": plain(run)})


def run_retry(run_id: str, /) -> int:
    """Queue a new run after a failed one (previous_run_id links them).

    Parameters
    ----------
    run_id
        The failed run.
    """
    with connect() as client:
        result = client.retry_run(run_id)
    return show({"previous_run": plain(result.previous_run), "run": plain(result.run)})


def run_recover(
    run_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why it goes back to the queue.")] = None,
) -> int:
    """Operator: put a parked (needs_attention) run back in the queue: blocked, lost its
    lease too often, or starved.

    Parameters
    ----------
    run_id
        The parked run.
    """
    with connect() as client:
        run = client.recover_run(run_id, reason=reason)
    return show({"run": plain(run)})


ForceReason = Annotated[str, Param(help="Why (required; kept in the audit trail).")]


def run_force_release(run_id: str, /, *, reason: ForceReason) -> int:
    """Operator: take a claimed run back to the queue. At most 10 per minute per task.

    Parameters
    ----------
    run_id
        The run.
    """
    with connect() as client:
        run = client.force_release(run_id, reason=reason)
    return show({"run": plain(run)})


def run_force_fail(run_id: str, /, *, reason: ForceReason) -> int:
    """Operator: fail a run (failure_kind operator_forced). At most 10 per minute per task.

    Parameters
    ----------
    run_id
        The run.
    """
    with connect() as client:
        run = client.force_fail(run_id, reason=reason)
    return show({"run": plain(run)})


def _show_bulk(items: Sequence[BulkItem]) -> int:
    ok = sum(1 for item in items if item.ok)
    # Each run has its own outcome; the command itself worked (exit 0).
    return show({"items": plain(items), "ok": ok, "failed": len(items) - ok})


def run_bulk_force_release(*run_ids: str, reason: ForceReason) -> int:
    """Force-release up to 50 runs; one outcome per run (exit 0 even if some failed).

    Parameters
    ----------
    run_ids
        The runs.
    """
    if not run_ids:
        raise UsageError("name at least one RUN_ID")
    with connect() as client:
        result = client.bulk_force_release(run_ids, reason=reason)
    return _show_bulk(result.items)


def run_bulk_force_fail(*run_ids: str, reason: ForceReason) -> int:
    """Force-fail up to 50 runs; one outcome per run (exit 0 even if some failed).

    Parameters
    ----------
    run_ids
        The runs.
    """
    if not run_ids:
        raise UsageError("name at least one RUN_ID")
    with connect() as client:
        result = client.bulk_force_fail(run_ids, reason=reason)
    return _show_bulk(result.items)
