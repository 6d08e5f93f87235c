"""Kafka record keys: every registered type has a written-down entity, keys are tenant-scoped."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.factory import make_event
from events.keys import ENTITY_FIELD, TENANT, entity_id, record_key
from events.registry import REGISTRY
from events.subjects import TENANT_ID_PATTERN

T = "tenant_a"
AT = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WO = str(uuid.UUID(int=1))
APPROVAL = str(uuid.UUID(int=2))
UUID3 = str(uuid.UUID(int=3))

SAMPLES: dict[str, tuple[dict, str]] = {
    "work_order.created": (
        {"workOrderId": WO, "type": "CALIBRATION", "regulatory": False, "priority": "HIGH",
         "title": "t", "assetId": None, "masterId": None, "dependsOn": [],
         "scheduledStart": None, "scheduledEnd": None},
        WO,
    ),
    "work_order.status_changed": (
        {"workOrderId": WO, "previousStatus": "DRAFT", "newStatus": "PLANNED", "reason": None,
         "guardsEvaluated": [], "guardsFailed": [], "version": 2},
        WO,
    ),
    "work_order.updated": ({"workOrderId": WO, "changedFields": [], "version": 2}, WO),
    "work_order.blocked": (
        {"workOrderId": WO, "masterId": None, "blockReason": "parts", "blockedBy": [],
         "estimatedUnblockDate": None},
        WO,
    ),
    "work_order.completed": (
        {"workOrderId": WO, "masterId": None, "completedAt": "2026-03-02T09:00:00Z",
         "actualDurationHours": 1.0, "estimatedDurationHours": 1.0, "variancePercent": 0.0},
        WO,
    ),
    "work_order.closed": (
        {"workOrderId": WO, "closedAt": "2026-03-02T09:00:00Z", "totalDurationHours": 1.0,
         "approvalCount": 1, "linkedWOCount": 0,
         "complianceSummary": {"auditEntries": 1, "signatures": 1, "deviations": 0,
                               "capaRequired": False}},
        WO,
    ),
    "approval.requested": (
        {"approvalId": APPROVAL, "workOrderId": WO, "approverId": "u1", "role": "SUPERVISOR",
         "dueDate": "2026-03-03T09:00:00Z", "escalationDate": None},
        APPROVAL,
    ),
    "approval.decision_submitted": (
        {"approvalId": APPROVAL, "workOrderId": WO, "approverId": "u1", "decision": "APPROVED",
         "comments": None, "signatureId": None, "signatureVerified": False},
        APPROVAL,
    ),
    "approval.escalated": (
        {"approvalId": APPROVAL, "workOrderId": WO, "originalApproverId": "u1",
         "escalatedToId": "u2", "reason": "OVERDUE", "originalDueDate": "2026-03-03T09:00:00Z"},
        APPROVAL,
    ),
    "compliance.violation_detected": (
        {"violationId": UUID3, "workOrderId": WO, "regulation": "HIPAA", "requirement": "r",
         "severity": "LOW", "description": "d", "recommendedAction": "a",
         "autoRemediable": False},
        WO,
    ),
    "compliance.audit_trail_integrity_check": (
        {"checkId": UUID3, "scope": "FULL", "entriesVerified": 1, "chainIntact": True,
         "brokenLinks": [], "verifiedAt": "2026-03-02T09:00:00Z"},
        T,
    ),
    "compliance.signature_verified": (
        {"signatureId": UUID3, "workOrderId": WO, "signerId": "u1",
         "verificationResult": "VALID", "hashMatch": True, "certificateValid": True},
        WO,
    ),
    "compliance.phi_detected": (
        {"detectionId": UUID3, "entityType": "work_order", "entityId": "rec-9",
         "fieldPath": "description", "confidence": 0.5, "phiType": "NAME",
         "action": "BLOCKED"},
        "rec-9",
    ),
    "agent.task_dispatched": (
        {"taskId": UUID3, "workOrderId": WO, "agentNode": "planner", "modelAssignment": "haiku",
         "tokenBudget": 10, "pattern": "CHAIN"},
        WO,
    ),
    "agent.task_completed": (
        {"taskId": UUID3, "workOrderId": WO, "agentNode": "planner", "tokensConsumed": 1,
         "durationMs": 1, "result": "SUCCESS", "outputSummary": ""},
        WO,
    ),
    "agent.circuit_breaker_state_changed": (
        {"agentNode": "planner", "previousState": "CLOSED", "newState": "OPEN",
         "failureCount": 3, "lastFailureReason": "x"},
        "planner",
    ),
    "agent.checkpoint_reached": (
        {"taskId": UUID3, "workOrderId": WO, "checkpointType": "BLOCKER", "description": "d",
         "requiresHumanApproval": True, "context": {}},
        WO,
    ),
    "resource.assigned": (
        {"workOrderId": WO, "resourceType": "PERSON", "resourceId": "p1", "role": "ASSIGNEE",
         "scheduledStart": "2026-03-02T09:00:00Z", "scheduledEnd": "2026-03-02T10:00:00Z"},
        WO,
    ),
    "resource.certification_expiring": (
        {"personId": "p1", "experienceId": "e1", "expirationDate": "2026-04-01T00:00:00Z",
         "daysUntilExpiry": 30, "affectedWorkOrders": []},
        "p1",
    ),
    "resource.tool_calibration_due": (
        {"toolId": "tool-7", "calibrationDueDate": "2026-04-01T00:00:00Z", "daysUntilDue": 30,
         "affectedWorkOrders": [], "autoGenerateWO": False},
        "tool-7",
    ),
    "system.tenant_provisioned": (
        {"tenantId": "tenant_new", "complianceFrameworks": [], "dataResidencyRegion": "eu",
         "tier": "STARTER"},
        "tenant_new",
    ),
    "system.feature_flag_changed": (
        {"flagId": "f1", "tenantId": None, "previousValue": False, "newValue": True,
         "changedBy": "u1"},
        T,
    ),
    "system.backup_completed": (
        {"backupId": UUID3, "type": "FULL", "sizeBytes": 1, "durationSeconds": 1.0,
         "verificationResult": "VERIFIED"},
        T,
    ),
}  # fmt: skip


def test_every_registered_type_has_a_written_down_entity() -> None:
    # A new type must get its line in events/keys.py (the tenant fallback is only a safety net).
    assert set(REGISTRY.event_types()) <= set(ENTITY_FIELD)
    assert set(SAMPLES) <= set(REGISTRY.event_types())


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_record_key_per_type(event_type: str) -> None:
    data, entity = SAMPLES[event_type]
    event = make_event(event_type, data, tenant_id=T, timestamp=AT)
    assert entity_id(event) == entity
    assert record_key(event) == f"{T}:{entity}"


def test_entity_field_names_exist_on_their_payloads() -> None:
    for spec in REGISTRY.specs():
        field = ENTITY_FIELD[spec.event_type]
        if field != TENANT:
            assert field in spec.payload.model_fields, spec.event_type


def test_null_entity_falls_back_to_the_tenant() -> None:
    data = dict(SAMPLES["compliance.violation_detected"][0], workOrderId=None)
    event = make_event("compliance.violation_detected", data, tenant_id=T, timestamp=AT)
    assert record_key(event) == f"{T}:{T}"


def test_same_entity_in_two_tenants_gets_two_keys() -> None:
    data = SAMPLES["work_order.updated"][0]
    a = make_event("work_order.updated", data, tenant_id="tenant_a", timestamp=AT)
    b = make_event("work_order.updated", data, tenant_id="tenant_b", timestamp=AT)
    assert record_key(a) != record_key(b)


@given(
    tenant=st.from_regex(TENANT_ID_PATTERN, fullmatch=True),
    work_order=st.uuids(),
    version=st.integers(min_value=1, max_value=10_000),
)
def test_key_is_tenant_colon_entity_and_splits_back(
    tenant: str, work_order: uuid.UUID, version: int
) -> None:
    data = dict(SAMPLES["work_order.updated"][0], workOrderId=str(work_order), version=version)
    event = make_event("work_order.updated", data, tenant_id=tenant, timestamp=AT)
    key = record_key(event)
    # The tenant alphabet has no ':', so the first ':' always separates tenant and entity.
    assert key.partition(":") == (tenant, ":", str(work_order))
