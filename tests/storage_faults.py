"""A journal store whose next append the test holds, fails, or both.

``AppendGate`` replaces ``Store.append`` for one test. ``hold_next()`` makes the next append
stop before writing, with ``entered`` set once it has (the test then knows that commit is
in flight); ``release()`` lets it write, ``release(error)`` makes it raise ``error``
instead, leaving the store untouched. ``fail_next`` raises once without holding.

A held append waits on a ``threading.Event``, so the runtime must run its appends on a
thread of their own (durability "durable"); ``fail_next`` works in either mode.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio

from runlease.core.model import Event
from runlease.persistence.store import Store

# Real seconds a held append waits for the test before giving up, so a failing test
# cannot leave a worker thread behind forever.
THREAD_WAIT = 60.0


class AppendGate:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = Store.append
        self._go = threading.Event()
        self._armed = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._error: Exception | None = None
        self.entered = trio.Event()
        self.fail_next: Exception | None = None
        self.appends = 0

        def append(store: Store, records: Sequence[bytes], events: Sequence[Event] = ()) -> int:
            return self._append(store, records, events)

        monkeypatch.setattr(Store, "append", append)

    def hold_next(self) -> None:
        # Called from the test's trio run; the append runs on the runtime's commit thread.
        self._token = trio.lowlevel.current_trio_token()
        self.entered = trio.Event()
        self._go.clear()
        self._error = None
        self._armed = True

    def release(self, error: Exception | None = None) -> None:
        self._error = error
        self._go.set()

    def _append(self, store: Store, records: Sequence[bytes], events: Sequence[Event]) -> int:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if self._armed:
            self._armed = False
            trio.from_thread.run_sync(self.entered.set, trio_token=self._token)
            if not self._go.wait(THREAD_WAIT):
                raise RuntimeError("the test never released the held commit")
            if self._error is not None:
                raise self._error
        self.appends += 1
        return self._real(store, records, events)
