"""No reply shows state a crash could take back.

A's write is applied in memory at once but acknowledged only after its group commit. These
tests hold that commit (the store's append waits for the test) and check that nothing B
asks meanwhile is answered from the not-yet-durable state: reads, refusals and "nothing
to claim" replies wait for the commit, and if the commit fails they describe the state
without A's write. Over the real socket server with the trio client, and embedded.

Deterministic: the test knows the commit is in flight (``gate.entered``) and that B's
request reached the server and is being held (every task blocked, the request in flight,
no reply); no sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from runlease import open_runtime
from runlease.errors import NO_CLAIMABLE_RUN, STORAGE_FAILED, Unavailable
from runlease.runtime import Runtime
from runlease.runtime.client import AsyncClient, open_client
from runlease.runtime.server import SocketServer, serve_socket
from storage_faults import AppendGate
from trio_helpers import Later

STEP = 30  # seconds: an upper bound for one step on a loaded machine, never a sleep


def disk_gone() -> Unavailable:
    return Unavailable("input/output error (simulated)", code=STORAGE_FAILED)


@dataclass
class Served:
    rt: Runtime
    server: SocketServer
    path: Path
    gate: AppendGate

    def requests_in_flight(self) -> int:
        return sum(len(conn.inflight) for conn in self.server._connections)


@pytest.fixture
async def served(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    gate = AppendGate(monkeypatch)
    path = tmp_path / "sock" / "s.sock"
    async with open_runtime(data_dir=tmp_path / "data") as rt:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        try:
            yield Served(rt, server, path, gate)
        finally:
            gate.release()
            server.shutdown()
            await server.wait_stopped()


async def entered(gate: AppendGate) -> None:
    with trio.fail_after(STEP):
        await gate.entered.wait()


async def held(served: Served, *later: Later, in_flight: int) -> None:
    """Every task is blocked, the server holds ``in_flight`` requests, none is answered."""
    await trio.testing.wait_all_tasks_blocked()
    for call in later:
        assert not call.done.is_set(), f"answered before the commit: {call.value or call.error}"
    assert served.requests_in_flight() == in_flight


async def task_status_by(kind: str, client: AsyncClient, task_id: str, run_id: str) -> str:
    """The task's status as one of the read requests reports it."""
    if kind == "show":
        detail = await client.show_task(task_id)
        assert [r.status for r in detail.runs if r.id == run_id]
        return detail.task.status
    if kind == "list":
        return {t.id: t.status for t in await client.list_tasks()}[task_id]
    view = await client.inspect_run(run_id)
    return view.task.status


async def claimed_by_a(
    served: Served, a: AsyncClient
) -> tuple[str, str, str]:  # task id, run id, task status while claimed
    task = await a.create_task("only", start=True)
    claim = await a.claim_next(lease_seconds=3600)
    return task.id, claim.run.id, (await a.get_task(task.id)).status


@pytest.mark.parametrize("kind", ["show", "list", "inspect"])
@pytest.mark.parametrize("commit", ["succeeds", "fails"])
async def test_a_read_waits_for_the_commit_of_what_it_shows(
    served: Served, nursery: trio.Nursery, kind: str, commit: str
) -> None:
    async with (
        open_client(served.path) as a,
        open_client(served.path) as b,
    ):
        _, token = await a.open_session(agent="a")
        a.session_token = token
        task_id, run_id, claimed_status = await claimed_by_a(served, a)

        served.gate.hold_next()
        completing = Later(nursery, lambda: a.complete(run_id, result="done"))
        await entered(served.gate)
        # In this process the run is completed already; the journal does not have it yet.
        assert served.rt.get_run(run_id).status == "completed"

        reading = Later(nursery, lambda: task_status_by(kind, b, task_id, run_id))
        await held(served, completing, reading, in_flight=2)

        if commit == "succeeds":
            served.gate.release()
            assert (await completing.result()).status == "completed"
            assert await reading.result() == "completed"
        else:
            served.gate.release(disk_gone())
            assert (await completing.failure()).code == STORAGE_FAILED
            # Memory was rolled back to the journal, and the read was computed again.
            assert await reading.result() == claimed_status
            assert served.rt.get_run(run_id).status == "claimed"


async def test_a_refusal_waits_for_the_commit_it_was_judged_against(
    served: Served, nursery: trio.Nursery
) -> None:
    async with (
        open_client(served.path) as a,
        open_client(served.path) as b,
    ):
        a.session_token = (await a.open_session(agent="a"))[1]
        b.session_token = (await b.open_session(agent="b"))[1]
        _, run_id, _ = await claimed_by_a(served, a)

        served.gate.hold_next()
        completing = Later(nursery, lambda: a.complete(run_id))
        await entered(served.gate)
        # B heartbeats A's run: refused, judged against a completion not yet durable.
        beating = Later(nursery, lambda: b.heartbeat(run_id))
        await held(served, completing, beating, in_flight=2)

        served.gate.release()
        await completing.result()
        refusal = await beating.failure()
        assert refusal.code != STORAGE_FAILED


@pytest.mark.parametrize("commit", ["succeeds", "fails"])
async def test_nothing_to_claim_waits_for_the_claim_that_took_the_run(
    served: Served, nursery: trio.Nursery, commit: str
) -> None:
    async with (
        open_client(served.path) as a,
        open_client(served.path) as b,
    ):
        a.session_token = (await a.open_session(agent="a"))[1]
        b.session_token = (await b.open_session(agent="b"))[1]
        await a.create_task("only", start=True)

        served.gate.hold_next()
        claiming = Later(nursery, lambda: a.claim_next())
        await entered(served.gate)
        # A's claim took the only run, but it is not durable: "nothing to claim" is not
        # yet true as far as a crash is concerned.
        finding = Later(nursery, lambda: b.claim_next())
        await held(served, claiming, finding, in_flight=2)

        if commit == "succeeds":
            served.gate.release()
            await claiming.result()
            assert (await finding.failure()).code == NO_CLAIMABLE_RUN
        else:
            served.gate.release(disk_gone())
            assert (await claiming.failure()).code == STORAGE_FAILED
            # The reply it was about to get described a claim that is gone.
            assert (await finding.failure()).code == STORAGE_FAILED
            assert served.rt.status().queued_runs == 1


async def test_embedded_reads_show_the_process_view_and_settled_waits_for_the_journal(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = AppendGate(monkeypatch)
    async with open_runtime(data_dir=tmp_path / "data") as rt:
        try:
            await rt.create_task("only", start=True)
            agent = await rt.open_session(agent="a")
            claim = await agent.claim_next()

            gate.hold_next()
            completing = Later(nursery, lambda: agent.complete(claim.run.id))
            await entered(gate)
            # The sync read is this process's view: it includes the write in commit...
            assert rt.get_run(claim.run.id).status == "completed"
            # ...and the barrier (and rt.read) wait until it is durable.
            settled = Later(nursery, rt.settled)
            reading = Later(nursery, lambda: rt.read(lambda: rt.get_run(claim.run.id).status))
            await trio.testing.wait_all_tasks_blocked()
            assert not settled.done.is_set()
            assert not reading.done.is_set()

            gate.release(disk_gone())
            assert (await completing.failure()).code == STORAGE_FAILED
            await settled.result()
            assert await reading.result() == "claimed"
            assert rt.get_run(claim.run.id).status == "claimed"
        finally:
            gate.release()
