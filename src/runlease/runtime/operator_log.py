"""The log lines an operator acts on, made from the events the runtime publishes.

A lease that ran out, a lease taken by a steal, a force operation and what boot recovered
are all events already; :class:`OperatorLog` is an observer of the history that writes one
line for each, with the ids needed to follow up (``runlease events get SEQ``, ``task
inspect``). It is registered for its kinds only, so every other event costs one dict
lookup in the history and no call; and it formats nothing unless the logger is enabled at
that line's level. The embedded runtime installs it too; the host decides where
the ``runlease.operator`` logger's lines go.

Levels follow one rule: ``warning`` when a holder lost a lease it may still be working
under (an expiry, a forced steal, a force operation, a lease orphaned by a restart),
``info`` for what follows from one without loss (a steal of an expired lease, a session
whose time ran out while the server was down, the recovery summary).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from runlease.core.model import REASON_ORPHANED_ON_BOOT, Event
from runlease.core.state import State
from runlease.runtime.journal import BootReport

log = logging.getLogger("runlease.operator")

# Boot writes a line for at most this many orphaned leases and as many expired sessions;
# the ``recovered`` summary counts the ones left out, so a restart after a long outage
# does not bury the log.
BOOT_LINES_PER_KIND: Final = 20

_Line = Callable[[Event], None]


class OperatorLog:
    """An event observer (see :meth:`EventHistory.add_observer`) that logs the events an
    operator needs to hear about; register it for :attr:`KINDS` only.

    ``state`` is the runtime's live state, where a line looks up what the event leaves
    out: the run's attempt (fixed for a run) and the holder's agent name (fixed for a
    session). While ``booting``, expiries with reason ``orphaned_on_boot`` and sessions
    stopped for their TTL are logged as boot recovery; :meth:`boot_finished` ends that and
    logs the summary.
    """

    # The event kinds it writes lines for (and the only ones it needs to be shown).
    KINDS: Final = frozenset(
        {"lease_expired", "run_stolen", "run_force_released", "run_force_failed", "session_stopped"}
    )

    def __init__(self, state: State, *, booting: bool = False) -> None:
        self._state = state
        self.booting = booting
        self._boot_shown = {"orphaned_lease": 0, "expired_session": 0}
        self._boot_left_out = {"orphaned_lease": 0, "expired_session": 0}
        self._lines: dict[str, _Line] = {
            "lease_expired": self._lease_expired,
            "run_stolen": self._run_stolen,
            "run_force_released": self._forced,
            "run_force_failed": self._forced,
            "session_stopped": self._session_stopped,
        }

    def __call__(self, event: Event) -> None:
        line = self._lines.get(event.kind)
        if line is not None:
            line(event)

    # ------------------------------------------------------------------ the lines
    def _lease_expired(self, event: Event) -> None:
        data = event.data
        if data.get("reason") == REASON_ORPHANED_ON_BOOT:
            self._boot_line("orphaned_lease", logging.WARNING, event)
            return
        if not log.isEnabledFor(logging.WARNING):
            return
        log.warning("lease_expired", extra={"fields": self._lost_lease_fields(event)})

    def _run_stolen(self, event: Event) -> None:
        forced = event.data.get("mode") == "force"
        level = logging.WARNING if forced else logging.INFO
        if not log.isEnabledFor(level):
            return
        data = event.data
        fields = self._run_fields(event)
        fields.update(
            mode=data.get("mode"),
            previous_session_id=data.get("previous_session_id"),
            reason=data.get("reason"),
            lease_until=data.get("lease_until"),
            actor=_who(event),
            origin=_through(event),
        )
        log.log(level, "run_stolen", extra={"fields": fields})

    def _forced(self, event: Event) -> None:
        if not log.isEnabledFor(logging.WARNING):
            return
        fields = self._run_fields(event)
        fields.update(
            reason=event.data.get("reason"),
            actor=_who(event),
            origin=_through(event),
        )
        log.warning(event.kind, extra={"fields": fields})

    def _session_stopped(self, event: Event) -> None:
        # Sessions stop all the time; only those a restart found past their time are news.
        if self.booting:
            self._boot_line("expired_session", logging.INFO, event)

    # ------------------------------------------------------------------ boot
    def _boot_line(self, kind: str, level: int, event: Event) -> None:
        if self._boot_shown[kind] >= BOOT_LINES_PER_KIND:
            self._boot_left_out[kind] += 1
            return
        self._boot_shown[kind] += 1
        if not log.isEnabledFor(level):
            return
        if kind == "orphaned_lease":
            fields = self._lost_lease_fields(event)
        else:
            fields = {
                "seq": event.seq,
                "session_id": event.session_id,
                "reason": event.data.get("reason"),
            }
        log.log(level, kind, extra={"fields": fields})

    def boot_finished(self, report: BootReport) -> None:
        """Boot recovery is over: log its summary, with how many lines were left out."""
        self.booting = False
        log.info(
            "recovered",
            extra={
                "fields": {
                    "snapshot_seq": report.snapshot_seq,
                    "replayed": report.replayed,
                    "orphaned_leases": len(report.orphaned_leases),
                    "expired_sessions": len(report.expired_sessions),
                    "orphaned_leases_not_listed": self._boot_left_out["orphaned_lease"],
                    "expired_sessions_not_listed": self._boot_left_out["expired_session"],
                }
            },
        )

    # ------------------------------------------------------------------ fields
    def _run_fields(self, event: Event) -> dict[str, Any]:
        state = self._state
        run = state.runs.get(event.run_id) if event.run_id is not None else None
        session = state.sessions.get(event.session_id) if event.session_id is not None else None
        return {
            "seq": event.seq,
            "run_id": event.run_id,
            "task_id": event.task_id,
            "session_id": event.session_id,
            "agent": None if session is None else session.agent,
            "attempt": None if run is None else run.attempt,
        }

    def _lost_lease_fields(self, event: Event) -> dict[str, Any]:
        data = event.data
        fields = self._run_fields(event)
        fields.update(
            reason=data.get("reason"),
            outcome=data.get("outcome"),
            recovery_count=data.get("recovery_count"),
            lease_until=data.get("previous_lease_until"),
        )
        return fields


def _who(event: Event) -> str | None:
    actor = event.actor
    return None if actor is None else f"{actor.kind}:{actor.ref}"


def _through(event: Event) -> str | None:
    origin = event.origin
    if origin is None:
        return None
    return f"{origin.kind}:{origin.ref}" if origin.ref else origin.kind


__all__ = ["BOOT_LINES_PER_KIND", "OperatorLog"]
