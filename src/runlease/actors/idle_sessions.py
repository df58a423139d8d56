"""Idle sessions: when each live session last made a request, and stopping forgotten ones.

A session opened without a TTL would otherwise stay live forever. With an idle timeout,
a live session that holds no lease and has made no request for that long is stopped with
reason ``idle``.

Activity is kept here, in memory: a request made as a session costs one float stored in a
dict, never a journal write. Only the stop is journaled (``ExpireIdleSession``), like a TTL
expiry. A restart counts as activity for every live session, so nobody is stopped early
because the runtime was down.

The lease clock carries the deadlines: each live session has one entry in its heap, at the
earliest time it could be idle. When that entry falls due the session is looked at once:
if it made a request since, or holds a lease, the entry goes back at the new earliest time;
otherwise the stop is sent. A request never touches the heap, and nothing walks all
sessions while the runtime runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from runlease.actors.clock import RuntimeClock
from runlease.actors.requests import Request
from runlease.core.commands import ExpireIdleSession
from runlease.core.machine import Deadline, Machine
from runlease.core.model import Origin, Session
from runlease.errors import InvalidInput

DEFAULT_SESSION_IDLE_TIMEOUT: Final = 24 * 60 * 60.0
# The lease clock's deadline kind for "this session may be idle by then".
IDLE_DEADLINE: Final = "idle"
# The origin of idle stops (the lease clock sends them).
IDLE_WATCH = Origin(kind="daemon", ref="lease_clock")
# Activity of sessions that are gone is dropped once the map holds at least this many.
_PRUNE_FLOOR: Final = 1024


def check_idle_timeout(seconds: float | None) -> float | None:
    """The idle timeout in seconds, or None when it is off (None or 0)."""
    if seconds is None or seconds == 0:
        return None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds < math.inf
    ):
        raise InvalidInput(
            f"session_idle_timeout must be a positive number of seconds, 0 or None (off), "
            f"got {seconds!r}"
        )
    return float(seconds)


class SessionActivity:
    """When each session last made a request, and the idle check the lease clock runs.

    ``timeout`` None turns the stops off; activity is still kept, for listings.
    """

    def __init__(
        self,
        machine: Machine,
        clock: RuntimeClock,
        timeout: float | None,
        *,
        waiting: Callable[[str], bool] = lambda session_id: False,
    ) -> None:
        self.timeout = timeout
        # Whether a session has a claim parked waiting for work: a request in flight.
        self._waiting = waiting
        self._machine = machine
        self._clock = clock
        self._last: dict[str, float] = {}
        # Every session counts as active when the runtime started (a restart included).
        self._started = clock.now()
        self._prune_at = _PRUNE_FLOOR

    def touch(self, session_id: str) -> None:
        """The session made a request now. On every request: keep it a dict store."""
        last = self._last
        last[session_id] = self._clock.now()
        if len(last) > self._prune_at:
            self._prune()

    def last_active(self, session: Session) -> float:
        """When the session last made a request (at least its opening and the start of
        this runtime)."""
        seen = self._last.get(session.id)
        return seen if seen is not None else max(session.opened_at, self._started)

    def first_deadline(self, session: Session) -> Deadline | None:
        """The deadline to watch for a live session (just opened, or at boot)."""
        if self.timeout is None:
            return None
        return (self.last_active(session) + self.timeout, IDLE_DEADLINE, session.id)

    def live_deadlines(self) -> list[Deadline]:
        """One deadline per live session (after boot or a rollback)."""
        if self.timeout is None:
            return []
        out: list[Deadline] = []
        for session in self._machine.sessions.values():
            if session.state == "live":
                out.append((self.last_active(session) + self.timeout, IDLE_DEADLINE, session.id))
        return out

    def due(
        self, session_id: str, now: float, rearm: Callable[[Deadline], object]
    ) -> Request | None:
        """The session's idle deadline fell due: the stop to send, or None after re-arming
        the deadline at the earliest time it could be idle (or dropping a gone session)."""
        timeout = self.timeout
        session = self._machine.sessions.get(session_id)
        if timeout is None or session is None or session.state != "live":
            self._last.pop(session_id, None)
            return None
        last = self.last_active(session)
        if self._waiting(session_id):
            # A claim still waiting for work is a request in flight, not idleness.
            rearm((now + timeout, IDLE_DEADLINE, session_id))
            return None
        if session.lease_run_id is not None:
            # Holding a lease is not idle. The lease ends by the session's own request (an
            # activity) or at the latest when it runs out, so look again a timeout after
            # whichever is later of now and its deadline.
            run = self._machine.runs.get(session.lease_run_id)
            busy_until = now if run is None or run.lease_until is None else run.lease_until
            rearm((max(now, busy_until, last) + timeout, IDLE_DEADLINE, session_id))
            return None
        if last + timeout > now:
            rearm((last + timeout, IDLE_DEADLINE, session_id))
            return None
        return Request(
            ExpireIdleSession(
                now=0.0,
                session_id=session_id,
                last_active_at=last,
                idle_timeout=timeout,
                origin=IDLE_WATCH,
            )
        )

    def _prune(self) -> None:
        """Forget sessions that are stopped or gone; amortised over many touches."""
        sessions = self._machine.sessions
        self._last = {
            sid: at
            for sid, at in self._last.items()
            if (s := sessions.get(sid)) is not None and s.state == "live"
        }
        self._prune_at = max(_PRUNE_FLOOR, 2 * len(self._last))
