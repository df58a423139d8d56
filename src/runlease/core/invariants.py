"""The rules the state must keep after every command, checked in full (tests use this)."""

from __future__ import annotations

from runlease.core import lifecycle
from runlease.core.ids import is_token_hash
from runlease.core.model import (
    FINAL_RUN_STATUSES,
    LEASED_RUN_STATUSES,
    MAX_DEPENDENCIES,
    MAX_DIRECT_CHILDREN,
    MAX_HIERARCHY_DEPTH,
    MAX_RETRY_CHAIN,
)
from runlease.core.state import State, awaits_new_holder


def check(m: State) -> None:
    """Raise AssertionError if the state breaks a lease, queue or graph rule."""
    holders: dict[str, str] = {}
    for session in m.sessions.values():
        if session.lease_run_id is None:
            continue
        assert session.state == "live", f"stopped session {session.id} holds a lease"
        assert session.lease_run_id not in holders, "two sessions lease one run"
        holders[session.lease_run_id] = session.id
    for run in m.runs.values():
        leased = run.status in LEASED_RUN_STATUSES
        assert (run.claim_token_hash is not None) == leased, f"hash iff leased: {run.id}"
        assert (run.id in m.leased) == leased, f"in the lease set iff leased: {run.id}"
        queued = run.status == "queued"
        gated = queued and m.gate(m.tasks[run.task_id]) is not None
        assert (run.id in m.index) == (queued and not gated), f"index: {run.id}"
        if run.id in m.index:
            tags = m.index.tags_of(run.id)
            assert tags == set(m.tasks[run.task_id].tags), f"tag lanes of {run.id}"
        assert (run.id in m.held) == gated, f"held: {run.id}"
        if leased:
            assert holders.get(run.id) == run.session_id, f"lease holder of {run.id}"
            assert run.lease_until is not None
            assert is_token_hash(run.claim_token_hash), f"hash form of {run.id}"
        else:
            assert run.id not in holders, f"session holds non-leased run {run.id}"
        if run.status not in FINAL_RUN_STATUSES:
            assert 0 < run.queue_seq <= m.queue_seq, f"queue place of {run.id}"
    for task in m.tasks.values():
        current = m.current_run(task)
        assert task.status == lifecycle.task_status(task, current, m.tasks), f"status of {task.id}"
        assert sum(1 for _ in m.run_chain(task)) <= MAX_RETRY_CHAIN, f"retry chain of {task.id}"
        assert len(task.blocked_by) <= MAX_DEPENDENCIES
        assert len(m.subtasks.get(task.id, ())) <= MAX_DIRECT_CHILDREN
        assert m.depth(task) <= MAX_HIERARCHY_DEPTH
        assert (task.id in m.paused_tasks) == task.paused
        if task.canceled:
            for below in m.descendants(task.id):
                closed = lifecycle.is_closed(m.tasks[below])
                assert closed, f"{below} is open under canceled {task.id}"
    assert len(m.index) + len(m.held) == sum(1 for r in m.runs.values() if r.status == "queued")
    # ``stuck`` finds every run that lost its lease and waits unclaimed, and only those.
    lost = {r.id for r in m.lost_lease_runs()}
    assert lost == {r.id for r in m.runs.values() if awaits_new_holder(r)}, "lost leases"
