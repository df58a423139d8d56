"""The history survives restarts: ``task timeline`` after a clean stop shows what happened
before it, and after a kill -9 a reader resuming with ``--after`` gets every acknowledged
event once, then the new ones. Needs the durable event store."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cli_helpers import Cli, LineReader, Server, claim, queued_task

LINE_TIMEOUT = 30.0


@contextmanager
def serving(data: Path, sock: Path) -> Iterator[Server]:
    server = Server.serve("--data-dir", str(data), "--socket", str(sock))
    try:
        server.wait_listening()
        yield server
    finally:
        server.kill()


def test_task_timeline_shows_the_events_from_before_a_restart(tmp_path: Path) -> None:
    data, sock = tmp_path / "data", tmp_path / "s.sock"
    cli = Cli(socket=sock)
    with serving(data, sock) as server:
        _, token = cli.session("before")
        task = queued_task(cli, "ws", "remembered")
        run_id = claim(cli, token, "ws")["run"]["id"]
        cli.ok("task", "complete", run_id, token=token)
        before = cli.ok("task", "timeline", task["id"])["events"]
        assert server.stop() == 0
    assert [e["kind"] for e in before][:3] == ["task_created", "run_queued", "run_claimed"]
    with serving(data, sock) as server:
        after = cli.ok("task", "timeline", task["id"])["events"]
        assert after[: len(before)] == before
        assert cli.ok("events", "get", str(before[-1]["seq"])) == {"event": before[-1]}
        assert server.stop() == 0


def test_follow_resumes_after_a_kill_without_gaps_or_repeats(tmp_path: Path) -> None:
    data, sock = tmp_path / "data", tmp_path / "s.sock"
    cli = Cli(socket=sock)
    with serving(data, sock) as server:
        for i in range(5):
            queued_task(cli, "ws", f"t{i}")
        acknowledged = cli.ok("events")["events"]
        server.process.send_signal(signal.SIGKILL)
        server.wait_exit()
    resume_at = acknowledged[len(acknowledged) // 2]["seq"]
    with serving(data, sock) as server:
        stored = cli.ok("events")["events"]
        assert stored[: len(acknowledged)] == acknowledged
        follower = cli.popen(
            "events", "--follow", "--after", str(resume_at),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert follower.stdout is not None
            lines = LineReader(follower.stdout)
            expected = [e for e in stored if e["seq"] > resume_at]
            got: list[dict[str, Any]] = []
            for _ in expected:
                line = lines.next_line(timeout=LINE_TIMEOUT)
                assert line is not None
                got.append(json.loads(line))
            assert got == expected
            created = queued_task(cli, "ws", "after the kill")
            line = lines.wait_for(lambda text: created["id"] in text, LINE_TIMEOUT)
            assert json.loads(line)["seq"] > expected[-1]["seq"]
        finally:
            follower.send_signal(signal.SIGINT)
            follower.wait(timeout=LINE_TIMEOUT)
            follower.kill()
        assert server.stop() == 0
