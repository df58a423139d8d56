"""asyncio hosts: the runtime embedded in a plain ``asyncio.run`` program, and the anyio
client against a ``runlease serve`` process under asyncio and under trio.

The asyncio programs are sync test functions that call ``asyncio.run`` themselves, as a
host would; nothing here waits on the clock to make an outcome happen.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio

import runlease.aio
from cli_helpers import Server
from runlease.aio import AnyioClient, AsyncioRuntime, AsyncioSession
from runlease.core.model import Event
from runlease.errors import (
    NO_CLAIMABLE_RUN,
    RUNTIME_CLOSED,
    SERVER_UNAVAILABLE,
    InvalidInput,
    NotFound,
    Unavailable,
)
from runlease.runtime import SessionHandle
from runlease.runtime.asyncio_host import ABANDONED_REASON
from runlease.runtime.client import AsyncClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "asyncio_agent.py"
RUN_TIMEOUT = 120.0


def run_asyncio(main: Any) -> Any:
    """Run ``main()`` under a fresh ``asyncio.run``, as a host program would."""
    return asyncio.run(main())


async def until_parked(rt: AsyncioRuntime, claimers: int) -> None:
    """Return once ``claimers`` claims wait in the scheduler (each check is a round trip
    to the runtime, so the loop is paced by the runtime itself)."""
    for _ in range(10_000):
        if await rt.read(lambda: rt.status().waiting_claimers) >= claimers:
            return
    raise AssertionError("the claim never parked")


async def assert_no_lease(rt: AsyncioRuntime, agent: AsyncioSession) -> None:
    await rt.settled()
    assert rt.status().leased_runs == 0
    assert agent.info().lease_run_id is None


# ------------------------------------------------------------- embedded, asyncio
def test_a_plain_asyncio_program_embeds_runlease_and_drives_an_agent_loop(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[list[str], list[str]]:
        async with runlease.aio.open_runtime(data_dir=tmp_path / "data", fresh_store=True) as rt:
            titles = [f"step {i}" for i in range(5)]
            for title in titles:
                await rt.create_task(title, start=True)
            agent = await rt.open_session(agent="asyncio", ttl=600)
            done: list[str] = []
            for _ in titles:
                claim = await agent.claim_next(lease_seconds=60)
                beat = await agent.heartbeat(claim.run.id, lease_seconds=120)
                assert beat.lease.lease_seconds == 120
                finished = await agent.complete(claim.run.id, result={"title": claim.task.title})
                assert finished.status == "completed"
                done.append(claim.task.title)
            with pytest.raises(NotFound) as nothing:
                await agent.claim_next()
            assert nothing.value.code == NO_CLAIMABLE_RUN
            # The sync reads work from asyncio code, and agree with what happened.
            assert rt.status().leased_runs == 0
            assert all(rt.get_task(t.id).status == "completed" for t in rt.list_tasks())
            kinds = [event.kind for event in await rt.read(lambda: rt.events())]
            assert kinds.count("run_completed") == 5
            return titles, done

    titles, done = run_asyncio(main)
    assert sorted(done) == sorted(titles)

    async def reopen() -> int:
        async with runlease.aio.open_runtime(data_dir=tmp_path / "data") as rt:
            return sum(1 for t in rt.list_tasks() if t.status == "completed")

    assert run_asyncio(reopen) == 5  # it was journaled: a second program sees it


def test_a_claim_waits_on_the_asyncio_loop_until_work_arrives() -> None:
    async def main() -> str:
        async with runlease.aio.open_runtime() as rt:
            agent = await rt.open_session(agent="waiter")
            waiting = asyncio.ensure_future(agent.claim_next(wait=True, timeout=60))
            await until_parked(rt, 1)
            task = await rt.create_task("arrives later", start=True)
            claim = await waiting
            assert claim.task.id == task.id
            await agent.complete(claim.run.id)
            return claim.task.title

    assert run_asyncio(main) == "arrives later"


def test_events_are_followed_from_asyncio() -> None:
    async def main() -> list[str]:
        async with runlease.aio.open_runtime() as rt:
            task = await rt.create_task("followed", start=True)
            agent = await rt.open_session()
            seen: list[Event] = []

            async def follow() -> None:
                async for event in rt.follow_events(task_id=task.id):
                    seen.append(event)
                    if event.kind == "run_completed":
                        return

            follower = asyncio.create_task(follow())
            claim = await agent.claim_next()
            await agent.complete(claim.run.id)
            await asyncio.wait_for(follower, RUN_TIMEOUT)
            return [event.kind for event in seen]

    kinds = run_asyncio(main)
    assert kinds[0] == "task_created"
    assert kinds[-1] == "run_completed"
    assert "run_claimed" in kinds


def test_a_cancelled_waiting_claim_leaves_no_lease() -> None:
    async def main() -> None:
        async with runlease.aio.open_runtime() as rt:
            agent = await rt.open_session(agent="impatient")
            waiting = asyncio.ensure_future(agent.claim_next(wait=True, timeout=60))
            await until_parked(rt, 1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # The withdrawn claim does not take the work that arrives after it left.
            task = await rt.create_task("after the cancel", start=True)
            await assert_no_lease(rt, agent)
            assert rt.runs_of(task.id)[0].status == "queued"
            claim = await agent.claim_next()  # the session holds nothing: it may claim
            assert claim.task.id == task.id

    run_asyncio(main)


@pytest.mark.parametrize("yields", range(12))
def test_a_claim_cancelled_at_any_point_leaves_no_lease(yields: int) -> None:
    """Cancelled before it starts, while it is applied, or as its claim is made: however
    far it got, no lease stays behind, and a claim made for nobody is released."""

    async def main() -> None:
        async with runlease.aio.open_runtime() as rt:
            task = await rt.create_task("contested", start=True)
            agent = await rt.open_session(agent="cancelled")
            claiming = asyncio.ensure_future(agent.claim_next(lease_seconds=300))
            for _ in range(yields):
                await asyncio.sleep(0)
            claiming.cancel()
            try:
                claim = await claiming
            except asyncio.CancelledError:
                await assert_no_lease(rt, agent)
                run = rt.runs_of(task.id)[-1]
                assert run.status == "queued"
                released = [e for e in rt.events(task_id=task.id) if e.kind == "lease_released"]
                assert all(e.data.get("reason") == ABANDONED_REASON for e in released)
            else:  # it finished before the cancel reached it: the caller has its claim
                assert claim.task.id == task.id
                await agent.release(claim.run.id)

    run_asyncio(main)


def test_a_cancelled_finish_and_claim_keeps_the_finish_and_leaves_no_lease() -> None:
    async def main() -> None:
        async with runlease.aio.open_runtime() as rt:
            first = await rt.create_task("first", start=True)
            agent = await rt.open_session()
            claim = await agent.claim_next()
            going = asyncio.ensure_future(agent.complete_and_next(claim.run.id, wait=True))
            await until_parked(rt, 1)
            going.cancel()
            with pytest.raises(asyncio.CancelledError):
                await going
            await assert_no_lease(rt, agent)
            assert rt.get_task(first.id).status == "completed"

    run_asyncio(main)


def test_calls_after_the_block_are_refused_and_errors_cross_unchanged() -> None:
    async def main() -> tuple[str, str]:
        async with runlease.aio.open_runtime() as rt:
            agent = await rt.open_session()
            with pytest.raises(NotFound) as nothing:
                await agent.claim_next()
        with pytest.raises(Unavailable) as closed:
            await agent.claim_next()
        return nothing.value.code, closed.value.code

    assert run_asyncio(main) == (NO_CLAIMABLE_RUN, RUNTIME_CLOSED)


def test_the_example_agent_runs_as_a_program(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert '"completed": ["read the issue", "write the patch", "run the tests"]' in done.stdout
    assert '"leased_runs": 0' in done.stdout


# ------------------------------------------------------ the anyio client, two loops
@pytest.fixture(scope="module")
def serve_socket(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("asyncio-hosts")
    socket = base / "s.sock"
    server = Server.serve(
        "--data-dir", str(base / "data"), "--socket", str(socket), "--durability", "relaxed"
    )
    try:
        server.wait_listening()
        yield socket
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_client_drives_an_agent_against_serve(serve_socket: Path, backend: str) -> None:
    workspace = f"ws-{backend}"

    async def main() -> list[str]:
        async with runlease.aio.open_client(serve_socket) as operator:
            opened = await operator.open_session(agent=f"anyio-{backend}")
            task = await operator.create_task("remote work", workspace=workspace, start=True)
        async with runlease.aio.open_client(serve_socket, session_token=opened.token) as agent:
            assert (await agent.whoami()).id == opened.session.id
            claim = await agent.claim_next(workspace=workspace, lease_seconds=60)
            assert claim.task.id == task.id
            await agent.heartbeat(claim.run.id, lease_seconds=90)
            async with agent.follow_events(task_id=task.id) as events:
                # Calls share the connection with the open stream.
                await agent.complete(claim.run.id, result={"backend": backend})
                kinds = []
                async for event in events:
                    kinds.append(event.kind)
                    if event.kind == "run_completed":
                        break
            with pytest.raises(NotFound) as nothing:
                await agent.claim_next(workspace=workspace)
            assert nothing.value.code == NO_CLAIMABLE_RUN
            assert (await agent.get_task(task.id)).status == "completed"
            return kinds

    kinds = anyio.run(main, backend=backend)
    assert kinds[0] == "task_created"
    assert kinds[-1] == "run_completed"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_client_cancels_a_waiting_claim_on_the_server(
    serve_socket: Path, backend: str
) -> None:
    workspace = f"ws-cancel-{backend}"

    async def main() -> str:
        async with runlease.aio.open_client(serve_socket) as operator:
            opened = await operator.open_session(agent=f"impatient-{backend}")
            async with runlease.aio.open_client(serve_socket, session_token=opened.token) as agent:
                async with anyio.create_task_group() as tasks:

                    async def wait_for_work() -> None:
                        await agent.claim_next(workspace=workspace, wait=True, timeout=60)

                    tasks.start_soon(wait_for_work)
                    for _ in range(10_000):
                        status = await operator.status()
                        if status.waiting_claimers:
                            break
                    tasks.cancel_scope.cancel()
                # Created on the agent's own connection, after its cancel: the server
                # has dropped the wait by then, so the work stays queued for a new claim.
                await agent.create_task("after", workspace=workspace, start=True)
                claim = await agent.claim_next(workspace=workspace)
                await agent.complete(claim.run.id)
                return claim.task.title

    assert anyio.run(main, backend=backend) == "after"


@pytest.mark.parametrize("yields", range(6))
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_anyio_claim_cancelled_at_any_point_leaves_no_lease(
    serve_socket: Path, backend: str, yields: int
) -> None:
    """However far the claim got before its caller was cancelled, the session ends up
    holding no lease it does not know of: one the server made anyway is released."""
    workspace = f"ws-race-{backend}-{yields}"

    async def main() -> None:
        async with runlease.aio.open_client(serve_socket) as operator:
            opened = await operator.open_session(agent=f"racer-{backend}")
            task = await operator.create_task("contested", workspace=workspace, start=True)
            got: list[str] = []
            async with runlease.aio.open_client(serve_socket, session_token=opened.token) as agent:
                async with anyio.create_task_group() as tasks:

                    async def claim() -> None:
                        made = await agent.claim_next(workspace=workspace, lease_seconds=300)
                        got.append(made.run.id)

                    tasks.start_soon(claim)
                    for _ in range(yields):
                        await anyio.lowlevel.checkpoint()
                    tasks.cancel_scope.cancel()
                if got:  # it finished before the cancel reached it
                    await agent.release(got[0])
                for _ in range(10_000):
                    session = await operator.get_session(opened.session.id)
                    if session.lease_run_id is None:
                        break
                assert session.lease_run_id is None
                detail = await operator.show_task(task.id)
                assert detail.runs[-1].status == "queued"

    anyio.run(main, backend=backend)


def test_asyncio_libraries_work_beside_the_embedded_runtime(serve_socket: Path) -> None:
    """trio runs as a guest on the loop, yet the host's code still sees asyncio: anyio
    (and whatever is built on it, such as httpx or this client) keeps working."""

    async def main() -> tuple[str, int]:
        async with runlease.aio.open_runtime() as rt:
            await rt.create_task("local", start=True)
            async with runlease.aio.open_client(serve_socket) as remote:
                status = await remote.status()
            return sniffio.current_async_library(), status.pid

    library, pid = run_asyncio(main)
    assert library == "asyncio"
    assert pid > 0


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_the_anyio_client_has_every_method_of_the_trio_client() -> None:
    assert _public(AsyncClient) <= _public(AnyioClient)


def test_an_asyncio_session_has_every_method_of_a_session_handle() -> None:
    assert _public(SessionHandle) <= _public(AsyncioSession)


def test_a_runtime_that_cannot_start_raises_its_error_in_the_asyncio_program() -> None:
    async def main() -> None:
        async with runlease.aio.open_runtime(starve_after=-1):
            raise AssertionError("the block must not run")

    with pytest.raises(InvalidInput, match="starve_after"):
        run_asyncio(main)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_client_reports_a_server_that_is_not_there(tmp_path: Path, backend: str) -> None:
    async def main() -> None:
        async with runlease.aio.open_client(tmp_path / "nobody.sock"):
            raise AssertionError("connected to nobody")

    with pytest.raises(Unavailable) as unreachable:
        anyio.run(main, backend=backend)
    assert unreachable.value.code == SERVER_UNAVAILABLE
