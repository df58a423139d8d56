"""Drive the socket server in process from trio tests: a served runtime and raw connections."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from runlease import protocol as p
from runlease.runtime import Runtime
from runlease.runtime.server import SocketServer

STEP = 10  # seconds: an upper bound for any single step, never a sleep


@dataclass
class Served:
    """A runtime, the socket server in front of it, and the socket's path."""

    rt: Runtime
    server: SocketServer
    path: Path


class Raw:
    """A hand-driven connection that records every byte the server sends."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = p.FrameBuffer()
        self.received = bytearray()

    @classmethod
    async def open(cls, path: Path, *, hello: bool = True) -> Raw:
        raw = cls(await trio.open_unix_socket(os.fspath(path)))
        if hello:
            await raw.send(p.Hello(id=1, versions=[1]))
            assert isinstance(await raw.reply(), p.Welcome)
        return raw

    async def send(self, message: p.Request[Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else p.encode_frame(message)
        await self.stream.send_all(data)

    async def reply(self, timeout: float = STEP) -> p.AnyReply | None:
        """The next reply, or None once the server closed the connection."""
        with trio.fail_after(timeout):
            while True:
                body = self.buffer.next_frame()
                if body is not None:
                    return p.decode_reply(body)
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                self.received += data
                self.buffer.feed(data)

    async def replies(self, count: int) -> list[p.AnyReply]:
        out: list[p.AnyReply] = []
        for _ in range(count):
            reply = await self.reply()
            assert reply is not None, f"connection closed after {out}"
            out.append(reply)
        return out

    async def close(self) -> None:
        await self.stream.aclose()
