"""How long one ``runlease`` command takes, against Python starting and doing nothing.

An agent runs the CLI once per step (claim, heartbeat, finish), so the process start-up is
paid on every one of them. This starts an in-memory server on a temporary socket, then runs,
interleaved so that a change in the machine's load touches all three alike:

- ``python -c pass`` with the interpreter the CLI runs on (the floor);
- ``runlease status``;
- ``runlease task next`` with a session token (the queue is empty, so it exits 4 with
  NO_CLAIMABLE_RUN after the full round trip).

It prints the median and spread of each and the ratio of each command's median to the
floor's, plus the CPU model and a ``timeit`` figure so numbers from different machines can
be compared. The goal is a ratio of at most 4.

    .venv/bin/python -m bench.cli_startup [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.common import BenchError, cpu_model, short_socket_dir, timeit_figure

DEFAULT_RUNS: Final = 20
# The ratio of a command's median to the floor's that the CLI is meant to stay within.
GOAL_RATIO: Final = 4.0
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 30.0
COMMAND_TIMEOUT: Final = 60.0
# Exit code of a claim that found nothing (NO_CLAIMABLE_RUN).
EXIT_NOTHING_TO_CLAIM: Final = 4

# The server: the embedded runtime with no data directory (nothing on disk), on the socket
# given as the first argument, logging JSON lines to stderr.
_SERVER_CODE: Final = (
    "import sys\n"
    "from runlease.runtime.serve import configure_logging, run_server\n"
    "configure_logging()\n"
    "run_server(sys.argv[1])\n"
)


def runlease_command() -> list[str]:
    """The console script installed beside this interpreter, else ``python -m runlease``."""
    script = shutil.which("runlease", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "runlease"]


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without RUNLEASE_* variables, plus ``extra``.

    PYTHONDONTWRITEBYTECODE is dropped too: an installed CLI runs from compiled bytecode,
    which the untimed warm-up run writes; without it every run would compile runlease's
    modules from source and measure that instead.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RUNLEASE_") and key != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(extra)
    return env


@contextmanager
def running_server(workdir: Path) -> Iterator[Path]:
    """An in-memory server on a socket in ``workdir``, stopped (SIGINT) on exit."""
    socket_path = workdir / "runlease.sock"
    log_path = workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_CODE, str(socket_path)],
            env=clean_env({}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        _wait_listening(process, log_path)
        yield socket_path
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll the server's log for its ``listening`` line (this is a benchmark, not a test)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == "listening":
                return
        if process.poll() is not None:
            raise BenchError(f"the server exited with {process.returncode}: "
                             f"{log_path.read_text()[-2000:]}")  # fmt: skip
        time.sleep(0.01)
    raise BenchError(f"the server did not listen within {START_TIMEOUT} s")


@dataclass
class Probe:
    """One command to time, and the exit code it must end with."""

    label: str
    argv: list[str]
    env: dict[str, str]
    expected_exit: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    def once(self) -> tuple[float, float]:
        """Wall-clock and CPU (user + system) seconds of one run."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if done.returncode != self.expected_exit:
            raise BenchError(
                f"{self.label}: exit {done.returncode}, expected {self.expected_exit}\n"
                f"stdout: {done.stdout.decode(errors='replace')}\n"
                f"stderr: {done.stderr.decode(errors='replace')}"
            )
        return elapsed, cpu


def open_session(socket_path: Path) -> str:
    done = subprocess.run(
        [*runlease_command(), "-o", "json", "session", "open", "--agent", "bench"],
        env=clean_env({"RUNLEASE_SOCKET": str(socket_path)}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    if done.returncode != 0:
        raise BenchError(f"session open failed ({done.returncode}): {done.stdout}{done.stderr}")
    token = json.loads(done.stdout)["session_token"]
    assert isinstance(token, str)
    return token


def measure(probes: Sequence[Probe], runs: int) -> None:
    """One untimed warm-up of each (compiled bytecode, page cache), then ``runs`` rounds."""
    for probe in probes:
        probe.once()
    for _ in range(runs):
        for probe in probes:
            elapsed, cpu = probe.once()
            probe.seconds.append(elapsed)
            probe.cpu_seconds.append(cpu)


def report(probes: Sequence[Probe], floor: Probe, runs: int) -> str:
    base = statistics.median(floor.seconds)
    cpu_base = statistics.median(floor.cpu_seconds)
    lines = [
        f"CLI start-up: median of {runs} runs each, interleaved",
        f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs)",
        f"python: {platform.python_implementation()} {platform.python_version()}"
        f" ({sys.executable})",
        f"timeit sum(range(50)): {timeit_figure()}",
        "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "",
        f"{'command':<20} {'wall ms':>8} {'min':>7} {'max':>7} {'ratio':>7}"
        f"   {'cpu ms':>7} {'ratio':>7}",
    ]
    for probe in probes:
        median = statistics.median(probe.seconds)
        cpu = statistics.median(probe.cpu_seconds)
        lines.append(
            f"{probe.label:<20} {median * 1000:>8.1f} {min(probe.seconds) * 1000:>7.1f} "
            f"{max(probe.seconds) * 1000:>7.1f} {median / base:>6.2f}x"
            f"   {cpu * 1000:>7.1f} {cpu / cpu_base:>6.2f}x"
        )
    worst = max(statistics.median(p.seconds) for p in probes if p is not floor) / base
    verdict = "within" if worst <= GOAL_RATIO else "over"
    lines += [
        "",
        f"worst wall-clock ratio {worst:.2f}x: {verdict} the {GOAL_RATIO:g}x goal",
        "(cpu = user + system time of the process; it moves less than wall time when other",
        "work shares the machine)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed runs per command")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    workdir = short_socket_dir()
    try:
        with running_server(workdir) as socket_path:
            env = clean_env({"RUNLEASE_SOCKET": str(socket_path)})
            token = open_session(socket_path)
            cli = runlease_command()
            floor = Probe("python -c pass", [sys.executable, "-c", "pass"], env, 0)
            probes = [
                floor,
                Probe("runlease status", [*cli, "status"], env, 0),
                Probe(
                    "runlease task next",
                    [*cli, "task", "next"],
                    {**env, "RUNLEASE_SESSION_TOKEN": token},
                    EXIT_NOTHING_TO_CLAIM,
                ),
            ]
            measure(probes, args.runs)
    except BenchError as exc:
        print(f"cli_startup: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(probes, floor, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
