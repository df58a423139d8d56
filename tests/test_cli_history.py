"""End to end: ``runlease events`` (filters, get, --follow --after) and ``task events`` /
``task timeline`` against a real server."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from cli_helpers import RUNLEASE, Cli, LineReader, claim, clean_env, queued_task

LINE_TIMEOUT = 30.0


def follow_lines(cli: Cli, *args: str) -> tuple[subprocess.Popen[str], LineReader]:
    process = cli.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    return process, LineReader(process.stdout)


def next_event(lines: LineReader) -> dict[str, Any]:
    line = lines.next_line(timeout=LINE_TIMEOUT)
    assert line is not None, lines.lines
    event: dict[str, Any] = json.loads(line)
    return event


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(timeout=LINE_TIMEOUT) == 130
    finally:
        process.kill()


def test_events_filters_and_limit(cli: Cli, ws: str) -> None:
    session_id, token = cli.session("historian")
    task = queued_task(cli, ws, "filtered")
    other = queued_task(cli, ws, "other")
    claimed = claim(cli, token, ws)
    run_id = claimed["run"]["id"]
    assert claimed["task"]["id"] == task["id"]
    cli.ok("task", "complete", run_id, token=token)

    of_task = cli.ok("events", "--task", task["id"])["events"]
    assert [e["kind"] for e in of_task][:2] == ["task_created", "run_queued"]
    assert {e["task_id"] for e in of_task} == {task["id"]}
    assert of_task == cli.ok("task", "events", task["id"])["events"]

    of_run = cli.ok("events", "--run", run_id)["events"]
    assert {e["run_id"] for e in of_run} == {run_id}
    of_session = cli.ok("events", "--session", session_id)["events"]
    assert of_session[0]["kind"] == "session_opened"
    assert {e["session_id"] for e in of_session} == {session_id}

    typed = cli.ok("events", "--type", "task_created", "--type", "run_completed", "--run", run_id)
    assert [e["kind"] for e in typed["events"]] == ["run_completed"]
    both = cli.ok("events", "--task", other["id"], "--type", "task_created")["events"]
    assert [(e["kind"], e["task_id"]) for e in both] == [("task_created", other["id"])]

    first_two = cli.ok("events", "--task", task["id"], "--limit", "2")["events"]
    assert first_two == of_task[:2]
    after = cli.ok("events", "--task", task["id"], "--after", str(of_task[0]["seq"]))["events"]
    assert after == of_task[1:]


def test_events_get_and_event_not_found(cli: Cli, ws: str) -> None:
    task = queued_task(cli, ws, "gettable")
    [created, queued] = cli.ok("task", "events", task["id"])["events"]
    assert cli.ok("events", "get", str(queued["seq"])) == {"event": queued}
    message = cli.fails("events", "get", str(_newest(cli) + 1000), code="EVENT_NOT_FOUND", exit=4)
    assert "not been written yet" in message
    assert created["kind"] == "task_created"


def test_follow_after_a_seq_resumes_exactly_after_it(cli: Cli, ws: str) -> None:
    task = queued_task(cli, ws, "resumable")
    cli.ok("task", "pause", task["id"], "--reason", "wait")
    history = cli.ok("events", "--task", task["id"])["events"]
    assert [e["kind"] for e in history][:2] == ["task_created", "run_queued"]
    last_seen = history[0]["seq"]

    follower, lines = follow_lines(
        cli, "events", "--follow", "--task", task["id"], "--after", str(last_seen)
    )
    try:
        # What was written after the given seq comes first, exactly once, in order...
        replayed = [next_event(lines) for _ in history[1:]]
        assert replayed == history[1:]
        # ...then each new event as it is acknowledged.
        cli.ok("task", "resume", task["id"])
        live = next_event(lines)
        assert live["kind"] == "task_resumed"
        assert live["seq"] > history[-1]["seq"]
    finally:
        stop(follower)
    # `task events --follow --after` is the same stream for one task.
    follower, lines = follow_lines(
        cli, "task", "events", task["id"], "--follow", "--after", str(replayed[-1]["seq"])
    )
    try:
        assert next_event(lines) == live
    finally:
        stop(follower)


def test_global_follow_filters_by_type(cli: Cli, ws: str) -> None:
    follower, lines = follow_lines(
        cli, "events", "--follow", "--type", "task_created", "--after", str(_newest(cli))
    )
    try:
        first = queued_task(cli, ws, "one")
        second = queued_task(cli, ws, "two")
        assert [next_event(lines)["task_id"] for _ in range(2)] == [first["id"], second["id"]]
    finally:
        stop(follower)


def test_task_timeline_keeps_its_after_seq_flag(cli: Cli, ws: str) -> None:
    task = queued_task(cli, ws, "flags")
    events = cli.ok("task", "timeline", task["id"])["events"]
    assert [e["kind"] for e in events] == ["task_created", "run_queued"]
    for flag in ("--after", "--after-seq"):
        later = cli.ok("task", "timeline", task["id"], flag, str(events[0]["seq"]))["events"]
        assert later == events[1:]


def test_serve_refuses_a_history_limit_that_is_not_a_number(tmp_path: Path) -> None:
    for flag, value in (("--history-max-age", "-5"), ("--history-max-events", "lots")):
        done = subprocess.run(
            [*RUNLEASE, "serve", "--data-dir", str(tmp_path), flag, value],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, (flag, done.stdout, done.stderr)
        assert f"{flag} takes" in done.stdout + done.stderr


def _newest(cli: Cli) -> int:
    seq: int = cli.ok("status")["counts"]["last_event_seq"]
    return seq
