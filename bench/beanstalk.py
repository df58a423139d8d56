"""beanstalkd, the small C work queue: reserve + delete, through the ``greenstalk`` client.

The harness starts its own ``beanstalkd`` on a Unix socket in a temporary directory and
stops it at the end. Three binlog settings:

- ``-b DIR -f 0``: every write is fsynced before the reply (durable);
- ``-b DIR``: the default, written at once and fsynced at most every 50 ms (relaxed);
- no ``-b``: nothing persisted (memory).

Preloading N jobs one put at a time with an fsync each would take minutes and measure
nothing, so with a binlog the jobs are put into a server started with ``-F`` (never fsync),
that server is stopped, and the measured one replays the binlog at start, like any restart.
Contenders are threads (one connection each) spread over 2 client processes, as for the
runlease socket rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final, Literal

from bench.common import (
    PRIORITY_RANK,
    BenchError,
    ContenderLog,
    Durability,
    RawRun,
    System,
    Workload,
    monotonic,
    short_socket_dir,
)
from bench.procs import report_failure, run_client_processes

BinlogMode = Literal["f0", "binlog", "nobinlog"]
PR_SET_PDEATHSIG: Final = 1
CLIENT_PROCESSES: Final = 2
PRELOAD_BATCH: Final = 1000
START_TIMEOUT: Final = 30.0
NOT_INSTALLED: Final = "skipped: beanstalkd not installed"
NO_CLIENT: Final = "skipped: greenstalk not installed (pip install -e '.[bench]')"


def beanstalkd_version() -> str | None:
    binary = shutil.which("beanstalkd")
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip() or "beanstalkd"


def greenstalk_missing() -> bool:
    try:
        import greenstalk  # noqa: F401
    except ImportError:
        return True
    return False


def beanstalk_priority(priority: str) -> int:
    """beanstalkd serves the lowest number first: urgent 0, high 1, medium 2, low 3."""
    return (PRIORITY_RANK["urgent"] - PRIORITY_RANK[priority]) // 10


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the harness dies, so none is left behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class BeanstalkdServer:
    """One ``beanstalkd`` process listening on a Unix socket."""

    def __init__(self, socket_path: Path, args: list[str], log_path: Path) -> None:
        binary = shutil.which("beanstalkd")
        if binary is None:
            raise BenchError(NOT_INSTALLED)
        self.socket_path = socket_path
        socket_path.unlink(missing_ok=True)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, "-l", f"unix:{socket_path}", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise BenchError(f"beanstalkd exited at start with {self.process.returncode}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(self.socket_path))
                return
            time.sleep(0.01)
        self.stop()
        raise BenchError(f"beanstalkd did not listen on {self.socket_path} within {START_TIMEOUT}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def __enter__(self) -> BeanstalkdServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def preload(socket_path: Path, jobs: list[tuple[int, bytes]], ttr: int) -> None:
    """Put every (priority, body) job, pipelining a batch of puts per write."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path))
        pending = b""
        for first in range(0, len(jobs), PRELOAD_BATCH):
            batch = jobs[first : first + PRELOAD_BATCH]
            sock.sendall(
                b"".join(
                    b"put %d 0 %d %d\r\n%s\r\n" % (pri, ttr, len(body), body) for pri, body in batch
                )
            )
            answered = 0
            while answered < len(batch):
                data = sock.recv(65536)
                if not data:
                    raise BenchError("beanstalkd closed the connection during the preload")
                pending += data
                *lines, pending = pending.split(b"\r\n")
                for line in lines:
                    if not line.startswith(b"INSERTED "):
                        raise BenchError(f"beanstalkd refused a put: {line!r}")
                    answered += 1


def server_stats(socket_path: Path) -> dict[str, Any]:
    import greenstalk

    client = greenstalk.Client(str(socket_path))
    try:
        return dict(client.stats())
    finally:
        client.close()


class Beanstalkd(System):
    family = "beanstalkd"

    def __init__(self, mode: BinlogMode) -> None:
        self.mode: BinlogMode = mode
        self.key = f"beanstalkd-{mode}"
        self.label = {
            "f0": "beanstalkd, binlog -f 0",
            "binlog": "beanstalkd, default binlog",
            "nobinlog": "beanstalkd, no binlog",
        }[mode]
        durability: dict[str, Durability] = {
            "f0": "durable",
            "binlog": "relaxed",
            "nobinlog": "memory",
        }
        self.durability = durability[mode]

    def unavailable(self) -> str | None:
        if shutil.which("beanstalkd") is None:
            return NOT_INSTALLED
        if greenstalk_missing():
            return NO_CLIENT
        return None

    def _measured_args(self, binlog: Path) -> list[str]:
        if self.mode == "f0":
            return ["-b", str(binlog), "-f", "0"]
        if self.mode == "binlog":
            return ["-b", str(binlog)]
        return []

    def run(self, workload: Workload, contenders: int, workdir: Path) -> RawRun:
        socket_dir = short_socket_dir()
        socket_path = socket_dir / "beanstalkd.sock"
        binlog = workdir / "binlog"
        log_path = workdir / "beanstalkd.log"
        expected = [f"r{i}" for i in range(workload.runs)]
        jobs = [
            (beanstalk_priority(prio), body.encode())
            for prio, body in zip(workload.priorities(), expected, strict=True)
        ]
        ttr = int(workload.lease_seconds)
        try:
            return self._measure(workload, contenders, socket_path, binlog, log_path, jobs, ttr)
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)

    def _measure(
        self,
        workload: Workload,
        contenders: int,
        socket_path: Path,
        binlog: Path,
        log_path: Path,
        jobs: list[tuple[int, bytes]],
        ttr: int,
    ) -> RawRun:
        expected = [body.decode() for _, body in jobs]
        if self.mode != "nobinlog":
            binlog.mkdir()
            # Fill the binlog without fsyncs, then restart in the measured mode.
            with BeanstalkdServer(socket_path, ["-b", str(binlog), "-F"], log_path):
                preload(socket_path, jobs, ttr)
        with BeanstalkdServer(socket_path, self._measured_args(binlog), log_path):
            if self.mode == "nobinlog":
                preload(socket_path, jobs, ttr)
            ready = server_stats(socket_path)["current-jobs-ready"]
            if ready != workload.runs:
                raise BenchError(f"beanstalkd holds {ready} ready jobs, {workload.runs} expected")
            start, logs = run_client_processes(
                beanstalk_client_main, contenders, CLIENT_PROCESSES, str(socket_path)
            )
            stats = server_stats(socket_path)
        return RawRun(
            expected=expected,
            start=start,
            contenders=logs,
            system_problems=_check_stats(stats, workload.runs),
            notes={
                "client_processes": min(CLIENT_PROCESSES, contenders),
                "beanstalkd": stats.get("version"),
                "binlog_records_written": stats.get("binlog-records-written"),
            },
        )


def _check_stats(stats: dict[str, Any], runs: int) -> list[str]:
    problems: list[str] = []
    left = {
        key: stats.get(f"current-jobs-{key}", 0)
        for key in ("ready", "reserved", "delayed", "buried")
    }
    if any(left.values()):
        problems.append(f"beanstalkd: jobs left after the drain: {left}")
    if stats.get("cmd-delete") != runs:
        problems.append(f"beanstalkd: {stats.get('cmd-delete')} deletes for {runs} jobs")
    return problems


def _contend(client: Any, go: threading.Event, log: ContenderLog) -> None:
    import greenstalk

    go.wait()
    clock = time.perf_counter
    try:
        while True:
            began = clock()
            try:
                job = client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                break
            log.latencies.append(clock() - began)
            try:
                client.delete(job)
            except greenstalk.NotFoundError:
                log.errors.append(f"delete {job.body} refused: NOT_FOUND")
                continue
            log.completed.append(job.body)
    except Exception as exc:  # a dropped connection: recorded, fails the check
        log.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        log.end = monotonic()


def beanstalk_client_main(
    index: int, count: int, socket_path: str, barrier: Barrier, conn: Connection
) -> None:
    """Child process: ``count`` threads, one greenstalk connection each."""
    try:
        import greenstalk

        clients = [greenstalk.Client(socket_path) for _ in range(count)]
        logs = [ContenderLog() for _ in clients]
        go = threading.Event()
        threads = [
            threading.Thread(target=_contend, args=(client, go, log), daemon=True)
            for client, log in zip(clients, logs, strict=True)
        ]
        for thread in threads:
            thread.start()
        conn.send(("ready",))
        barrier.wait()
        start = monotonic()
        go.set()
        for thread in threads:
            thread.join()
        for client in clients:
            client.close()
        conn.send(("ok", start, [log.to_wire() for log in logs]))
    except BaseException:
        report_failure(barrier, conn)
    finally:
        conn.close()
