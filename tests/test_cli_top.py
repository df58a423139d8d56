"""``runlease top`` and ``runlease status --watch`` against a real server: one frame for
scripts, frames per interval in a pipe, the full-screen view in a terminal, a server restart
while watching, and Ctrl-C."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import (
    RUNLEASE,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Cli,
    LineReader,
    claim,
    clean_env,
    queued_task,
)
from reconnect_helpers import Serving


def leased_and_queued(cli: Cli, ws: str) -> tuple[str, str]:
    """A leased run and a queued one in ``ws``: (leased run id, queued task id)."""
    queued_task(cli, ws, "running one")
    _, token = cli.session("watched-agent")
    run_id: str = claim(cli, token, ws, "--lease-seconds", "600")["run"]["id"]
    waiting = queued_task(cli, ws, "waiting one")
    return run_id, waiting["id"]


@pytest.mark.parametrize("command", [("top",), ("status", "--watch")])
def test_one_frame_shows_the_queue_and_the_lease(
    cli: Cli, ws: str, command: tuple[str, ...]
) -> None:
    run_id, _ = leased_and_queued(cli, ws)
    result = cli.run("-o", "table", *command, "--once")
    assert result.code == 0, str(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("runlease top")
    # The queued run is counted under its workspace; the leased one runs down by its id.
    assert any(line.split()[:3] == [ws, "medium", "1"] for line in lines), result.stdout
    lease_line = next(line for line in lines if line.startswith(run_id))
    assert "running one" in lease_line
    assert "watched-agent" in lease_line
    # Ten minutes, less however long this loaded machine took to get here.
    assert re.fullmatch(r"10m00s|9m[0-5][0-9]s", lease_line.split()[-1]), lease_line
    assert "scheduler running" in result.stdout
    assert result.stderr == ""


def test_json_prints_the_overview(cli: Cli, ws: str) -> None:
    run_id, _ = leased_and_queued(cli, ws)
    for flags in (("--json",), ("-o", "json"), ()):  # a pipe gets JSON as from any command
        document = cli.ok("top", "--once", *flags)
        assert set(document) == {"overview"}
        view = document["overview"]
        assert run_id in {row["run_id"] for row in view["leases"]}
        assert {"workspace_id": ws, "priority": "medium", "claimable": 1} in view["queue"]
        assert view["scheduler"]["paused"] is False
    # status --watch is top: the same document.
    assert set(cli.ok("status", "--watch", "--once")) == {"overview"}


def test_a_pipe_gets_one_frame_unless_an_interval_is_given(cli: Cli) -> None:
    # Without --interval the command ends by itself (COMMAND_TIMEOUT bounds it).
    assert cli.run("-o", "table", "top").code == 0
    watching = cli.popen(
        "-o", "table", "top", "--interval", "0.2", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert watching.stdout is not None
        out = LineReader(watching.stdout)
        for _ in range(2):  # a second frame comes by itself
            out.wait_for(lambda line: line.startswith("runlease top"), START_TIMEOUT)
        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=STOP_TIMEOUT) == 0
        assert watching.stderr is not None
        assert watching.stderr.read() == ""
    finally:
        watching.kill()
        watching.wait()


def test_json_watching_prints_one_overview_line_per_interval(cli: Cli) -> None:
    watching = cli.popen("top", "--interval", "0.2", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert watching.stdout is not None
        out = LineReader(watching.stdout)
        for _ in range(2):
            line = out.wait_for(lambda line: line.startswith("{"), START_TIMEOUT)
            assert set(json.loads(line)) == {"overview"}
        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        watching.kill()
        watching.wait()


def test_watch_options_are_checked(cli: Cli) -> None:
    cli.fails("top", "--interval", "0", code="USAGE", exit=2)
    cli.fails("status", "--once", code="USAGE", exit=2)
    cli.fails("status", "--interval", "2", code="USAGE", exit=2)
    # status without --watch is as it was.
    assert set(cli.ok("status")) == {"server", "recovered", "durability", "counts"}


# ---------------------------------------------------------------------- restart, Ctrl-C
@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    served = Serving(tmp_path)
    try:
        yield served
    finally:
        served.server.kill()


def test_a_server_restart_shows_reconnecting_then_the_view_again(serving: Serving) -> None:
    cli = Cli(socket=serving.socket)
    run_id, _ = leased_and_queued(cli, "w")
    watching = cli.popen(
        "-o", "table", "top", "--interval", "0.2", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert watching.stdout is not None
        out = LineReader(watching.stdout)
        out.wait_for(lambda line: line.startswith(run_id), START_TIMEOUT)
        assert serving.server.stop() == 0
        out.wait_for(lambda line: line.startswith("reconnecting..."), START_TIMEOUT)
        # Started only now, so the watcher surely met the server gone.
        serving.server = serving._start()
        serving.server.wait_listening()
        # The lease survived the restart (durable store) and the view shows it again.
        out.wait_for(lambda line: line.startswith(run_id), START_TIMEOUT)
        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=STOP_TIMEOUT) == 0
        assert watching.stderr is not None
        errors = watching.stderr.read()
        assert "Traceback" not in errors
        assert errors == ""
    finally:
        watching.kill()
        watching.wait()


def test_in_a_terminal_the_view_is_drawn_full_screen_and_ctrl_c_exits_quietly(
    cli: Cli, ws: str
) -> None:
    run_id, _ = leased_and_queued(cli, ws)
    controller, terminal = os.openpty()
    # An 80x24 terminal.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = clean_env({"RUNLEASE_SOCKET": str(cli.socket), "TERM": "xterm"})
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    watching = subprocess.Popen(
        [*RUNLEASE, "top", "--interval", "0.5"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        seen = read_until(controller, run_id.encode(), START_TIMEOUT)
        assert b"\x1b[?1049h" in seen  # the alternate screen, as full-screen tools use
        os.killpg(watching.pid, signal.SIGINT)
        assert watching.wait(timeout=STOP_TIMEOUT) == 0
        rest = drain(controller)
        assert b"Traceback" not in seen + rest
        assert b"\x1b[?1049l" in seen + rest  # the terminal is given back
    finally:
        os.close(controller)
        if watching.poll() is None:
            watching.kill()
            watching.wait()


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """Everything read from ``fd`` up to and including ``wanted``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = b""
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{wanted!r} not shown within {timeout} s; got {seen[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 65536)
    return seen


def drain(fd: int) -> bytes:
    """What is left to read from a terminal whose program has exited."""
    rest = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the terminal's other side is closed
            break
        if not chunk:
            break
        rest += chunk
    return rest
