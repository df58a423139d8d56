"""Secrets at rest: no raw claim token in the journal, the snapshots or the machine.

The runtime makes each claim token and its hash, the command carries only the hash, and the
machine keeps only the hash, so the data directory never holds a token a reader could
present. Journals and images written before that carried raw tokens; they still load, and
what is written after them holds only hashes.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from runlease import open_runtime
from runlease.cli import run as cli_run
from runlease.core.commands import ClaimNext, CreateTask, OpenSession, StealRun
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_token
from runlease.core.machine import Machine
from runlease.core.model import Run, Session, Task
from runlease.core.snapshot import decode_snapshot, encode_snapshot
from runlease.persistence.records import decode_command, encode_record
from runlease.persistence.store import Store
from runlease.runtime.runtime import OPERATOR

START = 1_700_000_000.0
RAW = CLAIM_TOKEN_PREFIX.encode()


class ManualClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def read_data_dir(
    data_dir: Path,
) -> tuple[bytes, list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """Every file's raw bytes, then the decoded snapshots and journal records."""
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "data.mdb" for p in files)
    everything = b"".join(p.read_bytes() for p in files)
    store = Store.open(data_dir, durability="durable")
    try:
        return everything, list(store.iter_snapshots()), list(store.iter_journal())
    finally:
        store.close()


async def test_the_data_dir_holds_claim_token_hashes_and_never_a_raw_token(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    wall = ManualClock()
    hashes: list[str] = []
    async with open_runtime(wall, data_dir=tmp_path) as rt:
        tasks = [await rt.create_task(f"t{n}", start=True) for n in range(4)]
        a = await rt.open_session(agent="a")
        b = await rt.open_session(agent="b")
        c = await rt.open_session(agent="c")
        claim_a = await a.claim_next(lease_seconds=10)
        claim_b = await b.claim_next(lease_seconds=600)
        hashes += [claim_a.lease.claim_token_hash, claim_b.lease.claim_token_hash]
        wall.now += 11  # a's lease is past its deadline for every command
        stolen = await c.steal(claim_a.task.id)  # --if-expired
        forced = await rt.session(a.id).acting_as(OPERATOR).steal(claim_b.task.id, force=True)
        hashes += [stolen.lease.claim_token_hash, forced.lease.claim_token_hash]
        finished = await c.complete_and_next(stolen.run.id)
        assert finished.claim is not None
        hashes.append(finished.claim.lease.claim_token_hash)
        assert len(set(hashes)) == 5
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes)
        assert len(tasks) == 4
    # Closing wrote a final snapshot holding the two live leases (a's and c's).

    everything, images, journal = read_data_dir(tmp_path)
    assert RAW not in everything
    for token_hash in hashes:
        assert token_hash.encode() in everything  # journaled as the hash
    assert images, "closing the runtime should have written a snapshot"
    assert journal
    for _, data in journal:
        assert RAW not in data
    _, newest = images[0]
    assert RAW not in newest
    restored = decode_snapshot(newest)
    leased = {r: restored.runs[r].claim_token_hash for r in restored.leased_run_ids()}
    assert leased == {
        forced.run.id: forced.lease.claim_token_hash,
        finished.claim.run.id: finished.claim.lease.claim_token_hash,
    }


def test_old_journal_records_with_raw_tokens_replay_to_the_same_hashes() -> None:
    claim_token = CLAIM_TOKEN_PREFIX + "A" * 43
    steal_token = CLAIM_TOKEN_PREFIX + "B" * 43
    # Records as an older runlease wrote them: the raw token in ``claim_token``.
    old_records = [
        encode_record(CreateTask(now=START, task_id="tsk_1", title="t", start_run_id="run_1")),
        encode_record(OpenSession(now=START, session_id="ses_1", agent="a")),
        encode_record(OpenSession(now=START, session_id="ses_2", agent="b")),
        msgspec.msgpack.encode(
            {
                "v": 1,
                "cmd": {
                    "op": "claim_next",
                    "now": START,
                    "session_id": "ses_1",
                    "claim_token": claim_token,
                    "lease_seconds": 5.0,
                },
            }
        ),
        msgspec.msgpack.encode(
            {
                "v": 1,
                "cmd": {
                    "op": "steal",
                    "now": START + 6,
                    "task_id": "tsk_1",
                    "session_id": "ses_2",
                    "claim_token": steal_token,
                },
            }
        ),
    ]
    machine = Machine()
    hashes = []
    for record in old_records:
        outcome = machine.apply(decode_command(record))
        if isinstance(outcome.reply, msgspec.Struct) and hasattr(outcome.reply, "lease"):
            hashes.append(outcome.reply.lease.claim_token_hash)
    assert hashes == [hash_token(claim_token), hash_token(steal_token)]
    assert machine.runs["run_1"].claim_token_hash == hash_token(steal_token)
    machine.check_invariants()
    # What the machine writes from now on holds the hashes only.
    image = encode_snapshot(machine)
    assert RAW not in image
    assert hash_token(steal_token).encode() in image


def test_new_claim_and_steal_records_carry_only_the_hash() -> None:
    token_hash = hash_token(CLAIM_TOKEN_PREFIX + "C" * 43)
    for command in (
        ClaimNext(now=START, session_id="ses_1", claim_token_hash=token_hash),
        StealRun(now=START, task_id="tsk_1", session_id="ses_1", claim_token_hash=token_hash),
    ):
        record = encode_record(command)
        assert RAW not in record
        assert b"claim_token\xa0" not in record  # no empty legacy field either
        assert decode_command(record) == command


def test_an_old_snapshot_with_raw_tokens_loads_its_leases_in_order_and_drops_the_tokens() -> None:
    tasks = [
        Task(
            id=f"tsk_{n}",
            title=n,
            status="in_progress",
            current_run_id=f"run_{n}",
            created_at=START,
            updated_at=START,
        )
        for n in ("x", "y")
    ]
    tokens = {"run_y": CLAIM_TOKEN_PREFIX + "Y" * 43, "run_x": CLAIM_TOKEN_PREFIX + "X" * 43}
    runs = [
        Run(
            id=f"run_{n}",
            task_id=f"tsk_{n}",
            status="claimed",
            session_id=f"ses_{n}",
            claimed_by="w",
            claim_token_hash=hash_token(tokens[f"run_{n}"]),
            lease_until=START + 60,
            queued_at=START,
            claimed_at=START,
            heartbeat_at=START,
        )
        for n in ("x", "y")
    ]
    sessions = [
        Session(id=f"ses_{n}", agent="w", lease_run_id=f"run_{n}", opened_at=START)
        for n in ("x", "y")
    ]
    old_image = msgspec.msgpack.encode(
        {
            "format": 1,
            "last_seq": 6,
            "tasks": tasks,
            "runs": runs,
            "sessions": sessions,
            "tokens": tokens,
        }
    )
    machine = decode_snapshot(old_image)
    assert machine.leased_run_ids() == ["run_y", "run_x"]  # the order the leases were taken
    machine.check_invariants()
    again = encode_snapshot(machine)
    assert RAW not in again
    assert decode_snapshot(again).leased_run_ids() == ["run_y", "run_x"]


def test_session_token_help_points_to_the_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_run(["--help"]) == 0
    text = " ".join(re.sub(r"[│┃|]", " ", capsys.readouterr().out).split())
    assert "--session-token" in text
    assert "RUNLEASE_SESSION_TOKEN" in text
    assert "/proc/PID/cmdline" in text
