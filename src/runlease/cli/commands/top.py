"""``runlease top`` (also ``runlease status --watch``): watch a server live.

Every ``--interval`` seconds the watcher asks for the overview and for the events after the
last one it holds; between fetches it redraws a few times a second from what it has, so
lease countdowns tick without asking the server (see :mod:`runlease.cli.top_screen`).

Where the output goes decides the shape:

- a terminal, in table output: a full-screen view redrawn in place until Ctrl-C (exit 0);
- ``--once``: one frame (or with ``-o json`` / ``--json``, ``{"overview": ...}``) and exit;
- not a terminal: one frame and exit as with ``--once``, unless ``--interval`` is given:
  then one frame (or one overview JSON line) per interval, for logs and pipes.

When the server goes away while watching, the client connects again by itself; the screen
says "reconnecting..." meanwhile and keeps the last figures, and keeps trying after the
client's own bounded wait runs out.
"""

from __future__ import annotations

import collections
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Final, Protocol

from runlease.cli.context import GLOBALS, show
from runlease.cli.durations import duration
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.errors import Unavailable, UsageError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from runlease.cli.top_screen import ServerInfo
    from runlease.client import Client
    from runlease.core.model import Event
    from runlease.core.views import Overview

DEFAULT_INTERVAL: Final = 1.0
# How often the screen is redrawn between fetches, so countdowns tick by the second.
TICK: Final = 0.25
# Events kept for the screen: more than any terminal shows.
KEPT_EVENTS: Final = 50
# Rows asked for when no terminal height bounds them (the overview's own default).
UNBOUNDED_ROWS: Final = 50
RECONNECTING: Final = "reconnecting..."


def top(
    *,
    interval: Annotated[
        float | None,
        duration(help="Ask the server every SECONDS (default 1); between asks, countdowns tick."),
    ] = None,
    once: Annotated[
        bool,
        Param(
            help="Print one frame and exit (what a pipe gets unless --interval is given).",
            negative=(),
        ),
    ] = False,
    json: Annotated[
        bool,
        Param(
            help="Print the overview as JSON, one line per frame (same as -o json).",
            negative=(),
        ),
    ] = False,
) -> int:
    """A live view of the server: scheduler, counts, queue depth, leases running down,
    sessions and the newest events. Ctrl-C quits."""
    return watch(interval=interval, once=once, json=json)


def watch(*, interval: float | None, once: bool, json: bool = False) -> int:
    """Run ``top`` with these options (``status --watch`` comes here too)."""
    if interval is not None and not (0 < interval < math.inf):
        raise UsageError(f"--interval takes a positive number of seconds, got {interval}")
    period = DEFAULT_INTERVAL if interval is None else interval
    terminal = _is_terminal()
    single = once or (not terminal and interval is None)
    as_json = json or GLOBALS.output == "json"
    watcher = Watcher()
    try:
        client = GLOBALS.client(sleep=watcher.reconnecting)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a watch ends, even before it began
    try:
        if as_json:
            return _print_json(client, single, period)
        from rich.console import Console

        console = Console()
        if single:
            watcher.refresh(client, rows=_rows(console, terminal))
            console.print(watcher.frame(height=_height(console, terminal)))
        elif terminal:
            _live(watcher, client, console, period)
        else:
            _print_frames(watcher, client, console, period)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


class Caller(Protocol):
    """What the watcher needs of a client (tests pass a fake)."""

    @property
    def welcome(self) -> Any: ...

    def overview(self, *, limit: int | None = None) -> Overview: ...

    def status(self) -> Any: ...

    def events(self, *, after_seq: int = 0, limit: int | None = None) -> list[Event]: ...


class Watcher:
    """What the screen shows and when it was fetched; the clock is injectable for tests.

    Events are fetched only after the last one held: at most ``KEPT_EVENTS`` new ones, the
    newest (an idle moment costs no events request at all)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.overview: Overview | None = None
        self.fetched_at = 0.0
        self.events: collections.deque[Event] = collections.deque(maxlen=KEPT_EVENTS)
        self.server: ServerInfo | None = None
        self.notice: str | None = None
        # (the server's uptime, local time) when its status was read.
        self._uptime: tuple[float, float] | None = None
        # Status is read again once per connection: a new one may be a restarted server.
        self._welcome: object = None
        self._redraw: Callable[[], None] | None = None
        self._redraws_in_place = False

    def refresh(self, client: Caller, *, rows: int) -> None:
        """Fetch the overview, the server's status on a new connection, and new events."""
        view = client.overview(limit=rows)
        fetched_at = self.clock()
        if client.welcome is not self._welcome:
            status = client.status()
            self._welcome = client.welcome
            self._uptime = (status.uptime_seconds, self.clock())
            from runlease.cli.top_screen import ServerInfo

            self.server = ServerInfo(address=_address(client), version=status.version)
        last = self.events[-1].seq if self.events else 0
        if view.last_event_seq < last:  # a new store: its sequence starts over
            self.events.clear()
            last = 0
        if view.last_event_seq > last:
            after = max(last, view.last_event_seq - KEPT_EVENTS)
            self.events.extend(client.events(after_seq=after, limit=KEPT_EVENTS))
        self.overview = view
        self.fetched_at = fetched_at
        self.notice = None

    def now(self) -> float:
        """The server's clock as of now: the overview's time plus what passed here since."""
        assert self.overview is not None
        return self.overview.as_of + (self.clock() - self.fetched_at)

    def frame(self, *, height: int | None) -> RenderableType:
        # rich loads only here: the command table imports this module on every command.
        from rich.text import Text

        from runlease.cli.top_screen import render_top

        if self.overview is None:
            return Text(self.notice or "connecting...")
        server = self.server
        if server is not None and self._uptime is not None:
            uptime, read_at = self._uptime
            server = server._replace(uptime=uptime + self.clock() - read_at)
        return render_top(
            self.overview,
            list(self.events),
            self.now(),
            server=server,
            height=height,
            notice=self.notice,
        )

    def reconnecting(self, delay: float) -> None:
        """The client's pause between attempts to reach a server that went away: say so on
        the screen, then wait."""
        first = self.notice is None
        self.notice = RECONNECTING
        if self._redraw is not None and (first or self._redraws_in_place):
            self._redraw()
        time.sleep(delay)

    def on_redraw(self, redraw: Callable[[], None], *, in_place: bool) -> None:
        """Call ``redraw`` while reconnecting: at every attempt when the screen is redrawn
        in place, else once per outage (printed frames would repeat)."""
        self._redraw = redraw
        self._redraws_in_place = in_place


def _live(watcher: Watcher, client: Client, console: Console, period: float) -> None:
    from rich.live import Live

    with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:

        def redraw() -> None:
            live.update(watcher.frame(height=console.size.height), refresh=True)

        watcher.on_redraw(redraw, in_place=True)
        _loop(watcher, client, redraw, period, rows=lambda: console.size.height, tick=TICK)


def _print_frames(watcher: Watcher, client: Client, console: Console, period: float) -> None:
    def redraw() -> None:
        if watcher.notice is not None:
            console.print(watcher.notice)
        else:
            console.print(watcher.frame(height=None))
            console.print()
        sys.stdout.flush()

    watcher.on_redraw(redraw, in_place=False)
    # Printed frames do not tick: one per fetch.
    _loop(watcher, client, redraw, period, rows=lambda: UNBOUNDED_ROWS, tick=period)


def _print_json(client: Client, single: bool, period: float) -> int:
    """The overview as JSON: one document, or one line per interval."""
    while True:
        show({"overview": plain(client.overview(limit=UNBOUNDED_ROWS))})
        if single:
            return 0
        time.sleep(period)


def _loop(
    watcher: Watcher,
    client: Client,
    redraw: Callable[[], None],
    period: float,
    *,
    rows: Callable[[], int],
    tick: float,
) -> None:
    """Fetch every ``period`` and redraw every ``tick`` until interrupted."""
    next_fetch = time.monotonic()
    while True:
        if time.monotonic() >= next_fetch:
            try:
                watcher.refresh(client, rows=max(rows(), 1))
            except Unavailable as exc:
                # The client gave up its bounded wait: keep watching, try again next time.
                watcher.notice = f"{RECONNECTING} ({exc.message})"
            next_fetch = max(next_fetch + period, time.monotonic())
        redraw()
        time.sleep(max(min(tick, next_fetch - time.monotonic()), 0.0))


def _rows(console: Console, terminal: bool) -> int:
    """How many rows of leases and sessions to ask for: a terminal shows no more."""
    return max(console.size.height, 1) if terminal else UNBOUNDED_ROWS


def _height(console: Console, terminal: bool) -> int | None:
    # One line fewer than the terminal: the shell's prompt comes back below the frame.
    return max(console.size.height - 1, 1) if terminal else None


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _address(client: Caller) -> str:
    where = getattr(client, "path", None)
    return "" if where is None else str(where)
