"""The claimable-run index: who goes next, in O(log n).

Queued runs are bucketed by the exact set of capabilities they require. Each bucket is a
binary heap ordered by (priority desc, queued_at asc, run id asc). A claim looks at the top of
every bucket whose required set the session offers and takes the best one, so its cost is
O(B + log n) for B distinct capability sets in use, independent of queue depth.

Every queued run sits in two heaps: its workspace's bucket, and the bucket of the same
capability set across all workspaces (for claims that do not name a workspace). Both heaps
share one entry object; taking or removing a run marks the entry dead, and dead entries are
dropped lazily when they reach a heap's top or when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

# An entry is a list so heapq compares it in C: [neg_rank, queued_at, run_id, live, ws, caps].
# run_id is unique, so comparison never reaches the trailing bookkeeping fields.
_Entry = list[object]
_LIVE = 3
_WS = 4
_CAPS = 5
_RUN_ID = 2

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
        # workspace key -> capability set -> heap
        self._buckets: dict[str, dict[frozenset[str], _Heap]] = {}
        self._entries: dict[str, _Entry] = {}

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
        queued_at: float,
        workspace_id: str | None,
        capabilities: frozenset[str],
    ) -> None:
        if run_id in self._entries:
            raise ValueError(f"run {run_id} is already indexed")
        ws_key = workspace_id if workspace_id is not None else ""
        entry: _Entry = [-rank, queued_at, run_id, True, ws_key, capabilities]
        self._entries[run_id] = entry
        for key in (ws_key, _ANY_WORKSPACE):
            heapq.heappush(self._heap(key, capabilities).items, entry)

    def add_many(self, items: Iterable[tuple[str, int, float, str | None, frozenset[str]]]) -> None:
        """Index many runs at once (boot): append everything, then heapify each heap once.

        Each item is (run_id, rank, queued_at, workspace_id, capabilities).
        """
        touched: set[int] = set()
        heaps: list[_Heap] = []
        for run_id, rank, queued_at, workspace_id, capabilities in items:
            if run_id in self._entries:
                raise ValueError(f"run {run_id} is already indexed")
            ws_key = workspace_id if workspace_id is not None else ""
            entry: _Entry = [-rank, queued_at, run_id, True, ws_key, capabilities]
            self._entries[run_id] = entry
            for key in (ws_key, _ANY_WORKSPACE):
                heap = self._heap(key, capabilities)
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

    def peek(self, *, workspace_id: str | None, offered: frozenset[str]) -> str | None:
        best = self._best(workspace_id, offered)
        return None if best is None else str(best[0][_RUN_ID])

    def take(self, *, workspace_id: str | None, offered: frozenset[str]) -> str | None:
        """Remove and return the best run this claimer may take, or None."""
        best = self._best(workspace_id, offered)
        if best is None:
            return None
        heap = best[1]
        entry = heapq.heappop(heap.items)
        run_id = str(entry[_RUN_ID])
        del self._entries[run_id]
        self._kill(entry, popped_from=heap)
        return run_id

    # ------------------------------------------------------------------ internals
    def _heap(self, ws_key: str, caps: frozenset[str]) -> _Heap:
        by_caps = self._buckets.get(ws_key)
        if by_caps is None:
            by_caps = self._buckets[ws_key] = {}
        heap = by_caps.get(caps)
        if heap is None:
            heap = by_caps[caps] = _Heap()
        return heap

    def _best(
        self, workspace_id: str | None, offered: frozenset[str]
    ) -> tuple[_Entry, _Heap] | None:
        ws_key = _ANY_WORKSPACE if workspace_id is None else workspace_id
        by_caps = self._buckets.get(ws_key)
        if not by_caps:
            return None
        best: tuple[_Entry, _Heap] | None = None
        for caps, heap in by_caps.items():
            if caps and not caps <= offered:
                continue
            items = heap.items
            while items and not items[0][_LIVE]:
                heapq.heappop(items)
                heap.dead -= 1
            if items and (best is None or items[0] < best[0]):
                best = (items[0], heap)
        return best

    def _kill(self, entry: _Entry, popped_from: _Heap | None) -> None:
        entry[_LIVE] = False
        caps = entry[_CAPS]
        assert isinstance(caps, frozenset)
        for key in (str(entry[_WS]), _ANY_WORKSPACE):
            by_caps = self._buckets[key]
            heap = by_caps[caps]
            if heap is not popped_from:
                heap.dead += 1
            if heap.live_count() == 0:
                del by_caps[caps]
                if not by_caps:
                    del self._buckets[key]
            elif heap.dead > len(heap.items) // 2:
                # Compact so heaps of mostly-dead entries cannot grow without bound.
                heap.items = [e for e in heap.items if e[_LIVE]]
                heapq.heapify(heap.items)
                heap.dead = 0
