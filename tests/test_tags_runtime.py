"""Tags and task listing through the runtime: a waiting claim filtered by tag, tags across a
restart, and the list filters over the socket (``available`` is the caller's session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from runlease import open_runtime
from runlease.core.model import Claim
from runlease.errors import AUTONOMY_SESSION_REQUIRED, RunleaseError
from runlease.operations import ListTasks
from runlease.runtime.client import open_client
from socket_helpers import Served


async def test_a_waiting_tag_claim_wakes_only_for_a_tagged_run() -> None:
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        handle = await rt.open_session(agent="gpu-worker")
        got: list[Claim] = []

        async def wait_for_gpu() -> None:
            got.append(await handle.claim_next(wait=True, tags=["gpu"]))

        nursery.start_soon(wait_for_gpu)
        await trio.testing.wait_all_tasks_blocked()
        plain = await rt.create_task("plain", priority="urgent", start=True)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert rt.status().waiting_claimers == 1
        gpu = await rt.create_task("gpu", priority="low", start=True, tags=["gpu"])
        await trio.testing.wait_all_tasks_blocked()
        assert [c.task.id for c in got] == [gpu.id]
        assert rt.get_run(plain.current_run_id or "").status == "queued"


async def test_tags_and_the_tag_lanes_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_runtime(data_dir=data_dir) as rt:
        first = await rt.create_task("first", start=True, tags=["a", "b"])
        second = await rt.create_task("second", start=True, tags=["b"])
        await rt.update_task(first.id, {"tags": {"add": ["c"]}})
    async with open_runtime(data_dir=data_dir) as rt:
        assert rt.get_task(first.id).tags == ("a", "b", "c")
        assert [t.id for t in rt.list_tasks(tags=["b"])] == [first.id, second.id]
        handle = await rt.open_session()
        assert (await handle.claim_next(tags=["c", "b"])).task.id == first.id


async def test_list_filters_over_the_socket(served: Served) -> None:
    rt = served.rt
    tagged = await rt.create_task("Tagged work", start=True, tags=["red"])
    await rt.create_task("needs gpu", start=True, tags=["red"], capabilities=["gpu"])
    await rt.create_task("not started", tags=["red"])
    async with open_client(served.path) as client:
        _, token = await client.open_session(agent="lister")
        assert [t.title for t in await client.list_tasks(tags=["red"], search="WORK")] == [
            "Tagged work"
        ]
        with pytest.raises(RunleaseError) as info:
            await client.list_tasks(available=True)
        assert info.value.code == AUTONOMY_SESSION_REQUIRED
        client.session_token = token
        available = await client.list_tasks(available=True, tags=["red"])
        assert [t.id for t in available] == [tagged.id]
        # Pages of one, each continuing after the last: every match once, in order.
        titles: list[str] = []
        after: str | None = None
        while True:
            page = await client.call(ListTasks(tags=["red"], limit=1, after=after))
            titles += [t.title for t in page.tasks]
            if (after := page.next_after) is None:
                break
        assert titles == ["Tagged work", "needs gpu", "not started"]
