"""The registry: the catalog's 23 types, wo-stream's 4 own types, extension by new types/majors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from events import (
    CATALOG,
    DERIVED_TYPES,
    REGISTRY,
    STREAM_TYPES,
    DataClassification,
    DomainEvent,
    EventRegistry,
    EventSpec,
    ParseError,
    ParseReason,
    Payload,
    SubjectError,
    UnknownEventTypeError,
    current_version,
    envelope_model,
    event_types,
    make_event,
    parse_event,
    payload_model,
    subject_for,
    write_schemas,
)
from events.primitives import OpaqueId, UtcDateTime, Uuid

SAMPLES = Path(__file__).parent / "samples"

EXPECTED = {
    "work_order.created": ("WorkOrderCreated", "workorder"),
    "work_order.status_changed": ("WorkOrderStatusChanged", "workorder"),
    "work_order.updated": ("WorkOrderUpdated", "workorder"),
    "work_order.blocked": ("WorkOrderBlocked", "workorder"),
    "work_order.completed": ("WorkOrderCompleted", "workorder"),
    "work_order.closed": ("WorkOrderClosed", "workorder"),
    "approval.requested": ("ApprovalRequested", "approval"),
    "approval.decision_submitted": ("ApprovalDecisionSubmitted", "approval"),
    "approval.escalated": ("ApprovalEscalated", "approval"),
    "compliance.violation_detected": ("ComplianceViolationDetected", "compliance"),
    "compliance.audit_trail_integrity_check": ("AuditTrailIntegrityCheck", "compliance"),
    "compliance.signature_verified": ("SignatureVerified", "compliance"),
    "compliance.phi_detected": ("PHIDetected", "compliance"),
    "agent.task_dispatched": ("AgentTaskDispatched", "agent"),
    "agent.task_completed": ("AgentTaskCompleted", "agent"),
    "agent.circuit_breaker_state_changed": ("CircuitBreakerStateChanged", "agent"),
    "agent.checkpoint_reached": ("AgentCheckpointReached", "agent"),
    "resource.assigned": ("ResourceAssigned", "resource"),
    "resource.certification_expiring": ("CertificationExpiring", "resource"),
    "resource.tool_calibration_due": ("ToolCalibrationDue", "resource"),
    "system.tenant_provisioned": ("TenantProvisioned", "system"),
    "system.feature_flag_changed": ("FeatureFlagChanged", "system"),
    "system.backup_completed": ("BackupCompleted", "system"),
}


# wo-stream's own types (issue 4): one input, three derived; not part of the catalog.
STREAM_EXPECTED = {
    "resource.certification_recorded": ("CertificationRecorded", "resource"),
    "work_order.master_progress_updated": ("MasterProgressUpdated", "workorder"),
    "work_order.sla_breached": ("SlaBreached", "workorder"),
    "compliance.capa_assessment_required": ("CapaAssessmentRequired", "compliance"),
}


def test_catalog_holds_exactly_the_23_catalog_types() -> None:
    assert len(CATALOG) == 23
    assert {spec.event_type for spec in CATALOG} == set(EXPECTED)


def test_stream_types_are_ours_and_disjoint_from_the_catalog() -> None:
    assert {spec.event_type for spec in STREAM_TYPES} == set(STREAM_EXPECTED)
    assert not set(STREAM_EXPECTED) & set(EXPECTED)
    assert set(STREAM_EXPECTED) - DERIVED_TYPES == {"resource.certification_recorded"}
    assert DERIVED_TYPES <= set(STREAM_EXPECTED)


def test_registry_holds_exactly_the_catalog_and_stream_types() -> None:
    assert set(event_types()) == set(EXPECTED) | set(STREAM_EXPECTED)
    assert len(REGISTRY) == 23 + 4
    for event_type, (model_name, domain) in {**EXPECTED, **STREAM_EXPECTED}.items():
        spec = REGISTRY.get(event_type)
        assert payload_model(event_type).__name__ == model_name
        assert envelope_model(event_type).__name__ == f"{model_name}Event"
        assert issubclass(envelope_model(event_type), DomainEvent)
        assert spec.domain == domain
        assert current_version(event_type) == "1.0"
        assert REGISTRY.majors(event_type) == (1,)


def test_catalog_stated_facts() -> None:
    for event_type in [t for t in EXPECTED if t.startswith("work_order.")]:
        spec = REGISTRY.get(event_type)
        assert spec.audit_required
        assert spec.classification_for(False) is DataClassification.L2
        assert spec.classification_for(True) is DataClassification.L3
    violation = REGISTRY.get("compliance.violation_detected")
    assert violation.classification is DataClassification.L4
    assert violation.audit_required and violation.regulatory
    # Every regulatory-by-default type is audited.
    assert all(spec.audit_required for spec in (*CATALOG, *STREAM_TYPES) if spec.regulatory)


def test_stream_type_facts() -> None:
    recorded = REGISTRY.get("resource.certification_recorded")
    assert (recorded.classification, recorded.regulatory, recorded.audit_required) == (
        DataClassification.L2,
        True,
        True,
    )
    progress = REGISTRY.get("work_order.master_progress_updated")
    assert not progress.audit_required
    assert progress.classification_for(True) is DataClassification.L2
    breach = REGISTRY.get("work_order.sla_breached")
    assert breach.audit_required
    assert breach.classification_for(False) is DataClassification.L2
    assert breach.classification_for(True) is DataClassification.L3
    capa = REGISTRY.get("compliance.capa_assessment_required")
    assert capa.audit_required and capa.regulatory
    assert capa.classification is DataClassification.L3


def test_unknown_lookups() -> None:
    assert REGISTRY.lookup("work_order.created", 2) is None
    assert not REGISTRY.is_known("work_order.exploded")
    assert "work_order.created" in REGISTRY
    with pytest.raises(UnknownEventTypeError, match="major version 2"):
        REGISTRY.get("work_order.created", 2)
    with pytest.raises(UnknownEventTypeError, match="not registered"):
        payload_model("nope.nope")


def test_duplicate_and_malformed_registrations_are_refused() -> None:
    registry = EventRegistry(CATALOG)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(CATALOG[0])
    with pytest.raises(SubjectError):
        EventSpec("billing.invoice_sent", "1.0", Payload, DataClassification.L2, False, True)
    with pytest.raises(ValueError):
        EventSpec("resource.x", "1", Payload, DataClassification.L2, False, True)


# --- extension: one model + one registry line -----------------------------------------------


class TrainingCompleted(Payload):
    """resource.training_completed (a hypothetical later type, not registered)."""

    personId: OpaqueId
    experienceId: OpaqueId
    completedAt: UtcDateTime
    workOrderId: Uuid | None


def _extended() -> EventRegistry:
    return EventRegistry(
        [
            *CATALOG,
            EventSpec(
                "resource.training_completed",
                "1.0",
                TrainingCompleted,
                DataClassification.L2,
                True,
                True,
            ),
        ]
    )


def test_a_new_type_is_one_model_and_one_line(tmp_path: Path) -> None:
    registry = _extended()
    data = {
        "personId": "usr_tech_0456",
        "experienceId": "cert-2026-0456",
        "completedAt": "2026-03-01T00:00:00Z",
        "workOrderId": None,
    }
    event = make_event(
        "resource.training_completed", data, tenant_id="tenant_abc", registry=registry
    )
    assert event.metadata.regulatory and event.metadata.auditRequired
    raw = event.canonical_bytes()
    assert parse_event(raw, registry=registry) == event
    unknown = parse_event(raw)
    assert isinstance(unknown, ParseError) and unknown.reason is ParseReason.UNKNOWN_TYPE
    assert subject_for("tenant_abc", event.type) == "wo.tenant_abc.resource.training_completed"
    written = write_schemas(tmp_path, registry=registry)
    assert len(written) == len(CATALOG) + 1
    assert (tmp_path / "resource.training_completed" / "1.0.json").is_file()


class WorkOrderClosedV2(Payload):
    """work_order.closed 2.0: totals renamed (a breaking change)."""

    workOrderId: Uuid
    closedAt: UtcDateTime
    totalHours: float


def test_a_new_major_is_parsed_alongside_the_old_one() -> None:
    registry = EventRegistry(
        [
            *CATALOG,
            EventSpec(
                "work_order.closed", "2.0", WorkOrderClosedV2, DataClassification.L2, False, True
            ),
        ]
    )
    assert registry.majors("work_order.closed") == (1, 2)
    assert registry.current_version("work_order.closed") == "2.0"

    old = orjson.loads((SAMPLES / "work_order.closed.json").read_bytes())
    old["version"] = "1.4"
    parsed_old = parse_event(orjson.dumps(old), registry=registry)
    assert not isinstance(parsed_old, ParseError)
    assert type(parsed_old.data).__name__ == "WorkOrderClosed"

    new = {**old, "version": "2.1", "data": {**old["data"], "totalHours": 97.5}}
    del new["data"]["totalDurationHours"]
    parsed_new = parse_event(orjson.dumps(new), registry=registry)
    assert not isinstance(parsed_new, ParseError)
    assert isinstance(parsed_new.data, WorkOrderClosedV2)
    assert parsed_new.major == 2

    old_shape_as_v2 = parse_event(orjson.dumps({**old, "version": "2.0"}), registry=registry)
    assert isinstance(old_shape_as_v2, ParseError)
    assert (old_shape_as_v2.field, old_shape_as_v2.rule) == ("data.totalHours", "missing")

    future = parse_event(orjson.dumps({**old, "version": "3.0"}), registry=registry)
    assert isinstance(future, ParseError) and future.reason is ParseReason.UNSUPPORTED_VERSION
    assert "supported: 1, 2" in future.message


def test_envelope_rejects_a_version_of_another_major_when_built_directly() -> None:
    raw = orjson.loads((SAMPLES / "work_order.closed.json").read_bytes())
    model = envelope_model("work_order.closed")
    with pytest.raises(ValueError):
        model.model_validate({**raw, "version": "2.0"})
    with pytest.raises(ValueError):
        model.model_validate({**raw, "type": "work_order.created"})
