"""The model test again, with the state going through LMDB: snapshots, crashes, reopens.

Every command the machine accepts is encoded as a journal record and appended to a real
store, exactly as the runtime's journal writer does. Two extra rules act on that store:

- ``snapshot``: encode the machine, store it at the current journal sequence (the store
  keeps two and trims the journal behind the older one);
- ``crash_and_reopen``: drop the in-memory machine, reopen the store from disk and rebuild
  the machine from the newest valid snapshot plus the journal after it.

After a reopen the rebuilt machine must be byte-for-byte the machine that was dropped, and
the model comparison of every later step runs against the rebuilt one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis.stateful import rule

from runlease.core.commands import AnyCommand
from runlease.core.machine import Outcome
from runlease.core.snapshot import encode_snapshot
from runlease.persistence.records import encode_record
from runlease.persistence.store import Store
from runlease.runtime.journal import BootReport, load_machine
from test_machine_model import MachineVersusModel, fingerprint


class DurableMachineVersusModel(MachineVersusModel):
    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="runlease-model-"))
        # Relaxed: the point is what reaches the store and how it is read back, not fsync.
        self.store = Store.open(self.data_dir, durability="relaxed", map_size=1 << 20)
        self.snapshots_taken = 0
        self.reopens = 0
        super().__init__()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _apply(self, command: AnyCommand, label: str = "ok") -> Outcome[Any]:
        outcome = super()._apply(command, label)
        if outcome.events:  # the runtime journals exactly the commands that changed state
            self.store.append([encode_record(command)])
        return outcome

    @rule()
    def snapshot(self) -> None:
        self.store.write_snapshot(self.store.last_seq(), encode_snapshot(self.machine))
        self.snapshots_taken += 1
        assert len(self.store.snapshot_seqs()) <= 2

    @rule()
    def crash_and_reopen(self) -> None:
        before = fingerprint(self.machine)
        self.store.close()
        self.store = Store.open(self.data_dir, durability="relaxed", map_size=1 << 20)
        report = BootReport()
        self.machine = load_machine(self.store, report)
        self.reopens += 1
        assert report.skipped_snapshots == 0
        assert fingerprint(self.machine) == before, "reopened state differs from the dropped one"


DurableMachineVersusModel.TestCase.settings = settings(
    max_examples=500 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 60,
    stateful_step_count=30,
)
TestDurableMachineVersusModel = DurableMachineVersusModel.TestCase
