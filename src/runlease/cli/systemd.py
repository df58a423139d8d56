"""``runlease serve --print-systemd``: a systemd unit that runs the same server.

The unit is written from the options ``serve`` was given, after they were read and checked
(the command line and any config file merged), so it starts exactly the server that the
same command without ``--print-systemd`` would have started: the absolute path of this
``runlease``, every option that differs from its default, the data directory always
spelled out (a service does not share the caller's $HOME or $RUNLEASE_HOME), and the
caller's working directory so relative paths keep their meaning. Options are rebuilt from
``serve``'s signature, so an option added to it later is carried over without change here.

Hardening is kept to what cannot break the server: the file system is read-only except the
data directory and the directories of its Unix sockets; the home directories stay readable
(a data dir may live there); a private /tmp only when nothing of the server's is in /tmp.
Exec hooks run commands that may need to write anywhere, so with one the file system
protections are left out.
"""

from __future__ import annotations

import os
import shutil
import sys
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runlease.cli.params import Param, default_flag

# Characters that stand for themselves on an ExecStart= line; anything else is quoted.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@+=:,./-%$")
# How long systemd waits after SIGTERM beyond the server's own shutdown grace: the final
# snapshot and closing the journal come after the grace.
STOP_MARGIN_SECONDS = 20


def runlease_executable(argv0: str | None = None, python: str | None = None) -> list[str]:
    """The command that runs this ``runlease``, by absolute path: the console script when
    it was the one started (or sits beside the interpreter), else ``python -m runlease``."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    python = sys.executable if python is None else python
    started = Path(argv0)
    if started.name == "runlease" and started.exists():
        return [str(started.absolute())]
    beside = shutil.which("runlease", path=str(Path(python).parent))
    if beside is not None:
        return [str(Path(beside).absolute())]
    return [str(Path(python).absolute()), "-m", "runlease"]


def option_flags(
    declaration: Callable[..., Any], given: Mapping[str, Any], *, leave_out: Iterable[str] = ()
) -> list[str]:
    """The flags that give ``declaration`` (a command's function) the values ``given``,
    defaults left out; paths are made absolute."""
    import inspect

    hints = typing.get_type_hints(declaration, include_extras=True)
    skipped = set(leave_out)
    flags: list[str] = []
    for name, parameter in inspect.signature(declaration).parameters.items():
        if name in skipped or name not in given:
            continue
        value = given[name]
        if value is None or value == parameter.default:
            continue
        flag = _flag(name, hints.get(name))
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag.removeprefix("--"))
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            flags += [flag, _text(item)]
    return flags


def _flag(name: str, hint: Any) -> str:
    for extra in getattr(hint, "__metadata__", ()):
        if isinstance(extra, Param):
            return extra.names(name)[0]
    return default_flag(name)


def _text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value.expanduser().absolute())
    return str(value)


def quote(word: str) -> str:
    """One word of a systemd command line or path list: ``%`` and ``$`` doubled (they start
    specifiers and variables), quoted when it holds anything but plain characters."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if word and set(word) <= _PLAIN:
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def serve_unit(
    command: Sequence[str],
    *,
    data_dir: Path,
    sockets: Sequence[Path],
    working_dir: Path,
    user: str | None,
    shutdown_grace: float,
    exec_hooks: bool,
    hook_secret_from_env: bool,
    tcp: bool,
) -> str:
    """The unit file's text: ``command`` runs the server (absolute paths throughout)."""
    writable = [data_dir]
    for socket in sockets:
        directory = socket.parent
        if not directory.is_relative_to(data_dir) and directory not in writable:
            writable.append(directory)
    in_tmp = any(
        path.is_relative_to("/tmp") or path.is_relative_to("/var/tmp")
        for path in (*writable, working_dir)
    )
    lines = [
        "# A systemd unit for runlease, printed by `runlease serve --print-systemd`.",
        "# Install: save it as /etc/systemd/system/runlease.service, then run",
        "#   systemctl daemon-reload && systemctl enable --now runlease",
        f"# The data directory must exist first: mkdir -p -m 700 {quote(str(data_dir))}",
        "",
        "[Unit]",
        "Description=runlease lease server",
        *(
            ["Wants=network-online.target", "After=network-online.target"]
            if tcp
            else ["After=network.target"]
        ),
        "",
        "[Service]",
        # The server logs "listening" once it serves; it does not speak sd_notify.
        "Type=simple",
        "ExecStart=" + " ".join(quote(word) for word in command),
        f"WorkingDirectory={quote(str(working_dir))}",
        *([f"User={user}"] if user else []),
        "Restart=on-failure",
        "RestartSec=2",
        "# A usage error (exit 2) is not mended by starting again.",
        "RestartPreventExitStatus=2",
        "# SIGTERM starts a graceful stop: requests in flight get the shutdown grace "
        f"({shutdown_grace:g} s),",
        "# then a final snapshot is written; SIGKILL only if that takes far longer.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={int(shutdown_grace) + STOP_MARGIN_SECONDS}",
        *(
            [
                "# The URL hooks' signing secret: --hook-secret-file, or RUNLEASE_HOOK_SECRET in",
                "# a file only root can read, named here:",
                "# EnvironmentFile=/etc/runlease/hook-secret.env",
            ]
            if hook_secret_from_env
            else []
        ),
        "NoNewPrivileges=yes",
        "UMask=0077",
        "LockPersonality=yes",
        "RestrictSUIDSGID=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
    ]
    if exec_hooks:
        lines.append("# Exec hooks run commands that may write anywhere: no file system limits.")
    else:
        lines += [
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "ReadWritePaths=" + " ".join(quote(str(path)) for path in writable),
            "PrivateDevices=yes",
        ]
        if not in_tmp:
            lines.append("PrivateTmp=yes")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def current_user() -> str | None:
    """The user to run the service as: the caller, unless root (then the unit says none)."""
    if os.getuid() == 0:
        return None
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
