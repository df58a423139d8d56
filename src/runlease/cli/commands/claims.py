"""``runlease task``: what a session does with runs (next, claim, heartbeat, complete,
fail, release, block, steal; ``run claim``). These act for the session whose token is given."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

from runlease.cli.context import connect, json_arg, json_param, show, show_claim, spinner
from runlease.cli.durations import duration
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.core.model import Finished, Priority, Run
from runlease.errors import UsageError


def task_next(
    *,
    wait: Annotated[bool, Param(help="Wait for a claimable run to arrive.")] = False,
    timeout: Annotated[
        float | None, duration(help="Give up waiting after SECONDS (implies --wait).")
    ] = None,
    lease_seconds: Annotated[
        float | None, duration(help="Lease length; 0 or omitted means 300, capped at 24 h.")
    ] = None,
    workspace: Annotated[
        str | None, Param(help="Only runs of this workspace (without it: only tasks with none).")
    ] = None,
    scope: Annotated[
        Literal["global", "workspace"] | None,
        Param(help="global: only tasks without a workspace; workspace: only those with one."),
    ] = None,
    priority_min: Annotated[
        Priority | None, Param(help="Skip runs of a lower priority than this.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        Param(help="Only runs whose task carries this TAG (repeatable: all must match)."),
    ] = None,
) -> int:
    """Claim the best queued run this session may take.

    Exits 4 with NO_CLAIMABLE_RUN when there is none (after the timeout when waiting).
    """
    waiting = wait or timeout is not None
    with connect() as client, spinner(waiting):
        claim = client.claim_next(
            wait=waiting,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
            tags=tag or [],
        )
    return show_claim(claim)


ClaimLease = Annotated[
    float | None, duration(help="Lease length; 0 or omitted means 300, capped at 24 h.")
]
ClaimWorkspace = Annotated[
    str | None,
    Param(help="The workspace the claim looks in (without it: only tasks with none)."),
]
ClaimScope = Annotated[
    Literal["global", "workspace"] | None,
    Param(help="global: only tasks without a workspace; workspace: only those with one."),
]
ClaimPriorityMin = Annotated[
    Priority | None, Param(help="Refuse a run of a lower priority than this.")
]


def task_claim(
    task_id: str,
    /,
    *,
    lease_seconds: ClaimLease = None,
    workspace: ClaimWorkspace = None,
    scope: ClaimScope = None,
    priority_min: ClaimPriorityMin = None,
) -> int:
    """Claim this task's current run for this session, under the rules of task next.

    Exits 4 with NO_CLAIMABLE_RUN and the reason when task next could not hand it to this
    session (another session holds it, its task is blocked or paused, a filter or the
    workspace scope excludes it, ...), 5 if the session already holds a lease.

    Parameters
    ----------
    task_id
        The task whose queued run to claim.
    """
    with connect() as client:
        claim = client.claim_task(
            task_id,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )
    return show_claim(claim)


def run_claim(
    run_id: str,
    /,
    *,
    lease_seconds: ClaimLease = None,
    workspace: ClaimWorkspace = None,
    scope: ClaimScope = None,
    priority_min: ClaimPriorityMin = None,
) -> int:
    """Claim this queued run for this session, under the rules of task next.

    Exits 4 with NO_CLAIMABLE_RUN and the reason when task next could not hand it to this
    session, or RUN_NOT_FOUND; 5 if the session already holds a lease.

    Parameters
    ----------
    run_id
        The queued run to claim.
    """
    with connect() as client:
        claim = client.claim_run(
            run_id,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )
    return show_claim(claim)


# Options shared by complete, fail and release: claim the next run in the same request.
NextFlag = Annotated[
    bool,
    Param(
        name="--next",
        negative=(),
        help="Then claim the session's next run in the same request (exit 0 once the "
        "finish is recorded, even if nothing is claimable: see next / no_claim).",
        group="Claim next",
    ),
]
NextWait = Annotated[
    bool,
    Param(help="With --next: wait for a claimable run to arrive.", group="Claim next"),
]
NextTimeout = Annotated[
    float | None,
    duration(
        help="With --next: give up waiting after SECONDS (implies --wait).", group="Claim next"
    ),
]
NextLease = Annotated[
    float | None,
    duration(help="With --next: lease length of the new claim.", group="Claim next"),
]
NextWorkspace = Annotated[
    str | None, Param(help="With --next: only runs of this workspace.", group="Claim next")
]
NextScope = Annotated[
    Literal["global", "workspace"] | None,
    Param(
        help="With --next: global for tasks without a workspace, workspace for those with one.",
        group="Claim next",
    ),
]
NextPriorityMin = Annotated[
    Priority | None,
    Param(help="With --next: skip runs of a lower priority.", group="Claim next"),
]
NextTag = Annotated[
    list[str] | None,
    Param(
        help="With --next: only runs whose task carries this TAG (repeatable: all must match).",
        group="Claim next",
    ),
]


class _NextOptions(NamedTuple):
    wanted: bool
    wait: bool
    timeout: float | None
    lease_seconds: float | None
    workspace: str | None
    scope: Literal["global", "workspace"] | None = None
    priority_min: Priority | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        wanted: bool,
        wait: bool,
        timeout: float | None,
        lease_seconds: float | None,
        workspace: str | None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: Priority | None = None,
        tags: list[str] | None = None,
    ) -> _NextOptions:
        claim_options = (wait, timeout is not None, lease_seconds is not None, workspace, scope)
        if not wanted and (any(claim_options) or priority_min or tags):
            raise UsageError(
                "--wait, --timeout, --lease-seconds, --workspace, --scope, --priority-min and "
                "--tag apply to the claim of --next; add --next"
            )
        return cls(
            wanted, wait or timeout is not None, timeout, lease_seconds, workspace, scope,
            priority_min, tuple(tags or ()),
        )  # fmt: skip

    def kwargs(self) -> dict[str, Any]:
        return {
            "wait": self.wait,
            "timeout": self.timeout,
            "lease_seconds": self.lease_seconds,
            "workspace": self.workspace,
            "scope": self.scope,
            "priority_min": self.priority_min,
            "tags": list(self.tags),
        }


def _show_finish(run: Run) -> int:
    return show({"run": plain(run), **_already(run)})


def _already(run: Run) -> dict[str, bool]:
    """``"already": true`` when the finish repeats one the session had made: nothing
    changed (a retry after a lost reply). Left out otherwise."""
    return {"already": True} if run.already else {}


def _show_finished(finished: Finished) -> int:
    claim = finished.claim
    show(
        {
            "run": plain(finished.run),
            **_already(finished.run),
            "next": None
            if claim is None
            else {"task": plain(claim.task), "run": plain(claim.run), "lease": plain(claim.lease)},
            "no_claim": None if finished.no_claim is None else plain(finished.no_claim),
        }
    )
    # The finish is recorded whatever the claim part found: never invite a retry.
    return 0


def task_heartbeat(
    run_id: str,
    /,
    *,
    lease_seconds: Annotated[
        float | None, duration(help="New lease length from now; 0 or omitted means 300.")
    ] = None,
) -> int:
    """Renew the session's lease on a run: lease_until = now + lease seconds.

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    with connect() as client:
        beat = client.heartbeat(run_id, lease_seconds=lease_seconds)
    return show({"run": plain(beat.run), "lease": plain(beat.lease)})


def task_complete(
    run_id: str,
    /,
    *,
    result: Annotated[str | None, json_param(help="A JSON result to keep with the run.")] = None,
    next_: NextFlag = False,
    wait: NextWait = False,
    timeout: NextTimeout = None,
    lease_seconds: NextLease = None,
    workspace: NextWorkspace = None,
    scope: NextScope = None,
    priority_min: NextPriorityMin = None,
    tag: NextTag = None,
) -> int:
    """Finish the session's run successfully.

    With --next, also claim the session's next run in the same request. Exit 0 once the run
    is completed, whether or not a run was claimed: "next" holds the claim (as task next
    prints it), or null with "no_claim" saying why (NO_CLAIMABLE_RUN).

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    value = json_arg(result, "--result")
    after = _NextOptions.of(
        next_, wait, timeout, lease_seconds, workspace, scope, priority_min, tag
    )
    with connect() as client:
        if after.wanted:
            with spinner(after.wait):
                finished = client.complete_and_next(run_id, result=value, **after.kwargs())
            return _show_finished(finished)
        run = client.complete(run_id, result=value)
    return _show_finish(run)


def task_fail(
    run_id: str,
    /,
    *,
    error: Annotated[str, Param(help="What went wrong.")],
    metadata: Annotated[str | None, json_param(help="A JSON object with details.")] = None,
    next_: NextFlag = False,
    wait: NextWait = False,
    timeout: NextTimeout = None,
    lease_seconds: NextLease = None,
    workspace: NextWorkspace = None,
    scope: NextScope = None,
    priority_min: NextPriorityMin = None,
    tag: NextTag = None,
) -> int:
    """End the session's run as failed (the task may be started again while attempts remain).

    With --next, also claim the session's next run in the same request; exit 0 once the run
    is failed, whether or not a run was claimed (see task complete --next).

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    meta = json_arg(metadata, "--metadata", object_only=True)
    after = _NextOptions.of(
        next_, wait, timeout, lease_seconds, workspace, scope, priority_min, tag
    )
    with connect() as client:
        if after.wanted:
            with spinner(after.wait):
                finished = client.fail_and_next(
                    run_id, error=error, metadata=meta, **after.kwargs()
                )
            return _show_finished(finished)
        run = client.fail(run_id, error=error, metadata=meta)
    return _show_finish(run)


def task_release(
    run_id: str,
    /,
    *,
    reason: Annotated[str | None, Param(help="Why the session lets go.")] = None,
    next_: NextFlag = False,
    wait: NextWait = False,
    timeout: NextTimeout = None,
    lease_seconds: NextLease = None,
    workspace: NextWorkspace = None,
    scope: NextScope = None,
    priority_min: NextPriorityMin = None,
    tag: NextTag = None,
) -> int:
    """Give the run back to the queue (same attempt) without finishing it.

    With --next, also claim the session's next run in the same request, under the ordinary
    claim rules (the released run itself may come straight back); exit 0 once the run is
    released, whether or not a run was claimed (see task complete --next).

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    after = _NextOptions.of(
        next_, wait, timeout, lease_seconds, workspace, scope, priority_min, tag
    )
    with connect() as client:
        if after.wanted:
            with spinner(after.wait):
                finished = client.release_and_next(run_id, reason=reason, **after.kwargs())
            return _show_finished(finished)
        run = client.release(run_id, reason=reason)
    return _show_finish(run)


def task_block(
    run_id: str,
    /,
    *,
    reason: Annotated[str, Param(help="What a human must look at.")],
) -> int:
    """Park the run as needs_attention for a human, ending the lease.

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    with connect() as client:
        run = client.block(run_id, reason=reason)
    return _show_finish(run)


def task_steal(
    task_id: str,
    /,
    *,
    if_expired: Annotated[
        bool, Param(negative=(), help="Only if its lease has run out (atomic).")
    ] = False,
    force: Annotated[bool, Param(negative=(), help="Take even a live lease.")] = False,
    lease_seconds: Annotated[float | None, duration(help="Length of the new lease.")] = None,
    reason: Annotated[str | None, Param(help="Why it is taken over.")] = None,
) -> int:
    """Take a task's current run for this session under a new lease (session-scoped).

    Exactly one of --if-expired and --force. With --if-expired it fails with
    LEASE_NOT_EXPIRED (exit 5) unless the lease has run out at that very moment.

    Parameters
    ----------
    task_id
        The task whose run to take.
    """
    if if_expired == force:
        raise UsageError("give exactly one of --if-expired and --force")
    with connect() as client:
        claim = client.steal(task_id, force=force, lease_seconds=lease_seconds, reason=reason)
    return show_claim(claim)


def task_context(run_id: str, /) -> int:
    """What the session needs to work on a run it holds: the task, the run, earlier
    attempts, last checkpoints, recent events and limits (at most 64 KiB of JSON; what was
    cut is listed under cuts and shortened).

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    with connect() as client:
        bundle = client.context(run_id)
    return show(plain(bundle))
