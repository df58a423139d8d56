"""Lease loss through the real CLI: each situation's code, exit code and message.

Served by tests/skewed_server.py, whose wall clock the test moves forward, so a lease's
deadline passes exactly when the test says (no real-time lease racing the process).
"""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Cli, move_clock


def test_an_unknown_run_is_not_found(skewed: tuple[Cli, Path]) -> None:
    cli, _ = skewed
    _, token = cli.session("agent")
    for args in [
        ("task", "heartbeat", "run_nope"),
        ("task", "complete", "run_nope"),
        ("task", "release", "run_nope", "--next"),
    ]:
        message = cli.fails(*args, token=token, code="RUN_NOT_FOUND", exit=4)
        assert "run_nope" in message


def test_a_repeated_finish_says_already_and_another_outcome_is_refused(
    skewed: tuple[Cli, Path],
) -> None:
    cli, _ = skewed
    _, token = cli.session("agent")
    cli.ok("task", "create", "report", "--start")
    run = cli.ok("task", "next", token=token)["run"]
    done = cli.ok("task", "complete", run["id"], "--result", '{"pages": 2}', token=token)
    assert "already" not in done
    assert "already" not in done["run"]
    # The reply was lost, say: the same call again answers the same, changing nothing.
    again = cli.ok("task", "complete", run["id"], "--result", '{"pages": 2}', token=token)
    assert again["already"] is True
    assert again["run"] == done["run"]
    result = ("--result", '{"pages": 2}')
    with_next = cli.ok("task", "complete", run["id"], *result, "--next", token=token)
    assert with_next["already"] is True
    assert with_next["next"] is None
    assert with_next["no_claim"]["code"] == "NO_CLAIMABLE_RUN"
    # Another outcome, or the same with another result, is refused: the first one stands.
    message = cli.fails(
        "task", "fail", run["id"], "--error", "no", token=token, code="RUN_ALREADY_FINISHED", exit=3
    )
    assert f"already completed run {run['id']}" in message
    message = cli.fails(
        "task",
        "complete",
        run["id"],
        "--result",
        '{"pages": 3}',
        token=token,
        code="RUN_ALREADY_FINISHED",
        exit=3,
    )
    assert "different result" in message
    shown = cli.ok("task", "show", run["task_id"])["runs"][-1]
    assert shown["result"] == {"pages": 2}


def test_lost_leases_say_how_and_to_whom(skewed: tuple[Cli, Path]) -> None:
    cli, skew = skewed
    sleepy_id, sleepy = cli.session("sleepy")
    _, thief = cli.session("thief")
    task = cli.ok("task", "create", "long job", "--start")["task"]
    run = cli.ok("task", "next", "--lease-seconds", "60", token=sleepy)["run"]

    # Another session's live lease: foreign.
    message = cli.fails(
        "task", "complete", run["id"], token=thief, code="AUTONOMY_FOREIGN_RUN", exit=5
    )
    assert f"held by session {sleepy_id}" in message

    # The deadline passes and another session takes the run: the old holder's lease expired.
    move_clock(skew, 3600)
    cli.ok("task", "steal", task["id"], "--if-expired", token=thief)
    for args in [
        ("task", "heartbeat", run["id"]),
        ("task", "complete", run["id"]),
        ("task", "block", run["id"], "--reason", "late"),
    ]:
        message = cli.fails(*args, token=sleepy, code="AUTONOMY_LEASE_EXPIRED", exit=5)
        assert "expired at" in message
        assert "(agent thief) has held it" in message

    # An operator takes it from the thief: foreign, naming the operator.
    cli.ok("run", "force-release", run["id"], "--reason", "reassign")
    message = cli.fails(
        "task", "release", run["id"], token=thief, code="AUTONOMY_FOREIGN_RUN", exit=5
    )
    assert "force-released from session" in message
    assert "back in the queue" in message
