"""``task context`` and the session hygiene columns, through real ``runlease`` processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cli_helpers import RUNLEASE, Cli, claim, clean_env, is_time, queued_task


def test_the_holder_reads_the_context_and_others_are_refused(cli: Cli, ws: str) -> None:
    task = queued_task(cli, ws, "context please", "--description", "é" * 16_000)
    _, token = cli.session("holder")
    _, other = cli.session("other")
    run = claim(cli, token, ws, "--lease-seconds", "120")["run"]
    cli.ok("task", "checkpoint", task["id"], "half way there", token=token)

    bundle = cli.ok("task", "context", run["id"], token=token)
    assert bundle["task"]["id"] == task["id"]
    assert bundle["run"]["id"] == run["id"]
    assert [c["note"] for c in bundle["checkpoints"]] == ["half way there"]
    assert "task_created" in [e["kind"] for e in bundle["recent_events"]]
    assert bundle["limits"]["lease_seconds"] == 120.0
    assert is_time(bundle["limits"]["lease_until"])
    assert bundle["max_bytes"] == 64 * 1024
    # The long description was shortened, and the bundle says so.
    assert bundle["truncated"] is True
    assert bundle["shortened"] == ["task.description"]
    assert "…[shortened:" in bundle["task"]["description"]
    assert len(bundle["task"]["description"]) < 16_000

    cli.fails("task", "context", run["id"], token=other, code="AUTONOMY_FOREIGN_RUN", exit=5)
    cli.fails("task", "context", run["id"], code="AUTONOMY_SESSION_REQUIRED", exit=5)
    cli.fails("task", "context", "run_nope", token=token, code="RUN_NOT_FOUND", exit=4)
    cli.ok("task", "release", run["id"], token=token)
    cli.fails("task", "context", run["id"], token=token, code="AUTONOMY_NO_ACTIVE_LEASE", exit=5)


def test_session_list_live_shows_age_and_last_activity(cli: Cli) -> None:
    session_id, _ = cli.session("hygiene")
    live = {s["id"]: s for s in cli.ok("session", "list", "--live")["sessions"]}
    mine = live[session_id]
    assert isinstance(mine["age_seconds"], float)
    assert mine["age_seconds"] >= 0
    assert is_time(mine["last_active_at"])

    cli.env["COLUMNS"] = "400"  # wide enough that no header wraps
    table = cli.run("-o", "table", "session", "list", "--live")
    assert table.code == 0, str(table)
    header = next(line for line in table.stdout.splitlines() if "agent" in line)
    assert "age_seconds" in header
    assert "last_active_at" in header
    assert session_id in table.stdout


def test_serve_refuses_a_bad_idle_timeout(tmp_path: Path) -> None:
    for value in ("-5", "inf", "soon"):
        done = subprocess.run(
            [*RUNLEASE, "serve", "--data-dir", str(tmp_path), "--session-idle-timeout", value],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, (value, done.stdout, done.stderr)
        assert "--session-idle-timeout takes seconds" in done.stdout + done.stderr
