"""Random damage to a stopped data directory never yields a crash or different data.

Each example copies a data directory with known state, damages it (bit and byte flips,
mostly in the used part of ``data.mdb`` and in the identity file, truncations, deleted
files), and boots it in a child process: a crash inside LMDB must not take pytest down,
and must itself count as a failure. The boot must either serve exactly the original state
or refuse with a coded error (STORAGE_CORRUPT, STORE_MISSING, or a newer-format refusal).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runlease.errors import STORAGE_CORRUPT, STORE_MISSING
from runlease.runtime.runtime import Durability
from storage_helpers import PROBE, build_data_dir, state_digest, used_size

# One child process serves all examples (~10-25 ms each); capped so CI stays under ~30 s.
EXAMPLES = int(os.environ.get("CORRUPTION_EXAMPLES", "0")) or min(settings().max_examples, 600)
ALLOWED_REFUSALS = {STORAGE_CORRUPT, STORE_MISSING}


@dataclass
class Base:
    path: Path
    digest: str
    used: int


class Probe:
    """A child process that boots the directories it is sent, one JSON answer each."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None

    def boot(self, durability: Durability, data_dir: Path) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, str(PROBE)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{durability}\t{data_dir}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(timeout=120)
            assert self.process.stderr is not None
            stderr = self.process.stderr.read()
            self.process = None
            return {"crash": f"probe ended with {code}", "stderr": stderr[-4000:]}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=120)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Base]:
    built = {}
    for durability in ("durable", "relaxed"):
        path = tmp_path_factory.mktemp(f"base-{durability}") / "data"
        build_data_dir(path, durability)
        built[durability] = Base(
            path, state_digest(path, durability), used_size(path / "db" / "data.mdb")
        )
    return built


@pytest.fixture(scope="module")
def probe() -> Iterator[Probe]:
    child = Probe()
    yield child
    child.close()


@st.composite
def damage(draw: st.DrawFn, used: int) -> list[tuple[Any, ...]]:
    """One kind of damage to one file: 1-4 flips, a truncation, or a deletion.

    Offsets into ``data.mdb`` mostly fall in its used part; other offsets are taken modulo
    the file's size. Damage to two places at once is out of scope: wiping both the
    database and the identity file leaves nothing that remembers a store was there.
    """
    target = draw(
        st.sampled_from(
            ["data.mdb"] * 6 + ["identity"] * 2 + ["lock.mdb", "lock", "db", "data.mdb-tail"]
        )
    )
    kind = draw(st.sampled_from(["bitflip"] * 4 + ["byte"] * 3 + ["truncate", "delete"]))
    offsets = st.integers(0, used - 1) if target == "data.mdb" else st.integers(0, 1 << 30)
    count = draw(st.integers(1, 4)) if kind in ("bitflip", "byte") else 1
    return [(target, kind, draw(offsets), draw(st.integers(0, 255))) for _ in range(count)]


def apply_damage(data_dir: Path, used: int, steps: list[tuple[Any, ...]]) -> None:
    for target, kind, where, value in steps:
        if target == "db":
            if kind == "delete":
                shutil.rmtree(data_dir / "db", ignore_errors=True)
            continue
        name = "data.mdb" if target == "data.mdb-tail" else target
        path = data_dir / ("db" if name.endswith(".mdb") else "") / name
        if not path.exists():
            continue
        if kind == "delete":
            path.unlink()
            continue
        size = path.stat().st_size
        if kind == "truncate":
            os.truncate(path, where % (size + 1))
            continue
        if size == 0:
            continue
        offset = where if target == "data.mdb" and where < size else where % size
        with open(path, "r+b") as f:
            f.seek(offset)
            old = f.read(1)[0]
            new = old ^ (1 << (value % 8)) if kind == "bitflip" else value
            f.seek(offset)
            f.write(bytes([new]))


@pytest.mark.parametrize("durability", ["durable", "relaxed"])
def test_damage_never_crashes_boot_nor_changes_what_it_serves(
    durability: Durability,
    bases: dict[str, Base],
    probe: Probe,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = bases[durability]
    scratch = tmp_path_factory.mktemp(f"damaged-{durability}")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(steps=damage(base.used))
    def check(steps: list[tuple[Any, ...]]) -> None:
        target = scratch / "data"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(base.path, target)
        apply_damage(target, base.used, steps)
        answer = probe.boot(durability, target)
        assert "crash" not in answer, answer
        if "ok" in answer:
            assert answer["ok"] == base.digest, f"booted with different data after {steps}"
        else:
            assert answer["unsupported"] or answer["error"] in ALLOWED_REFUSALS, answer

    check()
