"""Every rejection class of parse_event: reason, field path, and messages that never echo input."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    CATALOG,
    DomainEvent,
    EventRegistry,
    ParseError,
    ParseReason,
    parse_event,
)

SAMPLES = Path(__file__).parent / "samples"
SECRET = "SSN-078-05-1120-JohnDoe"


def _sample(event_type: str = "work_order.status_changed") -> dict[str, Any]:
    return orjson.loads((SAMPLES / f"{event_type}.json").read_bytes())


def _with(path: str, value: Any, event_type: str = "work_order.status_changed") -> bytes:
    """The sample with the value at a dotted path replaced (``...`` deletes the key)."""
    event = _sample(event_type)
    *parents, last = path.split(".")
    node: Any = event
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return orjson.dumps(event)


def _rejected(raw: Any, **kwargs: Any) -> ParseError:
    result = parse_event(raw, **kwargs)
    assert isinstance(result, ParseError), "expected a rejection"
    return result


def test_valid_sample_parses() -> None:
    assert isinstance(parse_event(_with("data.reason", "ok")), DomainEvent)


# --- input-level rejections -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"id": }',
        b"{'single': 'quotes'}",
        b'{"a": 1} trailing',
        b'{"a": NaN}',
        b'{"a": 1e400}',
        b'{"a": "\\ud800"}',
        b"\xef\xbb\xbf{}",
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=[
        "empty",
        "unclosed",
        "no-value",
        "single-quotes",
        "trailing",
        "nan",
        "overflow",
        "lone-surrogate-escape",
        "bom",
        "too-deep",
    ],
)
def test_invalid_json(raw: bytes) -> None:
    error = _rejected(raw)
    assert error.reason is ParseReason.INVALID_JSON
    assert error.field is None


@pytest.mark.parametrize(
    "raw",
    [
        _with("data.reason", "ok").replace(b'"ok"', b'"o\xffk"'),
        b'{"type": "\xc3\x28"}',
        b"\xed\xa0\x80",  # an encoded surrogate, which UTF-8 forbids
        b'{"a": "\xe2\x82"}',  # truncated multi-byte sequence
    ],
    ids=["bad-byte-in-valid-event", "bad-continuation", "encoded-surrogate", "truncated"],
)
def test_invalid_utf8_is_not_reported_as_invalid_json(raw: bytes) -> None:
    error = _rejected(raw)
    assert error.reason is ParseReason.INVALID_UTF8
    assert error.field is None


@pytest.mark.parametrize(
    "raw", [b"[]", b'[{"type": "work_order.created"}]', b'"x"', b"42", b"null"]
)
def test_not_an_object(raw: bytes) -> None:
    error = _rejected(raw)
    assert error.reason is ParseReason.NOT_AN_OBJECT
    assert error.field is None


@pytest.mark.parametrize("raw", ["{}", None, 42, {"type": "x"}])
def test_non_bytes_input_is_rejected_not_raised(raw: Any) -> None:
    assert _rejected(raw).reason is ParseReason.NOT_BYTES


def test_payload_over_the_configured_size() -> None:
    raw = _with("data.reason", "x" * 500)
    assert isinstance(parse_event(raw, max_bytes=len(raw)), DomainEvent)
    error = _rejected(raw, max_bytes=len(raw) - 1)
    assert error.reason is ParseReason.TOO_LARGE
    assert error.field is None
    assert str(len(raw) - 1) in error.message


def test_size_is_checked_before_decoding() -> None:
    # Over the default 1 MiB limit and not UTF-8 either: the size must win.
    raw = b'{"data": "' + b"\xff" * 1_048_576 + b'"}'
    assert _rejected(raw).reason is ParseReason.TOO_LARGE
    assert _rejected(memoryview(raw)).reason is ParseReason.TOO_LARGE
    assert _rejected(raw, max_bytes=len(raw)).reason is ParseReason.INVALID_UTF8


# --- type and version ---------------------------------------------------------------------------


def test_unknown_type() -> None:
    error = _rejected(_with("type", "work_order.exploded"))
    assert (error.reason, error.field) == (ParseReason.UNKNOWN_TYPE, "type")


@pytest.mark.parametrize(
    ("value", "rule"), [(..., "missing"), (None, "string_type"), (7, "string_type")]
)
def test_missing_or_non_string_type(value: Any, rule: str) -> None:
    error = _rejected(_with("type", value))
    assert (error.reason, error.field, error.rule) == (ParseReason.SCHEMA_VIOLATION, "type", rule)


@pytest.mark.parametrize("version", ["2.0", "0.9", "3.1"])
def test_unsupported_major_version(version: str) -> None:
    error = _rejected(_with("version", version))
    assert (error.reason, error.field) == (ParseReason.UNSUPPORTED_VERSION, "version")
    assert error.event_type == "work_order.status_changed"
    assert "supported: 1" in error.message


@pytest.mark.parametrize(
    "version", ["1", "1.0.0", "v1.0", "01.0", "1.01", "1.x", "", " 1.0", "1.0\n", "\uff11.\uff10"]
)
def test_malformed_version(version: str) -> None:
    error = _rejected(_with("version", version))
    assert (error.reason, error.field) == (ParseReason.MALFORMED_VERSION, "version")


@pytest.mark.parametrize(("value", "rule"), [(..., "missing"), (1.0, "string_type")])
def test_missing_or_non_string_version(value: Any, rule: str) -> None:
    error = _rejected(_with("version", value))
    assert (error.reason, error.field, error.rule) == (
        ParseReason.SCHEMA_VIOLATION,
        "version",
        rule,
    )


# --- schema violations --------------------------------------------------------------------------

VIOLATIONS = [
    # envelope: wrong JSON types
    ("metadata.auditRequired", "true", "metadata.auditRequired", "bool_type"),
    ("metadata.regulatory", 1, "metadata.regulatory", "bool_type"),
    ("metadata.dataClassification", "L5", "metadata.dataClassification", "enum"),
    ("actor.type", "ROBOT", "actor.type", "enum"),
    ("actor.id", "", "actor.id", "string_too_short"),
    ("actor.id", " padded", "actor.id", "opaque_id_format"),
    ("actor", "usr_1", "actor", "model_type"),
    ("source", 5, "source", "string_type"),
    ("source", "WO API", "source", "source_format"),
    ("data", [], "data", "model_type"),
    ("metadata", ..., "metadata", "missing"),
    # timestamps
    ("timestamp", "2026-02-13T09:30:00", "timestamp", "timezone_required"),
    ("timestamp", "2026-02-13T09:30:00.5", "timestamp", "timezone_required"),
    ("timestamp", "yesterday", "timestamp", "datetime_format"),
    ("timestamp", "2026-13-45T09:30:00Z", "timestamp", "datetime_format"),
    ("timestamp", "2026-02-13", "timestamp", "datetime_format"),
    ("timestamp", "2026-02-13T09:30:00+0100", "timestamp", "datetime_format"),
    ("timestamp", 1770975000, "timestamp", "datetime_format"),
    ("timestamp", "1770975000", "timestamp", "datetime_format"),
    ("timestamp", "1969-12-31T23:59:59Z", "timestamp", "datetime_range"),
    ("timestamp", "0001-01-01T00:00:00+01:00", "timestamp", "datetime_range"),
    # ids
    ("id", "not-a-uuid", "id", "uuid7_required"),
    ("id", str(uuid.uuid4()), "id", "uuid7_required"),
    ("id", "{" + str(uuid.uuid4()) + "}", "id", "uuid7_required"),
    ("id", 123, "id", "string_type"),
    ("correlationId", "trace-123", "correlationId", "uuid_format"),
    ("correlationId", "5d0c7a9e3b1f4c2d8e7a6f5b4c3d2e1a", "correlationId", "uuid_format"),
    ("causationId", None, "causationId", "string_type"),
    # tenant ids: separators, wildcards, whitespace, control characters, non-ASCII, length
    ("tenantId", "tenant.abc", "tenantId", "tenant_id_format"),
    ("tenantId", "*", "tenantId", "tenant_id_format"),
    ("tenantId", ">", "tenantId", "tenant_id_format"),
    ("tenantId", "tenant abc", "tenantId", "tenant_id_format"),
    ("tenantId", "", "tenantId", "tenant_id_format"),
    ("tenantId", "tenant\x00", "tenantId", "tenant_id_format"),
    ("tenantId", "ténant", "tenantId", "tenant_id_format"),
    ("tenantId", "t" * 65, "tenantId", "tenant_id_format"),
    # payload: wrong types, missing fields, bad enums, bounds
    ("data.guardsFailed", "none", "data.guardsFailed", "list_type"),
    ("data.guardsFailed", [1], "data.guardsFailed[0]", "string_type"),
    ("data.version", "4", "data.version", "int_type"),
    ("data.version", 4.5, "data.version", "int_type"),
    ("data.version", True, "data.version", "int_type"),
    ("data.version", 0, "data.version", "greater_than_equal"),
    ("data.newStatus", "FINISHED", "data.newStatus", "enum"),
    ("data.workOrderId", ..., "data.workOrderId", "missing"),
    ("data.reason", ..., "data.reason", "missing"),
    ("data.workOrderId", "WO-1", "data.workOrderId", "uuid_format"),
]


@pytest.mark.parametrize(("path", "value", "field", "rule"), VIOLATIONS)
def test_schema_violation(path: str, value: Any, field: str, rule: str) -> None:
    error = _rejected(_with(path, value))
    assert error.reason is ParseReason.SCHEMA_VIOLATION
    assert error.field == field
    assert error.rule == rule
    assert error.message.startswith(f"{field}: ")
    assert error.event_type == "work_order.status_changed"


PAYLOAD_VIOLATIONS = [
    ("compliance.phi_detected", "data.confidence", 1.5, "data.confidence", "less_than_equal"),
    ("compliance.phi_detected", "data.confidence", "0.9", "data.confidence", "float_type"),
    ("compliance.phi_detected", "data.phiType", "GENOME", "data.phiType", "enum"),
    ("system.backup_completed", "data.sizeBytes", -1, "data.sizeBytes", "greater_than_equal"),
    ("system.backup_completed", "data.sizeBytes", 2**60, "data.sizeBytes", "less_than_equal"),
    (
        "system.backup_completed",
        "data.durationSeconds",
        -0.5,
        "data.durationSeconds",
        "greater_than_equal",
    ),
    (
        "work_order.updated",
        "data.changedFields.1.field",
        "",
        "data.changedFields[1].field",
        "string_too_short",
    ),
    ("work_order.created", "data.regulatory", "false", "data.regulatory", "bool_type"),
    (
        "work_order.created",
        "data.scheduledStart",
        "2026-02-16T08:00:00",
        "data.scheduledStart",
        "timezone_required",
    ),
    ("work_order.created", "data.dependsOn.0", "WO-7", "data.dependsOn[0]", "uuid_format"),
    (
        "work_order.closed",
        "data.complianceSummary.capaRequired",
        0,
        "data.complianceSummary.capaRequired",
        "bool_type",
    ),
    ("approval.requested", "data.role", "INTERN", "data.role", "enum"),
    ("agent.checkpoint_reached", "data.context", [], "data.context", "dict_type"),
    ("system.feature_flag_changed", "data.tenantId", "a.b", "data.tenantId", "tenant_id_format"),
    ("system.feature_flag_changed", "data.previousValue", ..., "data.previousValue", "missing"),
]


@pytest.mark.parametrize(("event_type", "path", "value", "field", "rule"), PAYLOAD_VIOLATIONS)
def test_payload_violation(event_type: str, path: str, value: Any, field: str, rule: str) -> None:
    error = _rejected(_with(path, value, event_type))
    assert (error.reason, error.field, error.rule) == (ParseReason.SCHEMA_VIOLATION, field, rule)
    assert error.event_type == event_type


def test_several_violations_are_counted_first_one_reported() -> None:
    event = _sample()
    event["metadata"]["auditRequired"] = "yes"
    event["data"]["version"] = "x"
    del event["data"]["workOrderId"]
    error = _rejected(orjson.dumps(event))
    assert error.error_count == 3
    assert error.field == "data.workOrderId"  # envelope fields are validated in catalog order
    assert error.rule == "missing"
    assert "(and 2 more violations)" in error.message


def test_error_carries_routing_hints_only_when_valid() -> None:
    good = _rejected(_with("data.version", "4"))
    sample = _sample()
    assert good.event_id == sample["id"]
    assert good.tenant_id == "tenant_abc"
    bad = _rejected(_with("tenantId", "a.b"))
    assert bad.tenant_id is None
    unknown = _rejected(_with("type", "work_order.unknown"))
    assert unknown.event_type is None


# --- messages never echo input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "path", "value"),
    [
        ("work_order.status_changed", "tenantId", f"{SECRET}.>"),
        ("work_order.status_changed", "id", SECRET),
        ("work_order.status_changed", "correlationId", SECRET),
        ("work_order.status_changed", "timestamp", SECRET),
        ("work_order.status_changed", "source", SECRET),
        ("work_order.status_changed", "type", SECRET),
        ("work_order.status_changed", "version", SECRET),
        ("work_order.status_changed", "actor.id", f"\x07{SECRET}"),
        ("work_order.status_changed", "actor.type", SECRET),
        ("work_order.status_changed", "metadata.regulatory", SECRET),
        ("work_order.status_changed", "data.newStatus", SECRET),
        ("work_order.status_changed", "data.version", SECRET),
        ("work_order.status_changed", "data.guardsFailed", SECRET),
        ("work_order.status_changed", "data", SECRET),
        ("compliance.phi_detected", "data.confidence", SECRET),
        ("compliance.phi_detected", "data.entityId", f" {SECRET}"),
        ("work_order.created", "data.assetId", SECRET + "\n"),
        ("work_order.created", "data.scheduledEnd", SECRET),
    ],
)
def test_messages_do_not_echo_values(event_type: str, path: str, value: str) -> None:
    error = _rejected(_with(path, value, event_type))
    rendered = repr(error) + orjson.dumps(error.to_dict()).decode()
    assert "078-05-1120" not in rendered
    assert "JohnDoe" not in rendered


def test_json_error_message_does_not_quote_input() -> None:
    raw = b'{"note": "' + SECRET.encode() + b'" ' + SECRET.encode() + b"}"
    error = _rejected(raw)
    assert error.reason is ParseReason.INVALID_JSON
    assert "JohnDoe" not in error.message
    assert "line 1" in error.message


def test_free_form_keys_are_not_echoed_in_paths() -> None:
    from events.parsing import _dotted

    assert _dotted(("data", "changedFields", 0, "field")) == "data.changedFields[0].field"
    assert _dotted(("data", "context", SECRET)) == "data.context.<key>"


# --- the ParseError value -----------------------------------------------------------------------


def test_parse_error_is_frozen_and_serialisable() -> None:
    error = _rejected(_with("data.version", "4"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.reason = ParseReason.INVALID_JSON  # type: ignore[misc]
    as_dict = error.to_dict()
    assert as_dict["reason"] == "SCHEMA_VIOLATION"
    assert type(as_dict["reason"]) is str
    assert as_dict["field"] == "data.version"
    assert as_dict["rule"] == "int_type"
    assert orjson.loads(orjson.dumps(as_dict)) == as_dict
    assert set(as_dict) == {
        "reason",
        "field",
        "message",
        "rule",
        "error_count",
        "event_type",
        "event_id",
        "tenant_id",
    }


def test_unexpected_exceptions_become_internal_errors() -> None:
    class BrokenRegistry(EventRegistry):
        def lookup(self, event_type: str, major: int):  # type: ignore[override]
            raise RuntimeError(SECRET)

    error = _rejected(_with("data.reason", "ok"), registry=BrokenRegistry(CATALOG))
    assert error.reason is ParseReason.INTERNAL_ERROR
    assert "JohnDoe" not in error.message


# --- nothing raises -----------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = parse_event(raw)
    assert isinstance(result, ParseError | DomainEvent)


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from([v[0] for v in VIOLATIONS]), value=_json_values)
def test_arbitrary_values_in_any_field_never_raise(path: str, value: Any) -> None:
    try:
        raw = _with(path, copy.deepcopy(value))
    except orjson.JSONEncodeError:  # e.g. integers beyond 64 bits cannot even be sent
        return
    result = parse_event(raw)
    assert isinstance(result, ParseError | DomainEvent)


def _nested(where: str, depth: int) -> bytes:
    """The sample with ``depth`` nested arrays at ``where`` (by hand: orjson writes <= 255)."""
    nested = b"[" * depth + b'"x"' + b"]" * depth
    return _with(where, "__nested__").replace(b'"__nested__"', nested)


@pytest.mark.parametrize("where", ["extraField", "data.extraField"])
def test_nesting_deeper_than_the_limit_is_rejected_with_its_ids(where: str) -> None:
    # orjson writes at most 255 levels: deeper input would be accepted and then fail every
    # re-serialisation downstream (the audit writer's canonical bytes), stalling that consumer.
    from events.canonical import canonical_bytes
    from events.parsing import MAX_DEPTH

    event = _sample()
    for depth in (300, MAX_DEPTH + 1):
        error = _rejected(_nested(where, depth))
        assert (error.reason, error.rule) == (ParseReason.SCHEMA_VIOLATION, "too_deep")
        assert error.event_id == event["id"] and error.tenant_id == event["tenantId"]
    shallow = parse_event(_nested(where, MAX_DEPTH - 3))  # within the limit: accepted
    assert isinstance(shallow, DomainEvent)
    canonical_bytes(shallow)  # and it can be written again
