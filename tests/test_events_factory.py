"""make_event and derive_event: catalog defaults, overrides, validation, reproducible derivation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from events import (
    REGISTRY,
    SYSTEM_ACTOR,
    ActorType,
    DataClassification,
    DomainEvent,
    ParseError,
    UnknownEventTypeError,
    WorkOrderBlocked,
    derive_event,
    is_uuid7,
    make_event,
    parse_event,
    uuid7_unix_ms,
)

SAMPLES = Path(__file__).parent / "samples"
AT = datetime(2026, 2, 13, 9, 30, 0, 250000, tzinfo=UTC)


def _data(event_type: str) -> dict[str, Any]:
    return orjson.loads((SAMPLES / f"{event_type}.json").read_bytes())["data"]


@pytest.mark.parametrize("event_type", REGISTRY.event_types())
def test_make_event_fills_registry_defaults(event_type: str) -> None:
    event = make_event(event_type, _data(event_type), tenant_id="tenant_abc")
    spec = REGISTRY.get(event_type)
    assert type(event) is spec.envelope
    assert event.version == spec.version == "1.0"
    assert is_uuid7(event.id)
    assert uuid7_unix_ms(event.id) == int(event.timestamp.timestamp() * 1000)
    assert event.correlationId == event.causationId == event.id
    assert event.actor == SYSTEM_ACTOR
    assert event.source == "wo-stream"
    assert event.metadata.auditRequired is spec.audit_required
    assert event.metadata.dataClassification is spec.classification_for(event.metadata.regulatory)
    assert event.subject.startswith(f"wo.tenant_abc.{spec.domain}.")
    parsed = parse_event(event.canonical_bytes())
    assert parsed == event


def test_timestamp_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    event = make_event("work_order.closed", _data("work_order.closed"), tenant_id="t1")
    assert before <= event.timestamp <= datetime.now(UTC)
    assert event.timestamp.tzinfo is UTC


def test_regulatory_work_order_gets_l3_from_its_payload() -> None:
    data = _data("work_order.created")
    regulatory = make_event("work_order.created", {**data, "regulatory": True}, tenant_id="t1")
    plain = make_event("work_order.created", {**data, "regulatory": False}, tenant_id="t1")
    assert (regulatory.metadata.regulatory, regulatory.metadata.dataClassification) == (
        True,
        DataClassification.L3,
    )
    assert (plain.metadata.regulatory, plain.metadata.dataClassification) == (
        False,
        DataClassification.L2,
    )


def test_explicit_arguments_override_defaults() -> None:
    cause = "5d0c7a9e-3b1f-4c2d-8e7a-6f5b4c3d2e1a"
    event = make_event(
        "work_order.status_changed",
        _data("work_order.status_changed"),
        tenant_id="tenant-9",
        actor={"id": "usr_1", "type": "HUMAN", "role": "technician"},
        source="wo-api",
        timestamp="2026-02-13T10:30:00.250+01:00",
        correlation_id=cause.upper(),
        causation_id=cause,
        event_id="019c5655-f63b-785b-ae06-f089a0f620b2",
        classification="L4",
        regulatory=True,
        audit_required=False,
        version="1.3",
    )
    assert event.id == "019c5655-f63b-785b-ae06-f089a0f620b2"
    assert event.timestamp == AT
    assert event.correlationId == event.causationId == cause
    assert event.actor.type is ActorType.HUMAN
    assert event.source == "wo-api"
    assert event.version == "1.3"
    assert event.metadata.model_dump() == {
        "dataClassification": DataClassification.L4,
        "regulatory": True,
        "auditRequired": False,
    }


def test_string_timestamp_also_sets_the_id_time() -> None:
    event = make_event(
        "agent.task_completed",
        _data("agent.task_completed"),
        tenant_id="t1",
        timestamp="2026-02-13T10:30:00.250+01:00",
    )
    assert event.timestamp == AT
    assert uuid7_unix_ms(event.id) == int(AT.timestamp() * 1000)


def test_payload_model_instances_are_accepted() -> None:
    payload = WorkOrderBlocked.model_validate(_data("work_order.blocked"))
    event = make_event("work_order.blocked", payload, tenant_id="t1")
    assert event.data is payload


def test_unknown_type_and_unknown_major_raise() -> None:
    with pytest.raises(UnknownEventTypeError, match="not registered"):
        make_event("work_order.exploded", {}, tenant_id="t1")
    with pytest.raises(UnknownEventTypeError):
        make_event("work_order.closed", _data("work_order.closed"), tenant_id="t1", version="2.0")


@pytest.mark.parametrize(
    ("changes", "kwargs"),
    [
        ({"newStatus": "SSN-078-05-1120"}, {}),
        ({"version": "SSN-078-05-1120"}, {}),
        ({}, {"tenant_id": "SSN-078-05-1120.>"}),
        ({}, {"timestamp": "SSN-078-05-1120"}),
        ({}, {"timestamp": datetime(2026, 2, 13)}),
    ],
)
def test_invalid_input_raises_without_echoing_it(changes: dict, kwargs: dict) -> None:
    args: dict[str, Any] = {"tenant_id": "t1", **kwargs}
    with pytest.raises(ValidationError) as caught:
        make_event(
            "work_order.status_changed", {**_data("work_order.status_changed"), **changes}, **args
        )
    assert "078-05-1120" not in str(caught.value)


def test_events_are_immutable() -> None:
    event = make_event("work_order.closed", _data("work_order.closed"), tenant_id="t1")
    with pytest.raises(ValidationError):
        event.tenantId = "other"  # type: ignore[misc]
    changed = event.model_copy(update={"tenantId": "other"})
    assert (event.tenantId, changed.tenantId) == ("t1", "other")


def _cause() -> DomainEvent:
    raw = (SAMPLES / "work_order.status_changed.json").read_bytes()
    cause = parse_event(raw)
    assert not isinstance(cause, ParseError)
    return cause


def _blocked(cause: DomainEvent, key: str = "wo-1") -> DomainEvent:
    return derive_event(
        cause,
        "work_order.blocked",
        {
            "workOrderId": cause.data.workOrderId,
            "masterId": None,
            "blockReason": "Guard failed: certification expired",
            "blockedBy": [],
            "estimatedUnblockDate": None,
        },
        key=key,
    )


def test_derived_events_are_reproducible_and_continue_the_trace() -> None:
    cause = _cause()
    first, again = _blocked(cause), _blocked(_cause())
    assert first.canonical_bytes() == again.canonical_bytes()
    assert first.timestamp == cause.timestamp
    assert uuid7_unix_ms(first.id) == int(cause.timestamp.timestamp() * 1000)
    assert first.correlationId == cause.correlationId
    assert first.causationId == cause.id
    assert first.tenantId == cause.tenantId
    assert first.metadata.regulatory is True  # inherited from the regulatory cause
    assert first.metadata.dataClassification is DataClassification.L3
    assert _blocked(cause, key="wo-2").id != first.id


def test_derived_event_time_part_follows_cause_offsets() -> None:
    cause = _cause()
    shifted = cause.model_copy(
        update={"timestamp": cause.timestamp.astimezone(timezone(timedelta(hours=9)))}
    )
    assert _blocked(shifted).id == _blocked(cause).id
