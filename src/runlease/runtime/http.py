"""The dashboard's HTTP listener: the ASGI app of :mod:`runlease.dashboard` under
hypercorn's trio worker, in the same trio run (and so on the same runtime) as the socket
server.

``await nursery.start(serve_http, runtime, address)`` returns an :class:`HttpServer` once
the port is bound (its ``url`` says where; port 0 picks a free one). :meth:`HttpServer.shutdown`
stops accepting, ends the open event streams (a browser reconnects to whichever server comes
back) and lets the requests in flight finish within ``graceful_timeout``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from runlease.client_common import ServerAddress
from runlease.dashboard import Dashboard, create_dashboard
from runlease.errors import SERVER_UNAVAILABLE, Unavailable
from runlease.runtime.runtime import Runtime

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

log = logging.getLogger("runlease.http")

# How long requests in flight may take to finish once a shutdown starts; event streams end
# at once, so only page and action requests are waited for.
DEFAULT_GRACEFUL_TIMEOUT: Final = 5.0
# Idle keep-alive connections are closed after this long (hypercorn's own default).
KEEP_ALIVE_SECONDS: Final = 5.0


class HttpServer:
    """A running dashboard listener: where it listens, and how to stop it."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.url = ""
        self._stop = trio.Event()
        self._stopped = trio.Event()

    def shutdown(self) -> None:
        """Start a graceful stop (idempotent): no new connections, event streams end."""
        self.dashboard.close_streams()
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def http_config(
    address: ServerAddress,
    *,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
) -> Config:
    """Hypercorn's settings for one listener: HTTPS when a certificate is given (its key
    may sit in the same file), runlease's log for errors, no access log."""
    config = Config()
    host = f"[{address.host}]" if ":" in address.host else address.host
    config.bind = [f"{host}:{address.port}"]
    if certfile is not None:
        config.certfile = os.fspath(certfile)
        config.keyfile = os.fspath(keyfile if keyfile is not None else certfile)
    config.accesslog = None
    # Hypercorn's start-up chatter stays out of the JSON log; its errors do not.
    quiet = logging.getLogger("runlease.http.hypercorn")
    quiet.setLevel(logging.WARNING)
    config.errorlog = quiet
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.include_server_header = False
    return config


async def serve_http(
    runtime: Runtime,
    address: ServerAddress,
    *,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard for ``runtime`` on ``address`` (a tcp address: host and port)
    until cancelled or shut down; see the module docstring."""
    https = certfile is not None
    dashboard = create_dashboard(runtime, metrics=metrics, secure_cookies=https)
    server = HttpServer(dashboard)
    config = http_config(
        address, certfile=certfile, keyfile=keyfile, graceful_timeout=graceful_timeout
    )

    async def started(
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # Starlette's ASGI types are looser than hypercorn's; the app is a plain ASGI 3 app.
        app = cast("ASGIFramework", dashboard.app)
        await serve(app, config, shutdown_trigger=server._stop.wait, task_status=task_status)

    bound = False
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(started)
            bound = True
            server.url = binds[0]
            task_status.started(server)
    except (OSError, BaseExceptionGroup) as exc:
        error = None if bound else _only_os_error(exc)
        if error is None:
            raise
        raise Unavailable(
            f"the dashboard cannot listen on {address.host}:{address.port}: "
            f"{error.strerror or error}",
            code=SERVER_UNAVAILABLE,
        ) from None
    finally:
        server._stopped.set()


def _only_os_error(exc: BaseException) -> OSError | None:
    """The OSError a failed bind raised, alone or as the only leaf of nested groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


__all__ = ["DEFAULT_GRACEFUL_TIMEOUT", "HttpServer", "http_config", "serve_http"]
