"""Where runlease keeps its state and its socket by default.

- data directory: ``$RUNLEASE_HOME``, else ``$XDG_DATA_HOME/runlease``, else
  ``~/.local/share/runlease``;
- socket: ``$RUNLEASE_SOCKET``, else ``<data directory>/runlease.sock``.

An explicit ``--data-dir`` / ``--socket`` always wins over these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

ENV_HOME: Final = "RUNLEASE_HOME"
ENV_SOCKET: Final = "RUNLEASE_SOCKET"
ENV_SESSION_TOKEN: Final = "RUNLEASE_SESSION_TOKEN"
# The access token a client presents in its handshake (see ``runlease token create``).
ENV_ACCESS_TOKEN: Final = "RUNLEASE_TOKEN"
SOCKET_NAME: Final = "runlease.sock"
# A TOML file of `serve`'s options (the --config global option reads it too).
ENV_CONFIG: Final = "RUNLEASE_CONFIG"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = env.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    xdg = env.get("XDG_DATA_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "runlease"
    user_home = env.get("HOME")
    base = Path(user_home) if user_home else Path.home()
    return base / ".local" / "share" / "runlease"


def default_socket_path(
    data_dir: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if env is None else env
    socket = env.get(ENV_SOCKET)
    if socket:
        return Path(socket).expanduser()
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(env)
    return base / SOCKET_NAME
