"""End to end: the task graph, operator controls and HZL verbs through the CLI.

One real ``runlease serve`` serves the module. Each test scopes its tasks to a workspace of
its own; the scheduler test pauses the whole server, so it resumes it before it ends. Setup
that is not under test (claiming a run ten times to reach the force rate limit) goes through
the Python client to keep the module fast; every command under test runs as a subprocess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cli_helpers import TASK_SHOW_KEYS, Cli, Server, claim, is_time, move_clock
from runlease.client import Client
from runlease.core.model import FORCE_RATE_LIMIT


def create(cli: Cli, ws: str, title: str, *extra: str) -> dict[str, Any]:
    task: dict[str, Any] = cli.ok("task", "create", title, "--workspace", ws, *extra)["task"]
    return task


def test_create_options_draft_publish_and_idempotent_start(cli: Cli, ws: str) -> None:
    parent = create(cli, ws, "parent")
    child = create(
        cli,
        ws,
        "child",
        "--parent",
        parent["id"],
        "--preferred-capability",
        "fast",
        "--owner-agent",
        "builder",
        "--draft",
        "--artifact",
        "out/report.md",
    )
    assert child["parent_task_id"] == parent["id"]
    assert child["preferred_capabilities"] == ["fast"]
    assert child["owner"] == {"kind": "pool", "ref": "builder"}
    assert child["draft"] is True
    assert child["required_artifacts"] == ["out/report.md"]
    assert "force_ops" not in child  # internal bookkeeping stays hidden
    # A draft cannot be started until published.
    cli.fails("task", "start", child["id"], code="TASK_IS_DRAFT", exit=3)
    first_publish = cli.ok("task", "publish", child["id"], "--no-start")
    published = first_publish["task"]
    assert published["draft"] is False
    assert "already" not in first_publish
    assert cli.ok("task", "publish", child["id"])["already"] is True
    first = cli.ok("task", "start", child["id"], "--idempotency-key", "k1")["run"]
    again = cli.ok("task", "start", child["id"], "--idempotency-key", "k1")["run"]
    assert first["id"] == again["id"]
    assert first["idempotency_key"] == "k1"
    cli.fails(
        "task", "create", "x", "--owner-agent", "a", "--owner-session", "s", code="USAGE", exit=2
    )


def test_manual_approval_approve_and_reject(cli: Cli, ws: str) -> None:
    task = create(cli, ws, "needs approval", "--approval", "manual")
    assert task["approval_policy"] == "manual"
    assert task["approval_state"] == "pending"
    cli.fails("task", "start", task["id"], code="APPROVAL_REQUIRED", exit=3)
    run = cli.ok("task", "approve", task["id"])["run"]
    assert run["task_id"] == task["id"]
    assert run["status"] == "queued"
    assert "already" not in run
    again = cli.ok("task", "approve", task["id"])
    assert (again["run"]["id"], again["already"]) == (run["id"], True)
    started = cli.ok("task", "start", task["id"])
    assert (started["run"]["id"], started["already"]) == (run["id"], True)
    other = create(cli, ws, "rejected", "--approval", "manual")
    rejected = cli.ok("task", "reject", other["id"], "--reason", "not needed")["task"]
    assert rejected["approval_state"] == "rejected"
    assert rejected["status"] == "blocked"
    # A rejection can be revisited: approving it later enqueues its run.
    assert cli.ok("task", "approve", other["id"])["run"]["status"] == "queued"
    cli.fails("task", "approve", "tsk_missing", code="TASK_NOT_FOUND", exit=4)


def test_approval_policy_is_a_mutable_field(cli: Cli, ws: str) -> None:
    task = create(cli, ws, "later gated")
    gated = cli.ok("task", "update", task["id"], "--approval-policy", "manual")["task"]
    assert (gated["approval_policy"], gated["approval_state"]) == ("manual", "pending")
    assert gated["status"] == "blocked"
    cli.fails("task", "start", task["id"], code="APPROVAL_REQUIRED", exit=3)
    open_again = cli.ok("task", "update", task["id"], "--approval-policy", "none")["task"]
    assert (open_again["approval_state"], open_again["status"]) == ("not_required", "pending")


def test_a_child_of_a_workspace_task_stays_in_its_workspace(cli: Cli, ws: str) -> None:
    parent = create(cli, ws, "parent")
    message = cli.fails(
        "task", "create", "stray", "--parent", parent["id"], code="INVALID_SCOPE_BINDING", exit=3
    )
    assert ws in message
    assert create(cli, ws, "child", "--parent", parent["id"])["parent_task_id"] == parent["id"]


def test_update_mutable_fields_and_refuse_immutable_ones(cli: Cli, ws: str) -> None:
    task = create(cli, ws, "before")
    updated = cli.ok(
        "task",
        "update",
        task["id"],
        "--title",
        "after",
        "--priority",
        "high",
        "--max-attempts",
        "5",
        "--metadata",
        '{"k": [1, 2]}',
        "--owner-session",
        "ses_someone",
    )["task"]
    assert updated["title"] == "after"
    assert updated["priority"] == "high"
    assert updated["max_attempts"] == 5
    assert updated["metadata"] == {"k": [1, 2]}
    assert updated["owner"] == {"kind": "agent_session", "ref": "ses_someone"}
    cleared = cli.ok("task", "update", task["id"], "--no-owner")["task"]
    assert cleared["owner"] is None
    message = cli.fails(
        "task",
        "update",
        task["id"],
        "--changes",
        '{"workspace_id": "elsewhere"}',
        code="IMMUTABLE_FIELD",
        exit=3,
    )
    assert "workspace_id" in message
    cli.fails("task", "update", task["id"], code="USAGE", exit=2)


def test_delete_refused_with_children_then_allowed(cli: Cli, ws: str) -> None:
    parent = create(cli, ws, "parent")
    child = create(cli, ws, "child", "--parent", parent["id"])
    cli.fails("task", "delete", parent["id"], code="TASK_HAS_CHILDREN", exit=3)
    started = create(cli, ws, "has a run", "--start")
    cli.fails("task", "delete", started["id"], code="TASK_HAS_ACTIVE_RUNS", exit=3)
    assert cli.ok("task", "delete", child["id"])["task"]["id"] == child["id"]
    assert cli.ok("task", "delete", parent["id"])["task"]["id"] == parent["id"]
    cli.fails("task", "show", parent["id"], code="TASK_NOT_FOUND", exit=4)


def test_depend_blocks_claims_until_the_blocker_completes(cli: Cli, ws: str) -> None:
    _, token = cli.session("graph")
    _, other = cli.session("graph-2")
    blocker = create(cli, ws, "blocker")
    waiter = create(cli, ws, "waiter", "--priority", "urgent")
    depended = cli.ok("task", "depend", waiter["id"], "--on", blocker["id"])["task"]
    assert depended["blocked_by"] == [blocker["id"]]
    cli.fails(
        "task", "depend", blocker["id"], "--on", waiter["id"], code="DEPENDENCY_CYCLE", exit=3
    )
    cli.ok("task", "start", waiter["id"])
    cli.ok("task", "start", blocker["id"])
    # The urgent waiter is blocked, so the blocker is handed out first.
    first = claim(cli, token, ws)
    assert first["task"]["id"] == blocker["id"]
    cli.fails("task", "next", "--workspace", ws, code="NO_CLAIMABLE_RUN", exit=4, token=other)
    cli.ok("task", "complete", first["run"]["id"], token=token)
    assert claim(cli, token, ws)["task"]["id"] == waiter["id"]
    undepended = cli.ok("task", "undepend", waiter["id"], "--on", blocker["id"])["task"]
    assert undepended["blocked_by"] == []


def test_pause_resume_and_cancel_cascade(cli: Cli, ws: str) -> None:
    _, token = cli.session("pauser")
    parent = create(cli, ws, "parent")
    child = create(cli, ws, "child", "--parent", parent["id"], "--start")
    paused = cli.ok("task", "pause", parent["id"], "--reason", "hold on")["task"]
    assert paused["paused"] is True
    assert paused["paused_reason"] == "hold on"
    assert is_time(paused["paused_at"])
    # The child inherits the pause: nothing to claim.
    cli.fails("task", "next", "--workspace", ws, code="NO_CLAIMABLE_RUN", exit=4, token=token)
    shown = cli.ok("task", "show", child["id"])
    assert shown["pause"]["effective_paused"] is True
    assert shown["pause"]["paused_by_task_id"] == parent["id"]
    assert cli.ok("task", "resume", parent["id"])["task"]["paused"] is False
    cli.fails("task", "pause", parent["id"], code="USAGE", exit=2)  # --reason is required
    canceled = cli.ok("task", "cancel", parent["id"], "--reason", "obsolete")["task"]
    assert canceled["canceled"] is True
    child_after = cli.ok("task", "show", child["id"])
    assert child_after["task"]["status"] == "canceled"
    assert child_after["runs"][-1]["status"] == "canceled"
    cli.fails("task", "next", "--workspace", ws, code="NO_CLAIMABLE_RUN", exit=4, token=token)


def test_run_cancel_retry_and_force_operations(cli: Cli, ws: str) -> None:
    _, token = cli.session("runner")
    task = create(cli, ws, "runs", "--start", "--max-attempts", "3")
    run = claim(cli, token, ws)["run"]
    released = cli.ok("run", "force-release", run["id"], "--reason", "agent hung")["run"]
    assert released["status"] == "queued"
    cli.fails("run", "force-release", run["id"], code="USAGE", exit=2)  # --reason is required
    cli.fails(
        "run", "force-release", run["id"], "--reason", " ", code="FORCE_REASON_REQUIRED", exit=3
    )
    run = claim(cli, token, ws)["run"]
    failed = cli.ok("run", "force-fail", run["id"], "--reason", "broken")["run"]
    assert failed["status"] == "failed"
    assert failed["failure_kind"] == "operator_forced"
    retried = cli.ok("run", "retry", failed["id"])
    assert retried["previous_run"]["id"] == failed["id"]
    assert retried["run"]["previous_run_id"] == failed["id"]
    assert retried["run"]["status"] == "queued"
    cli.fails("run", "retry", retried["run"]["id"], code="INVALID_TRANSITION", exit=3)
    canceled = cli.ok("run", "cancel", retried["run"]["id"], "--reason", "enough")["run"]
    assert canceled["status"] == "canceled"
    cli.fails("run", "cancel", "run_missing", code="RUN_NOT_FOUND", exit=4)
    assert task["id"] == canceled["task_id"]


def test_force_operations_are_rate_limited_per_task(
    cli: Cli, ws: str, server: tuple[Server, Path]
) -> None:
    session_id, token = cli.session("limited")
    task = create(cli, ws, "limited", "--start")
    with Client(server[1], session_token=token) as client:
        for _ in range(FORCE_RATE_LIMIT):
            run = client.claim_next(workspace=ws)
            client.force_release(run.run.id, reason="again")
        run = client.claim_next(workspace=ws)
    assert run.run.session_id == session_id
    message = cli.fails(
        "run",
        "force-release",
        run.run.id,
        "--reason",
        "once more",
        code="FORCE_RATE_LIMITED",
        exit=3,
    )
    assert task["id"] in message


def test_bulk_force_reports_one_outcome_per_run(cli: Cli, ws: str) -> None:
    _, token = cli.session("bulk")
    _, other = cli.session("bulk-2")
    create(cli, ws, "a", "--start")
    create(cli, ws, "b", "--start")
    first = claim(cli, token, ws)["run"]["id"]
    second = claim(cli, other, ws)["run"]["id"]
    result = cli.ok("run", "bulk-force-release", first, "run_missing", "--reason", "maintenance")
    assert result["ok"] == 1
    assert result["failed"] == 1
    by_run = {item["run_id"]: item for item in result["items"]}
    assert by_run[first]["ok"] is True
    assert by_run[first]["run"]["status"] == "queued"
    assert by_run["run_missing"]["ok"] is False
    assert by_run["run_missing"]["code"] == "RUN_NOT_FOUND"
    failed = cli.ok("run", "bulk-force-fail", second, "--reason", "maintenance")
    assert failed["items"][0]["run"]["status"] == "failed"
    too_many = [f"run_{n}" for n in range(51)]
    cli.fails("run", "bulk-force-fail", *too_many, "--reason", "x", code="BULK_TOO_LARGE", exit=3)
    cli.fails("run", "bulk-force-fail", "--reason", "x", code="USAGE", exit=2)


def test_checkpoint_show_timeline_and_inspect(cli: Cli, ws: str) -> None:
    session_id, token = cli.session("writer")
    task = create(cli, ws, "notes", "--start")
    claimed = claim(cli, token, ws)
    noted = cli.ok("task", "checkpoint", task["id"], "half way", "--author", "ann", token=token)
    checkpoint = noted["task"]["checkpoints"][-1]
    assert checkpoint["note"] == "half way"
    assert checkpoint["author"] == "ann"
    assert is_time(checkpoint["at"])
    cli.fails("task", "checkpoint", "tsk_missing", "x", code="TASK_NOT_FOUND", exit=4)

    shown = cli.ok("task", "show", task["id"])
    assert set(shown) == TASK_SHOW_KEYS
    assert [c["note"] for c in shown["checkpoints"]] == ["half way"]
    kinds = [event["kind"] for event in shown["events"]]
    assert kinds
    assert all(is_time(event["at"]) for event in shown["events"])

    events = cli.ok("task", "timeline", task["id"])["events"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    # Every write over the CLI says who did it and through which surface.
    created = events[0]
    assert created["origin"]["kind"] == "cli"
    assert created["actor"] == {"kind": "human", "ref": "operator"}
    noted_event = events[-1]
    assert noted_event["actor"] == {"kind": "agent_session", "ref": session_id}
    later = cli.ok("task", "timeline", task["id"], "--after-seq", str(events[-2]["seq"]))
    assert [e["seq"] for e in later["events"]] == [events[-1]["seq"]]
    cli.fails("task", "timeline", "tsk_missing", code="TASK_NOT_FOUND", exit=4)

    view = cli.ok("task", "inspect", task["id"])
    assert view["target"] == "task"
    assert view["task"]["id"] == task["id"]
    assert view["next_action"] == "running"
    assert view["current_run"]["run_id"] == claimed["run"]["id"]
    assert re.fullmatch(r"[0-9a-f]{8}", view["current_run"]["claim_token_hash_prefix"])
    assert is_time(view["as_of"])
    run_view = cli.ok("run", "inspect", claimed["run"]["id"])
    assert run_view["target"] == "run"
    # target_run is left out when the run asked about is the task's current run.
    assert run_view["target_run"] is None
    assert run_view["current_run"]["run_id"] == claimed["run"]["id"]
    cli.fails("run", "inspect", "run_missing", code="RUN_NOT_FOUND", exit=4)


def test_stuck_and_steal(skewed: tuple[Cli, Path]) -> None:
    # A server whose wall clock the test moves: the lease runs out for every command at
    # once, while the lease clock (on trio's monotonic clock, 600 s away) has not fired, so
    # nothing here races real time or the start of a CLI process.
    cli, skew = skewed
    _, holder = cli.session("holder")
    thief_id, thief = cli.session("thief")
    task = cli.ok("task", "create", "contested", "--start")["task"]
    run = cli.ok("task", "next", "--lease-seconds", "600", token=holder)["run"]
    # Live lease: --if-expired refuses.
    cli.fails(
        "task", "steal", task["id"], "--if-expired", code="LEASE_NOT_EXPIRED", exit=5, token=thief
    )
    move_clock(skew, 3600)  # the lease's deadline is now 50 minutes ago
    stuck = cli.ok("task", "stuck", "--threshold", "0")["stuck"]
    mine = [row for row in stuck if row["run_id"] == run["id"]]
    assert [row["kind"] for row in mine] == ["lease_expired"]
    assert is_time(mine[0]["since"])
    assert mine[0]["seconds"] >= 3000
    stolen = cli.ok("task", "steal", task["id"], "--if-expired", token=thief)
    assert stolen["run"]["id"] == run["id"]
    assert stolen["run"]["session_id"] == thief_id
    assert set(stolen) == {"task", "run", "lease"}
    # --force is an operator action: a session is refused, and the thief keeps the lease.
    message = cli.fails(
        "task",
        "steal",
        task["id"],
        "--force",
        "--reason",
        "mine now",
        code="FORBIDDEN_OPERATOR_ACTION",
        exit=5,
        token=holder,
    )
    assert "--allow-agent-force" in message
    assert cli.ok("task", "show", task["id"])["runs"][-1]["session_id"] == thief_id
    cli.fails("task", "steal", task["id"], code="USAGE", exit=2, token=holder)
    cli.fails("task", "steal", task["id"], "--force", code="AUTONOMY_SESSION_REQUIRED", exit=5)
    cli.fails("task", "stuck", "--threshold", "-1", code="INVALID_INPUT", exit=3)


def test_next_filters_priority_min_and_scope(cli: Cli, ws: str) -> None:
    _, token = cli.session("picky")
    create(cli, ws, "low", "--start", "--priority", "low")
    cli.fails(
        "task",
        "next",
        "--workspace",
        ws,
        "--priority-min",
        "high",
        code="NO_CLAIMABLE_RUN",
        exit=4,
        token=token,
    )
    high = create(cli, ws, "high", "--start", "--priority", "high")
    got = claim(cli, token, ws, "--priority-min", "high", "--scope", "workspace")
    assert got["task"]["id"] == high["id"]
    cli.fails(
        "task",
        "next",
        "--workspace",
        ws,
        "--scope",
        "global",
        code="INVALID_INPUT",
        exit=3,
        token=token,
    )


def test_scheduler_pause_status_backlog_drain_resume(cli: Cli, ws: str) -> None:
    _, token = cli.session("sched")
    task = create(cli, ws, "queued", "--start")
    try:
        paused = cli.ok("scheduler", "pause", "--reason", "deploy")["scheduler"]
        assert paused["paused"] is True
        assert paused["paused_reason"] == "deploy"
        assert is_time(paused["paused_at"])
        cli.fails("task", "next", "--workspace", ws, code="NO_CLAIMABLE_RUN", exit=4, token=token)
        status = cli.ok("scheduler", "status")["scheduler"]
        assert status["paused"] is True
        assert status["queued_run_count"] >= 1
        assert is_time(status["as_of"])
        backlog = cli.ok("scheduler", "backlog", "--workspace", ws, "--limit", "10")
        assert [row["task"]["id"] for row in backlog["backlog"]] == [task["id"]]
        assert backlog["total"] == 1
        assert backlog["next_after"] is None
        assert "force_ops" not in backlog["backlog"][0]["task"]
        drained = cli.ok("scheduler", "drain", "--timeout", "0.2")
        assert drained["scheduler"]["paused"] is True
        assert isinstance(drained["completed"], bool)
        assert drained["remaining_claims"] >= 0
        assert is_time(drained["started_at"])
        assert is_time(drained["completed_at"])
        cli.fails("scheduler", "drain", "--timeout", "-1", code="INVALID_INPUT", exit=3)
        cli.fails("scheduler", "backlog", "--limit", "0", code="INVALID_INPUT", exit=3)
    finally:
        resumed = cli.ok("scheduler", "resume")["scheduler"]
    assert resumed["paused"] is False
    assert claim(cli, token, ws)["task"]["id"] == task["id"]


def test_operator_verbs_unblock_recover_reopen_and_auto_enqueue(cli: Cli, ws: str) -> None:
    _, token = cli.session("worker")
    blocker = create(cli, ws, "blocker", "--start")
    waiter = create(cli, ws, "waiter", "--auto-enqueue", "--stale-after", "30")
    assert (waiter["auto_enqueue_on_ready"], waiter["stale_after"]) == (True, 30.0)
    cli.ok("task", "depend", waiter["id"], "--on", blocker["id"])
    run = claim(cli, token, ws)["run"]
    assert run["task_id"] == blocker["id"]
    cli.ok("task", "complete", run["id"], token=token)
    # The waiter started by itself the moment its blocker completed.
    started = claim(cli, token, ws)["run"]
    assert started["task_id"] == waiter["id"]

    # A block waits for a person, who clears it (operator commands carry no session).
    cli.ok("task", "block", started["id"], "--reason", "which region?", token=token)
    unblocked = cli.ok("task", "unblock", waiter["id"], "--reason", "eu-west")["run"]
    assert (unblocked["id"], unblocked["status"]) == (started["id"], "queued")
    again = claim(cli, token, ws)["run"]
    cli.ok("task", "block", again["id"], "--reason", "still unsure", token=token)
    recovered = cli.ok("run", "recover", again["id"])["run"]
    assert (recovered["status"], recovered["reason"]) == ("queued", "recovered")
    cli.fails("run", "recover", again["id"], code="INVALID_TRANSITION", exit=3)
    cli.fails("task", "unblock", waiter["id"], code="INVALID_TRANSITION", exit=3)

    # A completed task can be reopened; an open one cannot.
    cli.fails("task", "reopen", waiter["id"], code="INVALID_TRANSITION", exit=3)
    cli.ok("task", "complete", claim(cli, token, ws)["run"]["id"], token=token)
    reopened = cli.ok("task", "reopen", waiter["id"], "--reason", "redo")["run"]
    assert (reopened["status"], reopened["attempt"]) == ("queued", 1)
    assert reopened["previous_run_id"] == started["id"]

    updated = cli.ok("task", "update", waiter["id"], "--auto-enqueue", "off", "--stale-after", "0")[
        "task"
    ]
    assert (updated["auto_enqueue_on_ready"], updated["stale_after"]) == (False, None)
    cli.fails("task", "reopen", "tsk_missing", code="TASK_NOT_FOUND", exit=4)
