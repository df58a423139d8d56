"""Turning results into what people read: rich tables, ratios, the JSON file and the chart."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from bench.common import DURABILITY_MEANING, Row, cpu_model, timeit_figure

PEER_FAMILIES = ("sqlite", "beanstalkd")


# ------------------------------------------------------------------------------ machine
def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return math.nan


def _mount_of(path: Path) -> dict[str, str]:
    """Device and filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    best: tuple[str, str, str] = ("?", "/", "?")
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype, *_ = line.split()
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[1]):
                    best = (device, mount, fstype)
    except OSError:
        pass
    return {"device": best[0], "mount": best[1], "fstype": best[2]}


def fsync_ms(directory: Path, rounds: int = 50) -> float:
    """Median time of a small write + fsync in ``directory`` (what each durable commit pays)."""
    path = directory / "fsync-probe"
    samples: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(rounds):
            os.write(fd, b"x" * 512)
            began = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    samples.sort()
    return samples[len(samples) // 2] * 1000


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_info(workdir: Path) -> dict[str, Any]:
    import sqlite3

    from bench.beanstalk import beanstalkd_version

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        # Ratios against C peers move with the interpreter's speed: a rough figure for it.
        "timeit_sum_range_50": timeit_figure(),
        "mem_total_gib": round(_mem_total_gib(), 1),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "disk": {**_mount_of(workdir), "workdir": str(workdir)},
        "fsync_p50_ms": round(fsync_ms(workdir), 3),
        "sqlite": sqlite3.sqlite_version,
        "beanstalkd": beanstalkd_version(),
        "runlease_commit": _git_commit(),
        "loadavg_start": list(os.getloadavg()),
        "disk_free_gib": round(shutil.disk_usage(workdir).free / 2**30, 1),
    }


# ------------------------------------------------------------------------------- ratios
def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """runlease ÷ each peer at equal durability and contenders; socket rows ÷ the floor."""
    measured = [r for r in rows if r.ok and not math.isnan(r.cycles_per_s)]
    out: list[dict[str, Any]] = []
    for mine in measured:
        if not mine.family.startswith("runlease"):
            continue
        for other in measured:
            same_c = other.contenders == mine.contenders
            peer = other.family in PEER_FAMILIES and other.durability == mine.durability
            floor = other.family == "echo" and mine.family == "runlease-socket"
            if same_c and (peer or floor):
                out.append(
                    {
                        "runlease": mine.system,
                        "peer": other.system,
                        "durability": mine.durability if peer else "floor",
                        "contenders": mine.contenders,
                        "ratio": mine.cycles_per_s / other.cycles_per_s,
                    }
                )
    return out


# ------------------------------------------------------------------------------ tables
def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def contention_table(rows: Sequence[Row]) -> Table:
    table = Table(title="Claim contention: claim next, complete it, until the queue is empty")
    for name, justify in (
        ("system", "left"),
        ("durability", "left"),
        ("C", "right"),
        ("cycles/s", "right"),
        ("claim p50 ms", "right"),
        ("p99 ms", "right"),
        ("max ms", "right"),
        ("per contender", "right"),
        ("Jain", "right"),
        ("check", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        if row.skipped is not None:
            table.add_row(
                row.label, row.durability, str(row.contenders), "", "", "", "", "", "",
                f"[yellow]{row.skipped}[/]",
            )  # fmt: skip
            continue
        check = "[green]ok[/]" if not row.problems else "[bold red]VIOLATION[/]"
        table.add_row(
            row.label,
            row.durability,
            str(row.contenders),
            _fmt(row.cycles_per_s, 0),
            _fmt(row.claim_p50_ms, 3),
            _fmt(row.claim_p99_ms, 2),
            _fmt(row.claim_max_ms, 1),
            f"{row.per_contender_min}-{row.per_contender_max}",
            _fmt(row.jain, 3),
            check,
        )
    return table


def ratio_table(found: Sequence[dict[str, Any]], levels: Sequence[int]) -> Table:
    table = Table(title="runlease ÷ peer, cycles/s at equal durability and contenders")
    table.add_column("runlease ÷ peer")
    table.add_column("durability")
    for level in levels:
        table.add_column(f"C={level}", justify="right")
    pairs: dict[tuple[str, str, str], dict[int, float]] = {}
    for item in found:
        key = (item["runlease"], item["peer"], item["durability"])
        pairs.setdefault(key, {})[item["contenders"]] = item["ratio"]
    for (mine, peer, durability), by_level in pairs.items():
        cells = []
        for level in levels:
            ratio = by_level.get(level)
            if ratio is None:
                cells.append("-")
            else:
                colour = "green" if ratio >= 1 else "red"
                cells.append(f"[{colour}]{ratio:.2f}x[/]")
        table.add_row(f"{mine} ÷ {peer}", durability, *cells)
    return table


def scale_table(results: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="Claim + complete cost vs queue depth (embedded, in memory, 1 contender)")
    for name in (
        "queued runs",
        "claim by tag",
        "window",
        "cycle mean µs",
        "cycle p50 µs",
        "cycle p99 µs",
        "claim p50 µs",
        "claim p99 µs",
        "RSS / task+run",
        "preload s",
    ):
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(
            f"{r['depth']:,}",
            f"1 of {r['tags']}" if r.get("tags") else "-",
            f"{r['window']:,}",
            _fmt(r["cycle_mean_us"], 1),
            _fmt(r["cycle_p50_us"], 1),
            _fmt(r["cycle_p99_us"], 1),
            _fmt(r["claim_p50_us"], 1),
            _fmt(r["claim_p99_us"], 1),
            f"{r['rss_bytes_per_run']:,.0f} B",
            _fmt(r["preload_s"], 1),
        )
    return table


def timing_table(expiry: dict[str, Any] | None, wakeups: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="Timing")
    for name in ("probe", "p50 ms", "p99 ms", "max ms", "detail"):
        table.add_column(name, justify="left" if name in ("probe", "detail") else "right")
    if expiry is not None:
        detail = (
            f"{expiry['live_leases']:,} live leases; {expiry['fired']:,}/{expiry['measured']:,} "
            f"expired, deadlines over {expiry['spread_s']:.0f} s "
            f"({expiry['expiries_per_s']:,.0f}/s); {expiry['expired_during_setup']} during "
            f"setup; {expiry['requeued']:,} requeued"
        )
        seen_how = (
            f"{expiry['watched']:,} runs polled every ms"
            if expiry["observer"] == "poll"
            else f"{expiry['watched']:,} events followed"
        )
        for name, stats, note in (
            ("expiry applied after deadline", expiry["fired_late"], detail),
            ("run seen requeued after deadline", expiry["seen_late"], seen_how),
        ):
            table.add_row(
                name,
                _fmt(stats["p50_ms"], 2),
                _fmt(stats["p99_ms"], 2),
                _fmt(stats["max_ms"], 1),
                note,
            )
    for wake in wakeups:
        table.add_row(
            f"wake-up, {wake['system']}",
            _fmt(wake["latency"]["p50_ms"], 3),
            _fmt(wake["latency"]["p99_ms"], 3),
            _fmt(wake["latency"]["max_ms"], 2),
            f"{wake['trials']} trials: start a run, until the parked claimer holds it",
        )
    return table


def machine_panel(machine: dict[str, Any]) -> Panel:
    disk = machine["disk"]
    load = ", ".join(f"{x:.2f}" for x in machine["loadavg_start"])
    text = (
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), {machine['mem_total_gib']} GiB, "
        f"Python {machine['python']}, kernel {machine['kernel']}\n"
        f"timeit sum(range(50)): {machine.get('timeit_sum_range_50', 'not recorded')}\n"
        f"disk {disk['device']} ({disk['fstype']}) at {disk['mount']}, "
        f"fsync p50 {machine['fsync_p50_ms']} ms; SQLite {machine['sqlite']}, "
        f"{machine['beanstalkd'] or 'beanstalkd not installed'}\n"
        f"load average at start: {load}"
    )
    return Panel(text, title="machine")


def durability_legend() -> str:
    return "; ".join(f"{k}: {v}" for k, v in DURABILITY_MEANING.items())


def print_violation(console: Console, row: Row) -> None:
    console.print(
        Panel(
            "\n".join(row.problems),
            title=f"CORRECTNESS VIOLATION: {row.label}, {row.contenders} contenders",
            style="bold red",
        )
    )


# -------------------------------------------------------------------------------- files
def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(document), indent=2, sort_keys=False) + "\n")


def _clean(value: Any) -> Any:
    """NaN and infinity are not JSON: null them."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_chart(path: Path, rows: Sequence[Row], title: str) -> str | None:
    """cycles/s vs contenders, one line per system; None when written, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib not installed (pip install -e '.[bench]')"
    series: dict[str, list[tuple[int, float]]] = {}
    styles: dict[str, str] = {}
    for row in rows:
        if not row.ok or math.isnan(row.cycles_per_s):
            continue
        series.setdefault(row.label, []).append((row.contenders, row.cycles_per_s))
        styles[row.label] = (
            "-" if row.family.startswith("runlease") else (":" if row.family == "echo" else "--")
        )
    if not series:
        return "chart skipped: no measured rows"
    fig, ax = plt.subplots(figsize=(13, 6.5))
    colours = plt.get_cmap("tab20")
    for i, (label, points) in enumerate(series.items()):
        points.sort()
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        ax.plot(xs, ys, styles[label], marker="o", label=label, color=colours(i % colours.N))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    levels = sorted({row.contenders for row in rows})
    ax.set_xticks(levels)
    ax.set_xticklabels([str(level) for level in levels])
    ax.set_xlabel("contenders")
    ax.set_ylabel("cycles/s (claim + complete), log scale")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
