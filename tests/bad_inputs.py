"""A corpus of messages the bridge must dead-letter, each with the reason it must give.

Every entry is a distinct way to be wrong: broken bytes, broken JSON shapes, envelope and payload
schema violations, versions, subjects that are not ``wo.{tenant}.{domain}.{event}``, and valid
events on the wrong subject (another tenant's: a spoofing attempt; another type's).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from events.envelope import DomainEvent

# Tests run the bridge with this payload limit, so "too large" fits in a NATS message.
TEST_MAX_PAYLOAD = 64 * 1024


@dataclass(frozen=True)
class BadInput:
    """One bad message: where it is published, its bytes, and what the dead letter must say."""

    name: str
    subject: str
    payload: bytes
    reason: str
    field: str | None = None
    rule: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def dead_letter_subject(self) -> str:
        if self.reason == "INVALID_SUBJECT":
            return "wo_dlq._invalid._invalid._invalid"
        return "wo_dlq." + self.subject.partition(".")[2]


def _dump(obj: Any) -> bytes:
    return orjson.dumps(obj)


def corpus(tenant: str, template: DomainEvent) -> list[BadInput]:
    """The bad messages for ``tenant``; ``template`` is a valid work_order.status_changed of it."""
    assert template.type == "work_order.status_changed" and template.tenantId == tenant
    base: dict[str, Any] = orjson.loads(template.canonical_bytes())
    subject = f"wo.{tenant}.workorder.status_changed"

    def variant(**changes: Any) -> bytes:
        obj = dict(base, id=_fresh_id())
        for key, value in changes.items():
            if value is _DROP:
                obj.pop(key, None)
            else:
                obj[key] = value
        return _dump(obj)

    def data_variant(**changes: Any) -> bytes:
        return variant(data=dict(base["data"], **changes))

    other_tenant = dict(base, id=_fresh_id(), tenantId=f"{tenant}_x")
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    return [
        BadInput("invalid_json", subject, b'{"id": "x", ', "INVALID_JSON", headers=trace),
        BadInput("invalid_utf8", subject, b'{"title": "caf\xc3\x28"}', "INVALID_UTF8"),
        BadInput("empty", subject, b"", "INVALID_JSON"),
        BadInput("json_array", subject, b'[{"type": "work_order.created"}]', "NOT_AN_OBJECT"),
        BadInput("json_null", subject, b"null", "NOT_AN_OBJECT"),
        BadInput("nan_literal", subject, b'{"confidence": NaN}', "INVALID_JSON"),
        BadInput("utf8_bom", subject, b"\xef\xbb\xbf" + template.canonical_bytes(), "INVALID_JSON"),
        BadInput(
            "unknown_type",
            f"wo.{tenant}.workorder.exploded",
            variant(type="work_order.exploded"),
            "UNKNOWN_TYPE",
            field="type",
        ),
        BadInput(
            "unsupported_major", subject, variant(version="2.0"), "UNSUPPORTED_VERSION", "version"
        ),
        BadInput(
            "malformed_version", subject, variant(version="1.0.0"), "MALFORMED_VERSION", "version"
        ),
        BadInput(
            "version_not_string",
            subject,
            variant(version=1.0),
            "SCHEMA_VIOLATION",
            "version",
            "string_type",
        ),
        BadInput(
            "missing_type", subject, variant(type=_DROP), "SCHEMA_VIOLATION", "type", "missing"
        ),
        BadInput(
            "wrong_field_type",
            subject,
            data_variant(version="3"),
            "SCHEMA_VIOLATION",
            "data.version",
            "int_type",
        ),
        BadInput(
            "enum_violation",
            subject,
            data_variant(newStatus="EXPLODED"),
            "SCHEMA_VIOLATION",
            "data.newStatus",
            "enum",
        ),
        BadInput(
            "unsafe_integer",
            subject,
            data_variant(version=2**60),
            "SCHEMA_VIOLATION",
            "data.version",
            "less_than_equal",
        ),
        BadInput(
            "naive_timestamp",
            subject,
            variant(timestamp="2026-03-02T08:00:00"),
            "SCHEMA_VIOLATION",
            "timestamp",
            "timezone_required",
        ),
        BadInput(
            "id_not_uuid7",
            subject,
            variant(id=str(uuid.uuid4())),
            "SCHEMA_VIOLATION",
            "id",
            "uuid7_required",
        ),
        BadInput(
            "missing_data", subject, variant(data=_DROP), "SCHEMA_VIOLATION", "data", "missing"
        ),
        BadInput(
            "data_not_object",
            subject,
            variant(data=[1, 2]),
            "SCHEMA_VIOLATION",
            "data",
            "model_type",
        ),
        BadInput(
            "bad_tenant_token",
            subject,
            variant(tenantId="tenant a.>"),
            "SCHEMA_VIOLATION",
            "tenantId",
            "tenant_id_format",
        ),
        BadInput(
            "tenant_spoofing",
            subject,
            _dump(other_tenant),
            "TENANT_MISMATCH",
            "tenantId",
            # A spoofer may also try to steer JetStream: kept, but renamed, in the dead letter.
            headers={"Nats-Expected-Stream": "WO_EVENTS", "x-origin": "tenant-b-gateway"},
        ),
        BadInput(
            "type_mismatch",
            f"wo.{tenant}.workorder.created",
            variant(),
            "TYPE_MISMATCH",
            "type",
        ),
        BadInput(
            "domain_mismatch",
            f"wo.{tenant}.approval.status_changed",
            variant(),
            "TYPE_MISMATCH",
            "type",
        ),
        BadInput(
            "too_large",
            subject,
            variant(padding="x" * (TEST_MAX_PAYLOAD + 1)),
            "TOO_LARGE",
        ),
        BadInput("unknown_domain", f"wo.{tenant}.bogus.created", variant(), "INVALID_SUBJECT"),
        BadInput("five_tokens", f"{subject}.extra", variant(), "INVALID_SUBJECT"),
        BadInput("three_tokens", f"wo.{tenant}.workorder", variant(), "INVALID_SUBJECT"),
        BadInput(
            "uppercase_event", f"wo.{tenant}.workorder.Status_Changed", variant(), "INVALID_SUBJECT"
        ),
    ]


_DROP = object()


def _fresh_id() -> str:
    from events.ids import new_event_id

    return new_event_id()
