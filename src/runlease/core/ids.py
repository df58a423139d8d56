"""Sortable ids and claim tokens.

Ids are ``<prefix>_`` + 26 Crockford base32 characters: 48 bits of milliseconds then 80 bits
that start random and count up within the same millisecond, so ids sort by creation order
(the ULID scheme). Claim tokens are 32 random bytes, base64url, prefixed ``rl_claim_``; only
``sha256:<hex>`` of a token is ever stored on a run or shown.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from typing import Final

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CLAIM_TOKEN_PREFIX: Final = "rl_claim_"
SESSION_TOKEN_PREFIX: Final = "rl_session_"
ACCESS_TOKEN_PREFIX: Final = "rl_token_"
_TOKEN_HASH: Final = re.compile(r"sha256:[0-9a-f]{64}")
_RANDOM_BITS: Final = 80


# base64's RFC 4648 alphabet is not in ASCII order; mapping it onto Crockford's keeps the
# fast C encoder while making the text sort like the number.
_TO_CROCKFORD: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def _encode_128(value: int) -> str:
    """26 characters for 128 bits, most significant first (the last carries 3 bits)."""
    return base64.b32encode(value.to_bytes(16, "big"))[:26].translate(_TO_CROCKFORD).decode()


class IdGenerator:
    """Monotonic, sortable ids. ``random_bytes`` is injectable so tests are reproducible."""

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._random_bytes = random_bytes
        self._last_ms = -1
        self._last_rand = 0

    def _next_value(self, now: float) -> int:
        ms = max(int(now * 1000), self._last_ms)
        if ms == self._last_ms:
            self._last_rand += 1
            if self._last_rand >= 1 << _RANDOM_BITS:  # vanishingly rare: borrow the next ms
                ms += 1
                self._last_rand = int.from_bytes(self._random_bytes(10), "big") >> 1
        else:
            # Keep the top bit clear so increments within a millisecond cannot overflow.
            self._last_rand = int.from_bytes(self._random_bytes(10), "big") >> 1
        self._last_ms = ms
        return (ms << _RANDOM_BITS) | self._last_rand

    def new(self, prefix: str, now: float) -> str:
        return f"{prefix}_{_encode_128(self._next_value(now))}"


def derived_run_id(now: float, seq: int) -> str:
    """A run id the state machine makes itself, for a run no request asked for (a task that
    starts on its own). Built from the command's time and the machine's enqueue counter, so
    replaying the journal makes the same id; it has the form and order of generated ids,
    and the counter cannot repeat where random bits would."""
    return f"run_{_encode_128((int(now * 1000) << _RANDOM_BITS) | seq)}"


def new_secret_token(prefix: str, random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    raw = base64.urlsafe_b64encode(random_bytes(32)).rstrip(b"=").decode("ascii")
    return prefix + raw


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of a token against its stored hash."""
    if stored_hash is None:
        return False
    return hmac.compare_digest(hash_token(token), stored_hash)


def is_token_hash(value: object) -> bool:
    """True for ``sha256:`` followed by 64 lowercase hex digits (what hash_token returns)."""
    return isinstance(value, str) and _TOKEN_HASH.fullmatch(value) is not None


def hash_prefix(token_hash: str | None) -> str | None:
    """The first 8 hex digits of a token hash: enough to tell leases apart in a view or an
    operator event, too little to stand for the lease."""
    if token_hash is None:
        return None
    return token_hash.split(":", 1)[-1][:8]
