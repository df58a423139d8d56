"""The SQLite queue the way AGH and HZL build it: one table, WAL, ``BEGIN IMMEDIATE``.

A claim is one guarded UPDATE that picks the best queued row through an index on
``(status, priority DESC, queued_at, id)`` and returns its id; a completion is a second
UPDATE that only succeeds while the row is still claimed by the same worker. Each is its own
``BEGIN IMMEDIATE`` transaction, so each commit waits for the write lock (the busy handler,
``busy_timeout``) and, with ``synchronous=FULL``, for an fsync of the WAL. Contenders are
threads in this process, each with its own connection.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Final, Literal

from bench.common import (
    PRIORITY_RANK,
    BenchError,
    ContenderLog,
    Durability,
    RawRun,
    System,
    Workload,
    monotonic,
)

Synchronous = Literal["FULL", "NORMAL"]
BUSY_TIMEOUT_SECONDS: Final = 120.0

SCHEMA: Final = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    queued_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    claimed_by TEXT,
    lease_until REAL,
    claimed_at REAL,
    completed_at REAL
);
CREATE INDEX runs_claim_order ON runs (status, priority DESC, queued_at, id);
"""

CLAIM_SQL: Final = """
UPDATE runs SET status = 'claimed', claimed_by = ?, lease_until = ?, claimed_at = ?
WHERE id = (
    SELECT id FROM runs WHERE status = 'queued'
    ORDER BY priority DESC, queued_at, id LIMIT 1
)
RETURNING id
"""

COMPLETE_SQL: Final = """
UPDATE runs SET status = 'completed', completed_at = ?, lease_until = NULL
WHERE id = ? AND status = 'claimed' AND claimed_by = ?
"""

# The plan a claim must use: the index, no sort step (checked by the harness test).
CLAIM_PLAN_SQL: Final = (
    "EXPLAIN QUERY PLAN SELECT id FROM runs WHERE status = 'queued' "
    "ORDER BY priority DESC, queued_at, id LIMIT 1"
)


def connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with a busy timeout."""
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def create_queue(path: Path, synchronous: Synchronous, priorities: list[str]) -> list[str]:
    """The table, its index and one queued row per priority; the row ids as strings."""
    db = connect(path, synchronous)
    try:
        db.executescript(SCHEMA)
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO runs (id, priority, queued_at) VALUES (?, ?, ?)",
            [(i + 1, PRIORITY_RANK[prio], now + i * 1e-6) for i, prio in enumerate(priorities)],
        )
        db.execute("COMMIT")
    finally:
        db.close()
    return [str(i + 1) for i in range(len(priorities))]


def claim_plan(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [str(row[3]) for row in db.execute(CLAIM_PLAN_SQL)]
    finally:
        db.close()


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


def contend(
    path: Path,
    synchronous: Synchronous,
    worker: str,
    barrier: threading.Barrier,
    log: ContenderLog,
    lease_seconds: float,
) -> None:
    try:
        db = connect(path, synchronous)
    except sqlite3.Error as exc:
        log.errors.append(f"connect failed: {exc}")
        barrier.abort()
        return
    clock = time.perf_counter
    try:
        barrier.wait()
        while True:
            began = clock()
            now = time.time()
            try:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute(CLAIM_SQL, (worker, now + lease_seconds, now)).fetchall()
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                log.errors.append(f"claim failed: {exc}")
                break
            if not rows:
                break
            log.latencies.append(clock() - began)
            run_id = rows[0][0]
            try:
                db.execute("BEGIN IMMEDIATE")
                changed = db.execute(COMPLETE_SQL, (time.time(), run_id, worker)).rowcount
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                log.errors.append(f"complete {run_id} failed: {exc}")
                continue
            if changed != 1:
                log.errors.append(f"complete {run_id} changed {changed} rows")
                continue
            log.completed.append(str(run_id))
    finally:
        log.end = monotonic()
        db.close()


def verify(path: Path, runs: int) -> list[str]:
    db = sqlite3.connect(path)
    try:
        counts = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    finally:
        db.close()
    if counts != {"completed": runs} and not (runs == 0 and not counts):
        return [f"sqlite: rows by status after the drain: {counts}"]
    return []


class SqliteQueue(System):
    family = "sqlite"

    def __init__(self, synchronous: Synchronous) -> None:
        self.synchronous: Synchronous = synchronous
        self.key = f"sqlite-{synchronous.lower()}"
        self.label = f"SQLite WAL, synchronous={synchronous}"
        self.durability: Durability = "durable" if synchronous == "FULL" else "relaxed"

    def run(self, workload: Workload, contenders: int, workdir: Path) -> RawRun:
        path = workdir / "queue.sqlite3"
        expected = create_queue(path, self.synchronous, workload.priorities())
        barrier = threading.Barrier(contenders + 1)
        logs = [ContenderLog() for _ in range(contenders)]
        threads = [
            threading.Thread(
                target=contend,
                args=(path, self.synchronous, f"w{i}", barrier, log, workload.lease_seconds),
                daemon=True,
            )
            for i, log in enumerate(logs)
        ]
        for thread in threads:
            thread.start()
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            for thread in threads:
                thread.join()
            errors = [error for log in logs for error in log.errors]
            raise BenchError(f"sqlite contenders failed to start: {errors[:3]}") from None
        start = monotonic()
        for thread in threads:
            thread.join()
        return RawRun(
            expected=expected,
            start=start,
            contenders=logs,
            system_problems=verify(path, workload.runs),
            notes={"busy_timeout_s": BUSY_TIMEOUT_SECONDS, "sqlite": sqlite3.sqlite_version},
        )
