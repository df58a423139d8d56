"""Every kind of event the state machine emits.

Hooks and filters validate the kinds a person names against this set, so a typo is refused
at once instead of matching nothing forever. tests/test_event_kinds.py reads the core's
sources and fails when a handler emits a kind missing here.
"""

from __future__ import annotations

from typing import Final

EVENT_KINDS: Final[frozenset[str]] = frozenset(
    {
        "checkpoint",
        "dependency_added",
        "dependency_removed",
        "lease_expired",
        "lease_released",
        "lease_renewed",
        "run_blocked",
        "run_canceled",
        "run_claimed",
        "run_completed",
        "run_failed",
        "run_force_failed",
        "run_force_released",
        "run_queued",
        "run_recovered",
        "run_retried",
        "run_starved",
        "run_stolen",
        "run_unblocked",
        "scheduler_drain_completed",
        "scheduler_drain_started",
        "scheduler_paused",
        "scheduler_resumed",
        "session_opened",
        "session_stopped",
        "task_approved",
        "task_canceled",
        "task_created",
        "task_deleted",
        "task_paused",
        "task_published",
        "task_rejected",
        "task_reopened",
        "task_resumed",
        "task_unblocked",
        "task_updated",
        "token_created",
        "token_revoked",
    }
)
