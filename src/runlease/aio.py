"""runlease for asyncio hosts (and any anyio-compatible loop).

Two ways in, both usable inside a plain ``asyncio.run(...)``:

- :func:`open_client` connects to a ``runlease serve`` process; built on anyio, it works
  under asyncio and trio alike and has every typed method of the trio client.
- :func:`open_runtime` embeds the runtime on the running asyncio loop (trio runs there as
  a guest), with the API of :func:`runlease.open_runtime` as asyncio coroutines.

The embedded runtime (and trio with it) is imported on first use of its names, so a
program that only uses the client never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runlease.anyio_client import AnyioClient, AnyioEventStream, open_client

if TYPE_CHECKING:
    from runlease.runtime.asyncio_host import (
        AsyncioActing,
        AsyncioRuntime,
        AsyncioSession,
        open_runtime,
    )

_RUNTIME_NAMES = frozenset({"AsyncioActing", "AsyncioRuntime", "AsyncioSession", "open_runtime"})


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_NAMES:
        from runlease.runtime import asyncio_host

        return getattr(asyncio_host, name)
    raise AttributeError(f"module 'runlease.aio' has no attribute {name!r}")


__all__ = [
    "AnyioClient",
    "AnyioEventStream",
    "AsyncioActing",
    "AsyncioRuntime",
    "AsyncioSession",
    "open_client",
    "open_runtime",
]
