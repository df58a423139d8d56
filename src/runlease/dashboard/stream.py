"""The live event stream of the dashboard: the runtime's history as server-sent events.

Each event goes out as one SSE message whose ``id`` is its sequence, so a browser that
reconnects sends ``Last-Event-ID`` and the stream resumes right after the last event it
saw, repeating and skipping nothing (the history's ``follow`` guarantees it). A comment line
goes out when nothing happened for a while, so proxies and browsers keep the connection.

An open tab must not slow the queue it watches: events are written at most once per
``FLUSH_SECONDS`` (whatever arrived meanwhile in one write, not a write per event, which
is what costs under load), handed from the reader without a scheduler round trip each,
and encoded by msgspec. A person reads a few events a second, not thousands: of what
arrived in one window the newest ``SHOWN_PER_FLUSH`` go out, after one ``skipped``
message that counts the rest and names their range (its ``id`` is the last of them, so a
resume carries on after it). The complete feed is ``runlease events --follow``.

The stream ends when the client goes away, when the login's token is revoked or expires
(checked before each message), or when the server shuts down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Final

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from runlease.core.model import Event
from runlease.errors import RunleaseError
from runlease.runtime.runtime import Runtime

# Seconds without an event before a keep-alive comment is sent.
KEEPALIVE_SECONDS: Final = 15.0
# Events read ahead of a slow browser; past it the reader waits (the history keeps them).
READ_AHEAD: Final = 4096
# At most this many events go out in one write.
MAX_BATCH: Final = 4096
# After an event arrives, wait this long for more before writing: a person sees no delay,
# and a busy queue costs ten writes a second per tab instead of one per event.
FLUSH_SECONDS: Final = 0.1
# Events shown of one window (at most 500 a second); the page keeps the newest 200.
SHOWN_PER_FLUSH: Final = 50
# How long a browser waits before reconnecting after the stream ended.
RETRY_MILLISECONDS: Final = 2000
# At most this much of an event's data is shown beside it.
DATA_PREVIEW_CHARS: Final = 160
# Keys sorted so a preview reads the same every time; odd values (a datetime) as text.
_JSON = msgspec.json.Encoder(enc_hook=str, order="sorted")


def event_summary(event: Event) -> dict[str, Any]:
    """What the dashboard shows of an event: its ids, kind, actor and a short preview of
    its data (events never carry a raw token; the hashes are left out too)."""
    preview = ""
    # Hashes of tokens mean nothing to a person and need not leave the server.
    shown = {key: value for key, value in event.data.items() if not key.endswith("token_hash")}
    if shown:
        preview = _JSON.encode(shown).decode()
        if len(preview) > DATA_PREVIEW_CHARS:
            preview = preview[: DATA_PREVIEW_CHARS - 1] + "…"
    return {
        "seq": event.seq,
        "kind": event.kind,
        "at": event.at,
        "task_id": event.task_id,
        "run_id": event.run_id,
        "session_id": event.session_id,
        "actor": None if event.actor is None else f"{event.actor.kind}:{event.actor.ref}",
        "data": preview,
    }


def skipped_message(first: Event, last: Event, count: int) -> bytes:
    """The ``skipped`` message standing for ``count`` events from ``first`` to ``last``."""
    gap = {"count": count, "first_seq": first.seq, "last_seq": last.seq}
    return b"event: skipped\nid: %d\ndata: %s\n\n" % (last.seq, _JSON.encode(gap))


def sse_message(event: Event) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event.seq, _JSON.encode(event_summary(event)))


class StreamRegistry:
    """The open streams, so a shutdown can end them all at once."""

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self.closing = False

    def add(self, scope: anyio.CancelScope) -> None:
        if self.closing:
            scope.cancel()
        self._scopes.add(scope)

    def discard(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)

    def close_all(self) -> None:
        self.closing = True
        for scope in list(self._scopes):
            scope.cancel()

    def __len__(self) -> int:
        return len(self._scopes)


class EventStream(Response):
    """One browser's stream: events after ``after_seq``, then each new one.

    ``still_allowed`` is asked before every message; once it raises, the stream ends.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        runtime: Runtime,
        registry: StreamRegistry,
        *,
        after_seq: int,
        still_allowed: Callable[[], object],
    ) -> None:
        # No Content-Length: the body goes on until the stream ends.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self.runtime = runtime
        self.registry = registry
        self.after_seq = after_seq
        self.still_allowed = still_allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await self._body(send, f"retry: {RETRY_MILLISECONDS}\n\n".encode())
        sender, events = anyio.create_memory_object_stream[Event](READ_AHEAD)
        async with anyio.create_task_group() as group:
            self.registry.add(group.cancel_scope)
            try:
                group.start_soon(self._read_history, sender)
                group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                async with events:
                    await self._forward(events, send)
                group.cancel_scope.cancel()
            finally:
                self.registry.discard(group.cancel_scope)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _forward(self, events: MemoryObjectReceiveStream[Event], send: Send) -> None:
        while True:
            event = None
            with anyio.move_on_after(KEEPALIVE_SECONDS):
                try:
                    event = await events.receive()
                except anyio.EndOfStream:
                    return
            try:
                self.still_allowed()
            except RunleaseError:
                return
            if event is None:
                await self._body(send, b": keepalive\n\n")
                continue
            # Let a burst gather, then whatever was read goes out in one write.
            await anyio.sleep(FLUSH_SECONDS)
            arrived = [event]
            while len(arrived) < MAX_BATCH:
                try:
                    arrived.append(events.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            chunk = []
            if len(arrived) > SHOWN_PER_FLUSH:
                left_out = len(arrived) - SHOWN_PER_FLUSH
                chunk.append(skipped_message(arrived[0], arrived[left_out - 1], left_out))
                arrived = arrived[left_out:]
            chunk.extend(sse_message(e) for e in arrived)
            await self._body(send, b"".join(chunk))

    async def _read_history(self, sender: MemoryObjectSendStream[Event]) -> None:
        async with sender:
            follow = self.runtime.follow_events(after_seq=self.after_seq)
            async with contextlib.aclosing(follow):
                async for event in follow:
                    # Without a checkpoint per event while there is room (the history
                    # hands over a whole commit's events at once).
                    try:
                        sender.send_nowait(event)
                    except anyio.WouldBlock:
                        await sender.send(event)

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    @staticmethod
    async def _body(send: Send, chunk: bytes) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


__all__ = [
    "EventStream",
    "StreamRegistry",
    "event_summary",
    "skipped_message",
    "sse_message",
]
