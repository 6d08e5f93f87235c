"""NATS subjects (catalog §1.3): building, parsing, tenant-id tokens and Kafka topics."""

from __future__ import annotations

from typing import Any

import pytest

from events import (
    DOMAIN_TOPICS,
    DOMAINS,
    REGISTRY,
    SubjectError,
    SubjectParts,
    domain_for,
    is_valid_tenant_id,
    parse_subject,
    subject_for,
    topic_for,
    validate_tenant_id,
)

CATALOG_EXAMPLES = {
    ("tenant_abc", "work_order.created"): "wo.tenant_abc.workorder.created",
    ("tenant_abc", "work_order.status_changed"): "wo.tenant_abc.workorder.status_changed",
    ("tenant_abc", "approval.decision_submitted"): "wo.tenant_abc.approval.decision_submitted",
    ("tenant_abc", "agent.task_dispatched"): "wo.tenant_abc.agent.task_dispatched",
    ("tenant_abc", "compliance.violation_detected"): "wo.tenant_abc.compliance.violation_detected",
}

BAD_TENANTS = [
    "tenant.abc",
    "*",
    ">",
    "tenant_abc.>",
    "a*",
    "tenant abc",
    " tenant",
    "tenant\t",
    "tenant\n",
    "",
    "tenant\x00",
    "tenant\x7f",
    "ténant",
    "tenant_\u0430bc",
    "t" * 65,
    "wo.>",
    "%2E",
]


@pytest.mark.parametrize(("args", "subject"), CATALOG_EXAMPLES.items())
def test_catalog_examples(args: tuple[str, str], subject: str) -> None:
    assert subject_for(*args) == subject
    assert parse_subject(subject) == SubjectParts(args[0], subject.split(".")[2], args[1])


@pytest.mark.parametrize("event_type", REGISTRY.event_types())
@pytest.mark.parametrize("tenant_id", ["tenant_abc", "T-1", "x" * 64, "0"])
def test_round_trip_for_every_type(event_type: str, tenant_id: str) -> None:
    subject = subject_for(tenant_id, event_type)
    parts = parse_subject(subject)
    assert parts.tenant_id == tenant_id
    assert parts.event_type == event_type
    assert parts.domain == REGISTRY.get(event_type).domain == domain_for(event_type)
    assert parts.subject == subject
    assert parts.topic == topic_for(event_type) == DOMAIN_TOPICS[parts.domain]
    assert len(subject.split(".")) == 4


def test_domain_and_topic_maps() -> None:
    assert domain_for("work_order.closed") == "workorder"
    assert DOMAINS == ("workorder", "approval", "compliance", "agent", "resource", "system")
    assert DOMAIN_TOPICS == {
        "workorder": "wo.workorder",
        "approval": "wo.approval",
        "compliance": "wo.compliance",
        "agent": "wo.agent",
        "resource": "wo.resource",
        "system": "wo.system",
    }


@pytest.mark.parametrize("tenant_id", BAD_TENANTS)
def test_injection_through_tenant_ids_is_refused(tenant_id: str) -> None:
    assert not is_valid_tenant_id(tenant_id)
    with pytest.raises(SubjectError) as caught:
        subject_for(tenant_id, "work_order.created")
    if len(tenant_id) > 2:
        assert tenant_id not in str(caught.value)
    with pytest.raises(SubjectError):
        validate_tenant_id(tenant_id)


@pytest.mark.parametrize("tenant_id", [None, 5, b"tenant"])
def test_non_string_tenant_ids_are_refused(tenant_id: Any) -> None:
    assert not is_valid_tenant_id(tenant_id)
    with pytest.raises(SubjectError):
        validate_tenant_id(tenant_id)


@pytest.mark.parametrize(
    "event_type",
    [
        "work_order",
        "work_order.",
        ".created",
        "Work_Order.created",
        "work_order.created.x",
        "work_order.*",
        "work_order.>",
        "billing.invoice_sent",
        "workorder.created",
        "work_order.status changed",
        "work__order.created",
        "",
    ],
)
def test_malformed_or_unknown_domain_event_types_are_refused(event_type: str) -> None:
    with pytest.raises(SubjectError):
        subject_for("tenant_abc", event_type)
    with pytest.raises(SubjectError):
        domain_for(event_type)


@pytest.mark.parametrize(
    "subject",
    [
        "wo.*.workorder.created",
        "wo.>",
        "wo.tenant_abc.workorder.*",
        "wo.tenant_abc.>",
        "wo.tenant_abc.workorder.created.extra",
        "wo.tenant_abc.workorder",
        "wo..workorder.created",
        "xx.tenant_abc.workorder.created",
        "wo.tenant_abc.work_order.created",
        "wo.tenant_abc.billing.created",
        "wo.tenant_abc.workorder.",
        "wo.tenant_abc.workorder.Created",
        "wo.tenant abc.workorder.created",
        "wo.ténant.workorder.created",
        "",
        "WO.t.workorder.created",
    ],
)
def test_malformed_subjects_are_refused(subject: str) -> None:
    with pytest.raises(SubjectError):
        parse_subject(subject)


def test_non_string_subject_is_refused() -> None:
    with pytest.raises(SubjectError, match="must be a string"):
        parse_subject(b"wo.t.workorder.created")  # type: ignore[arg-type]


def test_subject_of_a_type_not_yet_registered_still_builds() -> None:
    subject = subject_for("t1", "resource.certification_recorded")
    assert subject == "wo.t1.resource.certification_recorded"
    assert parse_subject(subject).event_type == "resource.certification_recorded"
