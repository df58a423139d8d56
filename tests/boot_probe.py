"""Boot data directories named on stdin (``durability<TAB>path`` per line); one JSON line
each on stdout: ``{"ok": digest}`` or ``{"error": code, ...}``. Anything else (a
traceback, a signal) ends the process, which the parent reports as a failure."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from storage_helpers import probe_one

logging.disable(logging.CRITICAL)

for line in sys.stdin:
    mode, _, path = line.rstrip("\n").partition("\t")
    if mode == "durable":
        answer = probe_one("durable", Path(path))
    elif mode == "relaxed":
        answer = probe_one("relaxed", Path(path))
    else:
        raise SystemExit(f"bad request line {line!r}")
    print(json.dumps(answer), flush=True)
