"""``runlease serve``: run a server in the foreground, log its lines, stop on a signal.

The first SIGINT or SIGTERM starts a graceful shutdown (see :meth:`SocketServer.shutdown`);
a second one stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from runlease.actors.idle_sessions import DEFAULT_SESSION_IDLE_TIMEOUT
from runlease.client_common import ServerAddress
from runlease.core.create_keys import DEFAULT_IDEMPOTENCY_WINDOW
from runlease.errors import RunleaseError
from runlease.hooks import Hook
from runlease.persistence.events import HistoryRetention
from runlease.runtime.collector import GcTuning
from runlease.runtime.logs import JsonLogFormatter, TextLogFormatter, configure_logging
from runlease.runtime.runtime import Durability, Runtime, open_runtime
from runlease.runtime.server import (
    DEFAULT_SHUTDOWN_GRACE,
    ServerLimits,
    SocketServer,
    raise_fd_limit,
    serve_socket,
)
from runlease.runtime.socket_file import make_private_if_socket_dir

if TYPE_CHECKING:
    from runlease.runtime.http import HttpServer
    from runlease.runtime.metrics import RuntimeMetrics

log = logging.getLogger("runlease.server")


class HttpsFiles(NamedTuple):
    """The certificate chain (PEM) the dashboard presents, and its key when in another file."""

    cert: Path
    key: Path | None = None


def run_server(
    socket_path: str | os.PathLike[str] | None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    durability: Durability = "durable",
    clock: Callable[[], float] | None = None,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    workspace_roots: Mapping[str, str | os.PathLike[str]] | None = None,
    allow_agent_force: bool = False,
    fresh_store: bool = False,
    limits: ServerLimits | None = None,
    starve_after: float | None = None,
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
    history_retention: HistoryRetention | None = None,
    session_idle_timeout: float | None = DEFAULT_SESSION_IDLE_TIMEOUT,
    hooks: Sequence[Hook] = (),
    listen: Sequence[ServerAddress] = (),
    tls: ssl.SSLContext | None = None,
    insecure_plaintext: bool = False,
    http: ServerAddress | None = None,
    https_files: HttpsFiles | None = None,
) -> None:
    """Run a server in the foreground until SIGINT or SIGTERM, then stop gracefully.

    ``workspace_roots`` maps a workspace id ("" for global tasks) to the directory its
    completion-contract artifacts are checked under. ``allow_agent_force`` lets sessions
    use the force operations (see :func:`open_runtime`). ``fresh_store`` is passed to
    :func:`open_runtime` (start empty where the database is missing or empty).
    ``limits`` bounds what clients may hold (:class:`ServerLimits`). ``starve_after``
    turns on the starvation backstop, ``idempotency_window`` is how long a create's
    idempotency key is kept, ``history_retention`` how long events are kept and
    ``session_idle_timeout`` stops forgotten sessions (see :func:`open_runtime` for each);
    ``hooks`` are delivered as :func:`open_runtime` says. ``socket_path`` (None: none)
    and ``listen`` are where it listens, TCP with ``tls`` (see :class:`SocketServer` for
    ``insecure_plaintext``). ``http`` (a tcp address) serves the web dashboard there too,
    over HTTPS with ``https_files``. The soft open-file
    limit is raised towards the hard one first, so the connection cap is not lowered
    needlessly.

    Raises the :class:`RunleaseError` that stopped it from starting (a locked data dir, a
    live server on the socket, an unsafe socket directory).
    """
    try:
        trio.run(
            _serve_until_signalled,
            None if socket_path is None else Path(socket_path),
            data_dir,
            durability,
            clock,
            shutdown_grace,
            workspace_roots,
            allow_agent_force,
            fresh_store,
            limits,
            starve_after,
            idempotency_window,
            history_retention,
            session_idle_timeout,
            hooks,
            listen,
            tls,
            insecure_plaintext,
            http,
            https_files,
        )
    except BaseExceptionGroup as group:
        raise _single_error(group) from None


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one RunleaseError a nursery wrapped, so callers see a plain error; else the group."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    errors = [leaf for leaf in leaves if isinstance(leaf, RunleaseError)]
    if len(leaves) == 1 and errors:
        return errors[0]
    return group


async def _serve_until_signalled(
    socket_path: Path | None,
    data_dir: str | os.PathLike[str] | None,
    durability: Durability,
    clock: Callable[[], float] | None,
    shutdown_grace: float,
    workspace_roots: Mapping[str, str | os.PathLike[str]] | None = None,
    allow_agent_force: bool = False,
    fresh_store: bool = False,
    limits: ServerLimits | None = None,
    starve_after: float | None = None,
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
    history_retention: HistoryRetention | None = None,
    session_idle_timeout: float | None = DEFAULT_SESSION_IDLE_TIMEOUT,
    hooks: Sequence[Hook] = (),
    listen: Sequence[ServerAddress] = (),
    tls: ssl.SSLContext | None = None,
    insecure_plaintext: bool = False,
    http: ServerAddress | None = None,
    https_files: HttpsFiles | None = None,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        log.info(
            "starting",
            extra={
                "fields": {
                    "pid": os.getpid(),
                    "data_dir": None if data_dir is None else str(data_dir),
                    "durability": durability if data_dir is not None else "memory",
                }
            },
        )
        try:
            before, after = raise_fd_limit()
        except (OSError, ValueError) as exc:
            log.warning("fd_limit_unknown", extra={"fields": {"error": str(exc)}})
        else:
            log.info("fd_limit", extra={"fields": {"soft_before": before, "soft": after}})
        # With the dashboard, /metrics beside it: counting starts before boot, so the leases
        # found expired while the server was down are counted too.
        metrics = _runtime_metrics() if http is not None else None
        async with open_runtime(
            clock,
            observers=() if metrics is None else (metrics,),
            data_dir=data_dir,
            durability=durability,
            workspace_roots=workspace_roots,
            allow_agent_force=allow_agent_force,
            fresh_store=fresh_store,
            starve_after=starve_after,
            idempotency_window=idempotency_window,
            history_retention=history_retention,
            session_idle_timeout=session_idle_timeout,
            # The server owns its process: keep the collector's pauses off the large,
            # long-lived state (frozen after boot and as it grows; see runtime.collector).
            gc_tuning=GcTuning(),
            hooks=hooks,
        ) as rt:
            if metrics is not None:
                metrics.bind(rt)
            for hook in hooks:  # never the secret
                log.info(
                    "hook",
                    extra={
                        "fields": {
                            "name": hook.name,
                            "kinds": sorted(hook.kinds) if hook.kinds is not None else ["*"],
                            "target": hook.shown_target,
                        }
                    },
                )
            if data_dir is not None and socket_path is not None:
                make_private_if_socket_dir(Path(data_dir), socket_path)
            async with trio.open_nursery() as nursery:
                server: SocketServer = await nursery.start(
                    partial(
                        serve_socket,
                        rt,
                        socket_path,
                        shutdown_grace=shutdown_grace,
                        limits=limits,
                        listen=listen,
                        tls=tls,
                        insecure_plaintext=insecure_plaintext,
                    )
                )
                dashboard = None
                if http is not None:
                    dashboard = await _start_dashboard(
                        nursery,
                        rt,
                        http,
                        https_files,
                        insecure_plaintext,
                        None if metrics is None else metrics.render,
                    )
                for url in server.urls:
                    log.info(
                        "listener",
                        extra={
                            "fields": {
                                "url": url,
                                "tls": url.startswith("tcp://"),
                                "client_certificates": url.startswith("tcp://")
                                and tls is not None
                                and tls.verify_mode == ssl.CERT_REQUIRED,
                            }
                        },
                    )
                log.info(
                    "listening",
                    extra={
                        "fields": {
                            "socket": None if server.path is None else str(server.path),
                            "listeners": server.urls,
                            "pid": os.getpid(),
                        }
                    },
                )
                nursery.start_soon(_watch_signals, signals, server, nursery.cancel_scope, dashboard)
                await server.wait_stopped()
                if dashboard is not None:
                    dashboard.shutdown()
                    await dashboard.wait_stopped()
                nursery.cancel_scope.cancel()
            log.info("closing_runtime")
    log.info("stopped")


def _runtime_metrics() -> RuntimeMetrics:
    # Loaded only with --http: a server without the dashboard never imports prometheus_client.
    from runlease.runtime.metrics import RuntimeMetrics

    return RuntimeMetrics()


async def _start_dashboard(
    nursery: trio.Nursery,
    rt: Runtime,
    address: ServerAddress,
    https_files: HttpsFiles | None,
    insecure_plaintext: bool,
    metrics: Callable[[], tuple[bytes, str]] | None,
) -> HttpServer:
    """Start the web dashboard in ``nursery`` and log where it listens (``http_listening``).

    Plain HTTP follows the rule of plain TCP listeners: refused off loopback unless
    ``insecure_plaintext``, and logged as a ``plaintext_listener`` warning where allowed."""
    from runlease.runtime.http import serve_http
    from runlease.runtime.listeners import check_listeners

    check_listeners(
        [address._replace(tls=https_files is not None)],
        tls=https_files is not None,
        insecure_plaintext=insecure_plaintext,
    )

    dashboard: HttpServer = await nursery.start(
        partial(
            serve_http,
            rt,
            address,
            certfile=None if https_files is None else https_files.cert,
            keyfile=None if https_files is None else https_files.key,
            metrics=metrics,
        )
    )
    log.info(
        "http_listening",
        extra={"fields": {"url": dashboard.url, "https": https_files is not None}},
    )
    return dashboard


async def _watch_signals(
    signals: Any,
    server: SocketServer,
    scope: trio.CancelScope,
    dashboard: HttpServer | None = None,
) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("signal_received", extra={"fields": {"signal": name, "action": "drain"}})
            server.shutdown()
            if dashboard is not None:
                dashboard.shutdown()
        else:
            log.warning("signal_received", extra={"fields": {"signal": name, "action": "stop_now"}})
            scope.cancel()
            return


__all__ = [
    "HttpsFiles",
    "JsonLogFormatter",
    "TextLogFormatter",
    "configure_logging",
    "run_server",
]
