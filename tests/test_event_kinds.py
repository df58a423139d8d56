"""EVENT_KINDS lists every kind the core emits: a handler adding a kind must add it there."""

from __future__ import annotations

import ast
from pathlib import Path

from runlease.core.event_kinds import EVENT_KINDS

CORE = Path(__file__).resolve().parent.parent / "src" / "runlease" / "core"


def emitted_kinds() -> set[str]:
    """The string kinds passed to ``event``/``run_event`` or assigned to ``kind``, in core/."""
    found: set[str] = set()
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("event", "run_event")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
            if (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["kind"]
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                and node.value.value.startswith("run_")
            ):
                found.add(node.value.value)
    return found


def test_every_emitted_kind_is_listed() -> None:
    emitted = emitted_kinds()
    assert len(emitted) > 30
    assert emitted == EVENT_KINDS
