"""Claim contention: runlease against the queues people would use instead, in one run.

Run from the repository root (``make bench`` / ``make bench-quick`` install the extras)::

    python -m bench.contention                  # full: 20,000 runs, 1/8/64/256 contenders
    python -m bench.contention --quick          # under 2 minutes: fewer runs and levels
    python -m bench.contention --systems embedded sqlite --contenders 1 8
    python -m bench.contention --profile durable   # cProfile of the embedded claim path

Every system gets the same workload: N runs preloaded with a seeded priority mix, then C
contenders released together by a barrier, each looping "claim next; complete it" until a
claim finds the queue empty. Reported per system and C: cycles/s from the barrier to the
drain, claim latency p50/p99/max, the spread of cycles over contenders (min, max, Jain's
index), and a correctness check of the same run: every preloaded run completed exactly once,
nothing refused, nothing left queued or leased. A violation is printed in red and the
command exits 1 (2 if a system could not be measured at all).

Then runlease alone: claim + complete cost against queue depth with resident memory per
queued task, lease-expiry lateness with many live leases, and wake-up latency of a waiting
claimer. Results go to a JSON file and a PNG chart in ``--out`` (bench/results/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from bench import report
from bench.beanstalk import Beanstalkd
from bench.common import (
    DURABILITY_MEANING,
    BenchError,
    Row,
    System,
    Workload,
    skipped_row,
    summarize,
)
from bench.runlease_one_trip import one_trip_systems
from bench.runlease_systems import (
    EchoFloor,
    EmbeddedRunlease,
    HookedRunlease,
    MeteredRunlease,
    Mode,
    ScrapedRunlease,
    SocketRunlease,
    TlsRunlease,
    WatchedRunlease,
)
from bench.sqlite_queue import SqliteQueue

DEFAULT_OUT: Final = Path(__file__).resolve().parent / "results"
PARTS: Final = ("contention", "scale", "expiry", "wakeup")
# The tag-filtered rows of the scale part: every task carries one of this many tags.
SCALE_TAGS: Final = 16
EXIT_VIOLATION: Final = 1
EXIT_ERROR: Final = 2


@dataclass
class Config:
    runs: int
    contenders: list[int]
    depths: list[int]
    window: int
    expiry_leases: int
    expiry_spread_s: float
    wakeup_trials: int
    seed: int = 5
    parts: list[str] = field(default_factory=lambda: list(PARTS))


FULL: Final = Config(
    runs=20_000,
    contenders=[1, 8, 64, 256],
    depths=[1_000, 100_000, 1_000_000],
    window=5_000,
    expiry_leases=100_000,
    expiry_spread_s=20.0,
    wakeup_trials=300,
)
QUICK: Final = Config(
    runs=1_000,
    contenders=[1, 8, 64],
    depths=[1_000, 10_000, 100_000],
    window=1_000,
    expiry_leases=10_000,
    expiry_spread_s=3.0,
    wakeup_trials=50,
)


def all_systems() -> list[System]:
    return [
        EmbeddedRunlease("memory"),
        EmbeddedRunlease("relaxed"),
        EmbeddedRunlease("durable"),
        HookedRunlease("durable", "slow"),
        HookedRunlease("durable", "dead"),
        MeteredRunlease("memory"),
        MeteredRunlease("durable"),
        SocketRunlease("memory"),
        SocketRunlease("relaxed"),
        SocketRunlease("durable"),
        TlsRunlease("memory"),
        TlsRunlease("relaxed"),
        TlsRunlease("durable"),
        WatchedRunlease("memory"),
        WatchedRunlease("durable"),
        ScrapedRunlease("memory"),
        ScrapedRunlease("durable"),
        *one_trip_systems(),
        EchoFloor(),
        SqliteQueue("FULL"),
        SqliteQueue("NORMAL"),
        Beanstalkd("f0"),
        Beanstalkd("binlog"),
        Beanstalkd("nobinlog"),
    ]


GROUPS: Final[dict[str, Callable[[System], bool]]] = {
    "all": lambda s: True,
    "runlease": lambda s: s.is_runlease,
    "peers": lambda s: s.family in report.PEER_FAMILIES,
    "embedded": lambda s: s.family == "runlease-embedded" and not isinstance(s, HookedRunlease),
    # The durable embedded row beside its variants with a slow and a dead hook endpoint.
    "hooks": lambda s: s.key.startswith("embedded-durable"),
    "socket": lambda s: s.family == "runlease-socket",
    # The embedded memory and durable rows beside the same with metrics scraped every second.
    "metrics": lambda s: (
        s.key in ("embedded-memory", "embedded-durable") or s.family == "runlease-embedded-metered"
    ),
    # The socket memory and durable rows beside the same with the dashboard open and
    # /metrics scraped every second.
    "watched": lambda s: (
        s.key in ("socket-memory", "socket-durable") or s.family == "runlease-socket-watched"
    ),
    # The socket rows' server over loopback TCP with TLS.
    "tls": lambda s: s.key.startswith("tls-"),
    "sqlite": lambda s: s.family == "sqlite",
    "beanstalkd": lambda s: s.family == "beanstalkd",
}


def select_systems(names: Sequence[str] | None, systems: Sequence[System]) -> list[System]:
    """Systems by key (``sqlite-full``) or group (``embedded``, ``peers``, ``all``)."""
    if not names:
        return list(systems)
    wanted: list[System] = []
    for name in (part for item in names for part in item.split(",") if part):
        group = GROUPS.get(name)
        matched = [s for s in systems if (group(s) if group else s.key == name)]
        if not matched:
            known = ", ".join([*GROUPS, *(s.key for s in systems)])
            raise SystemExit(f"unknown system {name!r}; choose from: {known}")
        wanted.extend(s for s in matched if s not in wanted)
    return [s for s in systems if s in wanted]


# ---------------------------------------------------------------------------- running
def measure(system: System, workload: Workload, contenders: int, workroot: Path) -> Row:
    """One system at one contender count, in a fresh directory removed afterwards."""
    reason = system.unavailable()
    if reason is not None:
        return skipped_row(system, workload, contenders, reason)
    workdir = Path(tempfile.mkdtemp(prefix=f"{system.key}-c{contenders}-", dir=workroot))
    try:
        raw = system.run(workload, contenders, workdir)
    except BenchError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        row = skipped_row(system, workload, contenders, f"error: {lines[-1] if lines else exc!r}")
        row.notes["error"] = str(exc)
        return row
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summarize(system, workload, contenders, raw)


def run_contention(
    console: Console,
    systems: Sequence[System],
    workload: Workload,
    levels: Sequence[int],
    workroot: Path,
) -> list[Row]:
    rows: list[Row] = []
    # Contender level outermost: the rows a ratio compares are measured minutes apart at most.
    for contenders in levels:
        for system in systems:
            began = time.perf_counter()
            row = measure(system, workload, contenders, workroot)
            rows.append(row)
            took = time.perf_counter() - began
            if row.skipped is not None:
                console.print(f"  {system.key:<22} C={contenders:<4} [yellow]{row.skipped}[/]")
            else:
                status = "[green]ok[/]" if row.ok else "[bold red]VIOLATION[/]"
                console.print(
                    f"  {system.key:<22} C={contenders:<4} {row.cycles_per_s:>10,.0f} cycles/s"
                    f"  p99 {row.claim_p99_ms:8.2f} ms  Jain {row.jain:.3f}  {status}"
                    f"  ({took:.1f} s)"
                )
            if "watcher" in row.notes:
                watched = row.notes["watcher"]
                console.print(
                    f"    watcher: {watched['scrapes']} scrapes, "
                    f"{watched['fragment_fetches']} overview fetches, {watched['events']} events "
                    f"shown, {watched.get('skipped', 0)} counted as skipped"
                )
            if row.problems:
                report.print_violation(console, row)
    systems_order = {s.key: i for i, s in enumerate(systems)}
    rows.sort(key=lambda r: (systems_order[r.system], r.contenders))
    return rows


def run_scale(console: Console, config: Config) -> list[dict[str, Any]]:
    from bench.timing import as_dict, depth_probe, in_child

    results = []
    for tags in (0, SCALE_TAGS):
        for depth in config.depths:
            window = config.window
            what = f", each claim asking for 1 of {tags} tags" if tags else ""
            console.print(
                f"  depth {depth:,}: preloading, then {window:,} claim+complete cycles{what}"
            )
            result = in_child(depth_probe, depth, window, config.seed, tags)
            results.append(as_dict(result))
    return results


def run_expiry(console: Console, config: Config) -> dict[str, Any]:
    from bench.timing import as_dict, expiry_probe, in_child

    console.print(
        f"  expiry: {config.expiry_leases:,} sessions with one lease each, deadlines spread "
        f"over {config.expiry_spread_s:.0f} s"
    )
    return as_dict(in_child(expiry_probe, config.expiry_leases, config.expiry_spread_s))


def run_wakeup(
    console: Console, systems: Sequence[System], config: Config, workroot: Path
) -> list[dict[str, Any]]:
    from bench.timing import as_dict, wakeup_embedded, wakeup_socket

    results = []
    for system in systems:
        if not isinstance(system, EmbeddedRunlease | SocketRunlease):
            continue
        if system.loop != "claim-complete" or isinstance(system, TlsRunlease | WatchedRunlease):
            # Waking a parked claimer does not depend on the contender loop; the wake-up
            # probe speaks to the Unix socket only, to a server nobody watches.
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"wake-{system.key}-", dir=workroot))
        try:
            console.print(f"  wake-up: {system.key}, {config.wakeup_trials} trials")
            if isinstance(system, EmbeddedRunlease):
                result = wakeup_embedded(system.mode, config.wakeup_trials, workdir)
            else:
                result = wakeup_socket(system.mode, config.wakeup_trials, workdir)
            results.append(as_dict(result))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


# -------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.contention",
        description="Claim-contention benchmark: runlease against SQLite and beanstalkd.",
    )
    parser.add_argument("--quick", action="store_true", help="small N, 1/8/64 contenders")
    parser.add_argument(
        "--systems",
        nargs="+",
        metavar="NAME",
        help="system keys or groups (all, runlease, peers, embedded, socket, tls, watched, "
        "sqlite, beanstalkd)",
    )
    parser.add_argument("--contenders", nargs="+", type=int, metavar="C")
    parser.add_argument("--runs", type=int, metavar="N", help="runs preloaded per measurement")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        metavar="PART",
        help=f"which parts to run (default all: {', '.join(PARTS)})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--tmp", type=Path, default=None, help="where data dirs are made")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    parser.add_argument(
        "--profile",
        choices=("memory", "relaxed", "durable"),
        help="profile an embedded drain in this durability instead of benchmarking",
    )
    parser.add_argument("--profile-contenders", type=int, default=64)
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def build_config(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else FULL
    config = Config(**{k: v for k, v in asdict(base).items()})
    if args.runs is not None:
        config.runs = args.runs
    if args.contenders:
        config.contenders = sorted(set(args.contenders))
    if args.parts:
        config.parts = [part for part in PARTS if part in args.parts]
    config.seed = args.seed
    if config.runs < 0 or any(c < 1 for c in config.contenders):
        raise SystemExit("--runs must be >= 0 and every contender count >= 1")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain `kill` still runs the cleanup (servers stopped, data dirs removed).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Piped into a file or a CI log, rich would assume 80 columns and fold the tables.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    systems = select_systems(args.systems, all_systems())
    if args.list:
        for system in systems:
            reason = system.unavailable()
            console.print(f"{system.key:<22} {system.durability:<8} {system.label}  {reason or ''}")
        return 0
    if args.profile is not None:
        from bench.profiling import profile_embedded

        mode: Mode = args.profile
        text, path = profile_embedded(
            mode,
            args.profile_contenders,
            args.runs or (QUICK if args.quick else FULL).runs,
            args.out,
        )
        print(text)
        console.print(f"profile written to {path} (open with python -m pstats or snakeviz)")
        return 0
    config = build_config(args)
    return run_all(
        console, config, systems, args.out, args.tmp, chart=not args.no_chart, quick=args.quick
    )


def run_all(
    console: Console,
    config: Config,
    systems: Sequence[System],
    out: Path,
    tmp: Path | None,
    *,
    chart: bool = True,
    quick: bool = False,
) -> int:
    workroot = Path(tempfile.mkdtemp(prefix="runlease-bench-", dir=tmp))
    failed_parts: list[str] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    began = time.time()
    try:
        machine = report.machine_info(workroot)
        console.print(report.machine_panel(machine))
        workload = Workload(config.runs, seed=config.seed)
        document: dict[str, Any] = {
            "benchmark": "runlease claim contention",
            "started_at": stamp,
            "quick": quick,
            "machine": machine,
            "config": asdict(config),
            "durability_meaning": DURABILITY_MEANING,
        }
        rows: list[Row] = []
        if "contention" in config.parts:
            console.rule(f"contention: {config.runs:,} runs, contenders {config.contenders}")
            rows = run_contention(console, systems, workload, config.contenders, workroot)
            document["contention"] = [row.to_json() for row in rows]
            document["ratios"] = report.ratios(rows)
        runlease_selected = any(s.is_runlease for s in systems)
        probes: list[tuple[str, str, Callable[[], Any]]] = [
            ("scale", "claim cost vs queue depth", lambda: run_scale(console, config)),
            ("expiry", "lease expiry precision", lambda: run_expiry(console, config)),
            (
                "wakeup",
                "wake-up latency",
                lambda: run_wakeup(console, systems, config, workroot),
            ),
        ]
        for part, title, probe in probes:
            if part not in config.parts or not runlease_selected:
                continue
            console.rule(title)
            try:
                document[part] = probe()
            except BenchError as exc:
                console.print(f"[bold red]{part} failed:[/] {exc}")
                failed_parts.append(part)
                document.setdefault("errors", {})[part] = str(exc)
        machine["loadavg_end"] = list(os.getloadavg())
        document["duration_s"] = round(time.time() - began, 1)
        print_summary(console, document, rows, config)
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / f"contention-{stamp}.json"
        report.write_json(json_path, document)
        console.print(f"results: {json_path}")
        if chart and rows:
            png = out / f"contention-{stamp}.png"
            why_not = report.write_chart(
                png,
                rows,
                f"claim + complete, {config.runs:,} runs ({'quick' if quick else 'full'})",
            )
            console.print(why_not or f"chart: {png}")
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    violations = [row for row in rows if row.problems]
    errors = [row for row in rows if row.skipped and row.skipped.startswith("error")]
    if violations:
        console.print(
            f"[bold red]FAILED: {len(violations)} measurements broke the exactly-once check: "
            + ", ".join(f"{r.system}@{r.contenders}" for r in violations)
            + "[/]"
        )
        return EXIT_VIOLATION
    if errors or failed_parts:
        console.print(
            "[bold red]FAILED: could not measure "
            + ", ".join([f"{r.system}@{r.contenders}" for r in errors] + failed_parts)
            + "[/]"
        )
        return EXIT_ERROR
    return 0


def print_summary(
    console: Console, document: dict[str, Any], rows: Sequence[Row], config: Config
) -> None:
    console.rule("results")
    if rows:
        console.print(report.contention_table(rows))
        console.print(report.ratio_table(document["ratios"], config.contenders))
        console.print(f"[dim]{report.durability_legend()}[/]")
    if "scale" in document:
        console.print(report.scale_table(document["scale"]))
        for tags in sorted({r.get("tags", 0) for r in document["scale"]}):
            scale = [r for r in document["scale"] if r.get("tags", 0) == tags]
            if len(scale) >= 2 and scale[0]["cycle_p50_us"] > 0:
                growth = scale[-1]["cycle_p50_us"] / scale[0]["cycle_p50_us"]
                what = f" (claims by tag, 1 of {tags})" if tags else ""
                console.print(
                    f"claim+complete p50{what} at {scale[-1]['depth']:,} queued ÷ at "
                    f"{scale[0]['depth']:,}: {growth:.2f}x (flat is 1.0)"
                )
    if "expiry" in document or "wakeup" in document:
        console.print(report.timing_table(document.get("expiry"), document.get("wakeup", [])))
    console.print(f"[dim]took {document['duration_s']:.0f} s[/]")


if __name__ == "__main__":
    sys.exit(main())
