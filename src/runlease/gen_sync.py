"""Generate the synchronous client's methods from the async ones (the unasync approach).

``operation_methods.py`` is written by hand for ``await``; ``operation_methods_sync.py``
is this file's output, with ``async``/``await`` and the ``Async`` name prefix removed.
Run ``python -m runlease.gen_sync`` after changing the source; ``--check`` exits 1 when
the checked-in output is stale (tests/test_generated.py runs it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).with_name("operation_methods.py")
TARGET: Final = Path(__file__).with_name("operation_methods_sync.py")

HEADER: Final = '''"""The synchronous client's named methods. GENERATED from operation_methods.py by
``python -m runlease.gen_sync``: edit that file and run the generator, never this one."""
'''

# (pattern, replacement), applied in order to the source after its docstring.
REWRITES: Final = (
    (re.compile(r"\basync def\b"), "def"),
    (re.compile(r"\bawait "), ""),
    (re.compile(r"\bAsync(?=[A-Z])"), ""),
    (re.compile(r"\bAwaitable\[(\w+)\]"), r"\1"),
    (re.compile(r"\bAwaitable, "), ""),
)


def generate(source: str) -> str:
    """The synchronous twin of ``source``."""
    docstring = re.match(r'\s*""".*?"""\n', source, re.DOTALL)
    body = source[docstring.end() :] if docstring else source
    for pattern, replacement in REWRITES:
        body = pattern.sub(replacement, body)
    return HEADER + body


def main(argv: list[str]) -> int:
    wanted = generate(SOURCE.read_text())
    if "--check" in argv:
        if TARGET.read_text() != wanted:
            print(f"{TARGET.name} is stale: run python -m runlease.gen_sync", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
