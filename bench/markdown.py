"""Render a contention results file as the Markdown tables of ``bench/RESULTS.md``.

``python -m bench.markdown bench/results/contention-YYYYmmdd-HHMMSS.json`` prints the
machine, the cycles/s table, the ratios, and the scale and timing parts, so a results
section is pasted from the measurement rather than typed from the terminal.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TIMES = "\u00d7"  # the multiplication sign of the ratio columns


def _table(header: list[str], align: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def machine_lines(machine: dict[str, Any], duration_s: float, commit: str) -> list[str]:
    disk = machine["disk"]
    rows = [
        ["CPU", f"{machine['nproc']} vCPUs, `{machine['cpu_model']}`"],
        ["`timeit sum(range(50))`", machine.get("timeit_sum_range_50", "not recorded")],
        ["memory", f"{machine['mem_total_gib']} GiB"],
        ["disk", f"`{disk['device']}` {disk['fstype']}, fsync p50 {machine['fsync_p50_ms']} ms"],
        ["Python", f"{machine['implementation']} {machine['python']}"],
        ["peers", f"SQLite {machine['sqlite']}, {machine['beanstalkd'] or 'no beanstalkd'}"],
        ["runlease commit", f"`{commit}`"],
        [
            "load average",
            f"{machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end",
        ],
        ["duration", f"{duration_s:.0f} s"],
    ]
    return _table(["", ""], ["---", "---"], rows)


def contention_lines(rows: list[dict[str, Any]]) -> list[str]:
    contenders = sorted({row["contenders"] for row in rows})
    systems: dict[str, dict[int, dict[str, Any]]] = {}
    durability: dict[str, str] = {}
    for row in rows:
        systems.setdefault(row["system"], {})[row["contenders"]] = row
        durability[row["system"]] = row["durability"]

    def cell(row: dict[str, Any] | None) -> str:
        if row is None or row.get("skipped"):
            return "-"
        mark = "" if not row["problems"] else " (violation)"
        return f"{row['cycles_per_s']:,.0f}{mark}"

    return _table(
        ["system", "durability", *[f"C={c}" for c in contenders]],
        ["---", "---", *["--:"] * len(contenders)],
        (
            [f"`{name}`", durability[name], *[cell(by_c.get(c)) for c in contenders]]
            for name, by_c in systems.items()
        ),
    )


def ratio_lines(ratios: list[dict[str, Any]]) -> list[str]:
    contenders = sorted({r["contenders"] for r in ratios})
    pairs: dict[tuple[str, str], dict[int, float]] = {}
    durability: dict[tuple[str, str], str] = {}
    for r in ratios:
        key = (r["runlease"], r["peer"])
        pairs.setdefault(key, {})[r["contenders"]] = r["ratio"]
        durability[key] = r["durability"]
    return _table(
        ["runlease ÷ peer", "durability", *[f"C={c}" for c in contenders]],
        ["---", "---", *["--:"] * len(contenders)],
        (
            [
                f"`{ours}` ÷ `{peer}`",
                durability[(ours, peer)],
                *[f"{by_c[c]:.2f}{TIMES}" if c in by_c else "-" for c in contenders],
            ]
            for (ours, peer), by_c in pairs.items()
        ),
    )


def scale_lines(scale: list[dict[str, Any]]) -> list[str]:
    lines = _table(
        [
            "queued runs",
            "claim by tag",
            "cycle p50 µs",
            "cycle p99 µs",
            "claim p50 µs",
            "RSS / task+run",
        ],
        ["--:", "--:", "--:", "--:", "--:", "--:"],
        (
            [
                f"{s['depth']:,}",
                f"1 of {s['tags']}" if s.get("tags") else "-",
                f"{s['cycle_p50_us']:.0f}",
                f"{s['cycle_p99_us']:.0f}",
                f"{s['claim_p50_us']:.0f}",
                f"{s['rss_bytes_per_run']:,.0f} B",
            ]
            for s in scale
        ),
    )
    for tags in sorted({s.get("tags", 0) for s in scale}):
        rows = [s for s in scale if s.get("tags", 0) == tags]
        if len(rows) >= 2:
            ratio = rows[-1]["cycle_p50_us"] / rows[0]["cycle_p50_us"]
            deepest, shallowest = rows[-1]["depth"], rows[0]["depth"]
            what = f" (claims by tag, 1 of {tags})" if tags else ""
            lines += [
                "",
                f"Cycle p50{what} at {deepest:,} queued ÷ at {shallowest:,}: {ratio:.2f}{TIMES}.",
            ]
    return lines


def timing_lines(expiry: dict[str, Any] | None, wakeup: list[dict[str, Any]]) -> list[str]:
    rows: list[list[str]] = []

    def add(name: str, figures: dict[str, float], detail: str) -> None:
        rows.append([name, *(f"{figures[k]:.2f}" for k in ("p50_ms", "p99_ms", "max_ms")), detail])

    if expiry:
        live = f"{expiry['live_leases']:,} live leases, deadlines over {expiry['spread_s']:g} s"
        add("expiry applied after its deadline", expiry["fired_late"], live)
        add("run seen requeued after its deadline", expiry["seen_late"], live)
    for w in wakeup:
        add(f"wake-up, {w['system']}", w["latency"], f"{w['trials']} trials")
    header = ["probe", "p50 ms", "p99 ms", "max ms", ""]
    return _table(header, ["---", "--:", "--:", "--:", "---"], rows)


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = ["### Machine and run", ""]
    lines += machine_lines(machine, results["duration_s"], machine.get("runlease_commit", "?"))
    lines += ["", "### Cycles/s", "", *contention_lines(results["contention"])]
    lines += ["", "### Ratios", "", *ratio_lines(results["ratios"])]
    if results.get("scale"):
        lines += ["", "### Claim cost vs queue depth", "", *scale_lines(results["scale"])]
    if results.get("expiry") or results.get("wakeup"):
        lines += ["", "### Timing", ""]
        lines += timing_lines(results.get("expiry"), results.get("wakeup") or [])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a contention-*.json file")
    args = parser.parse_args()
    print(render(json.loads(args.results.read_text())), end="")


if __name__ == "__main__":
    main()
