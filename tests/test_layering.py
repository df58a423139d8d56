"""The import rules of the layout: each outside library belongs to one folder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "runlease"

# library -> the only package folder allowed to import it
OWNERS = {"trio": "runtime", "lmdb": "persistence", "cyclopts": "cli"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_there_are_sources_to_check() -> None:
    assert len(_source_files()) > 10


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_library_imports_stay_in_their_folder(path: Path) -> None:
    folder = path.relative_to(SRC).parts[0] if len(path.relative_to(SRC).parts) > 1 else ""
    for library in _imported_roots(path) & OWNERS.keys():
        assert folder == OWNERS[library], (
            f"{path.relative_to(SRC)} imports {library}; only {OWNERS[library]}/ may"
        )


def test_core_and_actors_stay_pure() -> None:
    io_modules = {"trio", "lmdb", "cyclopts", "socket", "os", "time", "threading", "asyncio"}
    for folder in ("core", "actors"):
        for path in (SRC / folder).rglob("*.py"):
            bad = _imported_roots(path) & io_modules
            # ids.py draws random bytes from os.urandom by default (injectable in tests).
            if path.name == "ids.py":
                bad -= {"os"}
            assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"
