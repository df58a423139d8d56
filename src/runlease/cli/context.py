"""What every command shares: the global options, the client and small argument helpers.

Nothing here imports cyclopts, trio or the state machine: a command runs with only the
synchronous client and the output module loaded. (Nor dataclasses: every module on this
path counts against the start-up an agent pays on each step.)
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from runlease.cli.output import (
    NoSuchField,
    Output,
    TableLayout,
    default_output,
    emit,
    emit_error,
    emit_event,
    field_text,
    field_value,
    plain,
)
from runlease.cli.params import Param
from runlease.client import Client
from runlease.client_common import ENV_SERVER, ENV_TLS_CA, TlsFiles
from runlease.core.model import Claim, Ownership
from runlease.errors import PAYLOAD_TOO_LARGE, InvalidInput, RunleaseError, UsageError
from runlease.paths import ENV_ACCESS_TOKEN, ENV_CONFIG, ENV_SESSION_TOKEN, ENV_SOCKET
from runlease.protocol import CLI_CLIENT_NAME, MAX_FRAME_BYTES

# How long a command waits for the server's answer before calling it unavailable (a waiting
# `task next` adds its own --timeout; without one it waits as long as it takes).
REPLY_TIMEOUT = 60.0


class Globals:
    """The options given before or after the command: where the server is, how to print."""

    def __init__(self) -> None:
        self.socket: Path | None = None
        self.output: Output = "json"
        self.session_token: str | None = None
        self.token: str | None = None
        self.server: str | None = None
        self.tls_ca: Path | None = None
        # --field: print only this value of the answer (and errors on stderr).
        self.field: str | None = None
        # Where an error goes: a table means one line on stderr, so that stdout holds only
        # what a script asked for (--field, session open --export).
        self.error_output: Output = "json"

    def client(self, **options: Any) -> Client:
        """A connected client; ``options`` are more keyword arguments of :class:`Client`."""
        # --server (or $RUNLEASE_SERVER) names any server; else the Unix socket.
        return Client(
            self.server or self.socket,
            session_token=self.session_token,
            # "" rather than None: the option already read RUNLEASE_TOKEN.
            auth_token=self.token or "",
            reply_timeout=REPLY_TIMEOUT,
            client_name=CLI_CLIENT_NAME,
            tls=TlsFiles.from_env(ca=self.tls_ca),
            **options,
        ).connect()


GLOBALS = Globals()


def global_options(
    *tokens: Annotated[str, Param(show=False, allow_leading_hyphen=True)],
    socket: Annotated[
        Path | None,
        Param(env_var=ENV_SOCKET, help="The server's Unix socket.", group="Global options"),
    ] = None,
    output: Annotated[
        Literal["json", "table"] | None,
        Param(
            name=["--output", "-o"],
            help="json, or table for people (default: table on a terminal, else json).",
            group="Global options",
        ),
    ] = None,
    session_token: Annotated[
        str | None,
        Param(
            env_var=ENV_SESSION_TOKEN,
            help=(
                "The session's bearer token (rl_session_...), for session-scoped commands. "
                f"Prefer the {ENV_SESSION_TOKEN} environment variable: a token given on the "
                "command line can be read by other users of this machine (ps, /proc/PID/cmdline)."
            ),
            group="Global options",
        ),
    ] = None,
    token: Annotated[
        str | None,
        Param(
            env_var=ENV_ACCESS_TOKEN,
            help=(
                "An access token (rl_token_...) to act with its role. Prefer the "
                f"{ENV_ACCESS_TOKEN} environment variable: a command line can be read by "
                "other users of this machine."
            ),
            group="Global options",
        ),
    ] = None,
    server: Annotated[
        str | None,
        Param(
            env_var=ENV_SERVER,
            help="The server's address: unix:/path/to/socket or tcp://host:port (TLS); "
            "wins over --socket.",
            group="Global options",
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        Param(
            env_var=ENV_TLS_CA,
            help="CA bundle (PEM) that signed a tcp:// server's certificate (default: the "
            "system's CAs). For mutual TLS the client certificate and key come from "
            "$RUNLEASE_TLS_CERT and $RUNLEASE_TLS_KEY.",
            group="Global options",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        Param(
            env_var=ENV_CONFIG,
            help="A TOML file of serve's options, named as its flags without the dashes "
            '(data-dir = "/srv/runlease", listen = ["tcp://..."]); flags given on the '
            "command line win. Only serve reads it.",
            group="Global options",
        ),
    ] = None,
    field: Annotated[
        str | None,
        Param(
            help="Print only this value of the JSON answer, e.g. run.id or tasks.0.id: a "
            "string as is, null as an empty line, anything else as JSON. Errors go to "
            "stderr; a PATH the answer lacks exits 2.",
            group="Global options",
        ),
    ] = None,
) -> int:
    """The options every command takes, before or after it; ``tokens`` is the command.

    Only a declaration: the cyclopts application and the fast path both read this signature.
    """
    raise NotImplementedError


def execute(
    command: Callable[..., int],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    socket: Path | None = None,
    output: Output | None = None,
    session_token: str | None = None,
    token: str | None = None,
    server: str | None = None,
    tls_ca: Path | None = None,
    config: Path | None = None,
    field: str | None = None,
) -> int:
    """Run a parsed command under the global options; a refusal prints its error and exits
    with its class's code. (``config`` was applied when the command line was read, by the
    cyclopts application, for the commands that take one.)"""
    GLOBALS.server = server or None
    GLOBALS.tls_ca = tls_ca
    GLOBALS.socket = socket
    # A script asking for one value reads the answer as JSON, whatever stdout is.
    GLOBALS.output = "json" if field is not None else output or default_output()
    GLOBALS.session_token = session_token or None
    GLOBALS.token = token or None
    GLOBALS.field = field
    GLOBALS.error_output = "table" if field is not None else GLOBALS.output
    try:
        if field is not None:
            check_field_path(field)
        result = command(*args, **kwargs)
    except RunleaseError as exc:
        emit_error(exc.code, exc.message, GLOBALS.error_output)
        return exc.exit_code
    return int(result or 0)


@contextlib.contextmanager
def connect() -> Iterator[Client]:
    """A connected client for one command, closed when the command is done."""
    client = GLOBALS.client()
    try:
        yield client
    finally:
        client.close()


def show(document: dict[str, Any], *, table: TableLayout | None = None) -> int:
    """Print a command's result in the chosen output (``table`` picks what a table shows;
    JSON holds everything); the command worked (exit 0)."""
    if GLOBALS.field is not None:
        _print_field(document, GLOBALS.field)
    else:
        emit(document, GLOBALS.output, table)
    return 0


def show_event(event: dict[str, Any]) -> None:
    """One followed event (an NDJSON line, a row of text, or its --field value)."""
    if GLOBALS.field is not None:
        _print_field(event, GLOBALS.field)
    else:
        emit_event(event, GLOBALS.output)


def check_field_path(path: str) -> None:
    """Refuse a malformed --field before the command runs (a missing key can only be told
    from the answer)."""
    if not path or any(not step for step in path.split(".")):
        raise UsageError(
            f"--field takes a PATH of keys and list indexes joined by dots, like run.id or "
            f"tasks.0.id; got {path!r}"
        )


def _print_field(document: Any, path: str) -> None:
    try:
        value = field_value(document, path)
    except NoSuchField as exc:
        raise UsageError(f"--field {path}: {exc.args[0]} (the command itself did run)") from None
    sys.stdout.write(field_text(value) + "\n")
    sys.stdout.flush()


def show_claim(claim: Claim) -> int:
    """A claim as ``task next`` prints it: its task, run and lease."""
    return show({"task": plain(claim.task), "run": plain(claim.run), "lease": plain(claim.lease)})


def json_param(**options: Any) -> Param:
    """The ``Param`` of an option whose value is JSON: ``options`` as for any ``Param``, and
    ``-`` (standard input) or ``@FILE`` accepted in place of the JSON itself."""
    help_text = options.pop("help", "")
    forms = "- reads it from standard input, @FILE from a file."
    return Param(allow_leading_hyphen=True, help=f"{help_text} {forms}".strip(), **options)


def json_arg(text: str | None, flag: str, *, object_only: bool = False) -> Any:
    """The JSON value given to ``flag``, or None when the flag was not given.

    ``-`` reads the JSON from standard input and ``@PATH`` from a file (neither is JSON,
    so no literal value is taken for them)."""
    if text is None:
        return None
    if text == "-":
        text = _read_json_source(sys.stdin.buffer, flag, "standard input")
    elif text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            with path.open("rb") as stream:
                text = _read_json_source(stream, flag, str(path))
        except OSError as exc:
            raise UsageError(f"{flag} {text}: cannot read {path}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{flag} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if object_only and not isinstance(value, dict):
        raise InvalidInput(f'{flag} must be a JSON object, like \'{{"key": "value"}}\'')
    return value


def _read_json_source(stream: BinaryIO, flag: str, where: str) -> str:
    """The text of a JSON value read from ``stream``; refused when larger than a request
    may carry (the server checks the payload's own limits as for any value)."""
    data = stream.read(MAX_FRAME_BYTES + 1)
    if len(data) > MAX_FRAME_BYTES:
        raise InvalidInput(
            f"{flag}: {where} holds more than {MAX_FRAME_BYTES} bytes, more than a request "
            "may carry",
            code=PAYLOAD_TOO_LARGE,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{flag}: {where} is not UTF-8 text") from None


def owner(session: str | None, agent: str | None) -> Ownership | None:
    """The task owner named by --owner-session or --owner-agent (at most one of them)."""
    if session is not None and agent is not None:
        raise UsageError("give --owner-session or --owner-agent, not both")
    if session is not None:
        return Ownership(kind="agent_session", ref=session)
    if agent is not None:
        return Ownership(kind="pool", ref=agent)
    return None


@contextlib.contextmanager
def spinner(waiting: bool) -> Iterator[None]:
    """A "waiting" line on a terminal's stderr while a claim waits; nothing otherwise."""
    if not waiting or not _is_terminal(sys.stderr):
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status("waiting for a claimable run…"):
        yield


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
