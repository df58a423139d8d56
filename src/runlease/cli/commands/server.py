"""``runlease serve`` and ``runlease status``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

from runlease.cli.context import GLOBALS, connect, show
from runlease.cli.durations import DURATION_FORMS, duration, parse_duration
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.client_common import ServerAddress
from runlease.errors import InvalidInput, UsageError
from runlease.hooks import Hook, parse_hook
from runlease.paths import default_data_dir, default_socket_path

if TYPE_CHECKING:
    import ssl

    from runlease.persistence.events import HistoryRetention
    from runlease.runtime.serve import HttpsFiles

N = TypeVar("N", int, float)
# Where `serve` reads the secret of URL hooks when no --hook-secret-file is given.
ENV_HOOK_SECRET = "RUNLEASE_HOOK_SECRET"


def serve(
    *,
    data_dir: Annotated[Path | None, Param(help="Where state is kept.")] = None,
    durability: Annotated[
        Literal["durable", "relaxed"],
        Param(help="durable: sync every commit to disk; relaxed: survive process crashes."),
    ] = "durable",
    workspace_root: Annotated[
        list[str] | None,
        Param(
            help="WORKSPACE=DIR: where completion-contract artifacts of that workspace's tasks "
            "are checked; =DIR (empty workspace) for global tasks. Repeatable.",
            negative=(),
        ),
    ] = None,
    allow_agent_force: Annotated[
        bool,
        Param(
            help="Let sessions (agents) use the operator's force operations: steal --force, "
            "run force-release / force-fail and their bulk forms. Off by default: those are "
            "refused to a session with FORBIDDEN_OPERATOR_ACTION.",
            negative=(),
        ),
    ] = False,
    fresh_store: Annotated[
        bool,
        Param(
            help="Start a new, empty store where the data dir's database is missing or "
            "empty, discarding the old store's identity. Refused if the database holds data.",
            negative=(),
        ),
    ] = False,
    max_connections: Annotated[
        int,
        Param(
            help="Serve at most this many clients at once; more are refused with "
            "SERVER_BUSY. Also kept 64 below the open-file limit (ulimit -n)."
        ),
    ] = 1024,
    handshake_timeout: Annotated[
        float,
        duration(
            help="Close, with CONNECTION_TIMEOUT, a connection that has not said hello "
            "within SECONDS."
        ),
    ] = 10.0,
    idle_timeout: Annotated[
        float,
        duration(
            help="Close, with CONNECTION_TIMEOUT, a connection with nothing in flight for "
            "SECONDS (a waiting claim, an event stream or a drain is never idle); 0: never."
        ),
    ] = 300.0,
    starve_after: Annotated[
        float | None,
        duration(
            help="Park a queued run that no live session could take (capabilities, owner) "
            "for SECONDS in needs_attention with reason starved, for `run recover`. "
            "Off by default."
        ),
    ] = None,
    max_buffered_bytes: Annotated[
        int,
        Param(
            help="BYTES that frames still being received may declare across all clients; "
            "a frame that would exceed it is refused with SERVER_BUSY."
        ),
    ] = 64 * 1024 * 1024,
    idempotency_window: Annotated[
        float,
        duration(
            help="Keep each `task create --idempotency-key` for SECONDS: within it the same "
            "key and request answer the first task."
        ),
    ] = 24 * 60 * 60.0,
    history_max_age: Annotated[
        str | None,
        Param(
            help="Keep events for SECONDS (default 2592000, 30 days; or a duration: 12h, "
            "7d); 0 or none: no age limit."
        ),
    ] = None,
    history_max_events: Annotated[
        str | None,
        Param(help="Keep only the newest N events; 0 or none: no count limit (the default)."),
    ] = None,
    session_idle_timeout: Annotated[
        str,
        Param(
            help="Stop, with reason idle, a live session that holds no lease and has made "
            "no request for SECONDS (or a duration: 90m, 1d); 0 or none: never."
        ),
    ] = "86400",
    hook: Annotated[
        list[str] | None,
        Param(
            help="KINDS=URL or KINDS=exec:COMMAND: send each event of those kinds (a comma "
            "list, or * for all) to the URL as a signed JSON POST, or to the command on its "
            "standard input; at least once, with retries. Repeatable.",
            negative=(),
        ),
    ] = None,
    hook_secret_file: Annotated[
        Path | None,
        Param(
            help="File holding the secret that signs URL hooks' deliveries (else "
            "$RUNLEASE_HOOK_SECRET)."
        ),
    ] = None,
    listen: Annotated[
        list[str] | None,
        Param(
            help="Listen on unix:PATH or tcp://HOST:PORT (port 0: any free port). Repeatable; "
            "without it, the Unix socket (--socket) alone.",
            negative=(),
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        Param(help="PEM certificate chain that tcp:// listeners present (TLS)."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        Param(help="PEM private key of --tls-cert (if not in the same file)."),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        Param(
            help="Mutual TLS: tcp:// clients must present a certificate signed by this CA "
            "bundle (PEM)."
        ),
    ] = None,
    insecure_plaintext: Annotated[
        bool,
        Param(
            help="Allow a tcp:// listener without TLS on a non-loopback address: anyone on "
            "the network could read and send requests. (Loopback is allowed without it.)",
            negative=(),
        ),
    ] = False,
    print_systemd: Annotated[
        bool,
        Param(
            help="Print a systemd unit that runs this server with these options (the "
            "command line and --config merged), and exit without serving.",
            negative=(),
        ),
    ] = False,
    http: Annotated[
        str | None,
        Param(
            help="Serve the web dashboard on HOST:PORT (port 0: any free port; the log's "
            "http_listening line has the URL). HTTPS with --tls-cert/--tls-key; plain HTTP "
            "off loopback needs --insecure-plaintext. Log in with an access token."
        ),
    ] = None,
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        Param(help="Log lines at this level and above."),
    ] = "info",
    log_format: Annotated[
        Literal["json", "text", "auto"],
        Param(
            help="json: one JSON object per line; text: one readable line (time, level, "
            "event, key=value fields); auto: text when stderr is a terminal, else json."
        ),
    ] = "auto",
) -> int:
    """Run the server in the foreground until SIGINT or SIGTERM.

    The data directory defaults to $RUNLEASE_HOME, else $XDG_DATA_HOME/runlease, else
    ~/.local/share/runlease; the socket to --socket, else $RUNLEASE_SOCKET, else
    <data dir>/runlease.sock. With --listen, exactly the addresses given (unix:PATH,
    tcp://HOST:PORT); TCP takes --tls-cert and --tls-key. Log lines go to stderr, as
    text on a terminal and JSON otherwise (--log-format). Options may also come from a
    TOML file (--config FILE or $RUNLEASE_CONFIG).
    """
    # Every option as given, before anything else is bound here: --print-systemd writes
    # them back out.
    given = dict(locals())
    # The server (and trio with it) loads only here: client commands never pay for it.
    from runlease.runtime.serve import configure_logging, run_server
    from runlease.runtime.server import ServerLimits

    try:
        limits = ServerLimits(
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            max_buffered_bytes=max_buffered_bytes,
        )
    except InvalidInput as exc:
        raise UsageError(exc.message.replace("_", "-")) from None
    if starve_after is not None and not 0 < starve_after < float("inf"):
        raise UsageError(f"--starve-after takes a positive number of seconds, got {starve_after}")
    if not 0 < idempotency_window < float("inf"):
        raise UsageError(
            f"--idempotency-window takes a positive number of seconds, got {idempotency_window}"
        )

    retention = history_retention(history_max_age, history_max_events)
    idle_seconds = _idle_timeout(session_idle_timeout)

    directory = data_dir.expanduser() if data_dir is not None else default_data_dir()
    socket_path = GLOBALS.socket or default_socket_path(directory)
    roots: dict[str, str] = {}
    for item in workspace_root or ():
        workspace, sep, root = item.partition("=")
        if not sep or not root:
            raise UsageError(f"--workspace-root takes WORKSPACE=DIR, got {item!r}")
        roots[workspace] = str(Path(root).expanduser().resolve())
    hooks = _hooks(hook or [], hook_secret_file)
    http_address = _http_address(http, tls_cert, insecure_plaintext)
    addresses, tls = _listeners(
        listen or [],
        socket_path,
        tls_cert,
        tls_key,
        tls_client_ca,
        insecure_plaintext,
        serves_http=http_address is not None,
    )
    if print_systemd:
        return _print_systemd(given, directory, addresses, hooks)
    configure_logging(level=log_level, log_format=log_format)
    run_server(
        None,
        data_dir=directory,
        durability=durability,
        workspace_roots=roots,
        allow_agent_force=allow_agent_force,
        fresh_store=fresh_store,
        limits=limits,
        starve_after=starve_after,
        idempotency_window=idempotency_window,
        history_retention=retention,
        session_idle_timeout=idle_seconds,
        hooks=hooks,
        listen=addresses,
        tls=tls,
        insecure_plaintext=insecure_plaintext,
        http=http_address,
        https_files=_https_files(http_address, tls_cert, tls_key),
    )
    return 0


def _print_systemd(
    given: dict[str, object], directory: Path, addresses: list[ServerAddress], hooks: list[Hook]
) -> int:
    """Print the systemd unit of ``serve`` with the options ``given``; serve nothing."""
    from runlease.cli.systemd import current_user, option_flags, runlease_executable, serve_unit
    from runlease.runtime.server import DEFAULT_SHUTDOWN_GRACE

    directory = directory.absolute()
    command = [
        *runlease_executable(),
        "serve",
        "--data-dir",
        str(directory),
        *option_flags(serve, given, leave_out=("data_dir", "print_systemd")),
    ]
    if GLOBALS.socket is not None:
        command += ["--socket", str(GLOBALS.socket.expanduser().absolute())]
    sockets = [
        address.path.absolute()
        for address in addresses
        if address.kind == "unix" and address.path is not None
    ]
    print(
        serve_unit(
            command,
            data_dir=directory,
            sockets=sockets,
            working_dir=Path.cwd(),
            user=current_user(),
            shutdown_grace=DEFAULT_SHUTDOWN_GRACE,
            exec_hooks=any(hook.is_exec for hook in hooks),
            hook_secret_from_env=given.get("hook_secret_file") is None
            and any(not hook.is_exec for hook in hooks),
            tcp=any(address.kind == "tcp" for address in addresses),
        ),
        end="",
    )
    return 0


def _http_address(
    spec: str | None, cert: Path | None, insecure_plaintext: bool
) -> ServerAddress | None:
    """Where ``--http HOST:PORT`` serves the dashboard, checked now: plain HTTP is refused
    off loopback without --insecure-plaintext, as plain tcp:// listeners are."""
    if spec is None:
        return None
    from runlease.runtime.listeners import check_listeners

    if "://" in spec:
        raise UsageError(f"--http {spec!r}: write HOST:PORT, e.g. 127.0.0.1:8080")
    try:
        address = ServerAddress.parse(f"tcp://{spec}")._replace(tls=cert is not None)
        check_listeners(
            [address],
            tls=cert is not None,
            insecure_plaintext=insecure_plaintext,
            log_warnings=False,
        )
    except InvalidInput as exc:
        raise UsageError(f"--http {spec!r}: {exc.message}") from None
    return address


def _https_files(
    address: ServerAddress | None, cert: Path | None, key: Path | None
) -> HttpsFiles | None:
    if address is None or cert is None:
        return None
    from runlease.runtime.serve import HttpsFiles

    return HttpsFiles(cert.expanduser(), None if key is None else key.expanduser())


def _listeners(
    specs: list[str],
    socket_path: Path,
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
    insecure_plaintext: bool,
    *,
    serves_http: bool = False,
) -> tuple[list[ServerAddress], ssl.SSLContext | None]:
    """The addresses ``--listen`` asks for (the socket when none) and their TLS context,
    each checked now: a usage error otherwise."""
    from runlease.runtime.listeners import check_listeners, server_tls_context

    addresses: list[ServerAddress] = []
    for spec in specs:
        try:
            address = ServerAddress.parse(spec)
        except InvalidInput as exc:
            raise UsageError(f"--listen {spec!r}: {exc.message}") from None
        if address.kind == "tcp" and not address.tls:
            raise UsageError(
                f"--listen {spec!r}: listen on tcp://HOST:PORT; whether it speaks TLS "
                "follows --tls-cert"
            )
        if address.kind == "unix" and not spec.startswith("unix:"):
            raise UsageError(f"--listen {spec!r}: write unix:PATH or tcp://HOST:PORT")
        addresses.append(address)
    if not addresses:
        addresses.append(ServerAddress.unix(socket_path))
    tcp = [address for address in addresses if address.kind == "tcp"]
    if cert is None and (key is not None or client_ca is not None):
        raise UsageError("--tls-key and --tls-client-ca go with --tls-cert")
    if cert is not None and not tcp and not serves_http:
        raise UsageError(
            "--tls-cert is for tcp:// listeners and --http; add --listen tcp://HOST:PORT"
        )
    try:
        tls = None if cert is None else server_tls_context(cert, key, client_ca)
    except InvalidInput as exc:
        raise UsageError(exc.message) from None
    if tls is None:
        addresses = [
            address._replace(tls=False) if address.kind == "tcp" else address
            for address in addresses
        ]
    try:
        check_listeners(
            addresses,
            tls=tls is not None,
            insecure_plaintext=insecure_plaintext,
            log_warnings=False,
        )
    except InvalidInput as exc:
        raise UsageError(exc.message) from None
    return addresses, tls


def history_retention(max_age: str | None, max_events: str | None) -> HistoryRetention:
    """The retention ``--history-max-age`` and ``--history-max-events`` ask for."""
    from runlease.persistence.events import HistoryRetention

    default = HistoryRetention()
    age = _limit("--history-max-age", max_age, default.max_age, parse_duration)
    count = _limit("--history-max-events", max_events, default.max_events, int)
    return HistoryRetention(max_age=age, max_events=count)


def _limit(flag: str, text: str | None, default: N | None, kind: Callable[[str], N]) -> N | None:
    """A retention limit: the default when not given, None for 0 or "none" (no limit)."""
    if text is None:
        return default
    if text.strip().lower() == "none":
        return None
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < float("inf"):
        what = DURATION_FORMS if kind is parse_duration else "a whole number"
        raise UsageError(f'{flag} takes {what} (0 or "none": no limit), got {text!r}')
    return value or None


def _idle_timeout(text: str) -> float | None:
    """``--session-idle-timeout``: seconds, or 0 / none for off."""
    return _limit("--session-idle-timeout", text, None, parse_duration)


def _hooks(specs: list[str], secret_file: Path | None) -> list[Hook]:
    """The hooks of ``--hook`` flags, each checked now (a usage error otherwise)."""
    if not specs:
        return []
    secret = os.environ.get(ENV_HOOK_SECRET) or None
    if secret_file is not None:
        try:
            secret = secret_file.expanduser().read_text().strip() or None
        except OSError as exc:
            raise UsageError(
                f"cannot read --hook-secret-file {secret_file}: {exc.strerror}"
            ) from None
    hooks: list[Hook] = []
    for spec in specs:
        try:
            hooks.append(parse_hook(spec, secret))
        except InvalidInput as exc:
            raise UsageError(f"--hook {spec!r}: {exc.message}") from None
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise UsageError("two --hook flags name the same event kinds and target")
    return hooks


def status(
    *,
    watch: Annotated[
        bool,
        Param(
            help="Keep watching, as runlease top does (with its --interval and --once).",
            negative=(),
        ),
    ] = False,
    interval: Annotated[
        float | None, duration(help="With --watch: ask the server every SECONDS (default 1).")
    ] = None,
    once: Annotated[
        bool, Param(help="With --watch: print one frame and exit.", negative=())
    ] = False,
) -> int:
    """Is the server up, has recovery finished, and how much is in it; --watch shows the
    live view of runlease top instead."""
    if watch:
        from runlease.cli.commands.top import watch as watch_top

        return watch_top(interval=interval, once=once)
    if interval is not None or once:
        raise UsageError("--interval and --once go with --watch")
    with connect() as client:
        info = client.status()
    document = plain(info)
    return show(
        {
            "server": {
                "up": True,
                "version": document["version"],
                "protocol": document["protocol"],
                "pid": document["pid"],
                "socket": document["socket"],
                "started_at": document["started_at"],
                "uptime_seconds": round(info.uptime_seconds, 3),
                "connections": document["connections"],
            },
            "recovered": info.recovered,
            "durability": info.durability,
            "counts": {
                "tasks": info.tasks,
                "queued_runs": info.queued_runs,
                "leased_runs": info.leased_runs,
                "live_sessions": info.live_sessions,
                "waiting_claimers": info.waiting_claimers,
                "last_event_seq": info.last_event_seq,
            },
        }
    )
