"""The operation table and what follows from it: the wire union, the replies, the clients'
generated methods, who a write is stamped with, and the import graph."""

from __future__ import annotations

import ast
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from runlease import gen_sync, open_runtime
from runlease import protocol as p
from runlease.actors.lease_clock import LEASE_CLOCK
from runlease.client import Client
from runlease.core.model import Actor, Event, Origin, Session
from runlease.errors import INVALID_INPUT, InvalidInput
from runlease.operations import (
    OPERATIONS,
    OPERATOR,
    ClaimNext,
    CompleteRun,
    OpenedSession,
    TaskPage,
)
from runlease.runtime import Runtime
from runlease.runtime.client import open_client
from runlease.runtime.server import serve_socket

SRC = Path(__file__).resolve().parent.parent / "src" / "runlease"


# ------------------------------------------------------------------------------ the table
def test_the_wire_union_is_the_table_plus_the_connection_requests() -> None:
    tags = {str(t.__struct_config__.tag) for t in p.REQUEST_TYPES}
    assert tags == set(OPERATIONS) | {"hello", "cancel"}
    assert tags == p.OPS


@pytest.mark.parametrize("tag", sorted(OPERATIONS))
def test_every_operation_answers_with_a_type_a_reply_carries(tag: str) -> None:
    entry = OPERATIONS[tag]
    if entry.stream:
        return  # streamed as EventItem replies, ended by StreamEnd
    assert p.reply_class(entry.reply) in p.AnyReply.__args__


def test_a_value_survives_its_reply() -> None:
    session = Session(id="ses_1", agent="a", opened_at=1.0)
    for value in (OpenedSession(session, "rl_session_x"), TaskPage([], "tsk_9"), session):
        reply = p.reply_to(7, value)
        assert reply.id == 7
        decoded = p.decode_reply(p.encode_message(reply))
        assert p.value_of(decoded) == value


def test_the_synchronous_methods_are_generated_from_the_async_ones() -> None:
    expected = gen_sync.generate(gen_sync.SOURCE.read_text())
    assert gen_sync.TARGET.read_text() == expected, "run: python -m runlease.gen_sync"
    assert gen_sync.main(["--check"]) == 0


# --------------------------------------------------------------------------- import graph
def _module_of(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package ``path`` imports when it runs (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for inner in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                out.add(child if child in modules else node.module)
    return out & modules


def test_no_import_cycles_inside_the_package() -> None:
    files = {_module_of(path): path for path in SRC.rglob("*.py")}
    graph = {name: _runtime_imports(path, set(files)) - {name} for name, path in files.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycle = [*stack[stack.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


# ------------------------------------------------------------------------- the embedded side
async def test_a_finish_that_claims_next_goes_through_its_own_method() -> None:
    async with open_runtime() as rt:
        await rt.create_task("t", start=True)
        agent = await rt.open_session()
        claim = await agent.claim_next()
        with pytest.raises(InvalidInput):
            await agent.call(CompleteRun(claim.run.id, next=ClaimNext()))
        finished = await agent.complete_and_next(claim.run.id)
        assert finished.run.status == "completed"
        assert finished.no_claim is not None


async def test_a_session_steal_keeps_its_reason(autojump_clock: trio.testing.MockClock) -> None:
    async with open_runtime() as rt:
        task = await rt.create_task("t", start=True)
        holder = await rt.open_session(agent="holder")
        thief = await rt.open_session(agent="thief")
        await holder.claim_next(lease_seconds=10)
        await trio.sleep(11)  # the lease ran out; the clock may already have requeued it
        await thief.steal(task.id, reason="holder went quiet")
        stolen = next(e for e in rt.timeline(task.id) if e.kind == "run_stolen")
        assert stolen.data["reason"] == "holder went quiet"
        assert stolen.actor == Actor(kind="agent_session", ref=thief.id)


async def test_an_operator_steal_on_a_sessions_behalf_keeps_its_reason() -> None:
    async with open_runtime() as rt:
        task = await rt.create_task("t", start=True)
        holder = await rt.open_session(agent="holder")
        thief = await rt.open_session(agent="thief")
        await holder.claim_next(lease_seconds=3600)
        await thief.acting_as(OPERATOR).steal(task.id, force=True, reason="rebalance")
        stolen = next(e for e in rt.timeline(task.id) if e.kind == "run_stolen")
        assert (stolen.data["reason"], stolen.actor) == ("rebalance", OPERATOR)


@pytest.mark.parametrize("threshold", [math.nan, math.inf, -1.0])
async def test_embedded_stuck_refuses_a_threshold_that_is_no_duration(threshold: float) -> None:
    async with open_runtime() as rt:
        with pytest.raises(InvalidInput) as info:
            rt.stuck(threshold=threshold)
        assert info.value.code == INVALID_INPUT


async def test_the_lease_clock_stamps_its_expiries(autojump_clock: trio.testing.MockClock) -> None:
    async with open_runtime() as rt:
        task = await rt.create_task("t", start=True)
        agent = await rt.open_session()
        await agent.claim_next(lease_seconds=10)
        await trio.sleep(11)
        expired = next(e for e in rt.timeline(task.id) if e.kind == "lease_expired")
        assert expired.origin == LEASE_CLOCK == Origin(kind="daemon", ref="lease_clock")


# --------------------------------------------------------------------------- over the socket
@pytest.fixture
async def served(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Runtime, Path]]:
    path = tmp_path / "sock" / "s.sock"
    async with open_runtime() as rt:
        server = await nursery.start(serve_socket, rt, path)
        yield rt, path
        server.shutdown()
        await server.wait_stopped()


def _stamps(events: list[Event]) -> dict[str, tuple[Actor | None, Origin | None]]:
    return {event.kind: (event.actor, event.origin) for event in events}


async def test_socket_writes_carry_the_connection_origin_and_the_caller(
    served: tuple[Runtime, Path],
) -> None:
    rt, path = served
    here = Origin(kind="socket", ref=f"pid:{os.getpid()}")
    async with open_client(path) as client:
        session, token = await client.open_session(agent="worker")
        client.session_token = token
        first = await client.create_task("first", start=True)
        second = await client.create_task("second", start=True)
        claim = await client.claim_next(lease_seconds=60)
        await client.heartbeat(claim.run.id)
        finished = await client.complete_and_next(claim.run.id)
        assert finished.claim is not None
        await client.release(finished.claim.run.id)
    agent = Actor(kind="agent_session", ref=session.id)
    stamps = _stamps(rt.timeline(first.id) + rt.timeline(second.id))
    assert stamps["task_created"] == (OPERATOR, here)
    for kind in ("run_claimed", "lease_renewed", "run_completed", "lease_released"):
        assert stamps[kind] == (agent, here), kind
    opened = next(e for e in rt.events() if e.kind == "session_opened")
    assert opened.origin == here


async def test_the_cli_name_stamps_origin_cli(served: tuple[Runtime, Path]) -> None:
    rt, path = served

    def agent_turn() -> str:
        with Client(path, client_name=p.CLI_CLIENT_NAME) as client:
            task = client.create_task("t", start=True)
            _, client.session_token = client.open_session()
            run = client.claim_next().run
            client.complete(run.id)
            return task.id

    task_id = await trio.to_thread.run_sync(agent_turn)
    origins = {event.origin for event in rt.timeline(task_id)}
    assert origins == {Origin(kind="cli", ref=f"pid:{os.getpid()}")}


if sys.platform != "linux":  # pragma: no cover - peer credentials name the pid on Linux
    pytestmark = pytest.mark.skip("the origin's ref comes from SO_PEERCRED")
