"""Drive real ``runlease`` processes from tests: a server subprocess and CLI invocations.

Nothing here sleeps: the server is ready when its own ``listening`` log line arrives (read
by a thread as it is written), and every wait has an upper bound.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
# The keys of ``task show``: the task, its runs and its full history beside it.
TASK_SHOW_KEYS = {
    "task",
    "runs",
    "checkpoints",
    "events",
    "children",
    "blocked_by",
    "open_dependencies",
    "dependents",
    "pause",
}
RFC3339_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"

_SCRIPT = shutil.which("runlease", path=str(Path(sys.executable).parent))
# The console script declared in pyproject.toml when installed; else the module entry point.
RUNLEASE: list[str] = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "runlease"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any RUNLEASE_* or XDG_DATA_HOME, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RUNLEASE_") and key != "XDG_DATA_HOME"
    }
    env.update(extra or {})
    return env


@dataclass
class Result:
    args: Sequence[str]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"runlease {' '.join(self.args)} -> exit {self.code}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


@dataclass
class Cli:
    """Runs ``runlease`` against one socket, in JSON mode unless told otherwise."""

    socket: Path
    env: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # everything any command printed

    def environment(self, token: str | None) -> dict[str, str]:
        env = clean_env({"RUNLEASE_SOCKET": str(self.socket), **self.env})
        if token is not None:
            env["RUNLEASE_SESSION_TOKEN"] = token
        return env

    def run(self, *args: str, token: str | None = None, timeout: float = COMMAND_TIMEOUT) -> Result:
        done = subprocess.run(
            [*RUNLEASE, *args],
            capture_output=True,
            text=True,
            env=self.environment(token),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        self.outputs += [done.stdout, done.stderr]
        return Result(args, done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, token: str | None = None) -> Any:
        result = self.run(*args, token=token)
        assert result.code == 0, str(result)
        return result.json

    def fails(self, *args: str, code: str, exit: int, token: str | None = None) -> str:
        """Run a command that must fail with ``code``; returns the error message."""
        result = self.run(*args, token=token)
        assert result.code == exit, str(result)
        document = result.json
        assert set(document) == {"error"}, str(result)
        assert set(document["error"]) == {"code", "message"}, str(result)
        assert document["error"]["code"] == code, str(result)
        message: str = document["error"]["message"]
        assert message, str(result)
        return message

    def popen(self, *args: str, token: str | None = None, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*RUNLEASE, *args],
            env=self.environment(token),
            text=True,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def session(self, agent: str = "agent", *extra: str) -> tuple[str, str]:
        """Open a session: (session_id, token)."""
        opened = self.ok("session", "open", "--agent", agent, *extra)
        return opened["session_id"], opened["session_token"]


def assert_no_claim_tokens(cli: Cli) -> None:
    """No output of any command run through ``cli`` shows a raw claim token."""
    leaked = [out for out in cli.outputs if "rl_claim_" in out]
    assert not leaked, f"a claim token was printed: {leaked[0]!r}"


def is_time(value: Any) -> bool:
    return isinstance(value, str) and re.match(RFC3339_UTC, value) is not None


def claim(cli: Cli, token: str, ws: str, *extra: str) -> dict[str, Any]:
    """``task next`` in workspace ``ws`` for the session holding ``token``."""
    claimed: dict[str, Any] = cli.ok("task", "next", "--workspace", ws, *extra, token=token)
    return claimed


def queued_task(cli: Cli, ws: str, title: str = "work", *extra: str) -> dict[str, Any]:
    """A task created in ``ws`` with its first run queued."""
    created = cli.ok("task", "create", title, "--workspace", ws, "--start", *extra)
    task: dict[str, Any] = created["task"]
    return task


class LineReader:
    """Reads a text stream on a thread so tests can wait for lines with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next_line(self, timeout: float) -> str | None:
        """The next line, or None at end of stream; raises TimeoutError past the deadline."""
        if self.ended:
            return None
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line within {timeout} s; so far: {self.lines}") from None
        if line is None:
            self.ended = True
        else:
            self.lines.append(line)
        return line

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(deadline - time.monotonic(), 0.001))
            if line is None:
                raise EOFError(f"stream ended before the line came; got: {self.lines}")
            if predicate(line):
                return line

    def rest(self, timeout: float) -> list[str]:
        """Every remaining line up to the end of the stream."""
        deadline = time.monotonic() + timeout
        out = []
        while (line := self.next_line(max(deadline - time.monotonic(), 0.001))) is not None:
            out.append(line)
        return out


def log_event(line: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    event = record.get("event") if isinstance(record, dict) else None
    return event if isinstance(event, str) else None


class Server:
    """A ``runlease serve`` subprocess (or another server command) and its log."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.command = list(command)
        self.process = subprocess.Popen(
            self.command,
            env=clean_env(env),
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stderr is not None
        assert self.process.stdout is not None
        self.log = LineReader(self.process.stderr)
        self.out = LineReader(self.process.stdout)

    @classmethod
    def serve(cls, *args: str, env: Mapping[str, str] | None = None) -> Server:
        return cls([*RUNLEASE, "serve", *args], env)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        line = self.log.wait_for(lambda line: log_event(line) == "listening", timeout)
        record: dict[str, Any] = json.loads(line)
        return record

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to end, and for its log and output to be read to the end."""
        code = self.process.wait(timeout=timeout)
        self.log.rest(timeout)
        self.out.rest(timeout)
        return code

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


def poll_until(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; bounded by ``timeout`` seconds.

    Checks here run a CLI command each, which paces the loop by itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def serve_relaxed(base: Path) -> Iterator[tuple[Server, Path]]:
    """A relaxed ``runlease serve`` on ``base``, for one test module; stopped cleanly after."""
    socket = base / "s.sock"
    srv = Server.serve(
        "--data-dir", str(base / "data"), "--socket", str(socket), "--durability", "relaxed"
    )
    try:
        srv.wait_listening()
        yield srv, socket
        assert srv.stop() == 0, srv.log.lines
    finally:
        srv.kill()


SKEWED_SERVER = Path(__file__).with_name("skewed_server.py")


def serve_skewed(base: Path) -> Iterator[tuple[Cli, Path]]:
    """tests/skewed_server.py on ``base``: a server whose wall clock the test moves.

    Yields the CLI and the skew file to pass to :func:`move_clock`. Moving the clock past a
    lease's deadline makes every command see the lease as expired at once, while the lease
    clock (sleeping on trio's monotonic clock) has not fired: no real-time wait can race.
    """
    socket = base / "s.sock"
    skew = base / "skew"
    server = Server([sys.executable, str(SKEWED_SERVER), str(socket), str(skew)])
    try:
        server.wait_listening()
        yield Cli(socket=socket), skew
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()


def move_clock(skew_file: Path, seconds: float) -> None:
    """Set the skewed server's clock to real time plus ``seconds`` (atomically)."""
    staging = skew_file.with_suffix(".tmp")
    staging.write_text(str(seconds))
    os.replace(staging, skew_file)
