"""The one canonical byte form of an event, used wherever bytes are hashed, signed or compared.

Canonical JSON here means: UTF-8, object keys sorted (recursively), no insignificant
whitespace, date-times as RFC 3339 in UTC with ``Z`` (microseconds only when non-zero, always 6
digits then), enums as their string values, floats in orjson's shortest round-trip form.
Unknown (extra) fields are included, so they survive mirroring and are covered by hashes.
Because models normalise on parse (UTC, lower-case UUIDs), canonical(parse(canonical(e))) is
canonical(e).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from pydantic import BaseModel

CANONICAL_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z


def canonical_json(value: Any) -> bytes:
    """Canonical bytes of a plain JSON-compatible value (dicts, lists, str, numbers, ...)."""
    return orjson.dumps(value, option=CANONICAL_OPTIONS)


def canonical_bytes(model: BaseModel) -> bytes:
    """Canonical bytes of a model (an event or a payload), extras included."""
    # mode="python" leaves datetimes and enums to orjson, which is faster than pydantic's JSON
    # mode and is what applies the canonical datetime form.
    return orjson.dumps(model.model_dump(mode="python"), option=CANONICAL_OPTIONS)
