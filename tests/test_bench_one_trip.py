"""The one-round-trip contender loop (bench.runlease_one_trip) drains exactly once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import contention  # noqa: E402
from bench.common import System  # noqa: E402
from bench.runlease_one_trip import EmbeddedOneTrip, SocketOneTrip  # noqa: E402
from bench.runlease_systems import EchoFloor  # noqa: E402
from rich.console import Console  # noqa: E402

TINY = 200
LEVELS = [1, 4]


def test_one_trip_rows_drain_exactly_once_and_get_floor_ratios(tmp_path: Path) -> None:
    systems: list[System] = [
        EmbeddedOneTrip("memory"),
        EmbeddedOneTrip("durable"),
        SocketOneTrip("durable"),
        EchoFloor(),
    ]
    config = contention.Config(
        runs=TINY,
        contenders=list(LEVELS),
        depths=[],
        window=0,
        expiry_leases=0,
        expiry_spread_s=0.0,
        wakeup_trials=0,
        parts=["contention"],
    )
    out = tmp_path / "results"
    with open(tmp_path / "console.txt", "w") as console_file:
        code = contention.run_all(
            Console(file=console_file, width=200), config, systems, out, tmp_path, chart=False
        )
    assert code == 0, (tmp_path / "console.txt").read_text()
    [path] = out.glob("contention-*.json")
    document = json.loads(path.read_text())
    rows = document["contention"]
    assert len(rows) == len(systems) * len(LEVELS)
    for row in rows:
        assert row["problems"] == [], row
        assert row["cycles"] == TINY
    floor = {(r["runlease"], r["contenders"]) for r in document["ratios"] if r["peer"] == "echo"}
    assert floor == {("socket-onetrip-durable", c) for c in LEVELS}


def test_the_one_trip_rows_are_in_the_benchmark() -> None:
    keys = [s.key for s in contention.all_systems()]
    for key in (
        "socket-onetrip-memory",
        "socket-onetrip-durable",
        "embedded-onetrip-memory",
        "embedded-onetrip-durable",
    ):
        assert key in keys
    chosen = contention.select_systems(["embedded"], contention.all_systems())
    assert all("onetrip" not in s.key for s in chosen)
