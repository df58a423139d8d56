"""A fake server for reconnect tests: it stands in front of a real one and can lose an answer.

:class:`AnswerDroppingProxy` listens on its own Unix socket and passes every request to a
real ``runlease serve`` and every reply back, one request at a time (as the synchronous
client and a one-call-at-a-time trio caller use it). Armed for an operation, it passes the
next such request on, waits until the real server has answered (so the request was
applied), and closes the client's connection instead of answering: the client sees "sent,
the server closed before answering". Streams are not passed through.

:class:`Serving` runs a real ``runlease serve`` on a durable data dir and restarts it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path

from cli_helpers import Server
from runlease import protocol as p

RECEIVE_BYTES = 65536
# Bounds a test waits for a server to come back; never reached when things work.
RECONNECT_TIMEOUT = 60.0


class AnswerDroppingProxy:
    def __init__(self, listen: Path, upstream: Path) -> None:
        self.listen = listen
        self.upstream = upstream
        self.dropped: list[p.AnyReply] = []  # the answers kept from the client
        self.connections = 0
        self._armed: set[str] = set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(os.fspath(listen))
        self._server.listen(16)
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def arm(self, op: str) -> None:
        """Drop the answer to the next request tagged ``op`` (and close its connection)."""
        with self._lock:
            self._armed.add(op)

    def close(self) -> None:
        """Stop serving: no more connections, and the open ones are closed."""
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._open.update((client, upstream))
        try:
            upstream.connect(os.fspath(self.upstream))
            from_client, from_server = p.FrameBuffer(), p.FrameBuffer()
            while True:
                body = _next_frame(client, from_client)
                if body is None:
                    return
                request = p.decode_request(body)
                upstream.sendall(p.frame_bytes(body))
                while True:
                    answer = _next_frame(upstream, from_server)
                    if answer is None:
                        return
                    reply = p.decode_reply(answer)
                    if reply.id == request.id:
                        break
                op = str(type(request).__struct_config__.tag)
                with self._lock:
                    drop = op in self._armed
                    self._armed.discard(op)
                if drop:
                    self.dropped.append(reply)
                    return
                client.sendall(p.frame_bytes(answer))
        except OSError:
            return
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _next_frame(sock: socket.socket, buffer: p.FrameBuffer) -> bytes | None:
    while True:
        body = buffer.next_frame()
        if body is not None:
            return body
        data = sock.recv(RECEIVE_BYTES)
        if not data:
            return None
        buffer.feed(data)


class Serving:
    """A ``runlease serve`` on a durable data dir that a test can restart."""

    def __init__(self, base: Path) -> None:
        self.data = base / "data"
        self.socket = base / "s.sock"
        self.server = self._start()
        self.server.wait_listening()

    def _start(self) -> Server:
        return Server.serve("--data-dir", str(self.data), "--socket", str(self.socket))

    def restart(self, how: signal.Signals = signal.SIGKILL, *, wait: bool = True) -> None:
        """Stop the server (SIGKILL: a crash) and start it again on the same data."""
        if how == signal.SIGKILL:
            self.server.kill()
        else:
            assert self.server.stop(how) == 0
        self.server = self._start()
        if wait:
            self.server.wait_listening()
