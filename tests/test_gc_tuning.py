"""The runtime's garbage-collector tuning: off unless asked for, applied for the life of the
runtime, and undone when it closes. These check what the option does, never how fast."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

import runlease
from runlease import GcTuning

NO_FREEZING = GcTuning(freeze_after_boot=False, freeze_after_pause=None)


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    """Each test starts with nothing frozen and leaves the collector as it found it."""
    gc.unfreeze()
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.unfreeze()
    assert gc.get_threshold() == thresholds
    assert gc.callbacks == callbacks


async def test_a_runtime_leaves_the_collector_alone_unless_asked() -> None:
    thresholds = gc.get_threshold()
    callbacks = len(gc.callbacks)
    async with runlease.open_runtime() as rt:
        await rt.create_task("t", start=True)
        gc.collect()
        assert rt.collector is None
        assert gc.get_threshold() == thresholds
        assert len(gc.callbacks) == callbacks
        assert gc.get_freeze_count() == 0


async def test_thresholds_hold_while_the_runtime_runs_and_are_restored() -> None:
    before = gc.get_threshold()
    tuning = GcTuning(thresholds=(1234, 7, 9), freeze_after_boot=False, freeze_after_pause=None)
    async with runlease.open_runtime(gc_tuning=tuning) as rt:
        assert gc.get_threshold() == (1234, 7, 9)
        assert rt.collector is not None
    assert gc.get_threshold() == before


async def test_thresholds_none_leaves_them_as_they_are() -> None:
    before = gc.get_threshold()
    tuning = GcTuning(thresholds=None, freeze_after_boot=False, freeze_after_pause=None)
    async with runlease.open_runtime(gc_tuning=tuning):
        assert gc.get_threshold() == before


async def test_boot_freezes_the_recovered_state_and_closing_unfreezes_it(tmp_path: Path) -> None:
    async with runlease.open_runtime(data_dir=tmp_path, durability="relaxed") as rt:
        for i in range(20):
            await rt.create_task(f"t{i}", start=True)
    tuning = GcTuning(freeze_after_pause=None)
    async with runlease.open_runtime(
        data_dir=tmp_path, durability="relaxed", gc_tuning=tuning
    ) as rt:
        assert rt.collector is not None
        assert rt.collector.stats.freezes == 1
        frozen = gc.get_freeze_count()
        assert frozen > 0
        # The recovered records' containers are out of the generations a collection walks.
        tasks = rt._machine.tasks
        assert all(obj is not tasks for g in range(3) for obj in gc.get_objects(generation=g))
    assert gc.get_freeze_count() == 0


async def test_a_long_full_collection_freezes_what_survived_it() -> None:
    tuning = GcTuning(thresholds=None, freeze_after_boot=False, freeze_after_pause=0.0)
    async with runlease.open_runtime(gc_tuning=tuning) as rt:
        assert rt.collector is not None
        await rt.create_task("t", start=True)
        gc.collect()
        stats = rt.collector.stats
        assert stats.full_collections == 1
        assert stats.freezes == 1
        assert stats.full_pause_max >= 0.0
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


async def test_without_a_pause_limit_full_collections_are_only_counted() -> None:
    async with runlease.open_runtime(gc_tuning=NO_FREEZING) as rt:
        assert rt.collector is not None
        gc.collect()
        gc.collect()
        assert rt.collector.stats.full_collections == 2
        assert rt.collector.stats.freezes == 0
        assert gc.get_freeze_count() == 0


async def test_a_host_that_froze_first_keeps_its_freeze() -> None:
    gc.freeze()
    frozen_by_host = gc.get_freeze_count()
    tuning = GcTuning(thresholds=None, freeze_after_boot=False, freeze_after_pause=0.0)
    async with runlease.open_runtime(gc_tuning=tuning):
        gc.collect()
    # The runtime cannot tell its frozen objects from the host's, so it unfreezes nothing.
    assert gc.get_freeze_count() >= frozen_by_host


async def test_the_collector_is_restored_when_boot_fails(tmp_path: Path) -> None:
    before = gc.get_threshold()
    callbacks = len(gc.callbacks)
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises((runlease.errors.RunleaseError, OSError)):
        async with runlease.open_runtime(
            data_dir=not_a_directory, gc_tuning=GcTuning(thresholds=(999, 9, 9))
        ):
            pass  # pragma: no cover
    assert gc.get_threshold() == before
    assert len(gc.callbacks) == callbacks
