"""ClaimIndex against a brute-force model: a plain dict of queued runs and a linear scan.

The model states the claim order directly: a claim that names no workspace sees only runs
of tasks with none, a workspace claim only that workspace's; the claimer must offer every
required capability and be admitted by the owner; the best run has the highest priority,
then is the claimer's own (session or pool) rather than unowned, then matches more of its
preferred capabilities, then came first, then has the smaller id. A claim that asks for
tags sees only runs whose task carries every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from runlease.core.index import ClaimIndex

RANKS = [10, 20, 30, 40]
TIMES = [0, 1, 2, 7]  # queue places (seq); ties are broken by run id
WORKSPACES: list[str | None] = [None, "a", "b"]
CAPS = ["x", "y", "z"]
OWNERS: list[str | None] = [None, None, "s:1", "s:2", "p:a"]
# The owner keys a claimer answers to: none, its session's, its session's and its pool's.
CLAIMERS: list[tuple[str, ...]] = [(), ("s:1",), ("s:1", "p:a"), ("s:2", "p:b")]
MIN_RANKS: list[int | None] = [None, None, None, 20, 40]
TAGS = ["red", "blue", "green"]
# Most runs untagged, as in a workload that does not use tags.
RUN_TAGS: st.SearchStrategy[frozenset[str]] = st.one_of(
    st.just(frozenset()), st.frozensets(st.sampled_from(TAGS), max_size=3)
)
CLAIM_TAGS: st.SearchStrategy[frozenset[str]] = st.one_of(
    st.just(frozenset()), st.frozensets(st.sampled_from(TAGS), max_size=2)
)


@dataclass(frozen=True)
class Entry:
    rank: int
    queued_at: int  # the queue place (ClaimIndex seq)
    workspace_id: str | None
    caps: frozenset[str]
    preferred: frozenset[str] = frozenset()
    owner: str | None = None
    tags: frozenset[str] = frozenset()


def expected_winner(
    model: dict[str, Entry],
    workspace_id: str | None,
    offered: frozenset[str],
    owners: tuple[str, ...] = (),
    min_rank: int | None = None,
    tags: frozenset[str] = frozenset(),
) -> str | None:
    candidates = [
        (
            -e.rank,
            0 if e.owner is not None else 1,
            -len(e.preferred & offered),
            e.queued_at,
            run_id,
        )
        for run_id, e in model.items()
        if (e.workspace_id or "") == (workspace_id or "")
        and e.caps <= offered
        and (e.owner is None or e.owner in owners)
        and (min_rank is None or e.rank >= min_rank)
        and tags <= e.tags
    ]
    return min(candidates)[-1] if candidates else None


def heap_stats(index: ClaimIndex) -> list[tuple[int, int, int]]:
    """(stored entries, live entries, recorded dead count) for every lane the index keeps."""
    return index.lane_stats()


def assert_heaps_bounded(index: ClaimIndex, lanes_per_run: int | None = None) -> None:
    """Each lane at most half dead; ``lanes_per_run``: how many lanes hold the runs in all
    (one each, plus one per tag), so nothing is stored beyond twice that."""
    total = 0
    for items, live, dead in heap_stats(index):
        assert dead == items - live, "the dead counter drifted from the heap contents"
        assert live >= 1, "a heap with no live entry was kept"
        assert items <= 2 * live, f"heap of {items} entries holds only {live} live ones"
        total += items
    # Each live run sits in one lane plus one per tag, each lane at most half dead.
    assert total <= 2 * (len(index) if lanes_per_run is None else lanes_per_run)


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
            preferred=entry.preferred,
            owner=entry.owner,
            tags=entry.tags,
        )
        self.model[run_id] = entry
        self.gone.pop(run_id, None)

    @rule(
        rank=st.sampled_from(RANKS),
        queued_at=st.sampled_from(TIMES),
        workspace_id=st.sampled_from(WORKSPACES),
        caps=st.frozensets(st.sampled_from(CAPS), max_size=2),
        preferred=st.sampled_from([frozenset(), frozenset(), frozenset({"y"})]),
        owner=st.sampled_from(OWNERS),
        tags=RUN_TAGS,
    )
    def add(
        self,
        rank: int,
        queued_at: int,
        workspace_id: str | None,
        caps: frozenset[str],
        preferred: frozenset[str],
        owner: str | None,
        tags: frozenset[str],
    ) -> None:
        entry = Entry(rank, queued_at, workspace_id, caps, preferred, owner, tags)
        self._add(self._new_id(), entry)

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
                st.sampled_from([frozenset(), frozenset({"y"})]),
                st.sampled_from(OWNERS),
                RUN_TAGS,
            ),
            max_size=6,
        ),
        readd=st.booleans(),
    )
    def add_many(
        self,
        batch: list[
            tuple[int, int, str | None, frozenset[str], frozenset[str], str | None, frozenset[str]]
        ],
        readd: bool,
    ) -> None:
        """Bulk indexing (boot) must agree with adding the runs one by one."""
        items: list[tuple[Any, ...]] = []
        if readd:
            items += [
                (run_id, e.rank, e.queued_at, e.workspace_id, e.caps, e.preferred, e.owner, e.tags)
                for run_id, e in self.gone.items()
            ]
        items += [(self._new_id(), *fields) for fields in batch]
        self.index.add_many(iter(items))
        for run_id, *fields in items:
            self.model[run_id] = Entry(*fields)
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
        workspace_id=st.sampled_from([*WORKSPACES, "", "c"]),
        offered=st.frozensets(st.sampled_from(CAPS)),
        owners=st.sampled_from(CLAIMERS),
        min_rank=st.sampled_from(MIN_RANKS),
        tags=CLAIM_TAGS,
    )
    def take(
        self,
        workspace_id: str | None,
        offered: frozenset[str],
        owners: tuple[str, ...],
        min_rank: int | None,
        tags: frozenset[str],
    ) -> None:
        expected = expected_winner(self.model, workspace_id, offered, owners, min_rank, tags)
        asked = {
            "workspace_id": workspace_id,
            "offered": offered,
            "owners": owners,
            "min_rank": min_rank,
            "tags": tags,
        }
        assert self.index.peek(**asked) == expected  # type: ignore[arg-type]
        got = self.index.take(**asked)  # type: ignore[arg-type]
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
        if not any(e.tags for e in self.model.values()):
            assert self.index._tag_spaces == {}, "no tagged run, yet tag lanes are kept"

    @invariant()
    def depth_counts_every_claimable_run(self) -> None:
        expected: dict[tuple[str, int], int] = {}
        for e in self.model.values():
            key = (e.workspace_id or "", e.rank)
            expected[key] = expected.get(key, 0) + 1
        assert self.index.depth() == expected

    @invariant()
    def heaps_bounded(self) -> None:
        lanes = sum(1 + len(e.tags) for e in self.model.values())
        assert_heaps_bounded(self.index, lanes)


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
            # Removed without a claim: its entry is dead until the lane drops it.
            assert index.discard(f"run_{i:05d}")
        else:
            assert index.take(workspace_id="a", offered=frozenset()) == f"run_{i:05d}"
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


def test_a_claim_sees_only_the_workspace_it_names() -> None:
    index = ClaimIndex()
    _add(index, "run_global", rank=10)
    _add(index, "run_ws", rank=40, ws="a")
    assert index.peek(workspace_id="a", offered=frozenset()) == "run_ws"
    assert index.peek(workspace_id="b", offered=frozenset()) is None
    # No workspace named: the urgent run of workspace a is not offered.
    assert index.take(workspace_id=None, offered=frozenset()) == "run_global"
    assert index.take(workspace_id=None, offered=frozenset()) is None
    assert index.take(workspace_id="a", offered=frozenset()) == "run_ws"


def test_own_work_goes_first_at_equal_priority_only() -> None:
    index = ClaimIndex()
    none = frozenset[str]()
    index.add("run_old", rank=20, seq=1, workspace_id=None, capabilities=none)
    index.add("run_mine", rank=20, seq=2, workspace_id=None, capabilities=none, owner="p:a")
    index.add("run_urgent", rank=40, seq=3, workspace_id=None, capabilities=none)
    claimer = {"workspace_id": None, "offered": none, "owners": ("s:1", "p:a")}
    assert index.take(**claimer) == "run_urgent"  # type: ignore[arg-type]
    assert index.take(**claimer) == "run_mine"  # type: ignore[arg-type]
    assert index.take(**claimer) == "run_old"  # type: ignore[arg-type]


def test_add_many_refuses_a_run_already_indexed() -> None:
    index = ClaimIndex()
    _add(index, "run_a")
    with pytest.raises(ValueError, match="already indexed"):
        index.add_many([("run_a", 20, 0.0, None, frozenset())])
    index.add_many([])
    assert list(index.run_ids()) == ["run_a"]


def test_a_tag_claim_looks_only_at_the_lanes_of_its_rarest_tag() -> None:
    index = ClaimIndex()
    for i in range(2000):
        index.add(f"run_u{i:05d}", rank=40, seq=i, workspace_id=None, capabilities=frozenset())
    index.add(
        "run_t1",
        rank=10,
        seq=5000,
        workspace_id=None,
        capabilities=frozenset(),
        tags=frozenset({"gpu", "common"}),
    )
    for i in range(50):
        index.add(
            f"run_c{i:03d}",
            rank=30,
            seq=6000 + i,
            workspace_id=None,
            capabilities=frozenset(),
            tags=frozenset({"common"}),
        )
    # Untagged runs are filed in no tag lane; a tagged one in one lane set per tag.
    assert set(index._tag_spaces) == {"gpu", "common"}
    assert index.peek(workspace_id=None, offered=frozenset(), tags=frozenset({"absent"})) is None
    assert index.take(workspace_id=None, offered=frozenset(), tags=frozenset({"gpu"})) == "run_t1"
    assert set(index._tag_spaces) == {"common"}
    both = frozenset({"gpu", "common"})
    assert index.take(workspace_id=None, offered=frozenset(), tags=both) is None
    # An untagged claim still takes the best run of all, tagged or not.
    assert index.take(workspace_id=None, offered=frozenset()) == "run_u00000"


def test_a_multi_tag_claim_takes_a_run_from_behind_others() -> None:
    index = ClaimIndex()
    red = frozenset({"red"})
    for i in range(5):
        index.add(f"run_{i}", rank=20, seq=i, workspace_id="w", capabilities=frozenset(), tags=red)
    index.add(
        "run_9",
        rank=20,
        seq=9,
        workspace_id="w",
        capabilities=frozenset(),
        tags=frozenset({"red", "blue"}),
    )
    wanted = frozenset({"red", "blue"})
    assert index.take(workspace_id="w", offered=frozenset(), tags=wanted) == "run_9"
    assert "run_9" not in index
    taken = [index.take(workspace_id="w", offered=frozenset(), tags=red) for _ in range(6)]
    assert taken == ["run_0", "run_1", "run_2", "run_3", "run_4", None]
    assert index._tag_spaces == {}
    assert index._buckets == {}
