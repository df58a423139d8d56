"""Bytes over a connected trio socket with as few trips through trio's run loop as they allow.

trio's ``SocketStream`` checkpoints around every receive and every send, even when the
kernel had bytes ready or took the whole send at once; each checkpoint is one more pass of
the run loop, and a request with its reply used to cost several on each side. A
:class:`Wire` waits for the socket only when the kernel has no bytes for it (or no room),
so the usual exchange costs one wake-up per side: the wait for the peer's bytes.

It keeps trio's guarantees where they matter: every receive and flush raises ``Cancelled``
if the task is already cancelled; a reader that keeps finding bytes ready without waiting
yields now and then, so a flooding peer cannot starve the other tasks; a frame is never
left half sent by a cancellation unless some of it had already gone out, and then the wire
says so (:attr:`Wire.torn`) because nothing more can follow it on that stream.

Replies (or requests) are appended to :attr:`Wire.outbox` (see
:func:`runlease.protocol.append_frame`) and leave together with the next :meth:`Wire.flush`,
so whatever became ready in one turn goes out in one ``send``.
"""

from __future__ import annotations

import os
from typing import Final

import trio

RECEIVE_BYTES: Final = 64 * 1024
# After this many receives in a row that found bytes ready, the next one yields first.
READY_STREAK: Final = 8


class Wire:
    """Receive and send on one connected, non-blocking trio socket (not thread-safe).

    Errors are trio's stream errors: ``BrokenResourceError`` when the peer reset or went
    away, ``ClosedResourceError`` when the socket was closed on this side.
    """

    __slots__ = (
        "_head_sent",
        "_idle",
        "_maybe_more",
        "_ready_streak",
        "broken",
        "outbox",
        "sock",
        "torn",
        "writing",
    )

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.outbox = bytearray()
        self.writing = False  # a flush is waiting for room in the socket
        self.torn = False  # a cancelled flush left part of a frame on the wire
        self.broken = False  # a send failed: the peer is gone
        self._head_sent = False  # part of the outbox's first frame has gone out
        self._ready_streak = 0  # receives in a row that found bytes without waiting
        self._maybe_more = False  # the last receive filled its buffer: more may be queued
        self._idle: trio.Event | None = None  # set when the waiting flush is done

    def _fileno(self) -> int:
        # Asked each time, never cached: a closed socket's number may be reused at once.
        fd = self.sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        return fd

    # ------------------------------------------------------------------ receiving
    async def receive_some(self, max_bytes: int = RECEIVE_BYTES) -> bytes:
        """The bytes the peer sent next, ``b""`` once it closed its side.

        After a read that did not fill ``max_bytes`` the kernel had nothing more, and in a
        request-reply exchange the peer's next bytes come only after our answer: so wait
        for the socket first rather than try a read that fails (a system call and an
        exception). After a full read, try at once: more is likely waiting.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._maybe_more:
            self._ready_streak = 0
            self._fileno()  # a closed socket raises here rather than wait
            await trio.lowlevel.wait_readable(self.sock)
        elif self._ready_streak >= READY_STREAK:
            self._ready_streak = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        while True:
            try:
                data = os.read(self._fileno(), max_bytes)
            except BlockingIOError:
                self._ready_streak = 0
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
            self._ready_streak += 1
            self._maybe_more = len(data) == max_bytes
            return data

    # -------------------------------------------------------------------- sending
    def send_ready(self) -> bool:
        """Send what the outbox holds as far as the socket takes it now, without waiting;
        True once the outbox is empty. The rest needs a :meth:`flush` (nothing is sent
        here while a flush waits for room: that one sends it, in order)."""
        if self.writing or self.torn or self.broken:
            return not self.outbox
        while self.outbox:
            try:
                sent = os.write(self._fileno(), self.outbox)
            except BlockingIOError:
                return False
            except OSError as exc:
                self.broken = True
                raise trio.BrokenResourceError(f"send failed: {exc}") from exc
            del self.outbox[:sent]
            # Conservatively, a send that stopped short stopped inside a frame.
            self._head_sent = bool(self.outbox)
        return True

    async def flush(self) -> None:
        """Send everything in the outbox, waiting for room if the peer reads slowly.

        A flush that finds another one waiting for room waits for it to finish: that one
        sends these bytes too. Raises BrokenResourceError if the peer is gone or a
        cancelled flush tore the stream; a cancelled flush tears it only if part of a frame
        had gone out (whole frames stay in the outbox).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self.torn or self.broken:
                raise trio.BrokenResourceError("the stream can carry nothing more")
            if not self.writing:
                break
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()
        if self.send_ready():
            return
        self.writing = True
        try:
            await self._flush_waiting()
        finally:
            self.writing = False
            idle, self._idle = self._idle, None
            if idle is not None:
                idle.set()

    async def _flush_waiting(self) -> None:
        while self.outbox:
            try:
                await trio.lowlevel.wait_writable(self.sock)
            except trio.Cancelled:
                if self._head_sent:
                    self.torn = True
                raise
            try:
                sent = os.write(self._fileno(), self.outbox)
            except BlockingIOError:
                continue
            except OSError as exc:
                self.broken = True
                raise trio.BrokenResourceError(f"send failed: {exc}") from exc
            del self.outbox[:sent]
            self._head_sent = bool(self.outbox)


class StreamWire:
    """The :class:`Wire` interface over any trio stream, for TLS (``trio.SSLStream``), where
    the bytes on the socket are not the bytes of the frames and so cannot be read or
    written past the stream.

    It never sends without waiting (:meth:`send_ready` only reports whether the outbox is
    empty), and one flush at a time sends: a flush that finds another one sending waits
    for it and then sends what is left, as :meth:`Wire.flush` does.
    """

    __slots__ = ("_idle", "broken", "outbox", "stream", "torn", "writing")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.outbox = bytearray()
        self.writing = False
        self.torn = False
        self.broken = False
        self._idle: trio.Event | None = None

    async def receive_some(self, max_bytes: int = RECEIVE_BYTES) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    def send_ready(self) -> bool:
        return not self.outbox

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self.torn or self.broken:
                raise trio.BrokenResourceError("the stream can carry nothing more")
            if not self.writing:
                break
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()
        self.writing = True
        try:
            while self.outbox:
                data = bytes(self.outbox)
                del self.outbox[:]
                try:
                    await self.stream.send_all(data)
                except trio.Cancelled:
                    # A TLS stream whose send was cancelled cannot be trusted to be in step.
                    self.torn = True
                    raise
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.broken = True
                    raise
        finally:
            self.writing = False
            idle, self._idle = self._idle, None
            if idle is not None:
                idle.set()


__all__ = ["READY_STREAK", "RECEIVE_BYTES", "StreamWire", "Wire"]
