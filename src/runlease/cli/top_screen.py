"""The screen of ``runlease top``, drawn from one overview: pure, no IO and no clock.

:func:`render_top` takes the server's overview, the newest events and ``now`` and answers
a rich renderable. ``now`` is the server's clock as the watcher estimates it (the
overview's ``as_of`` plus the local time elapsed since it arrived), so lease countdowns and
"12s ago" tick between fetches without asking the server again.

The screen fits the console: ids never wrap (other columns shrink or are cut with an
ellipsis instead), and with a ``height`` each section gets its share of the rows, ending
in "+N more" when its rows do not all fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from rich.console import Group
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from runlease.core.model import Event
from runlease.core.views import LeaseRow, Overview, SessionRow

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult

# A lease is shown in red once less than this many seconds, or this share of its length,
# is left: the moment to look at it before it expires.
URGENT_SECONDS: Final = 10.0
URGENT_SHARE: Final = 0.10
# Rows each section takes per turn when the height is shared out (queue, leases,
# sessions, events): the leases running down are what the view is for.
SECTION_WEIGHTS: Final = (1, 2, 1, 1)
# Wider consoles have room for the ids that are left out at 80 columns.
WIDE: Final = 110


class ServerInfo(NamedTuple):
    """Who is being watched: where, which version, and how long it has been up."""

    address: str
    version: str | None = None
    # Seconds since the server started, at the ``now`` the screen is drawn for.
    uptime: float | None = None


def render_top(
    overview: Overview,
    events: Sequence[Event],
    now: float,
    *,
    server: ServerInfo | None = None,
    height: int | None = None,
    notice: str | None = None,
) -> TopScreen:
    """The whole screen: header, queue depth, live leases, sessions and newest events.

    ``events`` are oldest first (as the server answers them); the newest are shown first.
    ``height`` is the console's rows (None: no limit, every row given is shown).
    ``notice`` is a line shown at the top, such as "reconnecting...".
    """
    return TopScreen(overview, events, now, server=server, height=height, notice=notice)


class TopScreen:
    """The renderable :func:`render_top` answers; it lays itself out for the console's width."""

    def __init__(
        self,
        overview: Overview,
        events: Sequence[Event],
        now: float,
        *,
        server: ServerInfo | None,
        height: int | None,
        notice: str | None,
    ) -> None:
        self.overview = overview
        self.events = events
        self.now = now
        self.server = server
        self.height = height
        self.notice = notice

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        header = self._header(width)
        sections = [
            self._queue(),
            self._leases(width),
            self._sessions(width),
            self._events(),
        ]
        if self.height is None:
            shares = [section.wanted for section in sections]
        else:
            overhead = len(header) + sum(section.overhead for section in sections)
            shares = share_rows(
                self.height - overhead, [s.wanted for s in sections], SECTION_WEIGHTS
            )
        parts: list[RenderableType] = list(header)
        for section, rows in zip(sections, shares, strict=True):
            parts.extend(section.render(rows, console, options))
        yield Group(*parts)

    # ------------------------------------------------------------------------- header
    def _header(self, width: int) -> list[Text]:
        view = self.overview
        lines: list[Text] = []
        if self.notice:
            lines.append(Text(self.notice, style="bold black on yellow", no_wrap=True))
        title = Text("runlease top", style="bold", no_wrap=True, overflow="ellipsis")
        if self.server is not None:
            title.append(f"  {self.server.address}")
            if self.server.version:
                title.append(f"  v{self.server.version}", style="dim")
            if self.server.uptime is not None:
                title.append(f"  up {duration(self.server.uptime)}")
        title.append(f"  {time.strftime('%H:%M:%S', time.localtime(self.now))}", style="dim")
        lines.append(title)
        scheduler = view.scheduler
        if scheduler.paused:
            banner = "SCHEDULER PAUSED"
            if scheduler.paused_by:
                banner += f" by {scheduler.paused_by}"
            if scheduler.paused_at is not None:
                banner += f" {duration(self.now - scheduler.paused_at)} ago"
            if scheduler.paused_reason:
                banner += f": {scheduler.paused_reason}"
            banner += "  (no claims are handed out)"
            lines.append(Text(banner, style="bold white on red", no_wrap=True, overflow="ellipsis"))
        else:
            lines.append(Text("scheduler running", style="green", no_wrap=True))
        counts = [
            ("tasks", view.tasks),
            ("queued", view.queued_runs),
            ("claimable", view.claimable_runs),
            ("held", view.held_runs),
            ("leased", view.leased_runs),
            ("sessions", view.live_sessions),
            ("waiting claimers", view.waiting_claimers),
        ]
        # One line when it fits, else two: counts are never cut.
        pieces = [_count(name, value) for name, value in counts]
        one = Text("  ").join(pieces)
        if one.cell_len <= width:
            lines.append(one)
        else:
            lines.append(Text("  ").join(pieces[:4]))
            lines.append(Text("  ").join(pieces[4:]))
        return lines

    # ----------------------------------------------------------------------- sections
    def _queue(self) -> Section:
        view = self.overview
        table = _table(
            Column("workspace", no_wrap=True, overflow="ellipsis", ratio=1),
            Column("priority", no_wrap=True),
            Column("claimable", justify="right", no_wrap=True),
        )
        rows = [
            (
                Text("(none)", style="dim") if q.workspace_id is None else Text(q.workspace_id),
                Text(q.priority, style=_PRIORITY_STYLE.get(q.priority, "")),
                Text(str(q.claimable)),
            )
            for q in view.queue
        ]
        note = f"{view.claimable_runs} claimable by workspace and priority"
        if view.held_runs:
            note += f", {view.held_runs} held back"
        return Section("Queue", note, table, rows, total=len(rows))

    def _leases(self, width: int) -> Section:
        view = self.overview
        wide = width >= WIDE
        columns = [_id_column("run", (row.run_id for row in view.leases))]
        if wide:
            columns.append(_id_column("task", (row.task_id for row in view.leases)))
        columns += [
            Column("title", no_wrap=True, overflow="ellipsis", ratio=2),
            Column("agent", no_wrap=True, overflow="ellipsis", ratio=1),
            Column("status", no_wrap=True),
            Column("left", justify="right", no_wrap=True),
        ]
        table = _table(*columns)
        rows = []
        for row in view.leases:
            cells = [Text(row.run_id)]
            if wide:
                cells.append(Text(row.task_id))
            cells += [
                Text(row.title),
                Text(row.agent or "", style="cyan"),
                Text(row.status),
                self.time_left(row),
            ]
            rows.append(tuple(cells))
        return Section(
            "Leases", "live, soonest to run out first", table, rows, total=view.leased_runs
        )

    def _sessions(self, width: int) -> Section:
        view = self.overview
        wide = width >= WIDE
        table = _table(
            _id_column("session", (row.session_id for row in view.sessions)),
            Column("agent", no_wrap=True, overflow="ellipsis", ratio=1),
            Column("last active", justify="right", no_wrap=True),
            _id_column("lease", (row.lease_run_id or "" for row in view.sessions))
            if wide
            else Column("lease", no_wrap=True),
        )
        rows = [
            (
                Text(row.session_id),
                Text(row.agent, style="cyan"),
                Text(self.ago(row.last_active_at)),
                _lease_cell(row, wide),
            )
            for row in view.sessions
        ]
        return Section(
            "Sessions", "live, most recently active first", table, rows, total=view.live_sessions
        )

    def _events(self) -> Section:
        newest = list(reversed(self.events))
        table = _table(
            Column("seq", justify="right", no_wrap=True),
            Column("age", justify="right", no_wrap=True),
            Column("kind", no_wrap=True, overflow="ellipsis", ratio=1),
            _id_column("about", (_subject(event) for event in newest)),
        )
        rows = [
            (
                Text(str(event.seq), style="dim"),
                Text(duration(self.now - event.at)),
                Text(event.kind, style=_event_style(event.kind)),
                Text(_subject(event)),
            )
            for event in newest
        ]
        # The stream scrolls: events that do not fit are simply older, not "more".
        return Section("Events", "newest first", table, rows, total=None)

    # ------------------------------------------------------------------------- cells
    def time_left(self, row: LeaseRow) -> Text:
        """The lease's time left at ``now``: red when it is about to run out."""
        if row.lease_until is None:
            return Text("-", style="dim")
        left = row.lease_until - self.now
        if left <= 0:
            return Text("expired", style="bold red")
        # The lease's length: from its last renewal (heartbeat, else the claim) to its end.
        renewed = max(
            (t for t in (row.claimed_at, row.heartbeat_at) if t is not None), default=None
        )
        length = 0.0 if renewed is None else row.lease_until - renewed
        urgent = left < URGENT_SECONDS or left < URGENT_SHARE * length
        return Text(duration(math.ceil(left)), style="bold red" if urgent else "")

    def ago(self, at: float) -> str:
        return f"{duration(self.now - at)} ago"


class Section:
    """One titled table whose rows are cut to the share of the height it is given."""

    def __init__(
        self,
        title: str,
        note: str,
        table: Table,
        rows: Sequence[tuple[Text, ...]],
        *,
        total: int | None,
    ) -> None:
        self.title = title
        self.note = note
        self.table = table
        self.rows = rows
        # How many there are in all; the rows may be fewer (the server answers a page).
        # None: a stream, whose rows that do not fit are dropped without a count.
        self.total = None if total is None else max(total, len(rows))

    @property
    def overhead(self) -> int:
        """Lines shown whatever the share: the title, and the column names when there are
        rows."""
        return 2 if self.rows else 1

    @property
    def wanted(self) -> int:
        """Lines for every row given, plus "+N more" when there are more than that."""
        more = self.total is not None and self.total > len(self.rows)
        return len(self.rows) + (1 if more else 0)

    def render(
        self, lines: int, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        title = Text(self.title, style="bold", no_wrap=True, overflow="ellipsis")
        if not self.rows and not self.total:
            title.append(" (none)")
        elif self.total is not None:
            title.append(f" ({self.total})")
        title.append(f"  {self.note}", style="dim")
        yield title
        if not self.rows:
            return
        if lines >= self.wanted:
            shown = self.rows
        elif self.total is None:
            shown = self.rows[:lines]
        else:
            shown = self.rows[: max(lines - 1, 0)]  # the last line says how many are left
        if shown:
            for cells in shown:
                self.table.add_row(*cells)
            # A table wider than the console is laid out to its width, which shrinks the
            # columns that may be cut (titles, agents) rather than the ids.
            natural = Measurement.get(console, options.update_width(10_000), self.table).maximum
            self.table.expand = natural > options.max_width
            yield self.table
        hidden = 0 if self.total is None else self.total - len(shown)
        if hidden > 0:
            yield Text(f"+{hidden} more", style="dim italic", no_wrap=True)


def share_rows(
    budget: int, wanted: Sequence[int], weights: Sequence[int] | None = None
) -> list[int]:
    """Lines for each section out of ``budget``: in turns, each section taking up to its
    weight in lines per turn while it wants more, so a long section cannot push the others
    off the screen (and the leases, weighted higher, get the larger share)."""
    weights = weights or [1] * len(wanted)
    given = [0] * len(wanted)
    budget = max(budget, 0)
    while budget > 0:
        progressed = False
        for index, want in enumerate(wanted):
            take = min(weights[index], want - given[index], budget)
            if take > 0:
                given[index] += take
                budget -= take
                progressed = True
        if not progressed:
            break
    return given


def duration(seconds: float) -> str:
    """A short span: ``42s``, ``4m05s``, ``2h03m``, ``3d04h`` (never negative)."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


_PRIORITY_STYLE: Final = {"urgent": "bold red", "high": "yellow", "low": "dim"}


def _event_style(kind: str) -> str:
    if "expired" in kind or "fail" in kind or "stolen" in kind or "force" in kind:
        return "red"
    if "complete" in kind:
        return "green"
    return ""


def _count(name: str, value: int) -> Text:
    text = Text(f"{name} ", style="dim")
    text.append(str(value), style="bold")
    return text


def _subject(event: Event) -> str:
    """The id an event is about: its run, else its task, else its session."""
    return event.run_id or event.task_id or event.session_id or ""


def _lease_cell(row: SessionRow, wide: bool) -> Text:
    if row.lease_run_id is None:
        return Text("")
    return Text(row.lease_run_id if wide else "yes")


def _id_column(header: str, ids: Iterable[str]) -> Column:
    """A column of ids: as wide as the longest, never wrapped nor cut."""
    longest = max((len(value) for value in ids), default=0)
    return Column(header, no_wrap=True, min_width=max(longest, len(header)))


def _table(*columns: Column) -> Table:
    return Table(
        *columns,
        box=None,
        pad_edge=False,
        padding=(0, 1),
        show_edge=False,
        header_style="dim",
    )
