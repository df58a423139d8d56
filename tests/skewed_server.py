"""A runlease server whose wall clock a test can move forward (tests only).

    python tests/skewed_server.py SOCKET SKEW_FILE [HTTP_HOST:PORT]

The clock is real time plus the number of seconds written in SKEW_FILE (0 when absent).
Jumping it forward makes a lease's deadline pass for every command at once while the lease
clock, which sleeps on trio's monotonic clock, has not fired yet: the moment between a
lease's deadline and its requeue, which a test cannot otherwise hit on purpose. With a
third argument it serves the web dashboard there too (a browser on the machine's own clock).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from runlease.client_common import ServerAddress
from runlease.runtime.serve import configure_logging, run_server


def main() -> None:
    socket_path, skew_file = Path(sys.argv[1]), Path(sys.argv[2])

    def clock() -> float:
        try:
            skew = float(skew_file.read_text() or 0)
        except (FileNotFoundError, ValueError):
            skew = 0.0
        return time.time() + skew

    http = None
    if len(sys.argv) > 3:
        http = ServerAddress.parse(f"tcp://{sys.argv[3]}")._replace(tls=False)
    configure_logging()
    run_server(socket_path, clock=clock, http=http)


if __name__ == "__main__":
    main()
