"""Input checks shared by every transition: sizes, shapes, and the claim-token ban."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from runlease.core.ids import CLAIM_TOKEN_PREFIX
from runlease.core.model import (
    DEFAULT_LEASE_SECONDS,
    MAX_CAPABILITIES,
    MAX_LEASE_SECONDS,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_DEPTH,
    MAX_REASON_CHARS,
    MAX_TAGS,
)
from runlease.errors import INVALID_INPUT, PAYLOAD_TOO_LARGE, InvalidInput

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1


def text(value: object, field: str, *, max_chars: int, required: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string, got {type(value).__name__}")
    stripped = value.strip()
    if required and not stripped:
        raise InvalidInput(f"{field} must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(
            f"{field} is {len(value)} characters; the limit is {max_chars}",
            code=PAYLOAD_TOO_LARGE,
        )
    if CLAIM_TOKEN_PREFIX in value:
        raise InvalidInput(f"{field} contains a raw claim token ({CLAIM_TOKEN_PREFIX}...)")
    return value


def optional_text(value: object, field: str, *, max_chars: int = MAX_REASON_CHARS) -> str | None:
    if value is None:
        return None
    return text(value, field, max_chars=max_chars)


def name(value: object, field: str) -> str:
    result = text(value, field, max_chars=MAX_NAME_CHARS)
    if any(ch.isspace() for ch in result) or not result.isprintable():
        raise InvalidInput(f"{field} {result!r} must be printable and contain no whitespace")
    return result


def capabilities(values: object, field: str) -> tuple[str, ...]:
    if not isinstance(values, list | tuple | set | frozenset):
        raise InvalidInput(f"{field} must be a list of strings")
    caps = sorted({name(v, f"{field} entry") for v in values})
    if len(caps) > MAX_CAPABILITIES:
        raise InvalidInput(
            f"{field} has {len(caps)} entries; the limit is {MAX_CAPABILITIES}",
            code=PAYLOAD_TOO_LARGE,
        )
    return tuple(caps)


def tags(values: object, field: str = "tags") -> tuple[str, ...]:
    """Task tags: the rules of capability names (printable, no whitespace, at most 200
    characters), sorted and distinct, at most MAX_TAGS of them."""
    if not isinstance(values, list | tuple | set | frozenset):
        raise InvalidInput(f"{field} must be a list of strings")
    found = sorted({name(v, f"{field} entry") for v in values})
    if len(found) > MAX_TAGS:
        raise InvalidInput(
            f"{field} has {len(found)} entries; the limit is {MAX_TAGS}",
            code=PAYLOAD_TOO_LARGE,
        )
    return tuple(found)


def lease_seconds(value: object) -> tuple[float, bool]:
    """Normalise a requested lease length: (seconds, whether it was clamped to the cap)."""
    if value is None:
        return DEFAULT_LEASE_SECONDS, False
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"lease_seconds must be a number, got {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise InvalidInput(f"lease_seconds must be zero or positive, got {value!r}")
    if seconds == 0:
        return DEFAULT_LEASE_SECONDS, False
    if seconds > MAX_LEASE_SECONDS:
        return MAX_LEASE_SECONDS, True
    return seconds, False


def positive_seconds(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{field} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInput(f"{field} must be a positive number of seconds, got {value!r}")
    return seconds


def json_payload(value: Any, field: str, *, max_bytes: int) -> Any:
    """Check a JSON payload and return a private copy of it (callers keep theirs)."""
    _check_depth(value, field)
    try:
        encoded = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{field} must be JSON-serialisable: {exc}") from None
    if len(encoded) > max_bytes:
        raise InvalidInput(
            f"{field} is {len(encoded)} bytes of JSON; the limit is {max_bytes}",
            code=PAYLOAD_TOO_LARGE,
        )
    copy = _decoder.decode(encoded)
    _reject_claim_tokens(copy, field)
    return copy


def json_object(value: Any, field: str, *, max_bytes: int) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", code=INVALID_INPUT)
    result = json_payload(value, field, max_bytes=max_bytes)
    assert isinstance(result, dict)
    return result


def _check_depth(value: Any, field: str) -> None:
    """Refuse objects and arrays nested more than MAX_PAYLOAD_DEPTH levels.

    An explicit stack, not recursion: the encoder and decoder recurse, so a deep enough
    payload would otherwise end in RecursionError (or, for a value that contains itself,
    never end) instead of a clear refusal.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_PAYLOAD_DEPTH:
            raise InvalidInput(
                f"{field} nests objects and arrays more than {MAX_PAYLOAD_DEPTH} levels deep; "
                f"flatten it to at most {MAX_PAYLOAD_DEPTH} levels"
            )
        stack.extend((child, depth + 1) for child in children)


def _reject_claim_tokens(value: Any, field: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "claim_token" or CLAIM_TOKEN_PREFIX in key:
                    # Never echo such a key: it may be (part of) the token itself.
                    what = "a claim_token key" if key == "claim_token" else "a raw token as a key"
                    raise InvalidInput(
                        f"{field} must not carry a claim token ({what}); "
                        "leases are resolved from your session, never from a token"
                    )
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not _MIN_INT <= item <= _MAX_INT:
            # JSON allows any integer; the journal (msgpack) holds 64 bits.
            raise InvalidInput(f"{field} holds an integer outside the 64-bit range")
        elif isinstance(item, str) and CLAIM_TOKEN_PREFIX in item:
            raise InvalidInput(
                f"{field} must not contain a raw claim token ({CLAIM_TOKEN_PREFIX}...)"
            )


def copy_payload(value: Any) -> Any:
    """A deep copy of a stored JSON payload for a reply (callers may mutate replies)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return _decoder.decode(_encoder.encode(value))
