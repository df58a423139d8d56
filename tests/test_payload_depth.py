"""JSON payloads nest at most MAX_PAYLOAD_DEPTH levels, refused as INVALID_INPUT beyond.

Depth counts objects and arrays: ``[1]`` is 1 level, ``{"a": [1]}`` is 2. The bound is
checked with an explicit stack, so even 10,000 levels (or a list that contains itself) get
a clear refusal instead of a RecursionError turned into INTERNAL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from runlease import open_runtime
from runlease import protocol as p
from runlease.core.model import MAX_PAYLOAD_DEPTH
from runlease.errors import INVALID_INPUT, RunleaseError
from runlease.runtime.client import open_client
from runlease.runtime.server import SocketServer, serve_socket

DEEP = 10_000
STEP = 10  # seconds: an upper bound for one reply, never a sleep


def nested(levels: int) -> Any:
    """Arrays nested ``levels`` deep around one number."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def metadata(levels: int) -> dict[str, Any]:
    """A metadata object whose total depth is ``levels`` (the object is the first level)."""
    return {"deep": nested(levels - 1)}


def assert_depth_refusal(error: RunleaseError, field: str) -> None:
    assert error.code == INVALID_INPUT
    assert field in error.message
    assert str(MAX_PAYLOAD_DEPTH) in error.message


async def test_embedded_api_bounds_payload_depth() -> None:
    async with open_runtime() as rt:
        at_limit = await rt.create_task("ok", metadata=metadata(MAX_PAYLOAD_DEPTH), start=True)
        assert at_limit.metadata == metadata(MAX_PAYLOAD_DEPTH)
        for levels in (MAX_PAYLOAD_DEPTH + 1, 980, DEEP):
            with pytest.raises(RunleaseError) as info:
                await rt.create_task("deep", metadata=metadata(levels))
            assert_depth_refusal(info.value, "metadata")

        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()
        loop: list[Any] = []
        loop.append(loop)  # contains itself: infinitely deep
        for result in (nested(MAX_PAYLOAD_DEPTH + 1), nested(DEEP), loop):
            with pytest.raises(RunleaseError) as info:
                await agent.complete(claim.run.id, result=result)
            assert_depth_refusal(info.value, "result")
        done = await agent.complete(claim.run.id, result=nested(MAX_PAYLOAD_DEPTH))
        assert done.result == nested(MAX_PAYLOAD_DEPTH)


async def test_socket_server_bounds_payload_depth(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        async with open_client(path) as client:
            task = await client.create_task("ok", metadata=metadata(MAX_PAYLOAD_DEPTH))
            assert task.metadata == metadata(MAX_PAYLOAD_DEPTH)
            with pytest.raises(RunleaseError) as info:
                await client.create_task("deep", metadata=metadata(MAX_PAYLOAD_DEPTH + 1))
            assert_depth_refusal(info.value, "metadata")

        # Near Python's recursion limit msgspec cannot encode the request at all, so send
        # the bytes by hand: a create_task whose metadata holds that many nested arrays.
        stream = await trio.open_unix_socket(os.fspath(path))
        frames = p.FrameBuffer()

        async def reply() -> p.AnyReply:
            with trio.fail_after(STEP):
                while (body := frames.next_frame()) is None:
                    data = await stream.receive_some(65536)
                    assert data, "the server closed the connection"
                    frames.feed(data)
            return p.decode_reply(body)

        await stream.send_all(p.encode_frame(p.Hello(id=1, versions=[1])))
        assert isinstance(await reply(), p.Welcome)
        for request_id, levels in ((2, 980), (3, DEEP)):
            body = (
                b"\x84\xa2op\xabcreate_task\xa2id"
                + bytes([request_id])
                + b"\xa5title\xa4deep\xa8metadata\x81\xa4deep"
                + b"\x91" * (levels - 1)
                + b"\x01"
            )
            await stream.send_all(p.frame_bytes(body))
            refusal = await reply()
            assert isinstance(refusal, p.ErrorReply)
            assert refusal.code == INVALID_INPUT
            assert str(MAX_PAYLOAD_DEPTH) in refusal.message
        # The connection still serves requests afterwards.
        await stream.send_all(p.encode_frame(p.GetStatus(id=4)))
        assert isinstance(await reply(), p.StatusReply)
        await stream.aclose()
        assert rt.status().tasks == 1
        server.shutdown()
        await server.wait_stopped()
