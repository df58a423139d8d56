"""Where a server listens, and the rules for listening beyond the owner-only Unix socket.

A server has one or more listeners: Unix sockets (the default, reachable only by the
owner's uid) and TCP addresses. TCP carries TLS (``ssl`` contexts made by
:func:`server_tls_context`, optionally requiring client certificates). Plain TCP is a
risk anyone on the network can read and write, so it is refused on any address but
loopback unless the operator says ``insecure_plaintext``; on loopback it is allowed, with a
warning in the log, since only this machine's users reach it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from typing import Final

from runlease.client_common import ServerAddress
from runlease.errors import InvalidInput

log = logging.getLogger("runlease.server")

INSECURE_PLAINTEXT_FLAG: Final = "--insecure-plaintext"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that might resolve anywhere


def check_listeners(
    addresses: Sequence[ServerAddress],
    *,
    tls: bool,
    insecure_plaintext: bool,
    log_warnings: bool = True,
) -> None:
    """Refuse a set of listeners that would expose the server without TLS.

    Raises InvalidInput naming what to change; logs a warning for each plaintext TCP
    listener it allows (unless ``log_warnings`` is False: a caller checking ahead).
    """
    if not addresses:
        raise InvalidInput("the server needs at least one address to listen on")
    for address in addresses:
        if address.local or tls:
            continue
        if insecure_plaintext or is_loopback(address.host):
            if log_warnings:
                reason = "loopback" if is_loopback(address.host) else "insecure_plaintext"
                log.warning(
                    "plaintext_listener",
                    extra={"fields": {"listener": address.url, "reason": reason}},
                )
        else:
            raise InvalidInput(
                f"{address.host}:{address.port} is not a loopback address, and TCP without "
                "TLS lets anyone on the network read and send requests: give --tls-cert and "
                f"--tls-key, or {INSECURE_PLAINTEXT_FLAG} to accept the risk"
            )


def server_tls_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str] | None = None,
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server-side TLS context: ``cert`` (a PEM chain, with the key unless ``key`` is
    given); with ``client_ca``, clients must present a certificate that CA signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key))
        if client_ca is not None:
            context.load_verify_locations(cafile=os.fspath(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot load the server's TLS files: {exc}") from None
    return context


def bound_url(address: ServerAddress, sockname: object, *, tls: bool) -> str:
    """The URL a client uses for a TCP listener bound to ``sockname`` (port 0 resolved)."""
    if address.local:
        return address.url
    assert isinstance(sockname, tuple)
    host, port = str(sockname[0]), int(sockname[1])
    return ServerAddress("tcp", host=host, port=port, tls=tls).url


__all__ = [
    "INSECURE_PLAINTEXT_FLAG",
    "bound_url",
    "check_listeners",
    "is_loopback",
    "server_tls_context",
]
