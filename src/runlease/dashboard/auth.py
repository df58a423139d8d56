"""Who is looking at the dashboard.

A browser logs in with an access token's secret, checked exactly as a socket handshake
checks one (:meth:`Runtime.authenticate`). It then holds only an opaque random cookie; the
server maps the cookie (kept as its hash) to the token's id, and every request asks the
runtime again whether that token is still in force, so a revoke or an expiry sends the
browser back to the login page at its next request. The secret itself is never stored
nor shown.

Each browser session has its own CSRF token, which every form that changes something
carries; the login form has a one-time nonce of its own (double-submitted in a cookie), so
another site cannot log a browser in under a token of its choosing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from runlease.core.model import AccessToken
from runlease.errors import AUTH_TOKEN_REFUSED, LeaseRefused
from runlease.runtime.runtime import Runtime

SESSION_COOKIE: Final = "runlease_dashboard"
LOGIN_COOKIE: Final = "runlease_login"
# A browser session lasts this long after login, however busy; then the token is asked for
# again.
WEB_SESSION_SECONDS: Final = 12 * 60 * 60.0
# Past this many browser sessions the oldest logins are forgotten first.
MAX_WEB_SESSIONS: Final = 10_000


@dataclass(frozen=True, slots=True)
class WebSession:
    """One logged-in browser: the token it logged in with and its CSRF token."""

    token_id: str
    csrf: str
    expires_at: float


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def new_nonce() -> str:
    """A random value nobody can guess (a login form's nonce)."""
    return secrets.token_urlsafe(32)


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted CSRF token or nonce."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class WebSessions:
    """The logged-in browsers, in memory (a server restart logs everyone out)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        lifetime: float = WEB_SESSION_SECONDS,
        capacity: int = MAX_WEB_SESSIONS,
    ) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._capacity = capacity
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, token_id: str) -> tuple[str, WebSession]:
        """A new browser session for ``token_id``: (the cookie's value, the session)."""
        cookie = secrets.token_urlsafe(32)
        session = WebSession(
            token_id=token_id,
            csrf=secrets.token_urlsafe(32),
            expires_at=self._clock() + self._lifetime,
        )
        self._sessions[_key(cookie)] = session
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
        return cookie, session

    def get(self, cookie: str | None) -> WebSession | None:
        """The live session the cookie names, if any (an expired one is dropped)."""
        if not cookie:
            return None
        key = _key(cookie)
        session = self._sessions.get(key)
        if session is not None and session.expires_at <= self._clock():
            del self._sessions[key]
            return None
        return session

    def close(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(_key(cookie), None)


def token_for(runtime: Runtime, session: WebSession) -> AccessToken:
    """The access token behind a browser session, if it is still in force now; else
    AUTH_TOKEN_REFUSED saying why (revoked, expired)."""
    try:
        return runtime.token_in_force(session.token_id)
    except KeyError:
        raise LeaseRefused(
            "the access token of this login no longer exists", code=AUTH_TOKEN_REFUSED
        ) from None


def login(runtime: Runtime, secret: str) -> AccessToken:
    """The access token a submitted secret belongs to (the socket handshake's check)."""
    return runtime.authenticate(secret.strip())


__all__ = [
    "LOGIN_COOKIE",
    "MAX_WEB_SESSIONS",
    "SESSION_COOKIE",
    "WEB_SESSION_SECONDS",
    "WebSession",
    "WebSessions",
    "login",
    "new_nonce",
    "same_secret",
    "token_for",
]
