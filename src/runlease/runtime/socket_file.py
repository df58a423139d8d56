"""The server's socket file, made safe before anything listens on it.

The socket is created 0600 inside a directory that must be private (0700, owned by the
server's user); a socket file left by a dead server is removed, while a live server's is
never touched. Every connection's peer uid is checked against the server's own (see
:func:`peer_credentials`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket as stdsocket
import stat
import struct
from pathlib import Path
from typing import Any, Final

from runlease.errors import SOCKET_IN_USE, SOCKET_PATH_UNSAFE, InvalidInput, Unavailable

log = logging.getLogger("runlease.server")

# The listen backlog asked for when none is given (the kernel caps it at its maximum).
MIN_BACKLOG: Final = 4096
SOMAXCONN_FILE: Final = Path("/proc/sys/net/core/somaxconn")
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES: Final = 107
_PEERCRED = struct.Struct("3i")


def _unsafe(message: str) -> InvalidInput:
    return InvalidInput(message, code=SOCKET_PATH_UNSAFE)


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's directory 0700 if missing; refuse one that others can enter."""
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = parent.stat()
    except OSError as exc:
        raise _unsafe(f"cannot create the socket directory {parent}: {exc.strerror}") from None
    if info.st_uid != os.geteuid():
        raise _unsafe(
            f"the socket directory {parent} belongs to uid {info.st_uid}, not to this "
            f"server's uid {os.geteuid()}; choose a directory of your own with --socket"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise _unsafe(
            f"the socket directory {parent} has mode {mode:04o}, so other users could reach "
            f"the socket; make it private (chmod 700 {parent}) or choose another --socket"
        )


def clear_stale_socket(path: Path) -> bool:
    """Remove a socket file left by a dead server; refuse a live one. True if removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise _unsafe(f"{path} exists and is not a socket; refusing to replace it")
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        os.unlink(path)
        return True
    except OSError as exc:
        raise Unavailable(
            f"cannot tell whether a server is listening on {path} ({exc}); "
            "remove the file if no runlease server is running",
            code=SOCKET_IN_USE,
        ) from None
    finally:
        probe.close()
    raise Unavailable(
        f"another runlease server is already listening on {path}; stop it first or "
        "choose another --socket",
        code=SOCKET_IN_USE,
    )


def default_backlog() -> int:
    """The listen backlog to ask for: the system's maximum, and at least MIN_BACKLOG.

    A burst of clients connecting at once beyond the backlog get EAGAIN on a Unix socket;
    asking for more than the kernel allows is harmless (it caps the value).
    """
    try:
        system = int(SOMAXCONN_FILE.read_text().strip())
    except (OSError, ValueError):
        system = stdsocket.SOMAXCONN
    return max(system, MIN_BACKLOG)


def bind_unix_socket(path: Path, *, backlog: int | None = None) -> stdsocket.socket:
    """A listening Unix socket at ``path``: mode 0600 in a private directory."""
    if backlog is None:
        backlog = default_backlog()
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise _unsafe(
            f"the socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow "
            f"at most {MAX_SOCKET_PATH_BYTES}: choose a shorter --socket"
        )
    prepare_socket_dir(path)
    if clear_stale_socket(path):
        log.info("stale_socket_removed", extra={"fields": {"socket": str(path)}})
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        # The directory is private, so the moment between bind and chmod exposes nothing.
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise Unavailable(
            f"cannot listen on {path}: {exc.strerror or exc}", code=SOCKET_IN_USE
        ) from None
    return sock


def peer_credentials(sock: Any) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a connected Unix socket's peer, where the OS says (Linux)."""
    option = getattr(stdsocket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, option, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def make_private_if_socket_dir(directory: Path, socket_path: Path) -> None:
    """runlease's own data dir holds the socket: keep it 0700 (it holds secrets too)."""
    with contextlib.suppress(OSError):
        if directory.resolve() != socket_path.parent.resolve():
            return
        info = directory.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(directory, 0o700)
