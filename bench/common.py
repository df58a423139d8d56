"""What every contention system shares: the workload, the per-contender log, the metrics and
the correctness check.

A system preloads the workload's runs, lets its contenders loop "claim next; complete it"
until a claim finds nothing, and hands back a :class:`RawRun`: the identities it preloaded,
the instant the start barrier opened, and one :class:`ContenderLog` per contender. Everything
else (rates, percentiles, fairness, whether each run was completed exactly once) is computed
here, the same way for every system.
"""

from __future__ import annotations

import abc
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

PRIORITIES: Final = ("low", "medium", "high", "urgent")
# The mix every system is preloaded with: mostly medium, a few urgent.
PRIORITY_WEIGHTS: Final = (25, 40, 25, 10)
# Integer rank, higher is more urgent (runlease's and the SQLite table's order).
PRIORITY_RANK: Final = {"low": 10, "medium": 20, "high": 30, "urgent": 40}

Durability = Literal["durable", "relaxed", "memory", "floor"]
DURABILITY_MEANING: Final[dict[str, str]] = {
    "durable": "synced to disk before the reply (survives power loss)",
    "relaxed": "written before the reply, synced later (survives a crash of the process)",
    "memory": "nothing persisted",
    "floor": "no queue at all: framing and client only",
}


def monotonic() -> float:
    """CLOCK_MONOTONIC: one clock for every process on the machine, so the start barrier
    taken in one process and the end times taken in others can be subtracted."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Workload:
    """N runs with a seeded priority mix; long leases so none expires during a run."""

    runs: int
    seed: int = 5
    lease_seconds: float = 3600.0

    def priorities(self) -> list[str]:
        rng = random.Random(self.seed)
        return rng.choices(PRIORITIES, weights=PRIORITY_WEIGHTS, k=self.runs)


@dataclass
class ContenderLog:
    """What one contender did: the runs it completed, in order, and its claim latencies.

    ``latencies`` holds one entry per successful claim (seconds, claim call only). ``errors``
    holds refusals that should never happen in this workload (a complete refused, a claim
    failing for another reason than an empty queue); any entry fails the correctness check.
    ``end`` is the monotonic instant the contender found the queue empty.
    """

    completed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    end: float = 0.0

    def to_wire(self) -> tuple[list[str], list[float], list[str], float]:
        return self.completed, self.latencies, self.errors, self.end

    @classmethod
    def from_wire(cls, data: tuple[list[str], list[float], list[str], float]) -> ContenderLog:
        completed, latencies, errors, end = data
        return cls(list(completed), list(latencies), list(errors), end)


@dataclass
class RawRun:
    """One system, one contender count, before any arithmetic."""

    expected: list[str]
    start: float
    contenders: list[ContenderLog]
    # Problems the system itself reports once drained (runs left queued or leased, ...).
    system_problems: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


class BenchError(RuntimeError):
    """The harness could not measure a system (a child process failed, a server died)."""


class System(abc.ABC):
    """One row family of the contention table."""

    key: str
    label: str
    family: str
    durability: Durability
    # Peers are what runlease is compared with; the floor is compared with separately.
    is_runlease: bool = False

    def unavailable(self) -> str | None:
        """Why this system cannot run here (shown as its row), or None."""
        return None

    @abc.abstractmethod
    def run(self, workload: Workload, contenders: int, workdir: Path) -> RawRun:
        """Preload, release the contenders at once, let them drain the queue, verify."""


# ------------------------------------------------------------------------------ metrics
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 < q <= 100); nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when every contender did the same, 1/n when one did all."""
    if not values:
        return math.nan
    total = sum(values)
    squares = sum(v * v for v in values)
    if squares == 0:
        return 1.0
    return total * total / (len(values) * squares)


def check_correctness(raw: RawRun) -> list[str]:
    """Every preloaded run completed exactly once, nothing else completed, no refusals."""
    problems: list[str] = []
    expected = set(raw.expected)
    if len(expected) != len(raw.expected):
        problems.append(f"the preload holds {len(raw.expected) - len(expected)} duplicate ids")
    counts = Counter(run for log in raw.contenders for run in log.completed)
    twice = sorted(run for run, n in counts.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} runs were completed more than once (e.g. {_sample(twice)})")
    unknown = sorted(run for run in counts if run not in expected)
    if unknown:
        problems.append(f"{len(unknown)} completed runs were never preloaded ({_sample(unknown)})")
    missing = sorted(expected - counts.keys())
    if missing:
        problems.append(f"{len(missing)} runs were never completed (e.g. {_sample(missing)})")
    errors = [error for log in raw.contenders for error in log.errors]
    if errors:
        problems.append(f"{len(errors)} operations were refused (first: {errors[0]})")
    problems.extend(raw.system_problems)
    return problems


def _sample(items: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(items[:k])
    return shown + (", ..." if len(items) > k else "")


@dataclass
class Row:
    """One line of the contention table (also what the JSON file holds)."""

    system: str
    label: str
    family: str
    durability: str
    contenders: int
    runs: int
    cycles: int = 0
    elapsed_s: float = math.nan
    cycles_per_s: float = math.nan
    claim_p50_ms: float = math.nan
    claim_p99_ms: float = math.nan
    claim_max_ms: float = math.nan
    per_contender_min: int = 0
    per_contender_max: int = 0
    jain: float = math.nan
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.skipped is None and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def summarize(system: System, workload: Workload, contenders: int, raw: RawRun) -> Row:
    row = Row(
        system=system.key,
        label=system.label,
        family=system.family,
        durability=system.durability,
        contenders=contenders,
        runs=workload.runs,
        notes=dict(raw.notes),
    )
    counts = [len(log.completed) for log in raw.contenders]
    row.cycles = sum(counts)
    end = max((log.end for log in raw.contenders), default=raw.start)
    row.elapsed_s = end - raw.start
    if row.elapsed_s > 0:
        row.cycles_per_s = row.cycles / row.elapsed_s
    latencies = sorted(x for log in raw.contenders for x in log.latencies)
    row.claim_p50_ms = percentile(latencies, 50) * 1000
    row.claim_p99_ms = percentile(latencies, 99) * 1000
    row.claim_max_ms = (latencies[-1] * 1000) if latencies else math.nan
    row.per_contender_min = min(counts, default=0)
    row.per_contender_max = max(counts, default=0)
    row.jain = jain_index(counts)
    if len(raw.contenders) != contenders:
        row.problems.append(f"{len(raw.contenders)} contenders reported, {contenders} expected")
    row.problems.extend(check_correctness(raw))
    return row


def skipped_row(system: System, workload: Workload, contenders: int, reason: str) -> Row:
    return Row(
        system=system.key,
        label=system.label,
        family=system.family,
        durability=system.durability,
        contenders=contenders,
        runs=workload.runs,
        skipped=reason,
    )


# ----------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except OSError:
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def short_socket_dir() -> Path:
    """A private (0700) directory with a short path: a Unix socket path must stay under
    108 bytes, which a deep work directory (pytest's, say) can exceed."""
    return Path(tempfile.mkdtemp(prefix="rlb-", dir="/tmp" if os.path.isdir("/tmp") else None))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` buckets, sizes differing by at most one, no empties."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def cpu_model() -> str:
    """The CPU's model name, recorded beside every result (ratios move with it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timeit_figure() -> str:
    """``python -m timeit "sum(range(50))"``'s own summary line: a rough CPU speed."""
    done = subprocess.run(
        [sys.executable, "-m", "timeit", "sum(range(50))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()
