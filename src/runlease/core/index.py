"""The claimable-run index: who goes next, in O(log n).

Queued runs are bucketed by the exact set of capabilities they require. Each bucket is a
binary heap ordered by (priority desc, queue place asc, run id asc). The queue place is the
machine's enqueue counter (``Run.queue_seq``), not wall time, so a clock stepped back cannot
put newer work ahead of older work. A claim looks at the top of
every bucket whose required set the session offers and takes the best one, so its cost is
O(B + log n) for B distinct capability sets in use, independent of queue depth.

Every queued run sits in two heaps: its workspace's bucket, and the bucket of the same
capability set across all workspaces (for claims that do not name a workspace). Both heaps
share one entry object; taking or removing a run marks the entry dead, and dead entries are
dropped lazily when they reach a heap's top or when they outnumber the live ones.

Two refinements keep that shape. Buckets are keyed by (required, preferred) capability sets,
and since every run in a bucket shares its preferred set, a claimer's preference score (how
many preferred capabilities it offers) is a constant per bucket: comparing bucket tops by
(priority, score, queue place, id) picks exactly the best run, preferred capabilities ordering
after priority, with no scan. And an owner level sits above the capability buckets: runs of
an assigned task live under an owner key ("s:<session>" or "p:<agent pool>"), and a claim
only looks under the unowned key and its own two keys.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

# An entry is a list so heapq compares it in C:
# [neg_rank, seq, run_id, live, ws, owner, group]. run_id is unique, so comparison
# never reaches the trailing bookkeeping fields. group = (required caps, preferred caps).
_Entry = list[object]
_Group = tuple[frozenset[str], frozenset[str]]
_LIVE = 3
_WS = 4
_OWNER = 5
_GROUP = 6
_RUN_ID = 2
_NO_PREFERENCE: frozenset[str] = frozenset()

_ANY_WORKSPACE = "\x00any"  # a key no real workspace id can take (ids are printable)


class _Heap:
    __slots__ = ("dead", "items")

    def __init__(self) -> None:
        self.items: list[_Entry] = []
        self.dead = 0

    def live_count(self) -> int:
        return len(self.items) - self.dead


class ClaimIndex:
    def __init__(self) -> None:
        # workspace key -> owner key -> (required, preferred) -> heap
        self._buckets: dict[str, dict[str, dict[_Group, _Heap]]] = {}
        self._entries: dict[str, _Entry] = {}
        # Shared (required, preferred) pairs, so entries do not each carry a new tuple.
        self._groups: dict[
            tuple[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]
        ] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._entries

    def run_ids(self) -> Iterator[str]:
        return iter(self._entries)

    def add(
        self,
        run_id: str,
        *,
        rank: int,
        seq: int,
        workspace_id: str | None,
        capabilities: frozenset[str],
        preferred: frozenset[str] = _NO_PREFERENCE,
        owner: str | None = None,
    ) -> None:
        """Index a queued run. ``owner`` is an owner key ("s:<session>", "p:<pool>")."""
        if run_id in self._entries:
            raise ValueError(f"run {run_id} is already indexed")
        ws_key = workspace_id if workspace_id is not None else ""
        owner_key = owner or ""
        group = self._groups.setdefault((capabilities, preferred), (capabilities, preferred))
        entry: _Entry = [-rank, seq, run_id, True, ws_key, owner_key, group]
        self._entries[run_id] = entry
        for key in (ws_key, _ANY_WORKSPACE):
            heapq.heappush(self._heap(key, owner_key, group).items, entry)

    def add_many(self, items: Iterable[tuple[Any, ...]]) -> None:
        """Index many runs at once (boot): append everything, then heapify each heap once.

        Each item is (run_id, rank, seq, workspace_id, capabilities), optionally
        followed by (preferred, owner key).
        """
        touched: set[int] = set()
        heaps: list[_Heap] = []
        for item in items:
            run_id, rank, seq, workspace_id, capabilities = item[:5]
            preferred = item[5] if len(item) > 5 else _NO_PREFERENCE
            owner_key = (item[6] if len(item) > 6 else None) or ""
            if run_id in self._entries:
                raise ValueError(f"run {run_id} is already indexed")
            ws_key = workspace_id if workspace_id is not None else ""
            group = self._groups.setdefault((capabilities, preferred), (capabilities, preferred))
            entry: _Entry = [-rank, seq, run_id, True, ws_key, owner_key, group]
            self._entries[run_id] = entry
            for key in (ws_key, _ANY_WORKSPACE):
                heap = self._heap(key, owner_key, group)
                heap.items.append(entry)
                if id(heap) not in touched:
                    touched.add(id(heap))
                    heaps.append(heap)
        for heap in heaps:
            heapq.heapify(heap.items)

    def discard(self, run_id: str) -> bool:
        """Take a run out of the index (it was canceled or paused). True if it was there."""
        entry = self._entries.pop(run_id, None)
        if entry is None:
            return False
        self._kill(entry, popped_from=None)
        return True

    def peek(
        self,
        *,
        workspace_id: str | None,
        offered: frozenset[str],
        owners: tuple[str, ...] = (),
        min_rank: int | None = None,
    ) -> str | None:
        best = self._best(workspace_id, offered, owners, min_rank)
        return None if best is None else str(best[0][_RUN_ID])

    def take(
        self,
        *,
        workspace_id: str | None,
        offered: frozenset[str],
        owners: tuple[str, ...] = (),
        min_rank: int | None = None,
    ) -> str | None:
        """Remove and return the best run this claimer may take, or None.

        ``workspace_id=""`` means global tasks only. ``owners`` are the owner keys the
        claimer answers to besides unowned work; ``min_rank`` skips lower priorities.
        """
        best = self._best(workspace_id, offered, owners, min_rank)
        if best is None:
            return None
        heap = best[1]
        entry = heapq.heappop(heap.items)
        run_id = str(entry[_RUN_ID])
        del self._entries[run_id]
        self._kill(entry, popped_from=heap)
        return run_id

    # ------------------------------------------------------------------ internals
    def _heap(self, ws_key: str, owner_key: str, group: _Group) -> _Heap:
        by_owner = self._buckets.get(ws_key)
        if by_owner is None:
            by_owner = self._buckets[ws_key] = {}
        by_group = by_owner.get(owner_key)
        if by_group is None:
            by_group = by_owner[owner_key] = {}
        heap = by_group.get(group)
        if heap is None:
            heap = by_group[group] = _Heap()
        return heap

    def _best(
        self,
        workspace_id: str | None,
        offered: frozenset[str],
        owners: tuple[str, ...] = (),
        min_rank: int | None = None,
    ) -> tuple[_Entry, _Heap] | None:
        ws_key = _ANY_WORKSPACE if workspace_id is None else workspace_id
        by_owner = self._buckets.get(ws_key)
        if not by_owner:
            return None
        best: tuple[_Entry, _Heap] | None = None
        best_key: tuple[Any, ...] | None = None
        for owner_key in ("", *owners):
            by_group = by_owner.get(owner_key)
            if not by_group:
                continue
            for (required, preferred), heap in by_group.items():
                if required and not required <= offered:
                    continue
                items = heap.items
                while items and not items[0][_LIVE]:
                    heapq.heappop(items)
                    heap.dead -= 1
                if not items:
                    continue
                top = items[0]
                neg_rank = top[0]
                assert isinstance(neg_rank, int)
                if min_rank is not None and -neg_rank < min_rank:
                    continue
                score = len(preferred & offered) if preferred else 0
                key = (neg_rank, -score, top[1], top[2])
                if best_key is None or key < best_key:
                    best, best_key = (top, heap), key
        return best

    def _kill(self, entry: _Entry, popped_from: _Heap | None) -> None:
        entry[_LIVE] = False
        owner_key = entry[_OWNER]
        group = entry[_GROUP]
        assert isinstance(owner_key, str)
        assert isinstance(group, tuple)
        for key in (str(entry[_WS]), _ANY_WORKSPACE):
            by_owner = self._buckets[key]
            by_group = by_owner[owner_key]
            heap = by_group[group]
            if heap is not popped_from:
                heap.dead += 1
            if heap.live_count() == 0:
                del by_group[group]
                if not by_group:
                    del by_owner[owner_key]
                    if not by_owner:
                        del self._buckets[key]
            elif heap.dead > len(heap.items) // 2:
                # Compact so heaps of mostly-dead entries cannot grow without bound.
                heap.items = [e for e in heap.items if e[_LIVE]]
                heapq.heapify(heap.items)
                heap.dead = 0
