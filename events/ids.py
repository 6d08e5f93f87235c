"""Event ids: new UUIDv7s, UUID checks, and deterministic UUIDv7s for derived events."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta

import uuid_utils

# Canonical 8-4-4-4-12 hex form only: uuid.UUID() would also take braces, "urn:uuid:" and
# unhyphenated hex, which would give one id several spellings (and dedup keys).
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
UUID7_PATTERN = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)
_UUID_RE = re.compile(UUID_PATTERN)
_UUID7_RE = re.compile(UUID7_PATTERN)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_UNIX_MS = (1 << 48) - 1
# Domain separation: versions the derivation so a future scheme can never collide with this one.
_DERIVATION_TAG = b"wo-stream/derived-event-id/v1"


def is_uuid(value: object) -> bool:
    """True for a UUID of any version in canonical hyphenated form (either case)."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def is_uuid7(value: object) -> bool:
    """True for a UUIDv7 (version nibble 7, RFC 9562 variant) in canonical hyphenated form."""
    return isinstance(value, str) and _UUID7_RE.fullmatch(value) is not None


def unix_ms(at: datetime) -> int:
    """Milliseconds since the Unix epoch, floored; ``at`` must be timezone-aware."""
    tz = at.tzinfo
    # UTC first: every event time is normalised to it, and this runs several times per event
    if tz is not UTC and (tz is None or at.utcoffset() is None):
        raise ValueError("datetime must be timezone-aware")
    ms = (at - _EPOCH) // _MS
    if not 0 <= ms <= _MAX_UNIX_MS:
        raise ValueError("datetime is outside the UUIDv7 48-bit millisecond range")
    return ms


def uuid7_unix_ms(value: str) -> int:
    """The 48-bit millisecond timestamp of a UUIDv7."""
    if not is_uuid7(value):
        raise ValueError("not a UUIDv7")
    return int(value[:8] + value[9:13], 16)


def new_event_id(at: datetime | None = None) -> str:
    """A new random UUIDv7 (lower-case); its time part is ``at`` (aware) if given, else now."""
    if at is None:
        return str(uuid_utils.uuid7())
    unix_ms(at)  # validates awareness and range with a clear error
    nanoseconds = (at - _EPOCH) // timedelta(microseconds=1) * 1000
    return str(uuid_utils.uuid7(nanoseconds=nanoseconds))


def derived_event_id(cause_timestamp: datetime, cause_id: str, derived_type: str, key: str) -> str:
    """Deterministic UUIDv7 for an event derived from another one.

    The 48-bit time part is ``cause_timestamp`` in ms (floored), so derived ids sort with their
    cause; the 74 "random" bits are the first bits of SHA-256 over (cause id, derived type, key).
    Reprocessing the same cause therefore reproduces the same id, which is what lets the
    consumer-side dedup by ``event.id`` (catalog §1.4) absorb replays.
    """
    ms = unix_ms(cause_timestamp)
    digest = hashlib.sha256(_DERIVATION_TAG + _frame(cause_id, derived_type, key)).digest()
    bits = int.from_bytes(digest[:10], "big")  # 80 bits, of which 74 are used
    rand_a = bits >> 68  # top 12 bits
    rand_b = bits & ((1 << 62) - 1)  # low 62 bits
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def _frame(*parts: str) -> bytes:
    # Length-prefixing makes the encoding injective: ("a|b", "c") and ("a", "b|c") differ.
    out = bytearray()
    for part in parts:
        if not isinstance(part, str):
            raise TypeError("derived_event_id parts must be strings")
        encoded = part.encode("utf-8")
        out += len(encoded).to_bytes(4, "big") + encoded
    return bytes(out)
