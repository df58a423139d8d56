"""End to end: a real ``runlease serve`` subprocess driven through the real CLI.

One server serves the whole module. Tests keep out of each other's way by giving their
tasks a workspace of their own and claiming only from it.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import (
    TASK_SHOW_KEYS,
    Cli,
    LineReader,
    Server,
    assert_no_claim_tokens,
    claim,
    is_time,
    poll_until,
    queued_task,
)

TASK_FIELDS = {
    "id",
    "title",
    "description",
    "priority",
    "scope",
    "workspace_id",
    "max_attempts",
    "metadata",
    "required_capabilities",
    "status",
    "current_run_id",
    "created_at",
    "updated_at",
    "closed_at",
    # Task graph and operator fields.
    "parent_task_id",
    "blocked_by",
    "preferred_capabilities",
    "owner",
    "draft",
    "approval_policy",
    "approval_state",
    "required_artifacts",
    "canceled",
    "cancel_reason",
    "paused",
    "paused_by",
    "paused_at",
    "paused_reason",
    "checkpoints",
    # Operator verbs: start on its own once ready; idle time before `task stuck` lists it.
    "auto_enqueue_on_ready",
    "stale_after",
    # Labels to find and claim it by.
    "tags",
}
RUN_FIELDS = {
    "id",
    "task_id",
    "status",
    "attempt",
    "recovery_count",
    "session_id",
    "claimed_by",
    "claim_token_hash",
    "lease_until",
    "heartbeat_at",
    "queued_at",
    "queue_seq",
    "claimed_at",
    "ended_at",
    "error",
    "result",
    "failure_metadata",
    "previous_run_id",
    "reason",
    "failure_kind",
    "idempotency_key",
    "checkpoint_at",
    # How the last holder lost the run without finishing it (null until that happens).
    "lease_loss",
}
LEASE_FIELDS = {
    "run_id",
    "session_id",
    "lease_until",
    "claim_token_hash",
    "lease_seconds",
    "lease_seconds_clamped",
}


# --------------------------------------------------------------------------------- status
def test_status_reports_the_server_up_and_recovered(cli: Cli, server: tuple[Server, Path]) -> None:
    status = cli.ok("status")
    assert set(status) == {"server", "recovered", "durability", "counts"}
    assert status["server"]["up"] is True
    assert status["server"]["socket"] == str(server[1])
    assert status["server"]["pid"] == server[0].process.pid
    assert is_time(status["server"]["started_at"])
    assert status["recovered"] is True
    assert status["durability"] == "relaxed"
    assert set(status["counts"]) >= {"tasks", "queued_runs", "leased_runs", "live_sessions"}


# ------------------------------------------------------------------------------- sessions
def test_session_open_list_and_stop(cli: Cli) -> None:
    opened = cli.ok("session", "open", "--agent", "lister", "--capability", "gpu", "--ttl", "600")
    assert set(opened) == {"session_id", "session_token", "session"}
    assert opened["session_token"].startswith("rl_session_")
    session = opened["session"]
    assert session["id"] == opened["session_id"]
    assert session["agent"] == "lister"
    assert session["capabilities"] == ["gpu"]
    assert session["state"] == "live"
    assert is_time(session["opened_at"])
    assert is_time(session["ttl_deadline"])
    child = cli.ok("session", "open", "--agent", "child", "--parent", opened["session_id"])
    listed = cli.ok("session", "list")["sessions"]
    assert {opened["session_id"], child["session_id"]} <= {s["id"] for s in listed}
    assert opened["session_token"] not in str(listed)

    stopped = cli.ok("session", "stop", opened["session_id"], "--reason", "done for today")
    assert stopped["session_id"] == opened["session_id"]
    assert set(stopped["stopped_session_ids"]) == {opened["session_id"], child["session_id"]}
    assert stopped["released_run_ids"] == []
    live = {s["id"] for s in cli.ok("session", "list", "--live")["sessions"]}
    assert opened["session_id"] not in live
    assert child["session_id"] not in live
    cli.fails("session", "stop", "ses_nope", code="SESSION_NOT_FOUND", exit=4)


# ---------------------------------------------------------------------------------- tasks
def test_task_create_start_show_and_list(cli: Cli, ws: str) -> None:
    created = cli.ok(
        "task",
        "create",
        "write the report",
        "--description",
        "two pages",
        "--priority",
        "high",
        "--workspace",
        ws,
        "--max-attempts",
        "2",
        "--capability",
        "docs",
        "--metadata",
        '{"at": 5, "nested": {"lease_until": 1}}',
    )
    task = created["task"]
    assert set(created) == {"task"}
    assert set(task) == TASK_FIELDS
    assert task["status"] == "pending"
    assert task["priority"] == "high"
    assert task["workspace_id"] == ws
    assert task["scope"] == "workspace"
    assert task["max_attempts"] == 2
    assert task["required_capabilities"] == ["docs"]
    # Caller metadata is passed through untouched, even keys that look like times.
    assert task["metadata"] == {"at": 5, "nested": {"lease_until": 1}}
    assert is_time(task["created_at"])
    assert task["closed_at"] is None

    started = cli.ok("task", "start", task["id"])
    assert set(started) == {"run"}
    assert set(started["run"]) == RUN_FIELDS
    assert started["run"]["status"] == "queued"
    assert started["run"]["attempt"] == 1

    shown = cli.ok("task", "show", task["id"])
    # The full history sits beside the task and its runs.
    assert set(shown) == TASK_SHOW_KEYS
    assert shown["task"]["status"] == "ready"
    assert [r["id"] for r in shown["runs"]] == [started["run"]["id"]]
    # Started already: the answer is the queued run, marked, and nothing new is enqueued.
    again = cli.ok("task", "start", task["id"])
    assert (again["run"]["id"], again["already"]) == (started["run"]["id"], True)
    assert "already" not in started

    other = cli.ok("task", "create", "second", "--workspace", ws)["task"]
    listed = cli.ok("task", "list", "--workspace", ws)["tasks"]
    assert [t["id"] for t in listed] == [task["id"], other["id"]]
    ready = cli.ok("task", "list", "--workspace", ws, "--status", "ready")["tasks"]
    assert [t["id"] for t in ready] == [task["id"]]
    assert len(cli.ok("task", "list", "--limit", "1")["tasks"]) == 1


def test_not_found_and_invalid_input_exit_codes(cli: Cli, ws: str) -> None:
    cli.fails("task", "show", "tsk_missing", code="TASK_NOT_FOUND", exit=4)
    cli.fails("task", "start", "tsk_missing", code="TASK_NOT_FOUND", exit=4)
    cli.fails("task", "events", "tsk_missing", code="TASK_NOT_FOUND", exit=4)
    cli.fails("task", "create", "   ", code="INVALID_INPUT", exit=3)
    cli.fails("task", "create", "x", "--max-attempts", "11", code="INVALID_INPUT", exit=3)
    _, token = cli.session("bad-lease")
    cli.fails("task", "next", "--lease-seconds", "-1", token=token, code="INVALID_INPUT", exit=3)


def test_invalid_json_arguments_exit_3_with_a_clear_message(cli: Cli, ws: str) -> None:
    message = cli.fails(
        "task", "complete", "run_x", "--result", "{oops", code="INVALID_INPUT", exit=3
    )
    assert "--result is not valid JSON" in message
    message = cli.fails(
        "task",
        "fail",
        "run_x",
        "--error",
        "e",
        "--metadata",
        "[1, 2]",
        code="INVALID_INPUT",
        exit=3,
    )
    assert "--metadata must be a JSON object" in message
    message = cli.fails("task", "create", "t", "--metadata", "nope", code="INVALID_INPUT", exit=3)
    assert "--metadata is not valid JSON" in message


@pytest.mark.parametrize(
    "args",
    [
        ("bogus",),
        ("task",),
        ("task", "create"),
        ("task", "show"),
        ("task", "fail", "run_1"),
        ("task", "block", "run_1"),
        ("task", "create", "t", "--priority", "whenever"),
        ("task", "next", "--timeout", "soon"),
        ("session", "open", "--ttl", "forever"),
        ("--output", "xml", "status"),
    ],
    ids=lambda args: "-".join(args),
)
def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    if args == ("task",):
        # A group without a command prints its help, which is not an error.
        result = cli.run(*args)
        assert result.code == 0, str(result)
        return
    cli.fails(*args, code="USAGE", exit=2)


def test_unreachable_server_exits_6_naming_the_socket(tmp_path: Path) -> None:
    missing = tmp_path / "nobody-home.sock"
    cli = Cli(socket=missing)
    message = cli.fails("status", code="SERVER_UNAVAILABLE", exit=6)
    assert str(missing) in message
    message = cli.fails("--socket", str(missing), "task", "list", code="SERVER_UNAVAILABLE", exit=6)
    assert str(missing) in message


# --------------------------------------------------------------------------------- leases
def test_claim_heartbeat_complete(cli: Cli, ws: str) -> None:
    session_id, token = cli.session("worker")
    task = queued_task(cli, ws, "index the repo")
    claimed = claim(cli, token, ws, "--lease-seconds", "120")
    assert set(claimed) == {"task", "run", "lease"}
    assert set(claimed["task"]) == TASK_FIELDS
    assert set(claimed["run"]) == RUN_FIELDS
    assert set(claimed["lease"]) == LEASE_FIELDS
    assert claimed["task"]["id"] == task["id"]
    assert claimed["task"]["status"] == "in_progress"
    run = claimed["run"]
    assert (run["status"], run["attempt"], run["session_id"]) == ("claimed", 1, session_id)
    lease = claimed["lease"]
    assert lease["run_id"] == run["id"]
    assert lease["session_id"] == session_id
    assert is_time(lease["lease_until"])
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", lease["claim_token_hash"])
    assert lease["lease_seconds"] == 120
    assert lease["lease_seconds_clamped"] is False

    beat = cli.ok("task", "heartbeat", run["id"], "--lease-seconds", "600", token=token)
    assert set(beat) == {"run", "lease"}
    assert beat["run"]["status"] == "running"
    assert beat["lease"]["lease_until"] > lease["lease_until"]  # RFC 3339 sorts as text
    assert beat["lease"]["claim_token_hash"] == lease["claim_token_hash"]

    done = cli.ok("task", "complete", run["id"], "--result", '{"files": 120}', token=token)
    assert done["run"]["status"] == "completed"
    assert done["run"]["result"] == {"files": 120}
    assert done["run"]["claim_token_hash"] is None
    assert is_time(done["run"]["ended_at"])
    shown = cli.ok("task", "show", task["id"])
    assert shown["task"]["status"] == "completed"
    assert is_time(shown["task"]["closed_at"])


def test_lease_seconds_over_the_cap_are_clamped(cli: Cli, ws: str) -> None:
    _, token = cli.session("greedy")
    queued_task(cli, ws)
    claimed = claim(cli, token, ws, "--lease-seconds", str(10 * 24 * 3600))
    assert claimed["lease"]["lease_seconds"] == 24 * 3600
    assert claimed["lease"]["lease_seconds_clamped"] is True


def test_fail_release_and_block(cli: Cli, ws: str) -> None:
    _, token = cli.session("juggler")
    task = queued_task(cli, ws, "flaky")

    first = claim(cli, token, ws)["run"]
    released = cli.ok("task", "release", first["id"], "--reason", "handoff", token=token)
    assert released["run"]["status"] == "queued"
    assert released["run"]["reason"] == "handoff"
    assert released["run"]["attempt"] == 1

    again = claim(cli, token, ws)["run"]
    assert again["id"] == first["id"]
    failed = cli.ok(
        "task",
        "fail",
        again["id"],
        "--error",
        "tests failed",
        "--metadata",
        '{"command": "make test"}',
        token=token,
    )
    assert failed["run"]["status"] == "failed"
    assert failed["run"]["error"] == "tests failed"
    assert failed["run"]["failure_metadata"] == {"command": "make test"}
    assert cli.ok("task", "show", task["id"])["task"]["status"] == "ready"

    second = cli.ok("task", "start", task["id"])["run"]
    assert second["attempt"] == 2
    assert second["previous_run_id"] == first["id"]
    assert claim(cli, token, ws)["run"]["id"] == second["id"]
    blocked = cli.ok("task", "block", second["id"], "--reason", "needs a human", token=token)
    assert blocked["run"]["status"] == "needs_attention"
    assert blocked["run"]["reason"] == "needs a human"
    shown = cli.ok("task", "show", task["id"])
    assert shown["task"]["status"] == "needs_attention"
    assert [r["status"] for r in shown["runs"]] == ["failed", "needs_attention"]


def test_next_with_nothing_to_claim_exits_4(cli: Cli, ws: str) -> None:
    _, token = cli.session("idle")
    cli.fails("task", "next", "--workspace", ws, token=token, code="NO_CLAIMABLE_RUN", exit=4)
    began = time.monotonic()
    cli.fails(
        "task",
        "next",
        "--workspace",
        ws,
        "--wait",
        "--timeout",
        "0.5",
        token=token,
        code="NO_CLAIMABLE_RUN",
        exit=4,
    )
    assert time.monotonic() - began >= 0.5


def test_next_wait_is_handed_work_that_arrives_later(cli: Cli, ws: str) -> None:
    _, token = cli.session("patient")
    waiter = cli.popen(
        "task",
        "next",
        "--workspace",
        ws,
        "--wait",
        "--timeout",
        "60",
        token=token,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        task = queued_task(cli, ws, "late work")
        out, err = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert '"task":{"id":"' + task["id"] in out


# ------------------------------------------------------------------------- autonomy codes
def test_every_session_scoped_command_needs_a_session_token(cli: Cli) -> None:
    for args in [
        ("task", "next"),
        ("task", "heartbeat", "run_x"),
        ("task", "complete", "run_x"),
        ("task", "fail", "run_x", "--error", "e"),
        ("task", "release", "run_x"),
        ("task", "block", "run_x", "--reason", "r"),
    ]:
        message = cli.fails(*args, code="AUTONOMY_SESSION_REQUIRED", exit=5)
        assert "session" in message
    cli.fails(
        "--session-token",
        "rl_session_forged",
        "task",
        "next",
        code="AUTONOMY_SESSION_REQUIRED",
        exit=5,
    )


def test_no_active_lease_foreign_run_and_lease_already_held(cli: Cli, ws: str) -> None:
    _, alice = cli.session("alice")
    _, bob = cli.session("bob")
    queued_task(cli, ws, "one")
    queued_task(cli, ws, "two")
    run_a = claim(cli, alice, ws)["run"]["id"]
    # Bob holds nothing yet, and the run is Alice's.
    cli.fails("task", "heartbeat", run_a, token=bob, code="AUTONOMY_FOREIGN_RUN", exit=5)
    run_b = claim(cli, bob, ws)["run"]["id"]
    # Each holds a lease, but not on the other's run.
    cli.fails("task", "complete", run_b, token=alice, code="AUTONOMY_FOREIGN_RUN", exit=5)
    cli.fails("task", "release", run_a, token=bob, code="AUTONOMY_FOREIGN_RUN", exit=5)
    # One lease per session.
    cli.fails(
        "task", "next", "--workspace", ws, token=alice, code="AUTONOMY_LEASE_ALREADY_HELD", exit=5
    )
    # None of the refusals touched Bob's lease.
    assert cli.ok("task", "heartbeat", run_b, token=bob)["run"]["status"] == "running"
    # Once finished, the lease is gone and the run is done.
    cli.ok("task", "complete", run_a, token=alice)
    cli.fails("task", "heartbeat", run_a, token=alice, code="RUN_ALREADY_FINISHED", exit=3)


def test_a_lease_that_expires_between_two_commands(cli: Cli, ws: str) -> None:
    _, slow = cli.session("slowpoke")
    _, fast = cli.session("fast")
    task = queued_task(cli, ws, "short lease")
    held = claim(cli, slow, ws, "--lease-seconds", "1")["run"]

    def requeued() -> dict[str, Any] | None:
        run: dict[str, Any] = cli.ok("task", "show", task["id"])["runs"][-1]
        return run if run["status"] == "queued" else None

    run = poll_until(requeued, timeout=30, what="the expired run to be requeued")
    assert run["id"] == held["id"]
    assert run["reason"] == "lease_expired"
    assert run["recovery_count"] == 1
    assert run["claim_token_hash"] is None
    # The stale holder is told, and changes nothing.
    cli.fails("task", "heartbeat", held["id"], token=slow, code="AUTONOMY_LEASE_EXPIRED", exit=5)
    cli.fails("task", "complete", held["id"], token=slow, code="AUTONOMY_LEASE_EXPIRED", exit=5)
    # Someone else picks the same run up again.
    retaken = claim(cli, fast, ws)
    assert retaken["run"]["id"] == held["id"]
    assert retaken["run"]["attempt"] == 1
    cli.ok("task", "complete", held["id"], token=fast)
    kinds = [e["kind"] for e in cli.ok("task", "events", task["id"])["events"]]
    assert "lease_expired" in kinds


def test_stopping_a_session_requeues_its_run(cli: Cli, ws: str) -> None:
    session_id, token = cli.session("quitter")
    queued_task(cli, ws)
    run_id = claim(cli, token, ws)["run"]["id"]
    stopped = cli.ok("session", "stop", session_id)
    assert stopped["released_run_ids"] == [run_id]
    cli.fails("task", "next", "--workspace", ws, token=token, code="SESSION_STOPPED", exit=5)


# ---------------------------------------------------------------------------------- events
def test_events_list_and_follow(cli: Cli, ws: str) -> None:
    task = cli.ok("task", "create", "watched", "--workspace", ws)["task"]
    events = cli.ok("task", "events", task["id"])["events"]
    assert [e["kind"] for e in events] == ["task_created"]
    event = events[0]
    assert {"seq", "kind", "at", "task_id", "run_id", "session_id", "data"} <= set(event)
    assert is_time(event["at"])

    follower = cli.popen(
        "task", "events", task["id"], "--follow", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert follower.stdout is not None
        lines = LineReader(follower.stdout)
        first = lines.next_line(timeout=30)
        assert first is not None
        assert '"kind":"task_created"' in first
        cli.ok("task", "start", task["id"])
        second = lines.next_line(timeout=30)
        assert second is not None
        assert '"kind":"run_queued"' in second
        assert task["id"] in second
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130
    finally:
        follower.kill()


# ------------------------------------------------------------------------- human output
def test_table_output_and_table_errors(cli: Cli, ws: str) -> None:
    task = queued_task(cli, ws, "tabulated")
    shown = cli.run("-o", "table", "task", "show", task["id"])
    assert shown.code == 0, str(shown)
    assert "tabulated" in shown.stdout
    assert "runs (1)" in shown.stdout
    listed = cli.run("task", "list", "--workspace", ws, "--output", "table")
    assert listed.code == 0
    assert "tasks (1)" in listed.stdout
    missing = cli.run("-o", "table", "task", "show", "tsk_missing")
    assert missing.code == 4
    assert missing.stdout == ""
    assert missing.stderr.count("\n") == 1
    assert "TASK_NOT_FOUND" in missing.stderr
    usage = cli.run("-o", "table", "task", "frobnicate")
    assert usage.code == 2
    assert usage.stdout == ""
    assert "USAGE" in usage.stderr


def test_on_a_terminal_output_is_a_table_and_waiting_shows_a_spinner(cli: Cli, ws: str) -> None:
    _, token = cli.session("tty")
    primary, secondary = pty.openpty()
    try:
        process = cli.popen(
            "task",
            "next",
            "--workspace",
            ws,
            "--wait",
            "--timeout",
            "1",
            token=token,
            stdout=secondary,
            stderr=secondary,
        )
        os.close(secondary)
        screen = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        assert process.wait(timeout=30) == 4
    finally:
        os.close(primary)
    text = screen.decode(errors="replace")
    assert "waiting for a claimable run" in text
    assert "NO_CLAIMABLE_RUN" in text
    assert '{"error"' not in text  # a terminal gets the human form


def test_claim_tokens_never_appear_in_any_output(cli: Cli, ws: str) -> None:
    # Every command that takes, shows or ends a lease, in both output forms. (The cli
    # fixture applies the same check to whatever any other test printed.)
    _, token = cli.session("discreet")
    task = queued_task(cli, ws, "secret")
    run = claim(cli, token, ws)["run"]
    for output in ("json", "table"):
        for args in [
            ("task", "heartbeat", run["id"]),
            ("task", "show", task["id"]),
            ("task", "events", task["id"]),
            ("task", "list", "--workspace", ws),
            ("session", "list"),
        ]:
            result = cli.run("-o", output, *args, token=token)
            assert result.code == 0, str(result)
    cli.ok("task", "complete", run["id"], token=token)
    assert len(cli.outputs) >= 2 * 11
    assert_no_claim_tokens(cli)
