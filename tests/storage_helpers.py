"""Data directories with known state, for the storage integrity and corruption tests.

A built directory holds two snapshots (the older one trimmed the journal before it) and
journal records after the newer one, written through the real runtime, with distinctive
task titles and completion results so a test can find their bytes in the data file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import trio

from runlease import open_runtime
from runlease.core.snapshot import UnsupportedFormat, encode_snapshot
from runlease.errors import RunleaseError
from runlease.persistence.store import Store
from runlease.runtime.journal import BootReport, load_machine
from runlease.runtime.runtime import Durability

START = 1_700_000_000.0
# Small, so a durable (writemap, fully reserved) data file stays cheap to copy.
MAP_SIZE = 1 << 20
TITLES = ["TITLE-alpha-gen1", "TITLE-bravo-gen1", "TITLE-charlie-gen2", "TITLE-delta-gen3"]
RESULT_MARK = "RESULT-echo-gen3"
PROBE = Path(__file__).with_name("boot_probe.py")


class _Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


async def _generation(data_dir: Path, durability: Durability, gen: int, clock: _Clock) -> None:
    async with open_runtime(
        clock, data_dir=data_dir, durability=durability, map_size=MAP_SIZE
    ) as rt:
        if gen == 1:
            await rt.create_task(TITLES[0], start=True)
            await rt.create_task(TITLES[1], start=True, metadata={"k": [1, "x"]})
        elif gen == 2:
            await rt.create_task(TITLES[2], start=True)
            session = await rt.open_session(agent="gen2")
            claim = await session.claim_next(lease_seconds=600)
            await session.complete(claim.run.id, result={"files": 3, "note": "gen2 done"})
        else:
            await rt.create_task(TITLES[3], start=True)
            session = await rt.open_session(agent="gen3", ttl=7200)
            claim = await session.claim_next(lease_seconds=3600)
            await session.complete(claim.run.id, result={"mark": RESULT_MARK})
            await session.claim_next(lease_seconds=3600)  # left leased
        clock.now += 1


def build_data_dir(data_dir: Path, durability: Durability) -> None:
    """Three runtime generations: snapshots at the end of the first two, none after the last."""
    clock = _Clock()
    trio.run(_generation, data_dir, durability, 1, clock)
    trio.run(_generation, data_dir, durability, 2, clock)

    def refuse(self: Store, seq: int, data: bytes) -> None:
        raise OSError("snapshots are switched off while building the test data")

    with mock.patch.object(Store, "write_snapshot", refuse):
        trio.run(_generation, data_dir, durability, 3, clock)


def state_digest(data_dir: Path, durability: Durability) -> str:
    """Open the store and replay it; a digest of the full encoded machine state."""
    with Store.open(data_dir, durability=durability, map_size=MAP_SIZE) as store:
        machine = load_machine(store, BootReport())
        return hashlib.sha256(encode_snapshot(machine)).hexdigest()


def copy_data_dir(source: Path, target: Path) -> None:
    shutil.copytree(source, target, symlinks=True)


def used_size(data_path: Path) -> int:
    """Bytes of ``data.mdb`` its newest commit uses: (last_pg + 1) * page size."""
    raw = data_path.read_bytes()[: 1 << 16]
    best = (0, 0)
    psize = int.from_bytes(raw[16 + 24 : 16 + 28], sys.byteorder)
    for offset in (0, psize):
        txnid = int.from_bytes(raw[offset + 144 : offset + 152], sys.byteorder)
        last_pg = int.from_bytes(raw[offset + 136 : offset + 144], sys.byteorder)
        best = max(best, (txnid, last_pg))
    return (best[1] + 1) * psize


def probe_boot(data_dir: Path, durability: Durability) -> dict[str, Any]:
    """Boot in a child process (so a crash of LMDB cannot take pytest down)."""
    done = subprocess.run(
        [sys.executable, str(PROBE)],
        input=f"{durability}\t{data_dir}\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return outcome_of(done.returncode, done.stdout, done.stderr)


def outcome_of(returncode: int | None, stdout: str, stderr: str) -> dict[str, Any]:
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if not line:
        return {"crash": f"exit {returncode}", "stderr": stderr[-4000:]}
    result: dict[str, Any] = json.loads(line)
    return result


def probe_one(durability: Durability, data_dir: Path) -> dict[str, Any]:
    """What the probe reports for one directory; used inside the probe process."""
    try:
        digest = state_digest(data_dir, durability)
    except RunleaseError as exc:
        return {
            "error": exc.code,
            "unsupported": isinstance(exc, UnsupportedFormat),
            "message": exc.message,
        }
    return {"ok": digest}
