"""Snapshots: a decoded machine equals the original, and snapshot + journal tail = the end.

The command streams come from a seeded generator that drives a Machine with a mix of valid
and invalid commands; only the ones the machine accepted are kept, exactly as the runtime
journals them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runlease.core.commands import (
    AnyCommand,
    BlockRun,
    ClaimNext,
    CompleteRun,
    CreateTask,
    ExpireLease,
    ExpireSession,
    FailRun,
    HeartbeatRun,
    OpenSession,
    ReleaseRun,
    ReleaseSessionLeases,
    StartTask,
    StopSession,
)
from runlease.core.machine import Machine
from runlease.core.model import Run, Task
from runlease.core.snapshot import (
    SNAPSHOT_FORMAT,
    UnsupportedFormat,
    decode_snapshot,
    encode_snapshot,
    snapshot_format,
)
from runlease.errors import InternalError, RunleaseError
from runlease.persistence.records import decode_command, encode_record
from runlease.persistence.store import Store

START = 1_700_000_000.0
CAPS = ("py", "gpu", "net")
WORKSPACES = (None, None, "ws-a", "ws-b")
TAGS = ("red", "blue")
STEPS = (0.0, 0.5, 3.0, 30.0, 400.0, 5000.0)
STEP_WEIGHTS = (3.0, 4.0, 4.0, 3.0, 0.6, 0.2)


# ------------------------------------------------------------------------- generator
def _some_caps(rng: random.Random) -> list[str]:
    return rng.sample(CAPS, rng.choice((0, 0, 0, 1, 1, 2, 3)))


class CommandStream:
    """Feeds a machine random commands; keeps the accepted ones, as a journal would."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.machine = Machine()
        self.now = START
        self.counter = 0
        self.accepted: list[AnyCommand] = []

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter:06d}"

    def _pick(self, ids: list[str]) -> str:
        return self.rng.choice(ids) if ids else "missing"

    def propose(self) -> AnyCommand:
        rng, m = self.rng, self.machine
        # Time mostly creeps, sometimes jumps past lease and session deadlines.
        self.now += rng.choices(STEPS, weights=STEP_WEIGHTS)[0]
        now = self.now
        sessions = list(m.sessions)
        live = [s.id for s in m.sessions.values() if s.state == "live"]
        holders = [s for s in m.sessions.values() if s.lease_run_id is not None]
        leased = [r.id for r in m.leased_runs()]
        roll = rng.random()
        if roll < 0.22 or not m.tasks:
            workspace = rng.choice(WORKSPACES)
            return CreateTask(
                now=now,
                task_id=self._id("task"),
                title=f"task {self.counter}",
                description=rng.choice(("", "some words")),
                priority=rng.choice(("low", "medium", "high", "urgent")),
                workspace_id=workspace,
                max_attempts=rng.choice((None, 1, 2, 3, 5)),
                metadata=rng.choice((None, {"k": self.counter, "nested": {"x": [1, 2.5]}})),
                required_capabilities=_some_caps(rng),
                start_run_id=self._id("run") if rng.random() < 0.8 else None,
                tags=rng.sample(TAGS, rng.choice((0, 0, 1, 2))),
            )
        if roll < 0.30:
            return StartTask(now=now, task_id=self._pick(list(m.tasks)), run_id=self._id("run"))
        if roll < 0.40 or not live:
            parent = self._pick(live) if live and rng.random() < 0.4 else None
            return OpenSession(
                now=now,
                session_id=self._id("ses"),
                agent=f"agent-{rng.randrange(4)}",
                parent_id=parent,
                ttl_seconds=rng.choice((None, None, 60.0, 1000.0)),
                auto_stop_on_parent=rng.random() < 0.7,
                capabilities=_some_caps(rng),
            )
        if roll < 0.60:
            return ClaimNext(
                now=now,
                session_id=self._pick(live),
                claim_token=f"rl_claim_{self._id('tok')}",
                lease_seconds=rng.choice((None, 10.0, 100.0, 1e9)),
                workspace_id=rng.choice(WORKSPACES),
                tags=rng.sample(TAGS, rng.choice((0, 0, 0, 1, 2))),
            )
        if roll < 0.80 and holders:
            holder = rng.choice(holders)
            assert holder.lease_run_id is not None
            run_id = holder.lease_run_id
            # Sometimes the wrong session acts, and the machine must refuse.
            session_id = holder.id if rng.random() < 0.85 else self._pick(sessions)
            kind = rng.randrange(5)
            if kind == 0:
                return HeartbeatRun(now=now, session_id=session_id, run_id=run_id)
            if kind == 1:
                return CompleteRun(
                    now=now, session_id=session_id, run_id=run_id, result={"n": self.counter}
                )
            if kind == 2:
                return FailRun(
                    now=now, session_id=session_id, run_id=run_id, error="boom", metadata={"a": 1}
                )
            if kind == 3:
                return ReleaseRun(now=now, session_id=session_id, run_id=run_id, reason="later")
            return BlockRun(now=now, session_id=session_id, run_id=run_id, reason="stuck")
        if roll < 0.88 and leased:
            return ExpireLease(now=now, run_id=rng.choice(leased))
        if roll < 0.93:
            return ExpireSession(now=now, session_id=self._pick(sessions))
        if roll < 0.97:
            return StopSession(now=now, session_id=self._pick(sessions), reason=None)
        return ReleaseSessionLeases(
            now=now, session_id=self._pick(sessions), reason="session_stopped"
        )

    def step(self) -> AnyCommand | None:
        """Apply one proposed command; return it if the machine accepted it."""
        cmd = self.propose()
        try:
            self.machine.apply(cmd)
        except RunleaseError:
            return None
        self.accepted.append(cmd)
        return cmd

    def run(self, steps: int) -> Iterator[AnyCommand]:
        for _ in range(steps):
            cmd = self.step()
            if cmd is not None:
                yield cmd


# --------------------------------------------------------------------------- helpers
def index_order(machine: Machine) -> dict[Any, list[tuple[int, int, str]]]:
    """Every non-empty bucket of the claim index with its live entries in claim order."""
    return {key: order for key, order in machine.index.claim_order().items()}


def assert_same_machine(got: Machine, want: Machine) -> None:
    assert list(got.tasks.items()) == list(want.tasks.items())
    assert list(got.runs.items()) == list(want.runs.items())
    assert list(got.sessions.items()) == list(want.sessions.items())
    assert got.leased_run_ids() == want.leased_run_ids()
    assert got.high_water == want.high_water
    assert got.queue_seq == want.queue_seq
    assert got.children == want.children
    assert got.last_seq == want.last_seq
    assert set(got.index.run_ids()) == set(want.index.run_ids())
    assert index_order(got) == index_order(want)
    assert got.index.tag_claim_order() == want.index.tag_claim_order()
    got.check_invariants()


def replay(machine: Machine, commands: list[AnyCommand]) -> Machine:
    for cmd in commands:
        machine.apply(cmd)  # a journaled command never raises on replay
    return machine


# ----------------------------------------------------------------------------- tests
def test_empty_machine_round_trips() -> None:
    machine = Machine()
    decoded = decode_snapshot(encode_snapshot(machine))
    assert_same_machine(decoded, machine)
    assert snapshot_format(encode_snapshot(machine)) == SNAPSHOT_FORMAT


@given(seed=st.integers(min_value=0, max_value=2**32), steps=st.integers(0, 150))
def test_snapshot_of_random_machine_decodes_equal(seed: int, steps: int) -> None:
    stream = CommandStream(seed)
    for _ in stream.run(steps):
        pass
    data = encode_snapshot(stream.machine)
    decoded = decode_snapshot(data)
    assert_same_machine(decoded, stream.machine)
    # Decoding adopts fresh records: changing the copy leaves the original alone.
    for task in decoded.tasks.values():
        assert all(task is not other for other in stream.machine.tasks.values())
        break
    assert encode_snapshot(decoded) == data


@given(seed=st.integers(min_value=0, max_value=2**32), cut=st.floats(0.0, 1.0))
def test_snapshot_plus_tail_replays_to_the_same_machine(seed: int, cut: float) -> None:
    stream = CommandStream(seed)
    commands = list(stream.run(200))
    split = int(len(commands) * cut)
    prefix = replay(Machine(), commands[:split])
    image = encode_snapshot(prefix)
    # The tail goes through the journal encoding too, as it would on boot.
    tail = [decode_command(encode_record(cmd)) for cmd in commands[split:]]
    resumed = replay(decode_snapshot(image), tail)
    assert encode_snapshot(resumed) == encode_snapshot(stream.machine)
    assert_same_machine(resumed, stream.machine)


def test_restored_machine_keeps_handing_out_the_same_claims() -> None:
    stream = CommandStream(7)
    for _ in stream.run(300):
        pass
    twin = decode_snapshot(encode_snapshot(stream.machine))
    session = OpenSession(
        now=START + 1e7, session_id="ses_drain", agent="drain", capabilities=list(CAPS)
    )
    stream.machine.apply(session)
    twin.apply(session)
    claimed = 0
    while True:
        token = f"rl_claim_drain{claimed}"
        outcomes = []
        for machine in (stream.machine, twin):
            try:
                out = machine.apply(
                    ClaimNext(now=START + 1e7, session_id="ses_drain", claim_token=token)
                )
            except RunleaseError as exc:
                outcomes.append(exc.code)
                continue
            outcomes.append(out.reply.run.id)
            machine.apply(
                CompleteRun(now=START + 1e7, session_id="ses_drain", run_id=out.reply.run.id)
            )
        assert outcomes[0] == outcomes[1]
        if outcomes[0] == "NO_CLAIMABLE_RUN":
            break
        claimed += 1
    assert claimed > 0


def test_newer_format_is_refused_by_version() -> None:
    newer = msgspec.msgpack.encode({"format": 2, "last_seq": 0, "everything": "else"})
    with pytest.raises(UnsupportedFormat, match="format version 2") as info:
        decode_snapshot(newer)
    assert isinstance(info.value, InternalError)


def test_garbage_is_an_internal_error_not_a_version_problem() -> None:
    for data in (b"", b"\xc1", msgspec.msgpack.encode({"format": 1, "tasks": 3})):
        with pytest.raises(InternalError) as info:
            decode_snapshot(data)
        assert not isinstance(info.value, UnsupportedFormat)


def test_inconsistent_image_is_refused() -> None:
    orphan = Run(id="run_1", task_id="task_missing", queued_at=START)
    image = msgspec.msgpack.encode(
        {"format": 1, "last_seq": 1, "tasks": [], "runs": [orphan], "sessions": [], "tokens": {}}
    )
    with pytest.raises(InternalError, match="inconsistent"):
        decode_snapshot(image)
    task = Task(id="task_1", title="t", created_at=START, updated_at=START)
    fine = msgspec.msgpack.encode(
        {"format": 1, "last_seq": 0, "tasks": [task], "runs": [], "sessions": [], "tokens": {}}
    )
    assert decode_snapshot(fine).tasks == {"task_1": task}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_boot_from_store_matches_the_live_machine(tmp_path: Path, seed: int) -> None:
    """Journal every accepted command, snapshot now and then, then rebuild from disk."""
    stream = CommandStream(seed)
    with Store.open(tmp_path, durability="relaxed") as store:
        pending: list[bytes] = []
        for i, cmd in enumerate(stream.run(600)):
            pending.append(encode_record(cmd))
            if len(pending) >= stream.rng.randrange(1, 8):
                store.append(pending)
                pending = []
            if i % 97 == 96:
                store.append(pending)
                pending = []
                store.write_snapshot(store.last_seq(), encode_snapshot(stream.machine))
        store.append(pending)
        assert store.last_seq() == len(stream.accepted)
    want = encode_snapshot(stream.machine)

    with Store.open(tmp_path, durability="relaxed") as store:
        seqs = store.snapshot_seqs()
        assert len(seqs) == 2
        for skip_newest in (False, True):
            snapshots = store.load_snapshots()[int(skip_newest) :]
            seq, image = snapshots[0]
            machine = decode_snapshot(image)
            for _, record in store.iter_journal(seq):
                machine.apply(decode_command(record))
            assert encode_snapshot(machine) == want
            assert_same_machine(machine, stream.machine)
