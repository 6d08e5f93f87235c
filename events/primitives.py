"""Annotated field types of the envelope and the payloads: ids, tokens, UTC date-times, numbers.

Models are strict (see ``events.base``); the types here relax strictness only where JSON has
no native type: date-times and enum values arrive as strings. Custom checks either raise a
``PydanticCustomError`` whose type is in ``OWN_ERROR_TYPES`` or are a pattern named in
``PATTERN_RULES``; neither kind of message ever contains the offending value (payloads may
carry PHI).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Final, TypeVar

from pydantic import Field, PlainValidator, Strict, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from events.ids import UUID7_PATTERN, UUID_PATTERN
from events.semver import VERSION_PATTERN
from events.subjects import EVENT_TYPE_PATTERN, TENANT_ID_PATTERN

T = TypeVar("T")

# Lax[X]: accept X's JSON representation (enum value string) while the model stays strict.
Lax = Annotated[T, Strict(False)]

OWN_ERROR_TYPES: Final = frozenset({"datetime_format", "timezone_required", "datetime_range"})

# JSON interoperability (RFC 7493 I-JSON): integers beyond 2**53 lose precision in JavaScript
# consumers (webhooks, UI), and orjson cannot serialise integers beyond 64 bits at all.
MAX_SAFE_INT: Final = 2**53 - 1


# --- ids ------------------------------------------------------------------------------------
# Pure pydantic-core constraints (no Python callbacks): these run for every id of every event.
# Patterns are checked before to_lower, so they accept either case; stored ids are lower case,
# because dedup keys and canonical bytes need one spelling per id.

Uuid = Annotated[
    str,
    StringConstraints(pattern=UUID_PATTERN, to_lower=True),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN}),
]
"""A platform entity id or trace id: any UUID version, normalised to lower case."""

Uuid7 = Annotated[
    str,
    StringConstraints(pattern=UUID7_PATTERN, to_lower=True),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID7_PATTERN}),
]
"""An event id: a UUIDv7, normalised to lower case."""

TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]
"""A tenant id: one NATS subject token (see ``events.subjects``)."""

# Starts and ends with a non-space, no control characters: ids end up in logs, keys and
# file names, where invisible characters make two ids look equal.
OPAQUE_ID_PATTERN: Final = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
OpaqueId = Annotated[
    str, StringConstraints(min_length=1, max_length=256, pattern=OPAQUE_ID_PATTERN)
]
"""An identifier minted outside the platform (people, agents, tools, assets, flags)."""

EventTypeName = Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]
SchemaVersion = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
SOURCE_PATTERN: Final = r"^[a-z][a-z0-9-]{0,63}$"
SourceName = Annotated[str, StringConstraints(pattern=SOURCE_PATTERN)]

# Rule code and text per pattern, which the parser reports instead of the bare regex.
PATTERN_RULES: Final[dict[str, tuple[str, str]]] = {
    UUID_PATTERN: ("uuid_format", "must be a UUID in 8-4-4-4-12 hex form"),
    UUID7_PATTERN: ("uuid7_required", "must be a UUIDv7 (time-ordered) in 8-4-4-4-12 hex form"),
    TENANT_ID_PATTERN: (
        "tenant_id_format",
        "must be a single subject token of 1-64 characters [A-Za-z0-9_-]",
    ),
    OPAQUE_ID_PATTERN: (
        "opaque_id_format",
        "must be an identifier without control characters or surrounding whitespace",
    ),
    EVENT_TYPE_PATTERN: ("event_type_format", "must be '{prefix}.{name}' in lower snake case"),
    VERSION_PATTERN: ("version_format", "must be 'MAJOR.MINOR', e.g. '1.0'"),
    SOURCE_PATTERN: ("source_format", "must be a lower-case producer name, e.g. 'wo-api'"),
}

# --- text -----------------------------------------------------------------------------------

NonEmptyText = Annotated[str, StringConstraints(min_length=1)]
"""Free text that must say something (titles, reasons, names)."""

# --- numbers --------------------------------------------------------------------------------

Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
"""A non-negative integer count or integer duration."""

SignedInt = Annotated[int, Field(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]
"""An integer that may be negative (e.g. days until a date that has already passed)."""

PositiveInt = Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]

NonNegativeFloat = Annotated[float, Field(ge=0)]
"""A non-negative finite number (hours, seconds); models reject NaN and infinities."""

Confidence = Annotated[float, Field(ge=0, le=1)]
"""A probability in [0, 1]."""

Percent = Annotated[float, Field(ge=0, le=100)]
"""A share in percent, in [0, 100] (e.g. a master work order's progress)."""

# --- date-times -----------------------------------------------------------------------------

_NAIVE_MESSAGE: Final = "must carry a UTC offset (Z or +hh:mm); naive date-times are rejected"
_FORMAT_MESSAGE: Final = "must be an RFC 3339 date-time, e.g. 2026-02-13T09:30:00Z"
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)
RFC3339_PATTERN: Final = (
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_MIN_DATETIME = datetime(1970, 1, 1, tzinfo=UTC)


def _utc_datetime(value: object) -> datetime:
    # Lax datetime parsing would also take Unix numbers, numeric strings and bare dates; the
    # catalog says ISO 8601 with an offset, so only that shape gets through. One Python call
    # does shape check, parse and UTC normalisation (this runs on every event).
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        match = _RFC3339.fullmatch(value)
        if match is None:
            raise PydanticCustomError("datetime_format", _FORMAT_MESSAGE)
        if match.group("offset") is None:
            raise PydanticCustomError("timezone_required", _NAIVE_MESSAGE)
        try:
            parsed = datetime.fromisoformat(value.upper())  # "t"/"z" are valid RFC 3339 too
        except ValueError:
            raise PydanticCustomError("datetime_format", _FORMAT_MESSAGE) from None
    else:
        raise PydanticCustomError("datetime_format", _FORMAT_MESSAGE)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PydanticCustomError("timezone_required", _NAIVE_MESSAGE)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or utc < _MIN_DATETIME:
        raise PydanticCustomError(
            "datetime_range", "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        )
    return utc


UtcDateTime = Annotated[
    datetime,
    PlainValidator(_utc_datetime),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
"""A timezone-aware instant, normalised to UTC; sub-microsecond digits are truncated."""
