"""The contention benchmark's harness runs end to end on a tiny workload, and its
exactly-once check catches a queue that hands a run out twice. No timing is asserted."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import contention, markdown, sqlite_queue, timing  # noqa: E402
from bench.beanstalk import Beanstalkd  # noqa: E402
from bench.common import (  # noqa: E402
    BenchError,
    ContenderLog,
    Durability,
    RawRun,
    System,
    Workload,
    check_correctness,
    jain_index,
    monotonic,
    percentile,
    split_evenly,
    summarize,
)
from bench.dashboard_watcher import WatchCounts  # noqa: E402
from bench.procs import report_failure, run_client_processes  # noqa: E402
from bench.runlease_systems import (  # noqa: E402
    EchoFloor,
    EmbeddedRunlease,
    HookedRunlease,
    MeteredRunlease,
    ScrapedRunlease,
    ServerProcess,
    SocketRunlease,
    WatchedRunlease,
)
from rich.console import Console  # noqa: E402

TINY = 200
LEVELS = [1, 4]


def _config(runs: int = TINY) -> contention.Config:
    return contention.Config(
        runs=runs,
        contenders=list(LEVELS),
        depths=[],
        window=0,
        expiry_leases=0,
        expiry_spread_s=0.0,
        wakeup_trials=0,
        parts=["contention"],
    )


def _run(systems: list[System], tmp_path: Path, runs: int = TINY) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "results"
    with open(tmp_path / "console.txt", "w") as text:
        code = contention.run_all(
            Console(file=text, width=200),
            _config(runs),
            systems,
            out,
            tmp_path,
            chart=True,
            quick=True,
        )
    [path] = out.glob("contention-*.json")
    document = json.loads(path.read_text())
    return code, document


def test_embedded_and_peers_drain_exactly_once(tmp_path: Path) -> None:
    systems: list[System] = [
        EmbeddedRunlease("memory"),
        EmbeddedRunlease("durable"),
        HookedRunlease("durable", "slow"),
        HookedRunlease("durable", "dead"),
        sqlite_queue.SqliteQueue("FULL"),
        sqlite_queue.SqliteQueue("NORMAL"),
    ]
    bean = [Beanstalkd(mode) for mode in ("f0", "binlog", "nobinlog")]
    installed = bean[0].unavailable() is None
    if installed:
        systems.extend(bean)
    code, document = _run(systems, tmp_path)
    assert code == 0, (tmp_path / "console.txt").read_text()
    rows = document["contention"]
    assert len(rows) == len(systems) * len(LEVELS)
    for row in rows:
        assert row["skipped"] is None, row
        assert row["problems"] == [], row
        assert row["cycles"] == TINY
        assert row["cycles_per_s"] > 0
        assert 0 < row["jain"] <= 1.0
        assert row["per_contender_min"] <= row["per_contender_max"]
    # Ratios pair runlease with peers of the same durability at the same contender count.
    for ratio in document["ratios"]:
        mine = next(r for r in rows if r["system"] == ratio["runlease"])
        assert mine["durability"] == ratio["durability"]
    if installed:
        assert any(r["peer"] == "beanstalkd-f0" for r in document["ratios"])
    assert document["machine"]["nproc"] >= 1
    assert "loops, best of" in document["machine"]["timeit_sum_range_50"]
    # The Markdown for RESULTS.md carries every measured row and every ratio.
    text = markdown.render(document)
    for row in rows:
        assert f"| `{row['system']}` |" in text
        assert f"{row['cycles_per_s']:,.0f}" in text
    for ratio in document["ratios"]:
        assert f"{ratio['ratio']:.2f}" in text
    charts = list((tmp_path / "results").glob("contention-*.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert charts == []
    else:
        assert len(charts) == 1


def test_socket_rows_and_echo_floor_drain_exactly_once(tmp_path: Path) -> None:
    systems: list[System] = [SocketRunlease("relaxed"), EchoFloor()]
    code, document = _run(systems, tmp_path)
    assert code == 0, (tmp_path / "console.txt").read_text()
    rows = document["contention"]
    assert [r["system"] for r in rows] == ["socket-relaxed"] * 2 + ["echo"] * 2
    assert all(r["problems"] == [] and r["cycles"] == TINY for r in rows)
    assert {r["durability"] for r in document["ratios"]} == {"floor"}


def test_the_metered_rows_drain_exactly_once_while_scraped(tmp_path: Path) -> None:
    metered = MeteredRunlease("memory")
    code, document = _run([metered], tmp_path)
    assert code == 0, (tmp_path / "console.txt").read_text()
    rows = document["contention"]
    assert [r["system"] for r in rows] == ["embedded-metered-memory"] * len(LEVELS)
    assert all(r["problems"] == [] and r["cycles"] == TINY for r in rows)
    assert metered.scrapes >= len(LEVELS)
    chosen = contention.select_systems(["metrics"], contention.all_systems())
    assert [s.key for s in chosen] == [
        "embedded-memory",
        "embedded-durable",
        "embedded-metered-memory",
        "embedded-metered-durable",
    ]


def test_the_watched_rows_drain_exactly_once_with_the_dashboard_open(tmp_path: Path) -> None:
    code, document = _run([WatchedRunlease("memory"), ScrapedRunlease("memory")], tmp_path)
    assert code == 0, (tmp_path / "console.txt").read_text()
    rows = document["contention"]
    assert [r["system"] for r in rows] == ["socket-watched-memory"] * len(LEVELS) + [
        "socket-scraped-memory"
    ] * len(LEVELS)
    for row in rows[len(LEVELS) :]:
        assert row["problems"] == [], row
        scraped = row["notes"]["watcher"]
        assert (scraped["failed"], scraped["page_loads"], scraped["events"]) == (0, 0, 0)
        assert scraped["scrapes"] >= 1
        assert row["notes"]["server_cpu_s"] > 0
    for row in rows[: len(LEVELS)]:
        assert row["problems"] == [], row
        assert row["cycles"] == TINY
        watched = row["notes"]["watcher"]
        assert watched["failed"] == 0
        assert watched["page_loads"] == 1
        # Scraped and refreshed once before the contenders start, then as the clock says.
        assert watched["scrapes"] >= 1
        assert watched["fragment_fetches"] >= 1
        # The stream accounted for every event up to the last (shown, or counted in a
        # "skipped" message of a busy moment): a claim and a completion per run at least.
        assert watched["events"] + watched["skipped"] >= 2 * TINY
    chosen = contention.select_systems(["watched"], contention.all_systems())
    assert [s.key for s in chosen] == [
        "socket-memory",
        "socket-durable",
        "socket-watched-memory",
        "socket-watched-durable",
    ]


class WrongTokenServer(ServerProcess):
    """The watched server, but the watcher is handed a token the server never issued."""

    def __enter__(self) -> ServerProcess:
        super().__enter__()
        self.reader_token = "rl_not_a_token"
        return self


class WatchedWithAWrongToken(WatchedRunlease):
    def server(self, workload: Workload, workdir: Path) -> ServerProcess:
        return WrongTokenServer(self.server_kind, self.mode, workdir, workload)


def test_a_watcher_that_cannot_log_in_fails_the_row(tmp_path: Path) -> None:
    code, document = _run([WatchedWithAWrongToken("memory")], tmp_path)
    assert code == contention.EXIT_ERROR
    for row in document["contention"]:
        assert row["skipped"].startswith("error"), row
        assert "login was refused" in row["notes"]["error"]


def test_a_watch_that_scraped_nothing_or_fell_behind_is_a_problem() -> None:
    fine = WatchCounts(page_loads=1, scrapes=3, fragment_fetches=2, events=9, last_seq=9)
    assert fine.problems(9) == []
    assert any("never scraped" in p for p in WatchCounts(fragment_fetches=1).problems(0))
    assert any("never fetched" in p for p in WatchCounts(scrapes=1).problems(0))
    behind = WatchCounts(scrapes=1, fragment_fetches=1, last_seq=7)
    assert any("stopped at #7 of #9" in p for p in behind.problems(9))
    refused = WatchCounts(scrapes=1, fragment_fetches=1)
    for _ in range(8):
        refused.fail("/metrics: HTTP 401")
    assert refused.problems(0) == ["watcher: /metrics: HTTP 401"] * 5 + ["watcher: 3 more failures"]


def test_beanstalkd_missing_is_a_clear_skip_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bench.beanstalk.shutil.which", lambda name: None)
    code, document = _run([Beanstalkd("f0")], tmp_path)
    assert code == 0
    assert {r["skipped"] for r in document["contention"]} == {"skipped: beanstalkd not installed"}


# ------------------------------------------------------------------ a broken queue
class LeakyQueue(System):
    """A thread-safe queue with a bug: its first claim peeks instead of popping, so the
    head run is handed out twice (or, with ``lose``, one run is silently dropped)."""

    family = "fake"
    durability: Durability = "memory"

    def __init__(self, *, lose: bool = False) -> None:
        self.lose = lose
        self.key = "leaky-lose" if lose else "leaky-twice"
        self.label = self.key

    def run(self, workload: Workload, contenders: int, workdir: Path) -> RawRun:
        expected = [f"r{i}" for i in range(workload.runs)]
        queue = deque(expected)
        lock = threading.Lock()
        first = [True]
        barrier = threading.Barrier(contenders + 1)
        logs = [ContenderLog() for _ in range(contenders)]

        def claim() -> str | None:
            with lock:
                if not queue:
                    return None
                if first[0]:
                    first[0] = False
                    if self.lose:
                        queue.popleft()
                    else:
                        return queue[0]
                return queue.popleft()

        def contend(log: ContenderLog) -> None:
            barrier.wait()
            while (run := claim()) is not None:
                log.latencies.append(0.0)
                log.completed.append(run)
            log.end = monotonic()

        threads = [threading.Thread(target=contend, args=(log,)) for log in logs]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = monotonic()
        for thread in threads:
            thread.join()
        return RawRun(expected=expected, start=start, contenders=logs)


def test_check_catches_a_run_handed_out_twice(tmp_path: Path) -> None:
    system = LeakyQueue()
    row = summarize(system, Workload(50), 3, system.run(Workload(50), 3, tmp_path))
    assert not row.ok
    assert any("more than once" in problem for problem in row.problems), row.problems


def test_check_catches_a_lost_run(tmp_path: Path) -> None:
    system = LeakyQueue(lose=True)
    row = summarize(system, Workload(50), 2, system.run(Workload(50), 2, tmp_path))
    assert any("never completed" in problem for problem in row.problems), row.problems


def test_a_violation_fails_the_benchmark_with_a_nonzero_exit(tmp_path: Path) -> None:
    code, document = _run([LeakyQueue(), sqlite_queue.SqliteQueue("NORMAL")], tmp_path)
    assert code == contention.EXIT_VIOLATION
    leaky = [r for r in document["contention"] if r["system"] == "leaky-twice"]
    assert leaky
    assert all(r["problems"] for r in leaky)
    assert "CORRECTNESS VIOLATION" in (tmp_path / "console.txt").read_text()


def test_check_flags_refusals_and_system_problems() -> None:
    raw = RawRun(
        expected=["a", "b"],
        start=0.0,
        contenders=[ContenderLog(completed=["a", "b", "c"], errors=["complete x refused"])],
        system_problems=["runtime: 1 runs still queued, 0 leased"],
    )
    problems = check_correctness(raw)
    assert any("never preloaded" in p for p in problems)
    assert any("refused" in p for p in problems)
    assert "runtime: 1 runs still queued, 0 leased" in problems


# -------------------------------------------------------------- failing children
def _connect_nowhere() -> None:
    raise RuntimeError("cannot connect in setup")


def client_that_raises(index: int, count: int, args: Any, barrier: Any, conn: Any) -> None:
    try:
        _connect_nowhere()
    except RuntimeError:
        report_failure(barrier, conn)


def client_that_dies(index: int, count: int, args: Any, barrier: Any, conn: Any) -> None:
    os._exit(3)


@pytest.mark.parametrize(
    ("target", "said"),
    [(client_that_raises, "cannot connect in setup"), (client_that_dies, "exit code 3")],
)
def test_a_client_failing_in_setup_is_reported_at_once(target: Any, said: str) -> None:
    # Without the ready handshake this would wait out the barrier's setup timeout and
    # then report a timeout instead of the child's own reason.
    with pytest.raises(BenchError, match=said):
        run_client_processes(target, 4, 2, None)


# ------------------------------------------------------------------------ pieces
def test_metrics() -> None:
    assert jain_index([5, 5, 5, 5]) == pytest.approx(1.0)
    assert jain_index([20, 0, 0, 0]) == pytest.approx(0.25)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    assert split_evenly(5, 2) == [3, 2]
    assert split_evenly(1, 2) == [1]


def test_sqlite_claim_uses_the_index_without_sorting(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    sqlite_queue.create_queue(path, "NORMAL", Workload(20).priorities())
    plan = " | ".join(sqlite_queue.claim_plan(path))
    assert "runs_claim_order" in plan
    assert "TEMP B-TREE" not in plan


def test_system_selection_by_group_and_key() -> None:
    systems = contention.all_systems()
    chosen = contention.select_systems(["embedded", "sqlite-full"], systems)
    assert [s.key for s in chosen] == [
        "embedded-memory",
        "embedded-relaxed",
        "embedded-durable",
        "sqlite-full",
    ]
    hooked = contention.select_systems(["hooks"], systems)
    assert [s.key for s in hooked] == [
        "embedded-durable",
        "embedded-durable-hook-slow",
        "embedded-durable-hook-dead",
    ]
    with pytest.raises(SystemExit):
        contention.select_systems(["nope"], systems)


def test_timing_probes_run_small(tmp_path: Path) -> None:
    depth = timing.in_child(timing.depth_probe, 300, 50, 5)
    assert depth.depth == 300
    assert depth.rss_bytes_per_run > 0
    tagged = timing.in_child(timing.depth_probe, 300, 50, 5, 16)
    assert (tagged.depth, tagged.tags) == (300, 16)
    expiry = timing.in_child(timing.expiry_probe, 300, 0.5)
    assert expiry.fired == expiry.measured == 270
    assert expiry.requeued == expiry.measured
    assert expiry.watched > 0
    assert expiry.seen_late["p50_ms"] >= 0
    followed = timing.in_child(timing.expiry_probe, 300, 0.5, "follow")
    assert followed.watched == followed.measured
    wake = timing.wakeup_embedded("memory", 5, tmp_path)
    assert wake.trials == 5
    assert wake.latency["p50_ms"] > 0
