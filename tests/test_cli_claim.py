"""End to end: ``task claim TASK`` and ``run claim RUN`` against a real server, and claims
from separate processes racing for one run.

A claim by id follows the rules of ``task next``: the same filters and workspace scope,
one lease per session, nothing blocked or paused. When ``task next`` could not hand the
run to this session the claim exits 4 with NO_CLAIMABLE_RUN and says why. Whatever the
interleaving of processes, one run goes to exactly one session.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from cli_helpers import COMMAND_TIMEOUT, Cli, claim, poll_until, queued_task

RACE_ROUNDS = 4


def test_task_claim_and_run_claim_take_the_chosen_run(cli: Cli, ws: str) -> None:
    session_id, token = cli.session("chooser")
    first = queued_task(cli, ws, "first", "--priority", "urgent")
    second = queued_task(cli, ws, "second", "--priority", "low")
    # task next would take the urgent one; the claim by id takes the one named.
    claimed = cli.ok("task", "claim", second["id"], "--workspace", ws, token=token)
    assert set(claimed) == {"task", "run", "lease"}
    assert claimed["task"]["id"] == second["id"]
    assert (claimed["run"]["status"], claimed["run"]["session_id"]) == ("claimed", session_id)
    done = cli.ok("task", "complete", claimed["run"]["id"], token=token)
    assert done["run"]["status"] == "completed"

    by_run = cli.ok(
        "run",
        "claim",
        first["current_run_id"],
        "--workspace",
        ws,
        "--lease-seconds",
        "60",
        token=token,
    )
    assert by_run["run"]["id"] == first["current_run_id"]
    assert by_run["lease"]["lease_seconds"] == 60


def test_claim_by_id_is_refused_with_the_reason(cli: Cli, ws: str) -> None:
    _, holder = cli.session("holder")
    _, other = cli.session("other")
    task = queued_task(cli, ws, "taken")
    spare = queued_task(cli, ws, "spare")
    blocked = queued_task(cli, ws, "blocked")
    cli.ok("task", "depend", blocked["id"], "--on", spare["id"])

    # A workspace task is not for a claim that names no workspace.
    message = cli.fails("task", "claim", task["id"], code="NO_CLAIMABLE_RUN", exit=4, token=holder)
    assert f"workspace {ws}" in message
    cli.ok("task", "claim", task["id"], "--workspace", ws, token=holder)
    # One lease per session.
    cli.fails(
        "task",
        "claim",
        spare["id"],
        "--workspace",
        ws,
        code="AUTONOMY_LEASE_ALREADY_HELD",
        exit=5,
        token=holder,
    )
    # Another session holds it.
    message = cli.fails(
        "task",
        "claim",
        task["id"],
        "--workspace",
        ws,
        code="NO_CLAIMABLE_RUN",
        exit=4,
        token=other,
    )
    assert "claimed" in message
    # Its task waits for a dependency.
    message = cli.fails(
        "run",
        "claim",
        blocked["current_run_id"],
        "--workspace",
        ws,
        code="NO_CLAIMABLE_RUN",
        exit=4,
        token=other,
    )
    assert "blocked" in message
    cli.fails("run", "claim", "run_missing", code="RUN_NOT_FOUND", exit=4, token=other)
    cli.fails("task", "claim", "tsk_missing", code="TASK_NOT_FOUND", exit=4, token=other)


def test_task_next_without_a_workspace_leaves_workspace_tasks_alone(cli: Cli, ws: str) -> None:
    _, token = cli.session("nowhere")
    queued_task(cli, ws, "scoped")
    # Only tasks with no workspace are offered (other tests' global tasks may exist, so
    # whatever comes back must not be this workspace's).
    result = cli.run("task", "next", "--lease-seconds", "1", token=token)
    if result.code == 0:
        assert result.json["task"]["workspace_id"] is None
    else:
        assert result.json["error"]["code"] == "NO_CLAIMABLE_RUN", str(result)


def _outcome(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    stdout, _ = process.communicate(timeout=COMMAND_TIMEOUT)
    return process.returncode, json.loads(stdout)


def test_claim_by_id_racing_task_next_has_one_winner(cli: Cli, ws: str) -> None:
    chooser_id, chooser = cli.session("chooser")
    next_id, taker = cli.session("taker")
    for _ in range(RACE_ROUNDS):
        task = queued_task(cli, ws, "contended")
        racers = [
            cli.popen(
                "task",
                "claim",
                task["id"],
                "--workspace",
                ws,
                token=chooser,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
            cli.popen(
                "task",
                "next",
                "--workspace",
                ws,
                token=taker,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        ]
        (claim_code, claim_out), (next_code, next_out) = (_outcome(p) for p in racers)
        assert sorted([claim_code, next_code]) == [0, 4], (claim_out, next_out)
        loser = claim_out if claim_code else next_out
        assert loser["error"]["code"] == "NO_CLAIMABLE_RUN"
        winner_id, winner_token, won = (
            (chooser_id, chooser, claim_out) if claim_code == 0 else (next_id, taker, next_out)
        )
        assert won["task"]["id"] == task["id"]
        shown = cli.ok("task", "show", task["id"])
        assert shown["runs"][-1]["session_id"] == winner_id
        assert [e["kind"] for e in shown["events"]].count("run_claimed") == 1
        cli.ok("task", "complete", won["run"]["id"], token=winner_token)


def test_claim_by_id_next_and_steal_racing_for_an_expired_run_have_one_winner(
    cli: Cli, ws: str
) -> None:
    _, lost = cli.session("vanishing")
    racers_by_name = {name: cli.session(name) for name in ("chooser", "taker", "thief")}
    for _ in range(RACE_ROUNDS):
        task = queued_task(cli, ws, "abandoned")
        claim(cli, lost, ws, "--lease-seconds", "0.2")
        # The lease clock puts the run back once its lease runs out: then it is queued and
        # awaits a new holder, which each racer may take by its own rule.
        task_id = task["id"]
        poll_until(
            lambda: cli.ok("task", "show", task_id)["task"]["status"] == "ready",  # noqa: B023
            timeout=30,
            what="the expired run back in the queue",
        )
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        commands = {
            "chooser": ("task", "claim", task["id"], "--workspace", ws),
            "taker": ("task", "next", "--workspace", ws),
            "thief": ("task", "steal", task["id"], "--if-expired"),
        }
        processes = {
            name: cli.popen(*args, token=racers_by_name[name][1], **pipes)
            for name, args in commands.items()
        }
        outcomes = {name: _outcome(p) for name, p in processes.items()}
        winners = [name for name, (code, _) in outcomes.items() if code == 0]
        assert len(winners) == 1, outcomes
        for name, (_, out) in outcomes.items():
            if name == winners[0]:
                continue
            expected = "LEASE_NOT_EXPIRED" if name == "thief" else "NO_CLAIMABLE_RUN"
            assert out["error"]["code"] == expected, outcomes
        winner_id, winner_token = racers_by_name[winners[0]]
        shown = cli.ok("task", "show", task["id"])
        assert shown["runs"][-1]["session_id"] == winner_id
        won = outcomes[winners[0]][1]
        cli.ok("task", "complete", won["run"]["id"], token=winner_token)
