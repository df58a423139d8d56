"""An operator watching the server while the contenders run: one open dashboard tab and a
Prometheus scraper, in a process of their own (as a browser and a monitoring server would
be), speaking HTTP to the server's dashboard with httpx.

The tab does what the page and its script (``dashboard/static/dashboard.js``) do: log in
with an access token through the login form (its nonce included), load the overview and
its static files, hold ``/events`` (server-sent events) open and read every event, and on
the stream opening and on each event refresh the overview fragment, with at most one
fetch in flight and at most one every ``REFRESH_EVERY`` seconds. The scraper GETs
``/metrics`` with the token as a bearer every ``SCRAPE_EVERY`` seconds, on a connection of
its own without the tab's cookie.

Every answer is checked (status 200 and the content expected) and counted; anything else
is recorded as a failure, so a row whose watcher saw errors, or scraped nothing, fails
instead of passing silently.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Final

import httpx
import trio

from bench.common import BenchError
from bench.procs import await_message, report_failure, spawn_context, stop_processes

# As dashboard.js's REFRESH_MS: the page refreshes its overview at most this often.
REFRESH_EVERY: Final = 0.4
# A Prometheus server set to scrape often.
SCRAPE_EVERY: Final = 1.0
# How long the tab may take to read the events up to the last one once the drain is over.
CATCH_UP_TIMEOUT: Final = 120.0
SETUP_TIMEOUT: Final = 120.0
# At most this many failures are kept word for word (all are counted).
KEPT_FAILURES: Final = 5


@dataclass
class WatchCounts:
    """What the watcher did and saw, reported in the row's notes."""

    page_loads: int = 0
    scrapes: int = 0
    fragment_fetches: int = 0
    events: int = 0
    # Events the server left out of busy moments (counted in its "skipped" messages).
    skipped: int = 0
    last_seq: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    # Whether the dashboard tab was open (False: /metrics scraped alone).
    tab: bool = True
    # CPU seconds the watcher used from the contenders' start to the end of the drain.
    cpu_seconds: float = 0.0

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append(what)

    def problems(self, last_seq: int) -> list[str]:
        """Why this watch does not count as a dashboard open and scraped throughout."""
        problems = [f"watcher: {what}" for what in self.failures]
        if self.failed > len(self.failures):
            problems.append(f"watcher: {self.failed - len(self.failures)} more failures")
        if self.scrapes == 0:
            problems.append("watcher: /metrics was never scraped")
        if not self.tab:
            return problems
        if self.fragment_fetches == 0:
            problems.append("watcher: the overview fragment was never fetched")
        if self.last_seq < last_seq:
            problems.append(f"watcher: the event stream stopped at #{self.last_seq} of #{last_seq}")
        return problems


class DashboardWatcher:
    """The watcher's process, from before the contenders start to after the drain::

    with DashboardWatcher(url, token) as watcher:   # logged in, stream open, scraped once
        ...                                         # contenders run
        counts = watcher.finish(last_event_seq)     # reads the stream up to there
    """

    def __init__(self, url: str, token: str, *, tab: bool = True) -> None:
        ctx = spawn_context()
        self._pipe, child_end = ctx.Pipe()
        self._child_end = child_end
        self._process = ctx.Process(
            target=watcher_main, args=(url, token, child_end, tab), daemon=True
        )

    def __enter__(self) -> DashboardWatcher:
        self._process.start()
        self._child_end.close()
        message = await_message(self._process, self._pipe, SETUP_TIMEOUT, "opening the dashboard")
        if message[0] != "watching":
            raise BenchError(f"the dashboard watcher said {message!r} instead of watching")
        return self

    def finish(self, last_seq: int) -> WatchCounts:
        """Stop scraping, read the stream up to event ``last_seq``, and report."""
        self._pipe.send(("stop", last_seq))
        message = await_message(
            self._process, self._pipe, CATCH_UP_TIMEOUT + 60, "catching up with the events"
        )
        if message[0] != "watched":
            raise BenchError(f"the dashboard watcher said {message!r} instead of its counts")
        return WatchCounts(**message[1])

    def __exit__(self, *exc_info: object) -> None:
        try:
            stop_processes([self._process])
        finally:
            self._pipe.close()


def watcher_main(url: str, token: str, conn: Connection, tab: bool = True) -> None:
    """Child process: watch until told to stop, then send the counts. Without ``tab``,
    only the scraper runs."""
    try:
        counts = trio.run(watch, url, token, conn, tab)
        conn.send(("watched", asdict(counts)))
    except BaseException:
        report_failure(None, conn)
    finally:
        conn.close()


async def watch(url: str, token: str, conn: Connection, tab_open: bool = True) -> WatchCounts:
    counts = WatchCounts(tab=tab_open)
    # The stream waits on events as long as it must: no read timeout on the tab's client.
    timeout = httpx.Timeout(60.0, read=None)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout) as tab,
        httpx.AsyncClient(base_url=url, timeout=60.0) as scraper,
    ):
        refresher = Refresher(tab, counts)
        reader = EventReader(counts, refresher)
        async with trio.open_nursery() as nursery:
            if tab_open:
                after = await open_overview(tab, token, counts)
                nursery.start_soon(refresher.run)
                await nursery.start(partial(reader.follow, tab, after))
            scraping = trio.CancelScope()
            await nursery.start(scrape_metrics, scraper, token, counts, scraping)
            if tab_open:
                await refresher.first_fetch.wait()
            conn.send(("watching",))
            cpu_at_start = time.process_time()
            command = await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
            counts.cpu_seconds = round(time.process_time() - cpu_at_start, 3)
            scraping.cancel()
            _, last_seq = command
            if tab_open:
                with trio.move_on_after(CATCH_UP_TIMEOUT):
                    await reader.wait_for(last_seq)
                    await refresher.settle()
            nursery.cancel_scope.cancel()
    return counts


async def open_overview(tab: httpx.AsyncClient, token: str, counts: WatchCounts) -> int:
    """Log in through the form and load the overview with its static files, as a browser
    does; the event sequence the page's stream starts after."""
    form = await tab.get("/login", params={"next": "/"})
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    if form.status_code != 200 or nonce is None:
        raise BenchError(f"the login form did not load: HTTP {form.status_code}")
    answer = await tab.post("/login", data={"nonce": nonce.group(1), "token": token, "next": "/"})
    if answer.status_code != 303:
        raise BenchError(f"the login was refused: HTTP {answer.status_code}: {answer.text[:200]}")
    page = await tab.get("/")
    after = re.search(r'id="events" data-after="(\d+)"', page.text)
    if page.status_code != 200 or after is None:
        raise BenchError(f"the overview did not load: HTTP {page.status_code}")
    counts.page_loads += 1
    for name in ("dashboard.css", "dashboard.js"):
        static = await tab.get(f"/static/{name}")
        if static.status_code != 200:
            counts.fail(f"/static/{name}: HTTP {static.status_code}")
    return int(after.group(1))


class Refresher:
    """The page's overview refresh: asked for on every event, at most one fetch in flight
    and at most one every REFRESH_EVERY seconds; requests made meanwhile are folded into
    the next fetch."""

    def __init__(self, tab: httpx.AsyncClient, counts: WatchCounts) -> None:
        self._tab = tab
        self._counts = counts
        self._wanted = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.first_fetch = trio.Event()

    def want(self) -> None:
        self._wanted.set()
        if self._idle.is_set():
            self._idle = trio.Event()

    async def settle(self) -> None:
        """Until no fetch is asked for or in flight (the page's last refresh is done)."""
        await self._idle.wait()

    async def run(self) -> None:
        last = -math.inf
        while True:
            await self._wanted.wait()
            await trio.sleep_until(last + REFRESH_EVERY)
            # Asks made while waiting are answered by this fetch.
            self._wanted = trio.Event()
            last = trio.current_time()
            reply = await self._tab.get("/fragments/overview")
            if reply.status_code == 200 and "data-fragment" in reply.text:
                self._counts.fragment_fetches += 1
            else:
                self._counts.fail(f"/fragments/overview: HTTP {reply.status_code}")
            self.first_fetch.set()
            if not self._wanted.is_set():
                self._idle.set()


class EventReader:
    """The tab's event stream: every message read, in order, each asking for a refresh."""

    def __init__(self, counts: WatchCounts, refresher: Refresher) -> None:
        self._counts = counts
        self._refresher = refresher
        self._target = math.inf
        self._reached = trio.Event()

    async def wait_for(self, seq: int) -> None:
        """Until the stream has delivered event ``seq``."""
        self._target = seq
        if self._counts.last_seq >= seq:
            return
        await self._reached.wait()

    def _delivered(self, seq: int, *, shown: bool = True) -> None:
        """Event ``seq`` arrived, or (not ``shown``) the server's count of events up to it
        that it left out of a busy moment."""
        counts = self._counts
        if seq <= counts.last_seq:
            counts.fail(f"/events: #{seq} came after #{counts.last_seq}")
        counts.events += shown
        counts.last_seq = seq
        if seq >= self._target:
            self._reached.set()
        self._refresher.want()

    async def follow(
        self,
        tab: httpx.AsyncClient,
        after: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold the event stream open and read it; started once the stream is open."""
        self._counts.last_seq = after
        async with tab.stream("GET", "/events", params={"after": str(after)}) as stream:
            kind = stream.headers.get("content-type", "")
            if stream.status_code != 200 or not kind.startswith("text/event-stream"):
                raise BenchError(f"/events: HTTP {stream.status_code} ({kind})")
            self._refresher.want()  # the page refreshes when its stream opens
            task_status.started()
            seq: int | None = None
            skipped = False
            async for line in stream.aiter_lines():
                if line.startswith("id:"):
                    seq = int(line[3:].strip())
                elif line == "event: skipped":
                    skipped = True
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if skipped:
                        self._counts.skipped += data["count"]
                elif line == "" and seq is not None:
                    self._delivered(seq, shown=not skipped)
                    seq = None
                    skipped = False
        self._counts.fail("/events: the server ended the stream")


async def scrape_metrics(
    scraper: httpx.AsyncClient,
    token: str,
    counts: WatchCounts,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """GET /metrics with the bearer token every SCRAPE_EVERY seconds until ``scope`` is
    cancelled; started once the first scrape is answered."""
    headers = {"Authorization": f"Bearer {token}"}
    started = False
    with scope:
        while True:
            began = trio.current_time()
            reply = await scraper.get("/metrics", headers=headers)
            if reply.status_code == 200 and "# TYPE runlease_" in reply.text:
                counts.scrapes += 1
            else:
                counts.fail(f"/metrics: HTTP {reply.status_code}")
            if not started:
                started = True
                task_status.started()
            await trio.sleep_until(began + SCRAPE_EVERY)


def note(counts: WatchCounts) -> dict[str, Any]:
    """The row note: what the watcher did while the contenders ran."""
    return {
        "page_loads": counts.page_loads,
        "scrapes": counts.scrapes,
        "fragment_fetches": counts.fragment_fetches,
        "events": counts.events,
        "skipped": counts.skipped,
        "failed": counts.failed,
        "cpu_s": counts.cpu_seconds,
    }
