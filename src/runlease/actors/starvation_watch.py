"""The starvation watch (off by default): parks queued runs no live session could take.

Every quarter of the configured time (at least every second) it asks the state machine
which claimable queued runs no live session could take, and remembers since when each has
been so; a session that could take a run, a claim or a park ends that. A run that stayed
unclaimable for the whole configured time is sent as a
:class:`~runlease.core.commands.StarveRun`, which the machine checks once more when it
applies it. The check scans the queue on its own schedule; claims never pay for it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from runlease.actors.clock import RuntimeClock
from runlease.actors.requests import Request
from runlease.core.commands import StarveRun
from runlease.core.machine import Machine
from runlease.core.model import Actor, Origin
from runlease.core.starvation import unclaimable_runs
from runlease.errors import InvalidInput

STARVATION_WATCH: Final = Actor(kind="daemon", ref="starvation_watch")
STARVATION_ORIGIN: Final = Origin(kind="daemon", ref="starvation_watch")
MIN_CHECK_INTERVAL: Final = 1.0


def check_starve_after(seconds: float | None) -> float | None:
    """A valid starvation time (positive, finite seconds) or None for off."""
    if seconds is None:
        return None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise InvalidInput(f"starve_after must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


class StarvationWatch:
    def __init__(
        self,
        machine: Machine,
        clock: RuntimeClock,
        deliver: Callable[[Request], Awaitable[None]],
        after: float,
    ) -> None:
        self._machine = machine
        self._clock = clock
        self._deliver = deliver
        self.after = after
        self.interval = max(after / 4, MIN_CHECK_INTERVAL)
        # Run id -> when it was first seen with no live session able to take it.
        self._since: dict[str, float] = {}

    def due(self, now: float) -> list[tuple[str, float]]:
        """Record what is unclaimable now; the runs that have been for ``after`` seconds,
        with how long they waited."""
        previous = self._since
        unclaimable = unclaimable_runs(self._machine)
        self._since = {run_id: previous.get(run_id, now) for run_id in unclaimable}
        return [
            (run_id, now - since)
            for run_id, since in self._since.items()
            if now - since >= self.after
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            for run_id, waited in self.due(self._clock.now()):
                command = StarveRun(
                    now=0.0,
                    run_id=run_id,
                    waited_seconds=waited,
                    actor=STARVATION_WATCH,
                    origin=STARVATION_ORIGIN,
                )
                await self._deliver(Request(command))
