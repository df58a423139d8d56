"""What durability costs: write throughput with group commit, and boot recovery speed.

Run from the repository root::

    python -m bench.durability            # 1/8/64 writers x 3 s; boot at 100k and 1M tasks
    python -m bench.durability --quick    # shorter write runs; boot at 100k tasks only

Writes
    For 1, 8 and 64 concurrent writers (trio tasks in one process), each writer creates
    tasks with ``start=True`` back to back for a fixed time. Every acknowledged create is
    one journal record. Reported: acknowledged records per second, and group commits per
    record (each is one write to the write-ahead log; in ``durable`` mode with one
    ``fdatasync``: that is the fsyncs-per-record figure; LMDB is written behind the log by
    checkpoints, off the commit path).
    ``memory`` (no data dir) is the ceiling; the ratios say what the journal costs.

Boot
    A data directory holding N tasks, each with a queued run: a snapshot at 90 % of the
    records and the last 10 % in the journal after it. The directory is written by applying
    the same commands the runtime would journal to the pure state machine and storing them
    with the runtime's own record and snapshot encoders (building 1M tasks through the
    actors would take minutes and measure nothing extra). Each boot is a fresh process
    running ``open_runtime(data_dir=...)``: open the store, decode the snapshot, replay the
    journal tail, run recovery, arm the lease clock. Reported: seconds to the first request,
    tasks per second, and resident memory per task (RSS after boot minus RSS before,
    divided by N; "heap" counts anonymous memory only, leaving out LMDB's mapped pages).
    The page cache is warm (the directory was just written), as after a quick restart.

Results also go to ``bench/results/durability.json``. Numbers depend on the disk and on
whatever else the machine is doing; the tables print the fsync latency measured just before.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec
import trio

from runlease import open_runtime
from runlease.core.commands import CreateTask
from runlease.core.ids import IdGenerator
from runlease.core.machine import Machine
from runlease.core.model import Priority
from runlease.core.snapshot import encode_snapshot
from runlease.persistence.records import encode_record
from runlease.persistence.store import Store
from runlease.runtime.journal import JournalCommitter
from runlease.runtime.runtime import Runtime

Mode = Literal["memory", "relaxed", "durable"]
MODES: tuple[Mode, ...] = ("memory", "relaxed", "durable")
WRITER_COUNTS = (1, 8, 64)
BOOT_SIZES_FULL = (100_000, 1_000_000)
BOOT_SIZES_QUICK = (100_000,)
SNAPSHOT_AT = 0.9  # fraction of the records covered by the snapshot in a boot data dir
PRIORITIES: tuple[Priority, ...] = ("low", "medium", "medium", "high", "urgent")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "durability.json"


class WriteResult(msgspec.Struct):
    mode: Mode
    writers: int
    records: int
    seconds: float
    # The median over the rounds, and each round's own rate.
    records_per_second: float
    rounds: list[float]
    commits_per_record: float | None
    fsyncs_per_record: float | None
    commits: int | None = None
    fsyncs: int | None = None


class BootResult(msgspec.Struct):
    tasks: int
    snapshot_seq: int
    replayed: int
    boot_seconds: float  # the median of the boots
    each_boot_seconds: list[float]
    tasks_per_second: float
    rss_bytes_per_task: float
    heap_bytes_per_task: float
    peak_rss_mib: float
    data_dir_mib: float
    build_seconds: float
    boots: int


class MachineInfo(msgspec.Struct):
    cpus: int
    python: str
    platform: str
    fsync_median_us: float
    fsync_p90_us: float
    store_append_us: float
    # The fsync median measured before each round of write measurements.
    fsync_during_writes_us: list[float] = []


class Report(msgspec.Struct):
    quick: bool
    machine: MachineInfo
    writes: list[WriteResult]
    durable_over_relaxed: dict[str, float]
    durable_over_memory: dict[str, float]
    boots: list[BootResult]


# ------------------------------------------------------------------------ the disk
def fsync_latency(directory: Path, rounds: int = 100) -> tuple[float, float]:
    """Median and 90th percentile of write(4 KiB) + fsync on this filesystem, in µs."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        samples = []
        for i in range(rounds):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1e6)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)]


def store_append_latency(directory: Path, rounds: int = 200) -> float:
    """Mean µs of one durable single-record group commit (a log write and its
    ``fdatasync``): the floor for one lone writer."""
    with Store.open(directory / "append-probe", durability="durable") as store:
        start = time.perf_counter()
        for _ in range(rounds):
            store.append([b"x" * 200])
        took = time.perf_counter() - start
    shutil.rmtree(directory / "append-probe")
    return took / rounds * 1e6


# -------------------------------------------------------------------------- writes
def _store_of(rt: Runtime) -> Store | None:
    committer = rt._committer
    return committer._store if isinstance(committer, JournalCommitter) else None


async def measure_writes(mode: Mode, writers: int, seconds: float, directory: Path) -> WriteResult:
    data_dir = None if mode == "memory" else directory / f"{mode}-{writers}"
    durability: Literal["durable", "relaxed"] = "relaxed" if mode == "relaxed" else "durable"
    async with open_runtime(data_dir=data_dir, durability=durability) as rt:
        for i in range(20):  # warm up: thread pool, map pages, code paths
            await rt.create_task(f"warm-{i}", start=True)
        store = _store_of(rt)
        before = store.stats() if store is not None else None
        acknowledged = 0
        stop_at = time.perf_counter() + seconds

        async def writer(w: int) -> None:
            nonlocal acknowledged
            i = 0
            while time.perf_counter() < stop_at:
                await rt.create_task(
                    f"writer {w} task {i}", priority=PRIORITIES[i % len(PRIORITIES)], start=True
                )
                acknowledged += 1
                i += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w)
        took = time.perf_counter() - start
        commits = fsyncs = None
        if store is not None and before is not None:
            after = store.stats()
            assert after.records_appended - before.records_appended == acknowledged
            commits = after.append_batches - before.append_batches
            fsyncs = after.fsyncs - before.fsyncs
    if data_dir is not None:
        shutil.rmtree(data_dir)
    return WriteResult(
        mode=mode,
        writers=writers,
        records=acknowledged,
        seconds=took,
        records_per_second=acknowledged / took,
        rounds=[acknowledged / took],
        commits_per_record=None if commits is None else commits / acknowledged,
        fsyncs_per_record=None if fsyncs is None else fsyncs / acknowledged,
        commits=commits,
        fsyncs=fsyncs,
    )


def combine(runs: Sequence[WriteResult]) -> WriteResult:
    """One configuration over several rounds: median rate, ratios over all records."""
    records = sum(r.records for r in runs)
    commits = None if runs[0].commits is None else sum(r.commits or 0 for r in runs)
    fsyncs = None if runs[0].fsyncs is None else sum(r.fsyncs or 0 for r in runs)
    rates = [r.records_per_second for r in runs]
    return WriteResult(
        mode=runs[0].mode,
        writers=runs[0].writers,
        records=records,
        seconds=sum(r.seconds for r in runs),
        records_per_second=statistics.median(rates),
        rounds=rates,
        commits_per_record=None if commits is None else commits / records,
        fsyncs_per_record=None if fsyncs is None else fsyncs / records,
        commits=commits,
        fsyncs=fsyncs,
    )


# ---------------------------------------------------------------------------- boot
def build_boot_data(data_dir: Path, tasks: int) -> float:
    """Write N created-and-started tasks: a snapshot at 90 %, the rest in the journal."""
    start = time.perf_counter()
    machine = Machine()
    ids = IdGenerator()
    now = 1_700_000_000.0
    snapshot_after = int(tasks * SNAPSHOT_AT)
    batch: list[bytes] = []
    with Store.open(data_dir, durability="relaxed") as store:
        for i in range(tasks):
            now += 0.0005
            command = CreateTask(
                now=now,
                task_id=ids.new("tsk", now),
                title=f"benchmark task {i}",
                priority=PRIORITIES[i % len(PRIORITIES)],
                start_run_id=ids.new("run", now),
            )
            machine.apply(command)
            batch.append(encode_record(command))
            if len(batch) >= 4096 or i + 1 in (snapshot_after, tasks):
                store.append(batch)
                batch = []
            if i + 1 == snapshot_after:
                store.write_snapshot(store.last_seq(), encode_snapshot(machine))
    return time.perf_counter() - start


def _proc_status() -> dict[str, int]:
    """Memory figures of this process from /proc/self/status, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class BootSample(msgspec.Struct):
    seconds: float
    tasks: int
    snapshot_seq: int
    replayed: int
    rss_delta: int
    heap_delta: int
    peak_rss: int


async def boot_once(data_dir: Path) -> BootSample:
    gc.collect()
    before = _proc_status()
    start = time.perf_counter()
    async with open_runtime(data_dir=data_dir, durability="durable") as rt:
        took = time.perf_counter() - start
        gc.collect()
        after = _proc_status()
        report = rt.boot_report
        assert report is not None
        return BootSample(
            seconds=took,
            tasks=rt.status().tasks,
            snapshot_seq=report.snapshot_seq,
            replayed=report.replayed,
            rss_delta=after["VmRSS"] - before["VmRSS"],
            heap_delta=after["RssAnon"] - before["RssAnon"],
            peak_rss=after["VmHWM"],
        )


def boot_in_child(data_dir: Path) -> BootSample:
    """Boot in a fresh interpreter so memory figures start from a clean process."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.durability", "--boot-child", str(data_dir)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return msgspec.json.decode(done.stdout.splitlines()[-1], type=BootSample)


def measure_boot(tasks: int, repeats: int, directory: Path) -> BootResult:
    data_dir = directory / f"boot-{tasks}"
    built = build_boot_data(data_dir, tasks)
    size = sum(p.stat().st_blocks * 512 for p in data_dir.rglob("*") if p.is_file())
    samples = [boot_in_child(data_dir) for _ in range(repeats)]
    shutil.rmtree(data_dir)
    for sample in samples:
        assert sample.tasks == tasks, f"booted {sample.tasks} tasks, wrote {tasks}"
    seconds = statistics.median(s.seconds for s in samples)
    return BootResult(
        tasks=tasks,
        snapshot_seq=samples[0].snapshot_seq,
        replayed=samples[0].replayed,
        boot_seconds=seconds,
        each_boot_seconds=[s.seconds for s in samples],
        tasks_per_second=tasks / seconds,
        rss_bytes_per_task=statistics.median(s.rss_delta for s in samples) / tasks,
        heap_bytes_per_task=statistics.median(s.heap_delta for s in samples) / tasks,
        peak_rss_mib=max(s.peak_rss for s in samples) / 2**20,
        data_dir_mib=size / 2**20,
        build_seconds=built,
        boots=repeats,
    )


# -------------------------------------------------------------------------- report
def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def ratios(writes: Sequence[WriteResult], over: Mode) -> dict[str, float]:
    rate = {(w.mode, w.writers): w.records_per_second for w in writes}
    return {
        str(n): _ratio(rate[("durable", n)], rate[(over, n)])
        for n in WRITER_COUNTS
        if ("durable", n) in rate and (over, n) in rate
    }


def print_report(report: Report) -> None:
    m = report.machine
    print(
        f"\nmachine: {m.cpus} CPUs, Python {m.python}, {m.platform}\n"
        f"disk: write+fsync of 4 KiB median {m.fsync_median_us:.0f} µs "
        f"(p90 {m.fsync_p90_us:.0f} µs); one durable single-record commit "
        f"{m.store_append_us:.0f} µs, so one-commit-per-record caps near "
        f"{1e6 / m.store_append_us:,.0f} records/s"
    )
    if m.fsync_during_writes_us:
        during = ", ".join(f"{us:.0f}" for us in m.fsync_during_writes_us)
        print(f"fsync median before each round of writes: {during} µs")
    if report.writes:
        rounds = len(report.writes[0].rounds)
        print(
            "\nacknowledged writes (create_task start=True = one journal record each; "
            f"median of {rounds} round{'s' if rounds != 1 else ''})"
        )
        header = (
            f"{'writers':>7}  {'mode':<8} {'records/s':>10} {'min-max':>15} "
            f"{'commits/rec':>11} {'fsyncs/rec':>10}"
        )
        print(header)
        print("-" * len(header))
        for w in report.writes:
            commits = "-" if w.commits_per_record is None else f"{w.commits_per_record:.4f}"
            fsyncs = "-" if w.fsyncs_per_record is None else f"{w.fsyncs_per_record:.4f}"
            spread = f"{min(w.rounds):,.0f}-{max(w.rounds):,.0f}"
            print(
                f"{w.writers:>7}  {w.mode:<8} {w.records_per_second:>10,.0f} {spread:>15} "
                f"{commits:>11} {fsyncs:>10}"
            )
        print("(fsyncs/rec counts synced group commits: one fdatasync of the write-ahead log each)")
        rate = {(w.mode, w.writers): w.records_per_second for w in report.writes}
        print("\nratios")
        print(
            f"{'writers':>7}  {'durable/relaxed':>15} {'durable/memory':>14} "
            f"{'durable vs 1 writer':>19}"
        )
        for n in WRITER_COUNTS:
            if ("durable", n) not in rate:
                continue
            speedup = _ratio(rate[("durable", n)], rate[("durable", 1)])
            print(
                f"{n:>7}  {report.durable_over_relaxed.get(str(n), float('nan')):>15.2f} "
                f"{report.durable_over_memory.get(str(n), float('nan')):>14.2f} {speedup:>18.1f}x"
            )
    if report.boots:
        print(
            f"\nboot recovery (snapshot at {SNAPSHOT_AT:.0%} of the records + journal tail; "
            "fresh process, warm page cache)"
        )
        header = (
            f"{'tasks':>9} {'replayed':>9} {'boot s':>7} {'min-max s':>11} {'tasks/s':>10} "
            f"{'RSS B/task':>10} {'heap B/task':>11} {'peak MiB':>9} {'disk MiB':>9}"
        )
        print(header)
        print("-" * len(header))
        for b in report.boots:
            print(
                f"{b.tasks:>9,} {b.replayed:>9,} {b.boot_seconds:>7.2f} "
                f"{min(b.each_boot_seconds):>5.2f}-{max(b.each_boot_seconds):<5.2f} "
                f"{b.tasks_per_second:>10,.0f} "
                f"{b.rss_bytes_per_task:>10,.0f} {b.heap_bytes_per_task:>11,.0f} "
                f"{b.peak_rss_mib:>9,.0f} {b.data_dir_mib:>9,.0f}"
            )
        if len(report.boots) > 1:
            small, large = report.boots[0], report.boots[-1]
            print(
                f"{large.tasks // small.tasks}x the tasks: boot takes "
                f"{_ratio(large.boot_seconds, small.boot_seconds):.1f}x as long, "
                f"memory per task {_ratio(large.rss_bytes_per_task, small.rss_bytes_per_task):.2f}x"
            )


# ---------------------------------------------------------------------------- main
async def write_benchmarks(
    seconds: float, rounds: int, directory: Path, fsync_samples: list[float]
) -> list[WriteResult]:
    """Every configuration once per round, interleaved, so a slow spell of a shared disk
    hurts all of them alike instead of whichever happened to run then."""
    runs: dict[tuple[int, Mode], list[WriteResult]] = {}
    for round_ in range(rounds):
        fsync_samples.append(fsync_latency(directory)[0])
        print(f"round {round_ + 1}/{rounds}: fsync {fsync_samples[-1]:.0f} µs", file=sys.stderr)
        for writers in WRITER_COUNTS:
            for mode in MODES:
                result = await measure_writes(mode, writers, seconds, directory)
                print(
                    f"  {writers:>2} writers {mode:<8} {result.records_per_second:>9,.0f}/s",
                    file=sys.stderr,
                )
                runs.setdefault((writers, mode), []).append(result)
    return [combine(results) for results in runs.values()]


def run(
    quick: bool, directory: Path, *, skip_writes: bool = False, skip_boot: bool = False
) -> Report:
    print("measuring the disk...", file=sys.stderr)
    fsync_median, fsync_p90 = fsync_latency(directory)
    machine = MachineInfo(
        cpus=os.cpu_count() or 0,
        python=platform.python_version(),
        platform=platform.platform(),
        fsync_median_us=fsync_median,
        fsync_p90_us=fsync_p90,
        store_append_us=store_append_latency(directory),
    )
    writes: list[WriteResult] = []
    if not skip_writes:
        print("measuring writes...", file=sys.stderr)
        fsync_samples: list[float] = []
        writes = trio.run(
            write_benchmarks, 0.75 if quick else 2.0, 1 if quick else 3, directory, fsync_samples
        )
        machine.fsync_during_writes_us = fsync_samples
    boots = []
    if not skip_boot:
        for tasks in BOOT_SIZES_QUICK if quick else BOOT_SIZES_FULL:
            print(f"measuring boot with {tasks:,} tasks...", file=sys.stderr)
            boots.append(measure_boot(tasks, 2 if quick else 3, directory))
    return Report(
        quick=quick,
        machine=machine,
        writes=writes,
        durable_over_relaxed=ratios(writes, "relaxed"),
        durable_over_memory=ratios(writes, "memory"),
        boots=boots,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, 100k-task boot only")
    parser.add_argument("--no-writes", action="store_true", help="skip the write measurements")
    parser.add_argument("--no-boot", action="store_true", help="skip the boot measurements")
    parser.add_argument("--dir", type=Path, help="where to put data dirs (default: a temp dir)")
    parser.add_argument("--boot-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.boot_child is not None:
        sample = trio.run(boot_once, args.boot_child)
        print(msgspec.json.encode(sample).decode())
        return
    directory = Path(tempfile.mkdtemp(prefix="runlease-bench-", dir=args.dir))
    try:
        report = run(args.quick, directory, skip_writes=args.no_writes, skip_boot=args.no_boot)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_report(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(msgspec.to_builtins(report), indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
