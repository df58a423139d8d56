"""The claimable-run index: who goes next, at a cost that does not grow with queue depth.

Queued runs are grouped by what decides who may take them and in which order:

- the **view**: a run is listed under its task's workspace, or under the global view ("")
  for a task with no workspace. A claim looks at exactly one view: the workspace it names,
  or the global view when it names none, so a workspace's work never reaches a claimer
  that did not ask for that workspace;
- the **owner key**: unowned runs, or the runs of an assigned task, filed under
  "s:<session>" or "p:<agent pool>"; a claim looks under the unowned key and its own two;
- the **capability group** (required, preferred): the claimer must offer every required
  capability, and since every run of a group shares its preferred set, the claimer's
  preference score is a constant per group;
- the **priority rank**.

Each (view, owner, group, rank) has a :class:`_Lane` of runs in queue order: (queue place,
run id). The queue place is the machine's enqueue counter (``Run.queue_seq``), not wall time,
so a clock stepped back cannot put newer work ahead of older work. New runs always carry a
larger place than any before them, so a lane is a FIFO deque that is only appended to; only a
run that comes back with its old place (a requeue after an expiry or a release, or a
priority change) lands in a small heap beside the deque. A lane's next run is the smaller of
the two fronts. A claim compares the fronts of the highest-ranked lane of each group it may
take from, by (priority, owned before unowned, preference score, queue place, id), so it
costs O(groups) plus O(log r) for r requeued runs, however many runs are queued.

Entries are plain tuples of numbers and strings, so once the collector has seen them it
stops tracking them: a deep queue adds nothing to the work of a full garbage collection.
An entry is live while ``_entries`` maps its run id to that very tuple; removing a run from
the middle of a lane (a cancel, a pause, a claim by id) just drops the mapping, and the dead
tuple is dropped when it reaches its lane's front, or when a lane holds more dead entries
than live ones.

**Tags.** A run whose task carries tags is also filed, by the same (view, owner, group,
rank), in one lane set per tag. A claim that asks for tags looks only in the lanes of the
rarest of them, so a claim for one tag costs what an untagged claim costs. A claim for
several tags walks that tag's lanes past the runs lacking the others (a cost in the runs
skipped, never in the queue's depth when one tag is asked for). Untagged runs are in no tag
lane and untagged claims never look at one, so a workload without tags pays nothing.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

# (queue place, run id, rank, workspace key, owner key, group id). Tuples compare on the
# queue place, then the run id, which is unique, so the trailing fields never decide.
_Entry = tuple[int, str, int, str, str, int]
_Group = tuple[frozenset[str], frozenset[str]]
_RUN_ID: Final = 1
_NO_PREFERENCE: frozenset[str] = frozenset()
_NO_TAGS: frozenset[str] = frozenset()

_GLOBAL = ""  # the view of tasks with no workspace (workspace ids are never empty)


class _Lane:
    """The queued runs of one (view, owner, group, rank), in queue order."""

    __slots__ = ("dead", "fifo", "late", "rank")

    def __init__(self, rank: int) -> None:
        self.rank = rank
        # In queue order: a run is appended when it sorts after the last one appended.
        self.fifo: deque[_Entry] = deque()
        # A heap of the runs that arrived out of order (they kept an earlier place).
        self.late: list[_Entry] = []
        # Entries still stored here whose run was taken or removed.
        self.dead = 0

    def stored(self) -> int:
        return len(self.fifo) + len(self.late)

    def push(self, entry: _Entry) -> None:
        fifo = self.fifo
        if not fifo or fifo[-1] < entry:
            fifo.append(entry)
        else:
            heapq.heappush(self.late, entry)


class _RankedLanes:
    """The lanes of one capability group under one view and owner, highest rank first."""

    __slots__ = ("lanes",)

    def __init__(self) -> None:
        self.lanes: list[_Lane] = []

    def lane(self, rank: int) -> _Lane:
        lanes = self.lanes
        for i, lane in enumerate(lanes):
            if lane.rank == rank:
                return lane
            if lane.rank < rank:
                new = _Lane(rank)
                lanes.insert(i, new)
                return new
        new = _Lane(rank)
        lanes.append(new)
        return new


# view key -> owner key -> group id -> lanes: the whole queue, or the runs of one tag.
_Space = dict[str, dict[str, dict[int, _RankedLanes]]]


class ClaimIndex:
    def __init__(self) -> None:
        # view key -> owner key -> group id -> lanes
        self._buckets: _Space = {}
        self._entries: dict[str, _Entry] = {}
        # Tagged runs only: tag -> its own lanes, a run's tags, live runs per tag.
        self._tag_spaces: dict[str, _Space] = {}
        self._run_tags: dict[str, frozenset[str]] = {}
        self._tag_counts: dict[str, int] = {}
        # Capability groups by id and ids by group, so entries carry a small int.
        self._groups: list[_Group] = []
        self._group_ids: dict[_Group, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._entries

    def run_ids(self) -> Iterator[str]:
        return iter(self._entries)

    def tags_of(self, run_id: str) -> frozenset[str]:
        """The tags a queued run is filed under (empty for an untagged one)."""
        return self._run_tags.get(run_id, _NO_TAGS)

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
        tags: frozenset[str] = _NO_TAGS,
    ) -> None:
        """Index a queued run. ``owner`` is an owner key ("s:<session>", "p:<pool>");
        ``tags`` are its task's tags."""
        if run_id in self._entries:
            raise ValueError(f"run {run_id} is already indexed")
        entry = self._entry(run_id, rank, seq, workspace_id, capabilities, preferred, owner)
        self._entries[run_id] = entry
        self._lane(self._buckets, entry).push(entry)
        if tags:
            self._file_tags(run_id, tags)
            for tag in tags:
                self._lane(self._tag_space(tag), entry).push(entry)

    def add_many(self, items: Iterable[tuple[Any, ...]]) -> None:
        """Index many runs at once (boot): each lane is sorted once instead of pushed into.

        Each item is (run_id, rank, seq, workspace_id, capabilities), optionally
        followed by (preferred, owner key, tags).
        """
        fresh: dict[str, _Entry] = {}
        tagged: dict[str, frozenset[str]] = {}
        for item in items:
            run_id, rank, seq, workspace_id, capabilities = item[:5]
            preferred = item[5] if len(item) > 5 else _NO_PREFERENCE
            owner = item[6] if len(item) > 6 else None
            if run_id in self._entries or run_id in fresh:
                raise ValueError(f"run {run_id} is already indexed")
            fresh[run_id] = self._entry(
                run_id, rank, seq, workspace_id, capabilities, preferred, owner
            )
            if len(item) > 7 and item[7]:
                tagged[run_id] = item[7]
        # Checked first, changed after: a refused batch leaves the index as it was.
        self._entries.update(fresh)
        batches: dict[int, tuple[_Lane, list[_Entry]]] = {}

        def batch(lane: _Lane, entry: _Entry) -> None:
            found = batches.get(id(lane))
            if found is None:
                found = batches[id(lane)] = (lane, [])
            found[1].append(entry)

        for entry in fresh.values():
            batch(self._lane(self._buckets, entry), entry)
        for run_id, tags in tagged.items():
            self._file_tags(run_id, tags)
            for tag in tags:
                batch(self._lane(self._tag_space(tag), fresh[run_id]), fresh[run_id])
        for lane, entries in batches.values():
            entries.sort()
            if lane.stored():
                for entry in entries:
                    lane.push(entry)
            else:
                lane.fifo = deque(entries)

    def discard(self, run_id: str) -> bool:
        """Take a run out of the index (canceled, paused, claimed by id). True if it was
        there."""
        entry = self._entries.pop(run_id, None)
        if entry is None:
            return False
        self._left(entry, None, None)
        return True

    def peek(
        self,
        *,
        workspace_id: str | None,
        offered: frozenset[str],
        owners: tuple[str, ...] = (),
        min_rank: int | None = None,
        tags: frozenset[str] = _NO_TAGS,
    ) -> str | None:
        best = self._best(workspace_id, offered, owners, min_rank, tags)
        return None if best is None else best[0][_RUN_ID]

    def take(
        self,
        *,
        workspace_id: str | None,
        offered: frozenset[str],
        owners: tuple[str, ...] = (),
        min_rank: int | None = None,
        tags: frozenset[str] = _NO_TAGS,
    ) -> str | None:
        """Remove and return the best run this claimer may take, or None.

        ``workspace_id`` None (or "") means tasks with no workspace only. ``owners`` are
        the owner keys the claimer answers to besides unowned work (their runs go first at
        equal priority); ``min_rank`` skips lower priorities; ``tags``: only runs whose
        task has every one of them.
        """
        best = self._best(workspace_id, offered, owners, min_rank, tags)
        if best is None:
            return None
        entry, lane = best
        popped: _Lane | None = lane
        if lane.fifo and lane.fifo[0] is entry:
            lane.fifo.popleft()
        elif lane.late and lane.late[0] is entry:
            heapq.heappop(lane.late)
        else:
            popped = None  # a multi-tag claim found it behind runs lacking a tag
        run_id = entry[_RUN_ID]
        del self._entries[run_id]
        self._left(entry, popped, None if tags else lane)
        return run_id

    # ------------------------------------------------------------------ internals
    def _entry(
        self,
        run_id: str,
        rank: int,
        seq: int,
        workspace_id: str | None,
        capabilities: frozenset[str],
        preferred: frozenset[str],
        owner: str | None,
    ) -> _Entry:
        group = (capabilities, preferred)
        group_id = self._group_ids.get(group)
        if group_id is None:
            group_id = self._group_ids[group] = len(self._groups)
            self._groups.append(group)
        return (seq, run_id, rank, workspace_id or _GLOBAL, owner or "", group_id)

    def _file_tags(self, run_id: str, tags: frozenset[str]) -> None:
        self._run_tags[run_id] = tags
        counts = self._tag_counts
        for tag in tags:
            counts[tag] = counts.get(tag, 0) + 1

    def _tag_space(self, tag: str) -> _Space:
        space = self._tag_spaces.get(tag)
        if space is None:
            space = self._tag_spaces[tag] = {}
        return space

    def _left(self, entry: _Entry, popped: _Lane | None, main_lane: _Lane | None) -> None:
        """Tidy every lane that held ``entry``, whose run just left the index; ``popped``
        is the lane it was taken from (no longer stored there), if any, and ``main_lane``
        its lane among all runs when the caller already has it."""
        main = self._buckets
        lane = main_lane or self._find_lane(main, entry)
        self._settle(main, entry, lane, counted=lane is not popped)
        if not self._run_tags:
            return
        tags = self._run_tags.pop(entry[_RUN_ID], None)
        if tags is None:
            return
        counts = self._tag_counts
        for tag in tags:
            counts[tag] -= 1
            if not counts[tag]:
                del counts[tag]
            space = self._tag_spaces[tag]
            lane = self._find_lane(space, entry)
            self._settle(space, entry, lane, counted=lane is not popped)
            if not space:
                del self._tag_spaces[tag]

    def _lane(self, space: _Space, entry: _Entry) -> _Lane:
        view = entry[3]
        by_owner = space.get(view)
        if by_owner is None:
            by_owner = space[view] = {}
        by_group = by_owner.get(entry[4])
        if by_group is None:
            by_group = by_owner[entry[4]] = {}
        lanes = by_group.get(entry[5])
        if lanes is None:
            lanes = by_group[entry[5]] = _RankedLanes()
        return lanes.lane(entry[2])

    def _find_lane(self, space: _Space, entry: _Entry) -> _Lane:
        for lane in space[entry[3]][entry[4]][entry[5]].lanes:
            if lane.rank == entry[2]:
                return lane
        raise AssertionError(f"no lane holds run {entry[_RUN_ID]}")  # pragma: no cover

    def _settle(self, space: _Space, entry: _Entry, lane: _Lane, *, counted: bool) -> None:
        """Tidy ``lane`` after one of its runs left the index.

        ``counted``: the dead entry is still stored in the lane. Dead entries at the fronts
        are dropped at once; an emptied lane is removed; a lane holding more dead entries
        than live ones is rebuilt.
        """
        if counted:
            lane.dead += 1
        if lane.dead:
            self._drop_dead_fronts(lane)
        if lane.stored() == 0:
            view = entry[3]
            by_owner = space[view]
            by_group = by_owner[entry[4]]
            lanes = by_group[entry[5]]
            lanes.lanes.remove(lane)
            if not lanes.lanes:
                del by_group[entry[5]]
                if not by_group:
                    del by_owner[entry[4]]
                    if not by_owner:
                        del space[view]
        elif lane.dead * 2 > lane.stored():
            entries = self._entries
            lane.fifo = deque(e for e in lane.fifo if entries.get(e[_RUN_ID]) is e)
            lane.late = [e for e in lane.late if entries.get(e[_RUN_ID]) is e]
            heapq.heapify(lane.late)
            lane.dead = 0

    def _drop_dead_fronts(self, lane: _Lane) -> None:
        entries = self._entries
        fifo, late = lane.fifo, lane.late
        while fifo and entries.get(fifo[0][_RUN_ID]) is not fifo[0]:
            fifo.popleft()
            lane.dead -= 1
        while late and entries.get(late[0][_RUN_ID]) is not late[0]:
            heapq.heappop(late)
            lane.dead -= 1

    def _front(self, lane: _Lane) -> _Entry | None:
        """The lane's next live run, dropping dead entries on the way."""
        if lane.dead:
            self._drop_dead_fronts(lane)
        fifo, late = lane.fifo, lane.late
        if fifo:
            if late and late[0] < fifo[0]:
                return late[0]
            return fifo[0]
        return late[0] if late else None

    def _first_tagged(self, lane: _Lane, need: frozenset[str]) -> _Entry | None:
        """The lane's first live run whose task also has every tag of ``need``."""
        entries, run_tags = self._entries, self._run_tags
        top = self._front(lane)
        if top is None or need <= run_tags[top[_RUN_ID]]:
            return top
        found: _Entry | None = None
        for entry in lane.fifo:  # in queue order: the first match is the fifo's best
            if entries.get(entry[_RUN_ID]) is entry and need <= run_tags[entry[_RUN_ID]]:
                found = entry
                break
        for entry in lane.late:
            if (
                (found is None or entry < found)
                and entries.get(entry[_RUN_ID]) is entry
                and need <= run_tags[entry[_RUN_ID]]
            ):
                found = entry
        return found

    def _best(
        self,
        workspace_id: str | None,
        offered: frozenset[str],
        owners: tuple[str, ...] = (),
        min_rank: int | None = None,
        tags: frozenset[str] = _NO_TAGS,
    ) -> tuple[_Entry, _Lane] | None:
        space = self._buckets
        need: frozenset[str] | None = None
        if tags:
            counts = self._tag_counts
            if not all(tag in counts for tag in tags):
                return None
            rarest = min(tags, key=counts.__getitem__)
            space = self._tag_spaces[rarest]
            if len(tags) > 1:
                need = tags - {rarest}
        by_owner = space.get(workspace_id or _GLOBAL)
        if not by_owner:
            return None
        groups = self._groups
        best: tuple[_Entry, _Lane] | None = None
        best_key: tuple[int, int, int, int, str] | None = None
        for owner_key in ("", *owners):
            by_group = by_owner.get(owner_key)
            if not by_group:
                continue
            # At equal priority the claimer's own work (its session's or its pool's) goes
            # before unowned work.
            unowned = 0 if owner_key else 1
            for group_id, lanes in by_group.items():
                required, preferred = groups[group_id]
                if required and not required <= offered:
                    continue
                score = len(preferred & offered) if preferred else 0
                for lane in lanes.lanes:
                    rank = lane.rank
                    if (min_rank is not None and rank < min_rank) or (
                        best_key is not None and -rank > best_key[0]
                    ):
                        break  # lanes are ranked: nothing below can win
                    top = self._front(lane) if need is None else self._first_tagged(lane, need)
                    if top is None:
                        continue
                    key = (-rank, unowned, -score, top[0], top[1])
                    if best_key is None or key < best_key:
                        best, best_key = (top, lane), key
                    break  # the highest live lane decides for this group
        return best

    def depth(self) -> dict[tuple[str, int], int]:
        """Claimable runs per (view key, priority rank), counted from the lanes' sizes: the
        cost grows with the number of lanes, never with the queue's depth."""
        out: dict[tuple[str, int], int] = {}
        for view, by_owner in self._buckets.items():
            for by_group in by_owner.values():
                for lanes in by_group.values():
                    for lane in lanes.lanes:
                        live = lane.stored() - lane.dead
                        if live:
                            key = (view, lane.rank)
                            out[key] = out.get(key, 0) + live
        return out

    def lane_stats(self) -> list[tuple[int, int, int]]:
        """(stored entries, live entries, recorded dead) per lane: for tests of the bounds."""
        entries = self._entries
        stats = []
        spaces = [self._buckets, *self._tag_spaces.values()]
        for by_owner in (by_owner for space in spaces for by_owner in space.values()):
            for by_group in by_owner.values():
                for lanes in by_group.values():
                    for lane in lanes.lanes:
                        stored = [*lane.fifo, *lane.late]
                        live = sum(1 for e in stored if entries.get(e[_RUN_ID]) is e)
                        stats.append((len(stored), live, lane.dead))
        return stats

    def claim_order(self) -> dict[tuple[str, str, _Group], list[tuple[int, int, str]]]:
        """Per (view, owner key, group): the live runs as (rank, place, id), best first.

        For tests that compare two indexes (a replayed machine against the original)."""
        return self._order(self._buckets)

    def tag_claim_order(
        self,
    ) -> dict[str, dict[tuple[str, str, _Group], list[tuple[int, int, str]]]]:
        """:meth:`claim_order` of each tag's lanes."""
        return {tag: self._order(space) for tag, space in self._tag_spaces.items()}

    def _order(self, space: _Space) -> dict[tuple[str, str, _Group], list[tuple[int, int, str]]]:
        entries = self._entries
        out: dict[tuple[str, str, _Group], list[tuple[int, int, str]]] = {}
        for view, by_owner in space.items():
            for owner_key, by_group in by_owner.items():
                for group_id, lanes in by_group.items():
                    live = [
                        (e[2], e[0], e[1])
                        for lane in lanes.lanes
                        for e in (*lane.fifo, *lane.late)
                        if entries.get(e[_RUN_ID]) is e
                    ]
                    live.sort(key=lambda k: (-k[0], k[1], k[2]))
                    if live:
                        out[(view, owner_key, self._groups[group_id])] = live
        return out
