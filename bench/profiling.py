"""Where an embedded contention run spends its time: cProfile over the drain only.

The profiler sees the trio thread (actors, scheduler, claim path, the journal writer's
event-loop side); the LMDB commit itself runs on a worker thread and shows up as the time
the writer waits for it.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import tempfile
from pathlib import Path

from bench.common import Workload, summarize
from bench.runlease_systems import EmbeddedRunlease, Mode


def profile_embedded(
    mode: Mode, contenders: int, runs: int, out_dir: Path, top: int = 25
) -> tuple[str, Path]:
    """Profile one embedded drain; (printable top costs, path of the .prof file)."""
    system = EmbeddedRunlease(mode)
    workload = Workload(runs)
    profiler = cProfile.Profile()
    workdir = Path(tempfile.mkdtemp(prefix="runlease-profile-"))
    try:
        raw = system.run(workload, contenders, workdir, profiler=profiler)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    row = summarize(system, workload, contenders, raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile-embedded-{mode}-c{contenders}.prof"
    profiler.dump_stats(path)
    text = io.StringIO()
    text.write(
        f"embedded {mode}, {contenders} contenders, {runs} runs: "
        f"{row.cycles_per_s:,.0f} cycles/s under the profiler (slower than unprofiled)\n"
    )
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs()
    text.write(f"\n--- top {top} by own time (tottime) ---\n")
    stats.sort_stats("tottime").print_stats(top)
    text.write(f"\n--- top {top} by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue(), path
