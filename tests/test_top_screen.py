"""The ``runlease top`` screen from fixed figures, and the watcher that feeds it.

The screen is drawn into ``Console(record=True, width=80)`` and read back as text, so what is
checked is what an operator's 80-column terminal would show.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from runlease.cli.commands.top import KEPT_EVENTS, RECONNECTING, Watcher
from runlease.cli.top_screen import ServerInfo, duration, render_top, share_rows
from runlease.core.model import Event
from runlease.core.views import LeaseRow, Overview, QueueDepth, SchedulerStatus, SessionRow

NOW = 1_800_000_000.0
LETTERS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def an_id(prefix: str, n: int) -> str:
    """An id of the real length: the prefix and 26 characters."""
    return f"{prefix}_06H251ZCT9MZJ38S7CFWN3{n:04d}"


def scheduler(*, paused: bool = False, reason: str | None = None) -> SchedulerStatus:
    return SchedulerStatus(
        paused=paused,
        paused_by="ops" if paused else None,
        paused_at=NOW - 90 if paused else None,
        paused_reason=reason,
        active_claim_count=0,
        queued_run_count=0,
        claimable_run_count=0,
        paused_task_count=0,
        as_of=NOW,
    )


def lease(n: int, *, left: float, length: float = 300.0) -> LeaseRow:
    return LeaseRow(
        run_id=an_id("run", n),
        task_id=an_id("tsk", n),
        title=f"a task title long enough to be cut at eighty columns, number {n}",
        status="running",
        attempt=1,
        priority="high",
        workspace_id="ws",
        session_id=an_id("ses", n),
        agent="a-rather-long-agent-name",
        claimed_at=NOW + left - length - 50,
        heartbeat_at=NOW + left - length,
        lease_until=NOW + left,
    )


def session(n: int, *, idle: float, holds: int | None = None) -> SessionRow:
    return SessionRow(
        session_id=an_id("ses", n),
        agent=f"agent-{n}",
        opened_at=NOW - 3600,
        last_active_at=NOW - idle,
        lease_run_id=None if holds is None else an_id("run", holds),
    )


def overview(
    *,
    leases: list[LeaseRow] | None = None,
    leased: int | None = None,
    sessions: list[SessionRow] | None = None,
    live: int | None = None,
    paused: bool = False,
    reason: str | None = None,
    last_event_seq: int = 0,
    as_of: float = NOW,
) -> Overview:
    leases = leases or []
    sessions = sessions or []
    return Overview(
        as_of=as_of,
        scheduler=scheduler(paused=paused, reason=reason),
        tasks=40,
        queued_runs=7,
        claimable_runs=5,
        held_runs=2,
        leased_runs=len(leases) if leased is None else leased,
        live_sessions=len(sessions) if live is None else live,
        waiting_claimers=3,
        last_event_seq=last_event_seq,
        queue=[
            QueueDepth(workspace_id=None, priority="urgent", claimable=2),
            QueueDepth(workspace_id="ws", priority="medium", claimable=3),
        ],
        leases=leases,
        sessions=sessions,
    )


def event(seq: int, *, at: float = NOW - 5, kind: str = "run_claimed") -> Event:
    return Event(seq=seq, kind=kind, at=at, run_id=an_id("run", seq))


def text_of(renderable: Any, *, width: int = 80) -> list[str]:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text().splitlines()


# ------------------------------------------------------------------------------ screen
def test_a_lease_counts_down_as_now_moves_between_fetches() -> None:
    view = overview(leases=[lease(1, left=42)])
    first = "\n".join(text_of(render_top(view, [], NOW)))
    later = "\n".join(text_of(render_top(view, [], NOW + 3.5)))
    assert " 42s" in first
    assert " 39s" in later  # ceil(38.5): a whole second is shown until it is gone
    assert "expired" in "\n".join(text_of(render_top(view, [], NOW + 43)))
    long_view = overview(leases=[lease(2, left=4000)])
    assert "1h06m" in "\n".join(text_of(render_top(long_view, [], NOW)))


@pytest.mark.parametrize(
    ("left", "length", "urgent"),
    [
        (9.0, 30.0, True),  # under ten seconds
        (11.0, 30.0, False),
        (25.0, 300.0, True),  # under a tenth of a five-minute lease
        (35.0, 300.0, False),
    ],
)
def test_a_lease_about_to_run_out_is_red(left: float, length: float, urgent: bool) -> None:
    row = lease(1, left=left, length=length)
    screen = render_top(overview(leases=[row]), [], NOW)
    assert ("red" in str(screen.time_left(row).style)) is urgent


def test_rows_beyond_the_height_end_in_a_count_of_the_rest() -> None:
    view = overview(
        leases=[lease(n, left=30 + n) for n in range(20)],
        leased=120,  # the server answered a page of the 120 live leases
        sessions=[session(n, idle=n) for n in range(20)],
        live=25,
    )
    lines = text_of(render_top(view, [event(n) for n in range(1, 21)], NOW, height=24))
    assert len(lines) <= 24
    shown_leases = sum(1 for line in lines if line.startswith("run_"))
    shown_sessions = sum(1 for line in lines if line.startswith("ses_"))
    assert 0 < shown_leases < 20
    assert 0 < shown_sessions < 20
    assert f"+{120 - shown_leases} more" in lines
    assert f"+{25 - shown_sessions} more" in lines
    # The newest events come first; older ones scroll away without a count.
    events_at = lines.index(next(line for line in lines if line.startswith("Events")))
    assert an_id("run", 20) in lines[events_at + 2]
    assert not any("more" in line for line in lines[events_at:])


def test_without_a_height_every_row_given_is_shown() -> None:
    view = overview(leases=[lease(n, left=30 + n) for n in range(20)], leased=21)
    lines = text_of(render_top(view, [], NOW))
    assert sum(1 for line in lines if line.startswith("run_")) == 20
    assert "+1 more" in lines


def test_a_paused_scheduler_says_so_with_who_and_why() -> None:
    paused = "\n".join(text_of(render_top(overview(paused=True, reason="deploying"), [], NOW)))
    assert "SCHEDULER PAUSED by ops 1m30s ago: deploying" in paused
    running = "\n".join(text_of(render_top(overview(), [], NOW)))
    assert "PAUSED" not in running
    assert "scheduler running" in running


def test_ids_are_never_wrapped_nor_cut_at_80_columns() -> None:
    leases = [lease(n, left=60) for n in range(3)]
    sessions = [session(n, idle=12, holds=n) for n in range(3)]
    events = [event(n) for n in range(1, 4)]
    lines = text_of(render_top(overview(leases=leases, sessions=sessions), events, NOW))
    assert all(len(line) <= 80 for line in lines)
    every_id = {row.run_id for row in leases} | {row.session_id for row in sessions}
    every_id |= {e.run_id for e in events if e.run_id}
    for whole in every_id:
        assert any(whole in line for line in lines), whole
    # The long titles and agent names gave way instead.
    assert any("…" in line for line in lines if line.startswith("run_"))
    # Sessions say how long ago they were heard from.
    assert any(line.startswith(an_id("ses", 0)) and "12s ago" in line for line in lines)


def test_a_wide_console_adds_the_task_ids() -> None:
    leases = [lease(1, left=60)]
    narrow = "\n".join(text_of(render_top(overview(leases=leases), [], NOW), width=80))
    wide = "\n".join(text_of(render_top(overview(leases=leases), [], NOW), width=140))
    assert an_id("tsk", 1) not in narrow
    assert an_id("tsk", 1) in wide


def test_the_header_names_the_server_its_uptime_and_every_count() -> None:
    server = ServerInfo(address="/run/runlease.sock", version="1.2.3", uptime=3725)
    lines = text_of(render_top(overview(), [], NOW, server=server, notice=RECONNECTING))
    assert lines[0] == RECONNECTING
    assert "/run/runlease.sock" in lines[1]
    assert "up 1h02m" in lines[1]
    counts = " ".join(lines[2:5])
    for shown in ("tasks 40", "queued 7", "claimable 5", "held 2", "leased 0", "sessions 0"):
        assert shown in counts
    assert "waiting claimers 3" in counts


def test_rows_are_shared_in_turn_so_no_section_crowds_out_the_others() -> None:
    assert share_rows(10, [100, 2, 100]) == [4, 2, 4]
    assert share_rows(3, [0, 5, 5]) == [0, 2, 1]
    assert share_rows(50, [1, 2, 3]) == [1, 2, 3]
    assert share_rows(10, [100, 100, 100], [1, 2, 1]) == [3, 5, 2]
    assert share_rows(-4, [1, 2]) == [0, 0]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-3, "0s"), (0, "0s"), (59.9, "59s"), (61, "1m01s"), (3600, "1h00m"), (90000, "1d01h")],
)
def test_durations_are_short(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


# ----------------------------------------------------------------------------- watcher
class FakeClient:
    """Answers the watcher's three reads from figures the test sets, and records them."""

    def __init__(self) -> None:
        self.view = overview()
        self.welcome: object = object()
        self.path = "/tmp/fake.sock"
        self.event_asks: list[tuple[int, int | None]] = []
        self.status_asks = 0
        self.stored: list[Event] = []

    def overview(self, *, limit: int | None = None) -> Overview:
        return self.view

    def status(self) -> Any:
        self.status_asks += 1

        class Status:
            uptime_seconds = 100.0
            version = "9.9"

        return Status()

    def events(self, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        self.event_asks.append((after_seq, limit))
        found = [e for e in self.stored if e.seq > after_seq]
        return found[:limit]


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_the_watcher_asks_only_for_events_after_the_last_it_holds() -> None:
    client = FakeClient()
    client.stored = [event(seq) for seq in range(1, 201)]
    client.view = overview(last_event_seq=200)
    watcher = Watcher(clock=FakeClock())
    watcher.refresh(client, rows=24)
    # The first look takes the newest events, not the whole history.
    assert client.event_asks == [(200 - KEPT_EVENTS, KEPT_EVENTS)]
    assert [e.seq for e in watcher.events][-1] == 200

    watcher.refresh(client, rows=24)  # nothing new: no events request at all
    assert len(client.event_asks) == 1

    client.stored.append(event(201))
    client.view = overview(last_event_seq=201)
    watcher.refresh(client, rows=24)
    assert client.event_asks[-1] == (200, KEPT_EVENTS)
    assert [e.seq for e in watcher.events][-2:] == [200, 201]
    assert len(watcher.events) == KEPT_EVENTS


def test_a_new_store_starts_the_events_over() -> None:
    client = FakeClient()
    client.stored = [event(seq) for seq in range(1, 11)]
    client.view = overview(last_event_seq=10)
    watcher = Watcher(clock=FakeClock())
    watcher.refresh(client, rows=24)
    client.stored = [event(1, kind="task_created")]
    client.view = overview(last_event_seq=1)
    watcher.refresh(client, rows=24)
    assert [(e.seq, e.kind) for e in watcher.events] == [(1, "task_created")]


def test_the_screen_ticks_from_the_local_clock_and_reads_status_once_per_connection() -> None:
    clock = FakeClock()
    client = FakeClient()
    client.view = overview(leases=[lease(1, left=30)])
    watcher = Watcher(clock=clock)
    watcher.refresh(client, rows=24)
    clock.now += 12
    assert watcher.now() == NOW + 12
    lines = text_of(watcher.frame(height=None))
    assert "up 1m52s" in lines[0]
    assert any(line.startswith(an_id("run", 1)) and line.endswith(" 18s") for line in lines)

    watcher.refresh(client, rows=24)
    assert client.status_asks == 1
    client.welcome = object()  # the client connected again: maybe to a restarted server
    watcher.refresh(client, rows=24)
    assert client.status_asks == 2


def test_reconnecting_is_shown_until_the_next_fetch_succeeds() -> None:
    client = FakeClient()
    watcher = Watcher(clock=FakeClock())
    watcher.refresh(client, rows=24)
    drawn: list[str] = []
    watcher.on_redraw(lambda: drawn.append(text_of(watcher.frame(height=24))[0]), in_place=False)
    watcher.reconnecting(0)
    watcher.reconnecting(0)
    # Printed frames say it once per outage; the screen keeps the last figures below it.
    assert drawn == [RECONNECTING]
    assert any(line.startswith("Queue") for line in text_of(watcher.frame(height=24)))
    watcher.refresh(client, rows=24)
    assert watcher.notice is None
