"""SIGKILL a durable ``runlease serve``: every event it acknowledged is in the history after.

The server acknowledges a write only once its record is flushed to the write-ahead log;
the events of records the last checkpoint did not reach exist on disk only as those
records, and boot regenerates them. What the server published before the kill (each
task's timeline, read through the CLI) must come back from the restarted store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli_helpers import Cli, Server, claim, queued_task
from runlease.cli.output import plain
from runlease.persistence.store import Store
from runlease.runtime.journal import BootReport, load_machine

TASKS = 6


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """The fields of an event that the CLI and the store must agree on."""
    return {key: event.get(key) for key in ("seq", "kind", "task_id", "run_id", "session_id")} | {
        "data": event.get("data") or {}
    }


def stored_history(data_dir: Path) -> dict[int, dict[str, Any]]:
    """Boot the store as a restart does, and return its history by seq."""
    with Store.open(data_dir, durability="durable") as store:
        load_machine(store, BootReport())
        events = store.read_events(limit=1 << 30)
    # As the CLI shows them (times in the data as RFC 3339 text, for one).
    return {e.seq: comparable(plain(e)) for e in events}


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sock = tmp_path / "s.sock"
    cli = Cli(socket=sock)
    args = ("--data-dir", str(data), "--socket", str(sock), "--durability", "durable")
    server = Server.serve(*args)
    try:
        server.wait_listening()
        _session, token = cli.session("worker")
        tasks = [queued_task(cli, "w", f"job {i}")["id"] for i in range(TASKS)]
        run = claim(cli, token, "w")["run"]["id"]
        again = ("--next", "--workspace", "w")
        for i in range(TASKS - 1):
            result = f'{{"i": {i}}}'
            done = cli.ok("task", "complete", run, "--result", result, *again, token=token)
            run = done["next"]["run"]["id"]
        cli.ok("task", "fail", run, "--error", "the last one fails", token=token)
        # Everything below was acknowledged: the CLI printed it from a published event.
        acknowledged = [
            comparable(event)
            for task in tasks
            for event in cli.ok("task", "timeline", task)["events"]
        ]
    finally:
        server.kill()  # SIGKILL: no shutdown, no final checkpoint or snapshot
    assert server.process.returncode == -9
    kinds = {event["kind"] for event in acknowledged}
    assert len(acknowledged) >= 4 * TASKS, acknowledged
    assert len(kinds) >= 4, kinds

    history = stored_history(data)
    missing = [event for event in acknowledged if history.get(event["seq"]) != event]
    assert not missing, missing

    # The real server boots on it too, and a clean stop keeps the same history.
    server = Server.serve(*args)
    try:
        server.wait_listening()
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()
    after_restart = stored_history(data)
    assert all(after_restart.get(seq) == event for seq, event in history.items())
