"""End to end: ``task complete|fail|release RUN_ID --next`` against a real server.

One request finishes the run and claims the session's next one. The exit code is the
finish's: 0 once the finish is recorded, with ``next`` holding the claim (shaped like
``task next``) or ``null`` and ``no_claim`` saying why; a refused finish exits with its own
code and claims nothing.
"""

from __future__ import annotations

import json
import subprocess
import time

from cli_helpers import Cli, assert_no_claim_tokens, claim, queued_task


def test_complete_next_finishes_and_claims_in_one_command(cli: Cli, ws: str) -> None:
    session_id, token = cli.session("looper")
    first = queued_task(cli, ws, "first", "--priority", "high")
    second = queued_task(cli, ws, "second")
    run = claim(cli, token, ws)["run"]
    assert run["task_id"] == first["id"]

    out = cli.ok(
        "task",
        "complete",
        run["id"],
        "--result",
        '{"ok": true}',
        "--next",
        "--workspace",
        ws,
        "--lease-seconds",
        "120",
        token=token,
    )
    assert set(out) == {"run", "next", "no_claim"}
    assert out["no_claim"] is None
    assert (out["run"]["id"], out["run"]["status"]) == (run["id"], "completed")
    assert out["run"]["result"] == {"ok": True}
    following = out["next"]
    assert set(following) == {"task", "run", "lease"}  # the shape of `task next`
    assert following["task"]["id"] == second["id"]
    assert following["run"]["status"] == "claimed"
    assert following["lease"]["session_id"] == session_id
    assert following["lease"]["lease_seconds"] == 120

    # fail --next: the failure is recorded, and with nothing left the claim part says so.
    out = cli.ok(
        "task",
        "fail",
        following["run"]["id"],
        "--error",
        "tests failed",
        "--next",
        "--workspace",
        ws,
        token=token,
    )
    assert out["run"]["status"] == "failed"
    assert out["next"] is None
    assert out["no_claim"]["code"] == "NO_CLAIMABLE_RUN"
    assert cli.ok("task", "show", second["id"])["task"]["status"] == "ready"
    assert cli.ok("session", "list")["sessions"]  # the server is still fine


def test_nothing_to_claim_after_a_finish_exits_0_and_the_finish_is_recorded(
    cli: Cli, ws: str
) -> None:
    _, token = cli.session("last-one")
    task = queued_task(cli, ws, "only")
    run = claim(cli, token, ws)["run"]
    result = cli.run("task", "complete", run["id"], "--next", "--workspace", ws, token=token)
    assert result.code == 0, str(result)
    out = result.json
    assert out["run"]["status"] == "completed"
    assert out["next"] is None
    assert out["no_claim"]["code"] == "NO_CLAIMABLE_RUN"
    assert out["no_claim"]["message"]
    shown = cli.ok("task", "show", task["id"])
    assert shown["task"]["status"] == "completed"
    assert [r["status"] for r in shown["runs"]] == ["completed"]
    # The session holds nothing: a plain claim says there is nothing either.
    cli.fails("task", "next", "--workspace", ws, token=token, code="NO_CLAIMABLE_RUN", exit=4)


def test_a_refused_finish_claims_nothing(cli: Cli, ws: str) -> None:
    _, mine = cli.session("owner")
    _, other = cli.session("intruder")
    queued_task(cli, ws, "held")
    waiting = queued_task(cli, ws, "waiting")
    run = claim(cli, mine, ws)["run"]
    # Another session's run: AUTONOMY_FOREIGN_RUN, and no claim is made for the caller.
    cli.fails(
        "task",
        "complete",
        run["id"],
        "--next",
        "--workspace",
        ws,
        token=other,
        code="AUTONOMY_FOREIGN_RUN",
        exit=5,
    )
    assert cli.ok("task", "show", waiting["id"])["task"]["status"] == "ready"
    # The holder's own finish of a run it does not hold: AUTONOMY_FOREIGN_RUN.
    theirs = claim(cli, other, ws)["run"]
    cli.fails(
        "task",
        "release",
        theirs["id"],
        "--next",
        token=mine,
        code="AUTONOMY_FOREIGN_RUN",
        exit=5,
    )
    assert cli.ok("task", "show", theirs["task_id"])["task"]["status"] == "in_progress"
    assert cli.ok("task", "show", run["task_id"])["task"]["status"] == "in_progress"


def test_release_next_may_take_the_same_run_back(cli: Cli, ws: str) -> None:
    _, token = cli.session("handoff")
    queued_task(cli, ws, "sticky")
    run = claim(cli, token, ws)["run"]
    out = cli.ok(
        "task", "release", run["id"], "--reason", "retry", "--next", "--workspace", ws,
        token=token,
    )  # fmt: skip
    assert out["run"]["status"] == "queued"
    assert out["next"]["run"]["id"] == run["id"]
    assert out["next"]["run"]["status"] == "claimed"


def test_next_wait_is_handed_work_that_arrives_later(cli: Cli, ws: str) -> None:
    _, token = cli.session("patient")
    queued_task(cli, ws, "now")
    run = claim(cli, token, ws)["run"]
    waiter = cli.popen(
        "task",
        "complete",
        run["id"],
        "--next",
        "--wait",
        "--timeout",
        "60",
        "--workspace",
        ws,
        token=token,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Queue the next task only once the finish is recorded, so the claim had to wait.
        deadline = time.monotonic() + 30
        while cli.ok("task", "show", run["task_id"])["task"]["status"] != "completed":
            assert time.monotonic() < deadline, "the finish never happened"
            time.sleep(0.05)
        later = queued_task(cli, ws, "later")
        out, err = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    document = json.loads(out)
    assert document["run"]["status"] == "completed"
    assert document["next"]["task"]["id"] == later["id"]
    assert document["no_claim"] is None


def test_next_wait_times_out_with_the_finish_recorded(cli: Cli, ws: str) -> None:
    _, token = cli.session("timeout")
    queued_task(cli, ws, "the only one")
    run = claim(cli, token, ws)["run"]
    began = time.monotonic()
    out = cli.ok(
        "task", "complete", run["id"], "--next", "--timeout", "0.5", "--workspace", ws, token=token
    )
    assert time.monotonic() - began >= 0.5
    assert out["run"]["status"] == "completed"
    assert out["next"] is None
    assert out["no_claim"]["code"] == "NO_CLAIMABLE_RUN"


def test_claim_options_without_next_are_a_usage_error(cli: Cli, ws: str) -> None:
    _, token = cli.session("confused")
    queued_task(cli, ws, "x")
    run = claim(cli, token, ws)["run"]
    cli.fails("task", "complete", run["id"], "--wait", token=token, code="USAGE", exit=2)
    cli.fails("task", "release", run["id"], "--workspace", ws, token=token, code="USAGE", exit=2)
    assert cli.ok("task", "complete", run["id"], token=token)["run"]["status"] == "completed"


def test_table_output_shows_the_finish_and_the_claim_part(cli: Cli, ws: str) -> None:
    _, token = cli.session("human")
    queued_task(cli, ws, "a")
    run = claim(cli, token, ws)["run"]
    result = cli.run(
        "-o", "table", "task", "complete", run["id"], "--next", "--workspace", ws, token=token
    )
    assert result.code == 0, str(result)
    assert "completed" in result.stdout
    assert "NO_CLAIMABLE_RUN" in result.stdout


def test_claim_tokens_never_appear_in_any_output(cli: Cli, ws: str) -> None:
    # Each finish with --next claims again, in both output forms. (The cli fixture applies
    # the same check to whatever any other test printed.)
    _, token = cli.session("discreet")
    for title in ("a", "b", "c"):
        queued_task(cli, ws, title)
    run = claim(cli, token, ws)["run"]
    out = cli.ok("task", "complete", run["id"], "--next", "--workspace", ws, token=token)
    run = out["next"]["run"]
    table = cli.run(
        "-o", "table", "task", "release", run["id"], "--next", "--workspace", ws, token=token
    )
    assert table.code == 0, str(table)
    assert_no_claim_tokens(cli)


def test_next_takes_the_claim_filters_of_task_next(cli: Cli, ws: str) -> None:
    _, token = cli.session("picky")
    first = queued_task(cli, ws, "urgent one", "--priority", "urgent")
    low = queued_task(cli, ws, "low one", "--priority", "low")
    run = claim(cli, token, ws)["run"]
    assert run["task_id"] == first["id"]

    out = cli.ok(
        "task", "complete", run["id"], "--next", "--workspace", ws, "--priority-min", "high",
        token=token,
    )  # fmt: skip
    assert out["run"]["status"] == "completed"
    assert out["next"] is None
    assert out["no_claim"]["code"] == "NO_CLAIMABLE_RUN"
    # The low-priority run is still there for a claimer without the filter.
    assert claim(cli, token, ws)["task"]["id"] == low["id"]

    cli.fails("task", "release", "run_x", "--priority-min", "high", code="USAGE", exit=2)
