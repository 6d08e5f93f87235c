"""Validation of path and query parameters; anything else is a 400 with the reason."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from events.ids import UUID_PATTERN
from pipeline.web.errors import bad_request
from tables.config import DEFAULT_CONFIG
from tables.windows import WindowSpec

_UUID = re.compile(UUID_PATTERN)
_INT = re.compile(r"^[0-9]{1,6}$")
MAX_EXPIRY_DAYS = 3650
MAX_MASTERS = 1000


def entity_id(value: str, name: str) -> str:
    """A work-order or master id: a UUID in 8-4-4-4-12 form, lower-cased as the tables keep it."""
    if not _UUID.fullmatch(value):
        raise bad_request(f"{name} must be a UUID in 8-4-4-4-12 hex form")
    return value.lower()


def integer(query: Mapping[str, str], name: str, low: int, high: int,
            default: int | None = None) -> int:  # fmt: skip
    """Query parameter ``name`` as an int in ``[low, high]`` (required unless ``default``)."""
    raw = query.get(name)
    if raw is None:
        if default is None:
            raise bad_request(f"query parameter {name} is required")
        return default
    if not _INT.fullmatch(raw) or not low <= int(raw) <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class WindowQuery:
    """``window`` (one of the family's names) and ``last`` (1 .. windows in retention)."""

    spec: WindowSpec
    last: int


def window_query(query: Mapping[str, str], specs: tuple[WindowSpec, ...]) -> WindowQuery:
    """The ``window`` and ``last`` parameters, checked against ``specs``."""
    names = {s.name: s for s in specs}
    name = query.get("window")
    if name is None:
        raise bad_request(f"query parameter window is required ({'|'.join(names)})")
    spec = names.get(name)
    if spec is None:
        raise bad_request(f"window must be one of {'|'.join(names)}")
    return WindowQuery(spec, integer(query, "last", 1, spec.retention_ms // spec.size_ms))


SLA_SPECS = DEFAULT_CONFIG.sla_windows
COMPLIANCE_SPECS = DEFAULT_CONFIG.compliance_windows
