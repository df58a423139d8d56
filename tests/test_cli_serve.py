"""``runlease serve`` as a process: default paths, signals, refusals, restarts."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
from pathlib import Path

from cli_helpers import RUNLEASE, Cli, Server, clean_env, log_event, poll_until


def events_of(server: Server) -> list[str]:
    return [event for line in server.log.lines if (event := log_event(line))]


def test_defaults_come_from_runlease_home_and_sigint_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = Server.serve(env={"RUNLEASE_HOME": str(home)})
    try:
        listening = server.wait_listening()
        sock = home / "runlease.sock"
        assert listening["socket"] == str(sock)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        # A client finds the same socket from the same environment, with no --socket.
        done = subprocess.run(
            [*RUNLEASE, "status"],
            env=clean_env({"RUNLEASE_HOME": str(home)}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["server"]["socket"] == str(sock)
        assert server.stop(signal.SIGINT) == 0
    finally:
        server.kill()
    assert not sock.exists()
    events = events_of(server)
    assert events[0] == "starting"
    assert {"listening", "signal_received", "shutdown_started", "stopped"} <= set(events)
    assert events[-1] == "stopped"
    for line in server.log.lines:
        assert isinstance(json.loads(line), dict)  # every log line is structured


def test_a_second_server_is_refused_and_a_stale_socket_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sock = tmp_path / "s.sock"
    first = Server.serve("--data-dir", str(data), "--socket", str(sock))
    try:
        first.wait_listening()
        # Same data dir: the lock says no.
        second = Server.serve("--data-dir", str(data), "--socket", str(tmp_path / "other.sock"))
        assert second.wait_exit() == 6
        error = json.loads(second.out.lines[0])["error"]
        assert error["code"] == "DATA_DIR_LOCKED"
        assert str(data) in error["message"]
        # Same socket, other data dir: the live socket says no, and stays.
        third = Server.serve("--data-dir", str(tmp_path / "data3"), "--socket", str(sock))
        assert third.wait_exit() == 6
        error = json.loads(third.out.lines[0])["error"]
        assert error["code"] == "SOCKET_IN_USE"
        assert Cli(socket=sock).ok("status")["server"]["pid"] == first.process.pid
        # A crash leaves the socket file behind...
        first.kill()
        assert sock.exists()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert probe.connect_ex(str(sock)) != 0
        finally:
            probe.close()
        # ...and the next server replaces it.
        fourth = Server.serve("--data-dir", str(data), "--socket", str(sock))
        try:
            fourth.wait_listening()
            assert "stale_socket_removed" in events_of(fourth)
            assert Cli(socket=sock).ok("status")["server"]["pid"] == fourth.process.pid
            assert fourth.stop() == 0
        finally:
            fourth.kill()
    finally:
        first.kill()


def test_sigterm_ends_waits_then_state_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sock = tmp_path / "s.sock"
    cli = Cli(socket=sock)
    server = Server.serve("--data-dir", str(data), "--socket", str(sock))
    try:
        server.wait_listening()
        task = cli.ok("task", "create", "survivor", "--workspace", "w")["task"]
        _, token = cli.session("waiter")
        waiter = cli.popen(
            "task",
            "next",
            "--workspace",
            "w",
            "--wait",
            token=token,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # The claim must be waiting in the server before the signal goes out.
            poll_until(
                lambda: cli.ok("status")["counts"]["waiting_claimers"] == 1,
                timeout=30,
                what="the claim to be waiting in the server",
            )
            assert server.stop(signal.SIGTERM) == 0
            out, _ = waiter.communicate(timeout=30)
        finally:
            waiter.kill()
        assert waiter.returncode == 6
        assert json.loads(out)["error"]["code"] == "SHUTTING_DOWN"
    finally:
        server.kill()
    assert not sock.exists()

    again = Server.serve("--data-dir", str(data), "--socket", str(sock))
    try:
        again.wait_listening()
        assert cli.ok("task", "show", task["id"])["task"]["title"] == "survivor"
        assert cli.ok("status")["recovered"] is True
        assert again.stop() == 0
    finally:
        again.kill()


def test_serve_refuses_an_unsafe_socket_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    server = Server.serve("--data-dir", str(tmp_path / "data"), "--socket", str(shared / "s.sock"))
    assert server.wait_exit() == 3
    error = json.loads(server.out.lines[0])["error"]
    assert error["code"] == "SOCKET_PATH_UNSAFE"
    assert not (shared / "s.sock").exists()


def test_clean_env_drops_runlease_variables() -> None:
    env = clean_env({"RUNLEASE_SOCKET": "/x"})
    assert env["RUNLEASE_SOCKET"] == "/x"
    assert "RUNLEASE_HOME" not in env


def test_workspace_roots_let_completion_contracts_be_checked(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    root.mkdir()
    sock = tmp_path / "s.sock"
    server = Server.serve(
        "--data-dir", str(tmp_path / "data"), "--socket", str(sock),
        "--workspace-root", f"ws1={root}",
    )  # fmt: skip
    try:
        server.wait_listening()
        cli = Cli(sock)
        token = cli.ok("session", "open", "--agent", "builder")["session_token"]
        task = cli.ok(
            "task", "create", "build", "--workspace", "ws1", "--artifact", "dist/app.whl",
            "--start",
        )["task"]  # fmt: skip
        run_id = cli.ok("task", "next", "--workspace", "ws1", token=token)["run"]["id"]

        message = cli.fails(
            "task", "complete", run_id, code="COMPLETION_CONTRACT_UNMET", exit=3, token=token
        )
        assert "dist/app.whl" in message
        (root / "dist").mkdir()
        (root / "dist" / "app.whl").write_bytes(b"wheel")
        done = cli.ok("task", "complete", run_id, token=token)
        assert done["run"]["status"] == "completed"
        assert cli.ok("task", "show", task["id"])["task"]["status"] == "completed"

        # A workspace with no configured root cannot be checked, and says so.
        cli.ok("task", "create", "elsewhere", "--workspace", "ws2", "--artifact", "x", "--start")
        other = cli.ok("task", "next", "--workspace", "ws2", token=token)["run"]["id"]
        cli.fails("task", "complete", other, code="WORKSPACE_ROOT_UNKNOWN", exit=3, token=token)
    finally:
        assert server.stop() == 0


def test_a_malformed_workspace_root_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [*RUNLEASE, "serve", "--data-dir", str(tmp_path), "--workspace-root", "no-equals-sign"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "WORKSPACE=DIR" in done.stdout + done.stderr


def test_a_starvation_time_that_is_not_positive_is_a_usage_error(tmp_path: Path) -> None:
    for value in ("0", "-5", "inf"):
        done = subprocess.run(
            [*RUNLEASE, "serve", "--data-dir", str(tmp_path), "--starve-after", value],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, (value, done.stdout, done.stderr)
        assert "--starve-after takes a positive number of seconds" in done.stdout + done.stderr
