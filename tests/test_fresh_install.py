"""A fresh install works without the test toolchain: the source tree as a clone would have it
(the files git tracks), ``pip install`` into a new venv with no extra, then ``runlease``
from that venv starts a server, answers ``status`` and stops cleanly on SIGTERM.

pip reuses its cache, so after the first run this takes well under a minute. With no
package index in reach (no network, no mirror) the test is skipped, saying so.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import httpx
import pytest

from cli_helpers import Server, clean_env, log_event

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 300
# What a copy of the tree leaves out when git cannot list the tracked files.
UNTRACKED = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


def source_tree(destination: Path) -> Path:
    """The project's files as a fresh clone has them: git's tracked files, as they are in
    the working tree (or, outside a git checkout, the tree without caches and venvs)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=60, check=False
    ) if shutil.which("git") else None  # fmt: skip
    if listed is None or listed.returncode != 0:
        shutil.copytree(ROOT, destination, ignore=UNTRACKED)
        return destination
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():  # a deleted file is still listed until committed
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def pip(venv: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1"}),
        check=False,
    )


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    """A package the code imports must be one the install brings by name, not one that only
    happens to come along with another dependency (or with the test toolchain)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _distribution(match.group())
        for requirement in project["dependencies"]
        if (match := re.match(r"[A-Za-z0-9][A-Za-z0-9_.-]*", requirement))
    }
    imported: set[str] = set()
    for path in (ROOT / "src" / "runlease").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"runlease", "__future__"})
    providers = packages_distributions()
    undeclared = [
        module
        for module in third_party
        if not {_distribution(dist) for dist in providers.get(module, [module])} & declared
    ]
    assert "rich" in third_party  # the check sees the CLI's imports
    assert undeclared == []


def test_every_requirement_has_a_lower_and_an_upper_bound() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [
        *config["build-system"]["requires"],
        *config["project"]["dependencies"],
        *(r for extra in config["project"]["optional-dependencies"].values() for r in extra),
    ]
    unbounded = [r for r in requirements if ">=" not in r or not re.search(r"<[^=]", r)]
    assert unbounded == []


@pytest.mark.slow
def test_pip_install_gives_a_working_runlease_without_dev_dependencies(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Can pip reach a package index at all? Ask it for the build backend, failing fast.
    probe = pip(
        venv, "download", "--no-deps", "--retries", "0", "--timeout", "15",
        "--dest", str(tmp_path / "probe"), "hatchling", timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach a package index: {probe.stderr.strip()[-300:]}")

    tree = source_tree(tmp_path / "tree")
    installed = pip(venv, "install", "--quiet", str(tree), timeout=INSTALL_TIMEOUT)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # None of the test toolchain came along (-I: only the venv's own packages count).
    python = str(venv / "bin" / "python")
    found = subprocess.run(
        [python, "-I", "-c", "import importlib.util as u, json; print(json.dumps("
         "[m for m in ('pytest', 'hypothesis', 'mypy', 'ruff') if u.find_spec(m)]))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(found.stdout) == []

    runlease = str(venv / "bin" / "runlease")
    env = clean_env({"HOME": str(tmp_path / "home")})

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [runlease, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    version = command("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip()

    # The tool's own helpers need nothing beyond the runtime dependencies either.
    assert "_runlease" in command("completion", "bash").stdout
    unit = command("serve", "--data-dir", str(tmp_path / "data"), "--print-systemd")
    assert f"ExecStart={runlease} serve" in unit.stdout, unit.stdout + unit.stderr

    sock = tmp_path / "s.sock"
    # With the dashboard too: its web stack and the metrics library are runtime dependencies.
    server = Server(
        [runlease, "serve", "--data-dir", str(tmp_path / "data"), "--socket", str(sock),
         "--http", "127.0.0.1:0"]
    )  # fmt: skip
    try:
        url = json.loads(server.log.wait_for(lambda line: log_event(line) == "http_listening", 60))[
            "url"
        ]
        server.wait_listening()
        assert httpx.get(f"{url}/login", timeout=30).status_code == 200
        status = command("--socket", str(sock), "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["server"]["pid"] == server.process.pid
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()
    assert not sock.exists()
    assert os.path.isdir(tmp_path / "data")
