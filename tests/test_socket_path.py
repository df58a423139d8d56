"""The socket path's batching and the trio client's parking: replies made ready together
leave together, calls need no channel, and cancellation still reaches the server."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from runlease import protocol as p
from runlease.errors import SERVER_UNAVAILABLE, InvalidInput, Unavailable
from runlease.runtime.client import open_client
from socket_helpers import STEP, Raw, Served


async def test_replies_to_frames_that_arrive_together_leave_in_one_send(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = await Raw.open(served.path)
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes | bytearray) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    # Answered without the runtime: a cancel of nothing, a bad frame, a second hello.
    batch = b"".join(
        [
            p.encode_frame(p.Cancel(id=2, target=99)),
            p.frame_bytes(b"\xc1"),
            p.encode_frame(p.Hello(id=3, versions=[1])),
        ]
    )
    await raw.send(batch)
    replies = await raw.replies(3)
    monkeypatch.undo()
    assert [type(r) for r in replies] == [p.Ok, p.ErrorReply, p.Welcome]
    # All three went out in the write that carried the first.
    first = p.encode_frame(replies[0])
    (carrier,) = [data for data in writes if first in data]
    assert carrier.startswith(first)
    assert p.encode_frame(replies[2]) in carrier
    await raw.close()


async def test_a_cancelled_call_cancels_its_request_on_the_server(served: Served) -> None:
    async with open_client(served.path) as client:
        _, token = await client.open_session(agent="parked")
        with trio.move_on_after(0) as scope:
            # Already cancelled: the claim never leaves the client.
            await client.claim_next(token=token, wait=True, timeout=STEP * 10)
        assert scope.cancelled_caught

        async with trio.open_nursery() as nursery:

            async def waiting_claim() -> None:
                await client.claim_next(token=token, wait=True, timeout=STEP * 10)

            nursery.start_soon(waiting_claim)
            with trio.fail_after(STEP):
                while served.rt.status().waiting_claimers != 1:
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        # The server ended the wait, as the client asked: new work is not handed to it,
        # and the session, holding no lease, can claim the work itself.
        task = await client.create_task("after the cancel", start=True)
        claim = await client.claim_next(token=token)
        assert claim.task.id == task.id


@pytest.mark.parametrize("yields", range(8))
async def test_a_claim_cancelled_at_any_point_leaves_no_lease_behind(
    served: Served, yields: int
) -> None:
    """However far the claim got before its caller was cancelled, the session ends up
    holding no lease it does not know of: one the server made anyway is handed back."""
    async with open_client(served.path) as client:
        opened = await client.open_session(agent="racer")
        task = await client.create_task("contested", start=True)
        got: list[str] = []
        async with trio.open_nursery() as nursery:

            async def claim() -> None:
                made = await client.claim_next(token=opened.token, lease_seconds=300)
                got.append(made.run.id)

            nursery.start_soon(claim)
            for _ in range(yields):
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        if got:  # it finished before the cancel reached it: the caller holds the lease
            await client.release(got[0], token=opened.token)
        # A claim the server made anyway is handed back once its reply reaches the client:
        # round trips give that reply time to arrive (the bound fails a missing hand-back).
        with trio.fail_after(STEP):
            while served.rt.get_session(opened.session.id).lease_run_id is not None:
                await client.status()
        await served.rt.settled()
        assert served.rt.get_run(task.current_run_id or "").status == "queued"


async def test_requests_larger_than_the_socket_buffers_from_many_tasks_stay_whole(
    served: Served,
) -> None:
    # Each request is far larger than the socket buffers, so the writer task sends the rest
    # while other tasks queue theirs behind it. The server refuses each description as too
    # long, quoting its length: every frame arrived whole and its reply reached its caller.
    sizes = [300_000 + i for i in range(6)]
    async with open_client(served.path) as client:
        refused: dict[int, str] = {}

        async def create(size: int) -> None:
            with pytest.raises(InvalidInput) as info:
                await client.create_task("big", description="d" * size)
            refused[size] = info.value.message

        async def small() -> None:
            assert (await client.status()).connections == 1

        with trio.fail_after(STEP * 3):
            async with trio.open_nursery() as nursery:
                for size in sizes:
                    nursery.start_soon(create, size)
                    nursery.start_soon(small)
        assert sorted(refused) == sizes
        for size, message in refused.items():
            assert f"description is {size} characters" in message
        assert (await client.create_task("still in step")).title == "still in step"


async def test_parked_calls_wake_with_an_error_when_the_server_goes_away(
    served: Served,
) -> None:
    # Without reconnecting: the calls and the next one report the lost connection.
    async with open_client(served.path, reconnect_timeout=0) as client:
        _, token = await client.open_session(agent="left")
        errors: list[Unavailable] = []

        async def waiting_claim() -> None:
            try:
                await client.claim_next(token=token, wait=True, timeout=STEP * 10)
            except Unavailable as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiting_claim)
            with trio.fail_after(STEP):
                while served.rt.status().waiting_claimers != 3:
                    await trio.testing.wait_all_tasks_blocked()
            # The socket closes under the client (as when the server process dies).
            stream = client._current().stream
            assert isinstance(stream, trio.SocketStream)
            stream.socket.shutdown(trio.socket.SHUT_RDWR)
        assert [e.code for e in errors] == [SERVER_UNAVAILABLE] * 3
        with pytest.raises(Unavailable):
            await client.status()
