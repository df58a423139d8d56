"""Hook endpoints for the contention benchmark: one that answers slowly, one that is down.

The slow one runs in a process of its own (``python -m bench.hook_endpoints slow``), so
its threads never compete with the measured runtime for the interpreter lock; it answers
every POST with 204 after ``SLOW_SECONDS``. The dead one is a loopback port nobody listens
on: every connection is refused at once.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

SLOW_SECONDS: Final = 2.0
START_TIMEOUT: Final = 30.0


@contextmanager
def slow_endpoint() -> Iterator[str]:
    """The URL of a local server answering each POST after SLOW_SECONDS, while it runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.hook_endpoints", "slow"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        process.terminate()
        process.wait(timeout=START_TIMEOUT)


@contextmanager
def dead_endpoint() -> Iterator[str]:
    """The URL of a loopback port that was just freed: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield f"http://127.0.0.1:{port}/hook"


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        time.sleep(SLOW_SECONDS)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:] != ["slow"]:
        raise SystemExit("usage: python -m bench.hook_endpoints slow")
    main()
