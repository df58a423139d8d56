"""AUTONOMY_LEASE_EXPIRED through the real CLI.

The runtime's lease clock requeues an expired run the moment its deadline passes; the old
holder hears AUTONOMY_LEASE_EXPIRED before that requeue and after it (see test_cli.py and
test_cli_lease_loss.py). This module checks the window between the deadline and the
requeue, when the session still holds the lease on paper. To open the window on purpose,
this module serves with tests/skewed_server.py, the real socket server on a runtime whose
wall clock the test moves an hour forward: every deadline has passed for the commands,
while the lease clock (sleeping on trio's monotonic clock) has not fired.
"""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Cli, move_clock


def test_a_stale_lease_is_refused_with_lease_expired(skewed: tuple[Cli, Path]) -> None:
    cli, skew = skewed
    _, token = cli.session("sleepy")
    task = cli.ok("task", "create", "long job", "--start")["task"]
    run = cli.ok("task", "next", "--lease-seconds", "60", token=token)["run"]
    cli.ok("task", "heartbeat", run["id"], "--lease-seconds", "60", token=token)

    move_clock(skew, 3600)  # the lease's deadline is now an hour ago
    for args in [
        ("task", "heartbeat", run["id"]),
        ("task", "complete", run["id"], "--result", '{"late": true}'),
        ("task", "fail", run["id"], "--error", "too late"),
        ("task", "release", run["id"]),
        ("task", "block", run["id"], "--reason", "too late"),
    ]:
        message = cli.fails(*args, token=token, code="AUTONOMY_LEASE_EXPIRED", exit=5)
        assert run["id"] in message
    # Nothing the stale holder sent changed the run.
    shown = cli.ok("task", "show", task["id"])["runs"][-1]
    assert shown["status"] == "running"
    assert shown["result"] is None

    # Claiming again recovers the expired lease first, then hands the run out anew.
    again = cli.ok("task", "next", token=token)
    assert again["run"]["id"] == run["id"]
    assert again["run"]["recovery_count"] == 1
    assert again["lease"]["claim_token_hash"] != run["claim_token_hash"]
    done = cli.ok("task", "complete", run["id"], token=token)
    assert done["run"]["status"] == "completed"
