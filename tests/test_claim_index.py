"""ClaimIndex against a brute-force model: a plain dict of queued runs and a linear scan."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from runlease.core.index import ClaimIndex

RANKS = [10, 20, 30, 40]
TIMES = [0, 1, 2, 7]  # queue places (seq); ties are broken by run id
WORKSPACES: list[str | None] = [None, "a", "b"]
CAPS = ["x", "y", "z"]


@dataclass(frozen=True)
class Entry:
    rank: int
    queued_at: int  # the queue place (ClaimIndex seq)
    workspace_id: str | None
    caps: frozenset[str]


def expected_winner(
    model: dict[str, Entry], workspace_id: str | None, offered: frozenset[str]
) -> str | None:
    candidates = [
        (-e.rank, e.queued_at, run_id)
        for run_id, e in model.items()
        if (workspace_id is None or e.workspace_id == workspace_id) and e.caps <= offered
    ]
    return min(candidates)[2] if candidates else None


def heap_stats(index: ClaimIndex) -> list[tuple[int, int, int]]:
    """(stored entries, live entries, recorded dead count) for every lane the index keeps."""
    return index.lane_stats()


def assert_heaps_bounded(index: ClaimIndex) -> None:
    total = 0
    for items, live, dead in heap_stats(index):
        assert dead == items - live, "the dead counter drifted from the heap contents"
        assert live >= 1, "a heap with no live entry was kept"
        assert items <= 2 * live, f"heap of {items} entries holds only {live} live ones"
        total += items
    # Each live run sits in exactly two heaps, each at most half dead.
    assert total <= 4 * len(index)


class IndexVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = ClaimIndex()
        self.model: dict[str, Entry] = {}
        self.gone: dict[str, Entry] = {}  # taken or discarded: may come back (a requeue)
        self.counter = 0

    def _new_id(self) -> str:
        self.counter += 1
        # A permutation of the counter, so id order differs from insertion order.
        return f"run_{(self.counter * 389) % 1009:04d}"

    def _add(self, run_id: str, entry: Entry) -> None:
        self.index.add(
            run_id,
            rank=entry.rank,
            seq=entry.queued_at,
            workspace_id=entry.workspace_id,
            capabilities=entry.caps,
        )
        self.model[run_id] = entry
        self.gone.pop(run_id, None)

    @rule(
        rank=st.sampled_from(RANKS),
        queued_at=st.sampled_from(TIMES),
        workspace_id=st.sampled_from(WORKSPACES),
        caps=st.frozensets(st.sampled_from(CAPS), max_size=2),
    )
    def add(
        self, rank: int, queued_at: int, workspace_id: str | None, caps: frozenset[str]
    ) -> None:
        self._add(self._new_id(), Entry(rank, queued_at, workspace_id, caps))

    @rule(pick=st.integers(0, 1000))
    def add_again(self, pick: int) -> None:
        """Put a taken or discarded run back with the same key, as a requeue does."""
        if not self.gone:
            return
        run_id = sorted(self.gone)[pick % len(self.gone)]
        self._add(run_id, self.gone[run_id])

    @rule(
        batch=st.lists(
            st.tuples(
                st.sampled_from(RANKS),
                st.sampled_from(TIMES),
                st.sampled_from(WORKSPACES),
                st.frozensets(st.sampled_from(CAPS), max_size=2),
            ),
            max_size=6,
        ),
        readd=st.booleans(),
    )
    def add_many(
        self,
        batch: list[tuple[int, int, str | None, frozenset[str]]],
        readd: bool,
    ) -> None:
        """Bulk indexing (boot) must agree with adding the runs one by one."""
        items: list[tuple[str, int, int, str | None, frozenset[str]]] = []
        if readd:
            items += [
                (run_id, e.rank, e.queued_at, e.workspace_id, e.caps)
                for run_id, e in self.gone.items()
            ]
        items += [(self._new_id(), *fields) for fields in batch]
        self.index.add_many(iter(items))
        for run_id, rank, queued_at, workspace_id, caps in items:
            self.model[run_id] = Entry(rank, queued_at, workspace_id, caps)
            self.gone.pop(run_id, None)

    @rule(pick=st.integers(0, 1000))
    def add_duplicate_is_refused(self, pick: int) -> None:
        if not self.model:
            return
        run_id = sorted(self.model)[pick % len(self.model)]
        entry = self.model[run_id]
        with pytest.raises(ValueError, match="already indexed"):
            self._add(run_id, entry)

    @rule(
        workspace_id=st.sampled_from([*WORKSPACES, "c"]),
        offered=st.frozensets(st.sampled_from(CAPS)),
    )
    def take(self, workspace_id: str | None, offered: frozenset[str]) -> None:
        expected = expected_winner(self.model, workspace_id, offered)
        assert self.index.peek(workspace_id=workspace_id, offered=offered) == expected
        got = self.index.take(workspace_id=workspace_id, offered=offered)
        assert got == expected
        if got is not None:
            self.gone[got] = self.model.pop(got)

    @rule(pick=st.integers(0, 1000), unknown=st.booleans())
    def discard(self, pick: int, unknown: bool) -> None:
        if unknown or not self.model:
            assert self.index.discard("run_missing") is False
            return
        run_id = sorted(self.model)[pick % len(self.model)]
        assert self.index.discard(run_id) is True
        assert self.index.discard(run_id) is False
        self.gone[run_id] = self.model.pop(run_id)

    @invariant()
    def same_contents(self) -> None:
        assert len(self.index) == len(self.model)
        assert set(self.index.run_ids()) == set(self.model)
        for run_id in self.model:
            assert run_id in self.index
        for run_id in self.gone:
            assert run_id not in self.index
        if not self.model:
            assert self.index._buckets == {}, "empty index still keeps heaps"

    @invariant()
    def heaps_bounded(self) -> None:
        assert_heaps_bounded(self.index)


IndexVersusModel.TestCase.settings = settings(stateful_step_count=60)
TestIndexVersusModel = IndexVersusModel.TestCase


def _add(index: ClaimIndex, run_id: str, rank: int = 20, ws: str | None = None) -> None:
    index.add(run_id, rank=rank, seq=0, workspace_id=ws, capabilities=frozenset())


def test_churn_over_a_long_lived_entry_keeps_heaps_small() -> None:
    index = ClaimIndex()
    _add(index, "run_keep", rank=10, ws="a")
    for i in range(5000):
        _add(index, f"run_{i:05d}", rank=40, ws="a")
        if i % 2:
            assert index.discard(f"run_{i:05d}")
        else:
            # Taken through the cross-workspace heap, so the workspace heap goes stale.
            assert index.take(workspace_id=None, offered=frozenset()) == f"run_{i:05d}"
        assert_heaps_bounded(index)
        assert max(items for items, _, _ in heap_stats(index)) <= 3
    assert list(index.run_ids()) == ["run_keep"]


def test_many_dead_below_a_live_top_are_compacted() -> None:
    index = ClaimIndex()
    _add(index, "run_top", rank=40, ws="a")
    for i in range(1000):
        _add(index, f"run_{i:04d}", rank=10, ws="a")
    for i in range(1000):
        assert index.discard(f"run_{i:04d}")
    assert_heaps_bounded(index)
    assert sum(items for items, _, _ in heap_stats(index)) <= 4
    assert index.take(workspace_id="a", offered=frozenset()) == "run_top"
    assert index._buckets == {}
    assert len(index) == 0


def test_workspace_claim_does_not_see_global_runs() -> None:
    index = ClaimIndex()
    _add(index, "run_global", rank=40)
    _add(index, "run_ws", rank=10, ws="a")
    assert index.peek(workspace_id="a", offered=frozenset()) == "run_ws"
    assert index.peek(workspace_id="b", offered=frozenset()) is None
    assert index.take(workspace_id=None, offered=frozenset()) == "run_global"
    assert index.take(workspace_id="a", offered=frozenset()) == "run_ws"
    assert index.take(workspace_id=None, offered=frozenset()) is None


def test_add_many_refuses_a_run_already_indexed() -> None:
    index = ClaimIndex()
    _add(index, "run_a")
    with pytest.raises(ValueError, match="already indexed"):
        index.add_many([("run_a", 20, 0.0, None, frozenset())])
    index.add_many([])
    assert list(index.run_ids()) == ["run_a"]
