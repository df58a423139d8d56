"""The import rules of the layout: each outside library belongs to its folders, and the
packages depend downward only (core <- actors <- runtime), so no import cycle can form."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "runlease"

# library -> the only package folders allowed to import it
OWNERS = {
    "trio": {"runtime", "actors"},
    "lmdb": {"persistence"},
    "cyclopts": {"cli"},
    "prometheus_client": {"runtime"},
}
# The web dashboard: its app (on anyio, never trio itself) and the listener that serves it.
OWNERS.update({"starlette": {"dashboard"}, "jinja2": {"dashboard"}, "hypercorn": {"runtime"}})
# Modules that do IO or keep time; none of them may appear in core/.
IO_MODULES = {"trio", "lmdb", "cyclopts", "socket", "os", "time", "threading", "asyncio"}
# The actors use trio to wait; everything else on this list stays out of them. The runtime
# clock is the one place that reads the wall clock.
ACTOR_ALLOWED = {"trio"}
ACTOR_CLOCK_ALLOWED = {"trio", "time"}
# package folder -> runlease packages it must not import (they sit above it)
NOT_BELOW = {
    "core": {"actors", "runtime", "persistence", "cli", "protocol", "client"},
    "actors": {"runtime", "persistence", "cli", "protocol", "client"},
}


def _imports(path: Path) -> set[str]:
    """Every absolute module name the file imports (``a.b`` for ``from a.b import c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imports(path)}


def _runlease_packages(path: Path) -> set[str]:
    return {
        name.split(".")[1]
        for name in _imports(path)
        if name.startswith("runlease.") and len(name.split(".")) > 1
    }


def _source_files(folder: str = "") -> list[Path]:
    return sorted((SRC / folder).rglob("*.py"))


def _folder(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else ""


def test_there_are_sources_to_check() -> None:
    assert len(_source_files()) > 10
    assert len(_source_files("core")) > 3
    assert len(_source_files("actors")) > 3


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_library_imports_stay_in_their_folder(path: Path) -> None:
    for library in _imported_roots(path) & OWNERS.keys():
        assert _folder(path) in OWNERS[library], (
            f"{path.relative_to(SRC)} imports {library}; only {sorted(OWNERS[library])}/ may"
        )


@pytest.mark.parametrize("path", _source_files("core"), ids=lambda p: p.name)
def test_core_stays_pure(path: Path) -> None:
    bad = _imported_roots(path) & IO_MODULES
    # ids.py draws random bytes from os.urandom by default (injectable in tests).
    if path.name == "ids.py":
        bad -= {"os"}
    assert not bad, f"core/{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _source_files("actors"), ids=lambda p: p.name)
def test_actors_wait_with_trio_and_do_no_other_io(path: Path) -> None:
    allowed = ACTOR_CLOCK_ALLOWED if path.name == "clock.py" else ACTOR_ALLOWED
    bad = _imported_roots(path) & (IO_MODULES - allowed)
    assert not bad, f"actors/{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("folder", sorted(NOT_BELOW))
def test_packages_depend_downward(folder: str) -> None:
    for path in _source_files(folder):
        bad = _runlease_packages(path) & NOT_BELOW[folder]
        assert not bad, f"{path.relative_to(SRC)} imports runlease.{sorted(bad)}"


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import trio\nfrom runlease.runtime.runtime import Runtime\n")
    assert _imported_roots(sample) & IO_MODULES == {"trio"}
    assert _runlease_packages(sample) == {"runtime"}
