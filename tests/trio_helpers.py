"""Small trio tools for tests: run a call in the background and look at its outcome later."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from runlease.errors import RunleaseError

STEP = 30  # seconds: an upper bound for one step on a loaded machine, never a sleep


class Later:
    """Runs a call in the background and keeps its outcome."""

    def __init__(self, nursery: trio.Nursery, call: Callable[[], Awaitable[Any]]) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: RunleaseError | None = None
        nursery.start_soon(self._run, call)

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            self.value = await call()
        except RunleaseError as exc:
            self.error = exc
        finally:
            self.done.set()

    async def result(self) -> Any:
        """The call's value; re-raises the RunleaseError it raised."""
        with trio.fail_after(STEP):
            await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value

    async def failure(self) -> RunleaseError:
        """The RunleaseError the call raised (it must have raised one)."""
        with trio.fail_after(STEP):
            await self.done.wait()
        assert self.error is not None, f"expected an error, got {self.value!r}"
        return self.error

    async def code(self) -> str:
        return (await self.failure()).code
