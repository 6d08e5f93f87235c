"""``parse_event``: raw bytes -> typed DomainEvent or a structured ParseError; it never raises.

Order of checks (each failure returns at once): input kind, size (before any decoding), JSON
(orjson; on failure UTF-8 is re-checked so invalid UTF-8 is told apart from invalid JSON),
top-level object, ``type`` registered, ``version`` well-formed and its major supported (any
minor of a supported major is accepted: §9 says consumers ignore fields they do not know),
then the full envelope and payload against the registered model.

Error messages name the field and the rule broken but never contain input values: payloads can
hold PHI or L3/L4 data, and ParseErrors end up in logs, metrics and dead-letter headers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final

import orjson
from pydantic import ValidationError

from events.envelope import DomainEvent
from events.ids import is_uuid
from events.primitives import OWN_ERROR_TYPES, PATTERN_RULES
from events.registry import REGISTRY, EventRegistry
from events.semver import try_parse_version
from events.subjects import is_valid_tenant_id

DEFAULT_MAX_BYTES: Final = 1_048_576
# JSON nesting the parser accepts. Catalog events nest a few levels; orjson reads 1024 levels
# but writes only 255, so a deeper event would pass here and then fail every re-serialisation
# (the audit chain's canonical bytes) over and over, stalling that consumer.
MAX_DEPTH: Final = 32


class ParseReason(StrEnum):
    """Machine-readable reason codes of a ParseError."""

    NOT_BYTES = "NOT_BYTES"
    TOO_LARGE = "TOO_LARGE"
    INVALID_UTF8 = "INVALID_UTF8"
    INVALID_JSON = "INVALID_JSON"
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    MALFORMED_VERSION = "MALFORMED_VERSION"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True, slots=True)
class ParseError:
    """Why an input is not a valid event; safe to log (no input values).

    ``field`` is a dotted path (``data.changedFields[0].field``), None when the whole input is at
    fault. ``rule`` is a machine-readable sub-code of SCHEMA_VIOLATION (pydantic's error type or
    one of ours, e.g. ``missing``, ``bool_type``, ``uuid7_required``, ``timezone_required``).
    ``event_type``, ``event_id`` and ``tenant_id`` are filled in when the input had a registered
    type, a UUID id or a valid tenant id, so dead letters can be routed and correlated.
    """

    reason: ParseReason
    field: str | None
    message: str
    rule: str | None = None
    error_count: int = 1
    event_type: str | None = None
    event_id: str | None = None
    tenant_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every attribute (the reason as its string code)."""
        out = asdict(self)
        out["reason"] = str(self.reason)
        return out


def parse_event(
    raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, registry: EventRegistry | None = None
) -> DomainEvent | ParseError:
    """Parse one serialised event; return the typed event or a ParseError, never raise."""
    try:
        return _parse(raw, max_bytes, REGISTRY if registry is None else registry)
    except Exception:
        # The contract is "nothing raises past the parser": a bug must become a dead letter,
        # not a crashed consumer. The exception text is dropped because it may quote input.
        return ParseError(ParseReason.INTERNAL_ERROR, None, "unexpected error while parsing")


def _parse(raw: object, max_bytes: int, registry: EventRegistry) -> DomainEvent | ParseError:
    if not isinstance(raw, bytes | bytearray | memoryview):
        return ParseError(ParseReason.NOT_BYTES, None, "input must be bytes")
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size > max_bytes:
        return ParseError(
            ParseReason.TOO_LARGE, None, f"input is {size} bytes, the limit is {max_bytes}"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _json_error(raw, exc)
    if not isinstance(obj, dict):
        return ParseError(ParseReason.NOT_AN_OBJECT, None, "top-level JSON value must be an object")

    event_type = obj.get("type")
    if not isinstance(event_type, str):
        return _envelope_field_error(obj, "type", event_type)
    version = obj.get("version")
    if not registry.is_known(event_type):
        return _error(obj, ParseReason.UNKNOWN_TYPE, "type", "type: event type is not registered")
    if not isinstance(version, str):
        return _envelope_field_error(obj, "version", version, event_type)
    parsed_version = try_parse_version(version)
    if parsed_version is None:
        return _error(
            obj,
            ParseReason.MALFORMED_VERSION,
            "version",
            "version: must be 'MAJOR.MINOR' with decimal numbers, e.g. '1.0'",
            event_type=event_type,
        )
    spec = registry.lookup(event_type, parsed_version.major)
    if spec is not None and _may_nest_deeper(raw, MAX_DEPTH) and _deeper_than(obj, MAX_DEPTH):
        return _error(
            obj,
            ParseReason.SCHEMA_VIOLATION,
            None,
            f"input nests objects/arrays deeper than {MAX_DEPTH} levels",
            rule="too_deep",
            event_type=event_type,
        )
    if spec is None:
        supported = ", ".join(str(m) for m in registry.majors(event_type))
        return _error(
            obj,
            ParseReason.UNSUPPORTED_VERSION,
            "version",
            f"version: major version is not supported for this type (supported: {supported})",
            event_type=event_type,
        )
    try:
        return spec.envelope.model_validate(obj)
    except ValidationError as exc:
        return _validation_error(obj, exc, event_type)


def _may_nest_deeper(raw: bytes | bytearray | memoryview, limit: int) -> bool:
    """A cheap bound first (every event is parsed): ``limit`` levels need more than ``limit``
    opening brackets; quoted ones only over-count, so fewer means not deeper."""
    data = raw if isinstance(raw, bytes | bytearray) else bytes(raw)
    return data.count(b"{") + data.count(b"[") > limit


def _deeper_than(obj: dict[str, Any], limit: int) -> bool:
    """True if ``obj`` nests dicts/lists more than ``limit`` levels (``obj`` itself is 1)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _json_error(raw: bytes | bytearray | memoryview, exc: orjson.JSONDecodeError) -> ParseError:
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as utf8:
        return ParseError(
            ParseReason.INVALID_UTF8, None, f"input is not valid UTF-8 (at byte {utf8.start})"
        )
    # Only the position: orjson's own text can quote the input around the error.
    return ParseError(
        ParseReason.INVALID_JSON,
        None,
        f"input is not valid JSON (line {exc.lineno}, column {exc.colno})",
    )


def _envelope_field_error(
    obj: dict[str, Any], name: str, value: object, event_type: str | None = None
) -> ParseError:
    rule = "missing" if value is None and name not in obj else "string_type"
    text = "is required" if rule == "missing" else "must be a string"
    return _error(
        obj, ParseReason.SCHEMA_VIOLATION, name, f"{name}: {text}", rule=rule, event_type=event_type
    )


def _validation_error(obj: dict[str, Any], exc: ValidationError, event_type: str) -> ParseError:
    errors = exc.errors(include_url=False, include_input=False, include_context=True)
    first = errors[0]
    path = _dotted(first["loc"])
    rule, text = _describe(first)
    message = f"{path or 'event'}: {text}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more violation{'s' if len(errors) > 2 else ''})"
    return _error(
        obj,
        ParseReason.SCHEMA_VIOLATION,
        path or None,
        message,
        rule=rule,
        error_count=len(errors),
        event_type=event_type,
    )


def _error(
    obj: dict[str, Any],
    reason: ParseReason,
    field: str | None,
    message: str,
    *,
    rule: str | None = None,
    error_count: int = 1,
    event_type: str | None = None,
) -> ParseError:
    event_id = obj.get("id")
    tenant_id = obj.get("tenantId")
    return ParseError(
        reason,
        field,
        message,
        rule=rule,
        error_count=error_count,
        event_type=event_type,
        event_id=event_id.lower() if is_uuid(event_id) else None,
        tenant_id=tenant_id if is_valid_tenant_id(tenant_id) else None,
    )


_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        # Model field names always pass; a free-form key (inside an ``any`` value) might be
        # data, so it is not repeated.
        key = item if _SAFE_KEY.fullmatch(item) else "<key>"
        parts.append(f".{key}" if parts else key)
    return "".join(parts)


# Rule texts by pydantic error type; placeholders are constraints from the schema (never input).
_RULE_TEXT: Final[dict[str, str]] = {
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "enum": "must be one of {expected}",
    "literal_error": "must be {expected}",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "string_pattern_mismatch": "must match the pattern {pattern}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "datetime_parsing": "must be a valid RFC 3339 date-time",
    "datetime_from_date_parsing": "must be a valid RFC 3339 date-time",
    "datetime_type": "must be a valid RFC 3339 date-time",
    "json_type": "must be a JSON value",
    "recursion_loop": "is nested too deeply",
}


def _describe(error: Any) -> tuple[str, str]:
    """(rule code, rule text) of one pydantic error, built from the schema, never the input."""
    rule = error["type"]
    ctx = error.get("ctx") or {}
    if rule in OWN_ERROR_TYPES:
        return rule, str(error["msg"])  # our own templates, which never interpolate input
    if rule == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_RULES:
        return PATTERN_RULES[ctx["pattern"]]
    template = _RULE_TEXT.get(rule)
    if template is None:
        return rule, f"is invalid ({rule})"
    try:
        return rule, template.format(**ctx)
    except (KeyError, IndexError, ValueError):
        return rule, f"is invalid ({rule})"
