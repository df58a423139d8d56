"""Inspect: next_action by AGH's rules, diagnostics with their remedies, 8-hex hashes only.

Time moves only through trio's MockClock (embedded), explicit ``now`` values (the pure
core), or the skewed server's wall clock (CLI), so no test waits in real time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import trio
import trio.testing

import runlease
from cli_helpers import Cli, is_time, move_clock
from runlease import Ownership
from runlease.client import Client
from runlease.core import views
from runlease.core.commands import ClaimNext, CreateTask, OpenSession, StopSession
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_token, new_secret_token
from runlease.core.machine import Machine
from runlease.core.views import HEARTBEAT_STALE_SECONDS, STRANDED_AFTER_SECONDS, Diagnostic
from runlease.runtime.client import open_client
from socket_helpers import Served

T0 = 1_000_000.0


def only(diagnostics: list[Diagnostic]) -> Diagnostic:
    assert len(diagnostics) == 1, diagnostics
    return diagnostics[0]


def no_full_hash(document: object) -> None:
    """Nothing but 8-hex prefixes: no ``sha256:`` hash anywhere in what inspect returned."""
    text = msgspec.json.encode(document).decode()
    assert "sha256:" not in text
    assert not re.search(r"[0-9a-f]{64}", text)


# ------------------------------------------------------------------ next_action rules
async def test_next_action_follows_the_queue_and_the_sessions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t", capabilities=["gpu"])
        view = rt.inspect_task(task.id)
        assert (view.next_action, view.diagnostics) == ("waiting_for_session", [])
        await rt.start_task(task.id)
        cpu_only = await rt.open_session(agent="cpu")
        await trio.sleep(STRANDED_AFTER_SECONDS - 1)
        assert rt.inspect_task(task.id).next_action == "waiting_for_session"
        await trio.sleep(2)
        view = rt.inspect_task(task.id)
        assert view.next_action == "stranded"
        stranded = only(view.diagnostics)
        assert stranded.kind == "stranded"
        assert stranded.remedy == "runlease session open --agent AGENT --capability gpu"
        assert "gpu" in stranded.message

        # A paused scheduler is a wait, not a fault.
        await rt.pause_scheduler(reason="maintenance")
        view = rt.inspect_task(task.id)
        assert (view.next_action, view.diagnostics) == ("waiting_for_session", [])
        await rt.resume_scheduler()

        gpu = await rt.open_session(agent="gpu", capabilities=["gpu"])
        view = rt.inspect_task(task.id)
        assert (view.next_action, view.diagnostics) == ("claim_available", [])
        await cpu_only.stop()

        claim = await gpu.claim_next(lease_seconds=3600)
        assert rt.inspect_task(task.id).next_action == "running"
        await trio.sleep(HEARTBEAT_STALE_SECONDS + 1)
        view = rt.inspect_task(task.id)
        assert view.next_action == "recovery_required"  # silent holder, lease still live
        stuck = only(view.diagnostics)
        assert (stuck.kind, stuck.run_id, stuck.session_id) == ("stuck", claim.run.id, gpu.id)
        assert stuck.remedy == f'runlease run force-release {claim.run.id} --reason "REASON"'
        await gpu.heartbeat(claim.run.id)
        view = rt.inspect_task(task.id)
        assert (view.next_action, view.diagnostics) == ("running", [])

        await gpu.block(claim.run.id, reason="needs a password")
        view = rt.inspect_task(task.id)
        assert view.next_action == "recovery_required"
        blocked = only(view.diagnostics)
        assert blocked.kind == "stuck"
        assert blocked.remedy == f"runlease task unblock {task.id}"
        assert "needs a password" in blocked.message


async def test_a_run_that_keeps_losing_its_lease_is_crashed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("poison", max_attempts=2, start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next(lease_seconds=10)
        await trio.sleep(11)  # the lease clock parks it: attempt 1 + 1 recovery = 2
        view = rt.inspect_task(task.id)
        assert view.next_action == "recovery_required"
        crashed = only(view.diagnostics)
        assert crashed.kind == "crashed"
        assert crashed.remedy == f"runlease run recover {claim.run.id}"


async def test_held_back_runs_are_stranded_with_the_remedy_of_their_gate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        await rt.open_session(agent="idle")
        parent = await rt.create_task("parent")
        child = await rt.create_task("child", parent=parent.id, start=True)
        blocker = await rt.create_task("blocker")
        waiter = await rt.create_task("waiter")
        await rt.add_dependency(waiter.id, blocker.id)
        await rt.start_task(waiter.id)
        await rt.pause_task(parent.id, reason="hold")
        await trio.sleep(STRANDED_AFTER_SECONDS + 1)

        view = rt.inspect_task(child.id)
        assert (view.next_action, view.gate) == ("stranded", "paused")
        assert only(view.diagnostics).remedy == f"runlease task resume {parent.id}"
        view = rt.inspect_task(waiter.id)
        assert (view.next_action, view.gate) == ("stranded", "blocked")
        remedy = only(view.diagnostics).remedy
        assert remedy == f"runlease task undepend {waiter.id} --on {blocker.id}"


async def test_work_assigned_to_a_stopped_session_is_orphaned() -> None:
    async with runlease.open_runtime() as rt:
        owner = await rt.open_session(agent="owner")
        await rt.open_session(agent="other")
        task = await rt.create_task(
            "mine", owner=Ownership(kind="agent_session", ref=owner.id), start=True
        )
        assert rt.inspect_task(task.id).diagnostics == []
        await owner.stop()
        orphaned = only(rt.inspect_task(task.id).diagnostics)
        assert (orphaned.kind, orphaned.session_id) == ("orphaned", owner.id)
        assert orphaned.remedy == f"runlease task update {task.id} --no-owner"


# ------------------------------------------------------------ pure core: lease states
def _leased_machine(lease_seconds: float) -> tuple[Machine, str]:
    m = Machine()
    m.apply(OpenSession(now=T0, session_id="s", agent="a"))
    m.apply(CreateTask(now=T0, task_id="t", title="t", start_run_id="r"))
    token = hash_token(new_secret_token(CLAIM_TOKEN_PREFIX))
    m.apply(ClaimNext(now=T0, session_id="s", claim_token_hash=token, lease_seconds=lease_seconds))
    return m, "r"


def test_a_lease_that_ran_out_before_the_clock_fired_is_stale() -> None:
    m, run_id = _leased_machine(30)
    task = m.tasks["t"]
    assert views.next_action(m, task, T0 + 29) == "running"
    assert views.diagnostics(m, task, T0 + 29) == []
    assert views.next_action(m, task, T0 + 31) == "recovery_required"
    stale = only(views.diagnostics(m, task, T0 + 31))
    assert (stale.kind, stale.run_id, stale.since) == ("stale_lease", run_id, T0 + 30)
    assert stale.remedy == "runlease task steal t --if-expired"


def test_the_heartbeat_rule_is_two_minutes_whatever_the_lease() -> None:
    m, _ = _leased_machine(3600)
    task = m.tasks["t"]
    assert views.next_action(m, task, T0 + HEARTBEAT_STALE_SECONDS) == "running"
    assert views.next_action(m, task, T0 + HEARTBEAT_STALE_SECONDS + 0.5) == "recovery_required"


def test_a_lease_held_by_a_session_that_is_gone_is_orphaned() -> None:
    m, run_id = _leased_machine(600)
    # Stopping a session releases its lease; a lease left on a stopped session (a record
    # restored from elsewhere) must still be reported.
    m.sessions["s"].state = "stopped"
    m.sessions["s"].stop_reason = "crashed"
    orphaned = only(views.diagnostics(m, m.tasks["t"], T0 + 1))
    assert (orphaned.kind, orphaned.run_id) == ("orphaned", run_id)
    assert "crashed" in orphaned.message
    m.sessions["s"].state = "live"
    m.apply(StopSession(now=T0 + 2, session_id="s"))
    assert m.runs[run_id].status == "queued"  # the ordinary path never leaves one behind


# --------------------------------------------------------------- hashes, surfaces
async def test_inspect_shows_only_hash_prefixes_in_runs_and_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("t", start=True)
        agent = await rt.open_session(agent="a")
        first = await agent.claim_next(lease_seconds=60)
        await agent.release(first.run.id, reason="later")
        second = await agent.claim_next(lease_seconds=60)
        # The timeline keeps the full hashes; inspect shortens them.
        assert any("claim_token_hash" in e.data for e in rt.timeline(task.id))
        for view in (rt.inspect_task(task.id), rt.inspect_run(first.run.id)):
            no_full_hash(view)
            claimed = [e for e in view.recent_events if e.kind == "run_claimed"]
            prefixes = [e.data["claim_token_hash_prefix"] for e in claimed]
            full = [first.lease.claim_token_hash, second.lease.claim_token_hash]
            assert prefixes == [h.removeprefix("sha256:")[:8] for h in full]
            released = next(e for e in view.recent_events if e.kind == "lease_released")
            assert released.data["previous_claim_token_hash_prefix"] == prefixes[0]
            assert released.data["reason"] == "later"


async def test_both_clients_get_diagnostics(served: Served) -> None:
    rt = served.rt
    owner = await rt.open_session(agent="owner")
    task = await rt.create_task("t", owner=Ownership(kind="agent_session", ref=owner.id))
    await rt.start_task(task.id)
    await owner.stop()
    async with open_client(served.path) as client:
        view = await client.inspect_task(task.id)
    assert view.next_action == "waiting_for_session"
    assert [d.kind for d in view.diagnostics] == ["orphaned"]

    def sync_inspect() -> views.InspectView:
        with Client(served.path) as sync:
            return sync.inspect_run(rt.get_task(task.id).current_run_id or "")

    sync_view = await trio.to_thread.run_sync(sync_inspect)
    assert sync_view.diagnostics == view.diagnostics
    assert isinstance(sync_view.diagnostics[0], Diagnostic)


def test_cli_inspect_json_and_table(skewed: tuple[Cli, Path]) -> None:
    cli, skew = skewed
    _, token = cli.session("worker")
    task = cli.ok("task", "create", "report", "--start")["task"]
    run = cli.ok("task", "next", "--lease-seconds", "3600", token=token)["run"]
    view = cli.ok("task", "inspect", task["id"])
    assert (view["next_action"], view["diagnostics"]) == ("running", [])
    claimed = [e for e in view["recent_events"] if e["kind"] == "run_claimed"]
    assert re.fullmatch(r"[0-9a-f]{8}", claimed[0]["data"]["claim_token_hash_prefix"])
    assert "sha256:" not in json.dumps(view)

    move_clock(skew, HEARTBEAT_STALE_SECONDS + 60)  # the holder is silent, its lease runs on
    view = cli.ok("run", "inspect", run["id"])
    assert view["next_action"] == "recovery_required"
    [stuck] = view["diagnostics"]
    assert stuck["kind"] == "stuck"
    assert stuck["remedy"] == f'runlease run force-release {run["id"]} --reason "REASON"'
    assert is_time(stuck["since"])

    table = cli.run("-o", "table", "task", "inspect", task["id"])
    assert table.code == 0, str(table)
    assert "diagnostics (1)" in table.stdout
    assert "recovery_required" in table.stdout
    assert "force-release" in table.stdout
