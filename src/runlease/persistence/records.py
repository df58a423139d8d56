"""The journal record: one successfully applied command in a versioned envelope.

The journal is the stream of commands the machine applied, in order. Every command carries
its own time, ids and the hash of any claim token it grants, so replaying the records
against the snapshot they follow rebuilds the exact state. The envelope is a msgpack map
``{"v": <version>, "cmd": {...}}``.

Compatibility rules: records only ever gain fields with defaults, and a change an older
reader could misread bumps :data:`RECORD_VERSION`. A reader that meets a newer version
raises :class:`UnsupportedFormat` so boot stops instead of guessing.
"""

from __future__ import annotations

from typing import Final

import msgspec

from runlease.core.commands import AnyCommand
from runlease.core.snapshot import UnsupportedFormat
from runlease.errors import InternalError, InvalidInput

RECORD_VERSION: Final = 1


class JournalRecord(msgspec.Struct, kw_only=True, gc=False):
    v: int
    cmd: AnyCommand


class _VersionOnly(msgspec.Struct):
    """Reads only the version of a record whose body this code could not decode."""

    v: int | str | None = None


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(JournalRecord)
_version_decoder: Final = msgspec.msgpack.Decoder(_VersionOnly)


def encode_record(cmd: AnyCommand) -> bytes:
    """Encode one command for the journal.

    The command has already been applied, and the machine refused any payload msgpack
    could not hold (an integer outside the 64-bit range), so :class:`InvalidInput` here
    means a bug: memory is then ahead of a journal that cannot follow it.
    """
    try:
        return _encoder.encode(JournalRecord(v=RECORD_VERSION, cmd=cmd))
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{type(cmd).__name__} cannot be stored: {exc}") from None


def decode_record(data: bytes) -> JournalRecord:
    """Decode one journal record, refusing versions this code does not know."""
    try:
        record = _decoder.decode(data)
    # Damaged bytes can fail in more ways than DecodeError (bad UTF-8, out-of-range
    # values); all of them mean "this record is not readable".
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        version = record_version(data)
        if isinstance(version, int) and version > RECORD_VERSION:
            raise _too_new(version) from None
        raise InternalError(f"journal record does not decode: {exc}") from exc
    if record.v > RECORD_VERSION:
        raise _too_new(record.v)
    if record.v < 1:
        raise InternalError(f"journal record has an invalid version {record.v}")
    return record


def decode_command(data: bytes) -> AnyCommand:
    return decode_record(data).cmd


def record_version(data: bytes) -> int | None:
    """The version a record declares, or None if none is readable."""
    try:
        version = _version_decoder.decode(data).v
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError):
        return None
    return version if isinstance(version, int) else None


def _too_new(version: int) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"journal record version {version} is newer than this runlease supports "
        f"(up to {RECORD_VERSION}); run the newer runlease that wrote it"
    )
