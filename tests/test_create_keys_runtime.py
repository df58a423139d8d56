"""Idempotent task creation through the runtime: concurrent retries, restarts, the window
setting, the socket (a lost reply) and the CLI (CONFLICT, exit 3; a retry across kill -9)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cli_helpers import RUNLEASE, Cli, Server, clean_env
from runlease import open_runtime, protocol
from runlease.errors import (
    CONFLICT,
    RESOURCE_EXHAUSTED,
    TASK_NOT_FOUND,
    InvalidInput,
    RunleaseError,
    Unavailable,
)
from runlease.runtime.client import open_client
from socket_helpers import STEP, Raw, Served
from storage_faults import AppendGate
from test_durable_runtime import ManualClock, fail_snapshots
from trio_helpers import Later

START = 1_700_000_000.0
DAY = 86_400.0


# ------------------------------------------------------------------ embedded runtime
@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
async def test_concurrent_creates_with_one_key_make_one_task(tmp_path: Path, durable: bool) -> None:
    data_dir = tmp_path / "data" if durable else None
    async with open_runtime(ManualClock(START), data_dir=data_dir) as rt:
        replies: list[Any] = []

        async def create() -> None:
            replies.append(await rt.create_task("once", start=True, idempotency_key="k1"))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(create)
        assert len({reply.id for reply in replies}) == 1
        assert sum(1 for reply in replies if not reply.already) == 1
        assert len(rt.list_tasks()) == 1
        assert len(rt.runs_of(replies[0].id)) == 1
    if data_dir is not None:
        async with open_runtime(ManualClock(START), data_dir=data_dir) as rt:
            assert [task.id for task in rt.list_tasks()] == [replies[0].id]


async def test_a_retry_applied_while_the_first_create_commits_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    gate = AppendGate(monkeypatch)
    clock = ManualClock(START)
    async with open_runtime(clock, data_dir=tmp_path / "data") as rt:
        gate.hold_next()
        first = Later(nursery, lambda: rt.create_task("once", idempotency_key="k1"))
        with trio.fail_after(STEP):
            await gate.entered.wait()
        # The first create is applied and its commit is held: the retry sees it.
        second = Later(nursery, lambda: rt.create_task("once", idempotency_key="k1"))
        other = Later(nursery, lambda: rt.create_task("other", idempotency_key="k1"))
        await trio.testing.wait_all_tasks_blocked()
        assert not second.done.is_set()  # its answer shows the task: not before it is durable
        gate.release()
        made = await first.result()
        again = await second.result()
        assert again.already
        assert again.id == made.id
        conflict = await other.failure()
        assert conflict.code == CONFLICT
        assert made.id in conflict.message
        assert [task.id for task in rt.list_tasks()] == [made.id]


async def test_a_retry_behind_a_refused_commit_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    gate = AppendGate(monkeypatch)
    async with open_runtime(ManualClock(START), data_dir=tmp_path / "data") as rt:
        gate.hold_next()
        first = Later(nursery, lambda: rt.create_task("once", idempotency_key="k1"))
        with trio.fail_after(STEP):
            await gate.entered.wait()
        second = Later(nursery, lambda: rt.create_task("once", idempotency_key="k1"))
        await trio.testing.wait_all_tasks_blocked()
        gate.release(Unavailable("too many open files (simulated)", code=RESOURCE_EXHAUSTED))
        assert (await first.failure()).code == RESOURCE_EXHAUSTED
        # It was answered from the create the journal refused: it must not say "made".
        assert (await second.failure()).code == RESOURCE_EXHAUSTED
        assert rt.list_tasks() == []
        made = await rt.create_task("once", idempotency_key="k1")
        assert not made.already
        assert (await rt.create_task("once", idempotency_key="k1")).id == made.id
        assert len(rt.list_tasks()) == 1


@pytest.mark.parametrize("with_snapshot", [True, False], ids=["snapshot", "journal-only"])
async def test_keys_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_snapshot: bool
) -> None:
    if not with_snapshot:
        fail_snapshots(monkeypatch)
    data_dir = tmp_path / "data"
    clock = ManualClock(START)
    async with open_runtime(clock, data_dir=data_dir, idempotency_window=100.0) as rt:
        made = await rt.create_task("kept", metadata={"n": 1}, idempotency_key="k1")
        short = await rt.create_task("short", idempotency_key="k2")
    clock.now += 50
    # Restarted with another window: each key keeps the window it was made with.
    async with open_runtime(clock, data_dir=data_dir, idempotency_window=DAY) as rt:
        report = rt.boot_report
        assert report is not None
        assert (report.snapshot_seq > 0) == with_snapshot
        again = await rt.create_task("kept", metadata={"n": 1}, idempotency_key="k1")
        assert again.already
        assert again.id == made.id
        with pytest.raises(InvalidInput) as info:
            await rt.create_task("changed", idempotency_key="k1")
        assert info.value.code == CONFLICT
        clock.now += 60  # past k2's 100 s window, made before the restart
        fresh = await rt.create_task("short", idempotency_key="k2")
        assert not fresh.already
        assert fresh.id != short.id
    async with open_runtime(clock, data_dir=data_dir) as rt:
        # The new k2 was made under a one-day window, and that survives too.
        assert (await rt.create_task("short", idempotency_key="k2")).id == fresh.id
        assert len(rt.list_tasks()) == 3


async def test_the_window_comes_from_open_runtime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime(idempotency_window=60.0) as rt:
        made = await rt.create_task("t", idempotency_key="k1")
        await trio.sleep(59)
        assert (await rt.create_task("t", idempotency_key="k1")).id == made.id
        await trio.sleep(1)
        later = await rt.create_task("t", idempotency_key="k1")
        assert not later.already
        assert later.id != made.id


async def test_a_deleted_task_is_not_made_again() -> None:
    async with open_runtime() as rt:
        made = await rt.create_task("t", idempotency_key="k1")
        await rt.delete_task(made.id)
        with pytest.raises(RunleaseError) as info:
            await rt.create_task("t", idempotency_key="k1")
        assert info.value.code == TASK_NOT_FOUND
        assert made.id in info.value.message
        assert rt.list_tasks() == []


@pytest.mark.parametrize("window", [0, -1.0, float("inf"), float("nan")])
async def test_a_window_that_is_not_positive_is_refused(window: float) -> None:
    with pytest.raises(InvalidInput) as info:
        async with open_runtime(idempotency_window=window):
            pass
    assert "idempotency_window" in info.value.message


# ------------------------------------------------------------------------ the socket
async def test_the_trio_client_gets_the_same_task_and_conflict(served: Served) -> None:
    async with open_client(served.path) as client:
        made = await client.create_task("t", start=True, idempotency_key="k1")
        again = await client.create_task("t", start=True, idempotency_key="k1")
        assert again.already
        assert again.id == made.id
        with pytest.raises(InvalidInput) as info:
            await client.create_task("t", idempotency_key="k1")
        assert info.value.code == CONFLICT
        assert made.id in info.value.message


async def test_a_retry_after_a_lost_reply_returns_the_same_task(served: Served) -> None:
    request = protocol.CreateTask(id=7, title="lost reply", start=True, idempotency_key="k1")
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            created = trio.Event()

            async def watch() -> None:
                async for event in served.rt.follow_events():
                    if event.kind == "task_created":
                        created.set()
                        return

            nursery.start_soon(watch)
            raw = await Raw.open(served.path)
            await raw.send(request)
            await raw.close()  # gone before the reply: the caller never learns the id
            await created.wait()
    [made] = served.rt.list_tasks()
    async with open_client(served.path) as client:
        again = await client.create_task("lost reply", start=True, idempotency_key="k1")
    assert again.already
    assert again.id == made.id
    assert len(served.rt.list_tasks()) == 1
    assert len(served.rt.runs_of(made.id)) == 1


# --------------------------------------------------------------------------- the CLI
def test_cli_create_with_a_key(cli: Cli, ws: str) -> None:
    key = f"{ws}-create"
    made = cli.ok("task", "create", "report", "--workspace", ws, "--idempotency-key", key)
    assert "already" not in made
    again = cli.ok("task", "create", "report", "--workspace", ws, "--idempotency-key", key)
    assert again["already"] is True
    assert again["task"]["id"] == made["task"]["id"]
    message = cli.fails(
        "task",
        "create",
        "another report",
        "--workspace",
        ws,
        "--idempotency-key",
        key,
        code=CONFLICT,
        exit=3,
    )
    assert made["task"]["id"] in message
    cli.fails(
        "task",
        "create",
        "report",
        "--idempotency-key",
        "has space",
        code="INVALID_INPUT",
        exit=3,
    )
    listed = cli.ok("task", "list", "--workspace", ws)
    assert [task["id"] for task in listed["tasks"]] == [made["task"]["id"]]


def test_serve_refuses_a_window_that_is_not_positive(tmp_path: Path) -> None:
    for value in ("0", "-5", "inf"):
        done = subprocess.run(
            [*RUNLEASE, "serve", "--data-dir", str(tmp_path), "--idempotency-window", value],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, (value, done.stdout, done.stderr)
        assert "--idempotency-window takes a positive number of seconds" in (
            done.stdout + done.stderr
        )


def test_a_keyed_create_retried_across_kill_9_returns_the_same_task(tmp_path: Path) -> None:
    data = tmp_path / "data"
    socket = tmp_path / "s.sock"
    create = ("task", "create", "survive", "--start", "--idempotency-key", "deploy-42")

    first = Server.serve("--data-dir", str(data), "--socket", str(socket))
    try:
        first.wait_listening()
        made = Cli(socket=socket).ok(*create)
        first.kill()  # SIGKILL: no shutdown, no final snapshot
    finally:
        first.kill()
    assert first.process.returncode == -9

    second = Server.serve(
        "--data-dir", str(data), "--socket", str(socket), "--idempotency-window", "60"
    )
    try:
        second.wait_listening()
        cli = Cli(socket=socket)
        again = cli.ok(*create)
        assert again["already"] is True
        assert again["task"]["id"] == made["task"]["id"]
        listed = cli.ok("task", "list")
        assert [task["id"] for task in listed["tasks"]] == [made["task"]["id"]]
        assert second.stop() == 0
    finally:
        second.kill()
