"""``runlease events``: read the event history, one event by sequence, or follow it live."""

from __future__ import annotations

from typing import Annotated

from runlease.cli.context import connect, show, show_event
from runlease.cli.output import plain
from runlease.cli.params import Param


def events(
    *,
    follow: Annotated[
        bool, Param(help="Keep printing new events (one JSON object per line).")
    ] = False,
    after: Annotated[
        int,
        Param(help="Only events after this SEQ; resume a follow with the last seq printed."),
    ] = 0,
    task: Annotated[str | None, Param(help="Only events of this TASK_ID.")] = None,
    run: Annotated[str | None, Param(help="Only events of this RUN_ID.")] = None,
    session: Annotated[str | None, Param(help="Only events of this SESSION_ID.")] = None,
    kind: Annotated[
        list[str] | None,
        Param(name="--type", help="Only events of this KIND, e.g. run_completed (repeatable)."),
    ] = None,
    limit: Annotated[
        int | None, Param(help="At most N events (without --follow); default: all kept.")
    ] = None,
) -> int:
    """The event history, oldest first, filtered by task, run, session and event type;
    with --follow, keep streaming new events until interrupted."""
    with connect() as client:
        if not follow:
            found = client.events(
                after_seq=after,
                task_id=task,
                run_id=run,
                session_id=session,
                kinds=kind,
                limit=limit,
            )
            return show({"events": plain(found)})
        with client.follow_events(
            after_seq=after, task_id=task, run_id=run, session_id=session, kinds=kind
        ) as stream:
            for event in stream:
                show_event(plain(event))
    return 0


def events_get(seq: int, /) -> int:
    """One event by its sequence number (EVENT_NOT_FOUND, exit 4, says whether it was
    compacted away or is not written yet).

    Parameters
    ----------
    seq
        The event's sequence number.
    """
    with connect() as client:
        event = client.get_event(seq)
    return show({"event": plain(event)})
