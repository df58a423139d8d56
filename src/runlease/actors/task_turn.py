"""The task actors: each task applies the commands that act on one of its runs.

Task actors are virtual, as in Orleans: an idle task is only its record in the machine, and
a message for it runs as one turn, to completion, on the trio task that delivered it. Turns
never await, so two turns of one task can never interleave and no per-task trio task or
mailbox is needed (measured: spawning one per message cost ~40% of embedded claim+complete
throughput).
"""

from __future__ import annotations

from runlease.actors.apply import Applier
from runlease.actors.requests import Request
from runlease.actors.scheduler import Scheduler
from runlease.core.commands import RUN_SCOPED, AnyCommand, ExpireLease

# Commands a task actor handles: everything that acts on one run of its task.
TASK_OWNED = (*RUN_SCOPED, ExpireLease)


class TaskActors:
    def __init__(self, applier: Applier, scheduler: Scheduler) -> None:
        self._applier = applier
        self._scheduler = scheduler

    def own(self, command: AnyCommand) -> bool:
        """True if a task actor handles ``command``: it acts on a run that exists."""
        return isinstance(command, TASK_OWNED) and command.run_id in self._applier.machine.runs

    def turn(self, request: Request) -> None:
        """One turn of the task actor that owns the request's run."""
        self._applier.execute(request)
        if self._applier.work_queued:
            # The turn put a run back in the queue: let the scheduler offer it to waiters.
            self._scheduler.wake_nowait()
