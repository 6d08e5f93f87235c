"""Builders of catalog events and an in-memory driver of ``tables.stages`` for the tables tests."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from events import DomainEvent, make_event
from tables.base import Fact, Result, TableState
from tables.config import DEFAULT_CONFIG, TenantConfig
from tables.stages import BY_NAME, STAGES, Stage

TENANT = "tenant_abc"
OTHER = "tenant_xyz"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
HUMAN = {"id": "usr_7f3a91", "type": "HUMAN", "role": "maintenance_planner"}
_counter = itertools.count(1)


def uid(n: int | None = None) -> str:
    """A readable, valid UUID (v4 layout); ``n`` picks a stable one."""
    n = next(_counter) + 10_000 if n is None else n
    return str(uuid.UUID(int=(0x4 << 76) | (0b10 << 62) | n))


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def days(n: float) -> timedelta:
    return timedelta(days=n)


def ev(
    event_type: str,
    data: dict[str, Any],
    *,
    at: datetime,
    tenant: str = TENANT,
    source: str = "wo-api",
    regulatory: bool | None = None,
    audit: bool | None = None,
) -> DomainEvent:
    return make_event(
        event_type,
        data,
        tenant_id=tenant,
        timestamp=at,
        source=source,
        actor=HUMAN,
        regulatory=regulatory,
        audit_required=audit,
    )


def created(
    wo: str,
    *,
    at: datetime = T0,
    master: str | None = None,
    regulatory: bool = False,
    start: datetime | None = None,
    end: datetime | None = None,
    tenant: str = TENANT,
) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "type": "MASTER" if master is None else "CALIBRATION",
        "regulatory": regulatory,
        "priority": "MEDIUM",
        "title": "Calibrate balance",
        "assetId": "asset-1",
        "masterId": master,
        "dependsOn": [],
        "scheduledStart": start,
        "scheduledEnd": end,
    }
    return ev("work_order.created", data, at=at, tenant=tenant)


def status_changed(
    wo: str,
    new: str,
    *,
    at: datetime,
    previous: str = "SCHEDULED",
    reason: str | None = "planned work",
    guards_failed: Iterable[str] = (),
    regulatory: bool | None = None,
    tenant: str = TENANT,
) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "previousStatus": previous,
        "newStatus": new,
        "reason": reason,
        "guardsEvaluated": ["assigneeQualified"],
        "guardsFailed": list(guards_failed),
        "version": 2,
    }
    return ev("work_order.status_changed", data, at=at, regulatory=regulatory, tenant=tenant)


def updated(wo: str, changes: dict[str, tuple[Any, Any]], *, at: datetime) -> DomainEvent:
    fields = [
        {"field": name, "previousValue": old, "newValue": new}
        for name, (old, new) in changes.items()
    ]
    return ev(
        "work_order.updated", {"workOrderId": wo, "changedFields": fields, "version": 3}, at=at
    )


def blocked(wo: str, *, at: datetime, master: str | None = None) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "masterId": master,
        "blockReason": "waiting for parts",
        "blockedBy": [],
        "estimatedUnblockDate": None,
    }
    return ev("work_order.blocked", data, at=at)


def completed(
    wo: str,
    *,
    at: datetime,
    master: str | None = None,
    completed_at: datetime | None = None,
    variance: float = 0.0,
    tenant: str = TENANT,
) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "masterId": master,
        "completedAt": at if completed_at is None else completed_at,
        "actualDurationHours": 4.0 * (1 + variance / 100),
        "estimatedDurationHours": 4.0,
        "variancePercent": variance,
    }
    return ev("work_order.completed", data, at=at, tenant=tenant)


def closed(
    wo: str,
    *,
    at: datetime,
    audit_entries: int = 0,
    signatures: int = 0,
    deviations: int = 0,
    capa: bool = False,
) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "closedAt": at,
        "totalDurationHours": 10.0,
        "approvalCount": 1,
        "linkedWOCount": 0,
        "complianceSummary": {
            "auditEntries": audit_entries,
            "signatures": signatures,
            "deviations": deviations,
            "capaRequired": capa,
        },
    }
    return ev("work_order.closed", data, at=at)


def assigned(
    wo: str, person: str, *, at: datetime, end: datetime, resource_type: str = "PERSON"
) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "resourceType": resource_type,
        "resourceId": person,
        "role": "ASSIGNEE",
        "scheduledStart": end - hours(4),
        "scheduledEnd": end,
    }
    return ev("resource.assigned", data, at=at)


def certification(
    person: str, experience: str, expiry: datetime, *, at: datetime, tenant: str = TENANT
) -> DomainEvent:
    data = {
        "personId": person,
        "experienceId": experience,
        "certification": "Analytical balance calibration",
        "expirationDate": expiry,
    }
    return ev("resource.certification_recorded", data, at=at, tenant=tenant)


def decision(
    wo: str,
    *,
    at: datetime,
    decision_: str = "APPROVED",
    signature: str | None = None,
    verified: bool = True,
) -> DomainEvent:
    data = {
        "approvalId": uid(),
        "workOrderId": wo,
        "approverId": "usr_qa_lead_02",
        "decision": decision_,
        "comments": None,
        "signatureId": signature,
        "signatureVerified": verified,
    }
    return ev("approval.decision_submitted", data, at=at)


def signature_verified(wo: str, result: str, *, at: datetime, signature: str | None = None):
    data = {
        "signatureId": signature or uid(),
        "workOrderId": wo,
        "signerId": "usr_qa_lead_02",
        "verificationResult": result,
        "hashMatch": result == "VALID",
        "certificateValid": result != "EXPIRED_KEY",
    }
    return ev("compliance.signature_verified", data, at=at)


def phi(action: str, *, at: datetime, entity_type: str = "work_order", entity: str | None = None):
    data = {
        "detectionId": uid(),
        "entityType": entity_type,
        "entityId": entity or uid(),
        "fieldPath": "description",
        "confidence": 0.93,
        "phiType": "NAME",
        "action": action,
    }
    return ev("compliance.phi_detected", data, at=at)


def violation(
    wo: str | None, severity: str, *, at: datetime, regulation: str = "FDA_21_CFR_11"
) -> DomainEvent:
    data = {
        "violationId": uid(),
        "workOrderId": wo,
        "regulation": regulation,
        "requirement": "§11.10(e)",
        "severity": severity,
        "description": "external finding",
        "recommendedAction": "review",
        "autoRemediable": False,
    }
    return ev("compliance.violation_detected", data, at=at, source="wo-compliance")


def escalated(wo: str, reason: str, *, at: datetime) -> DomainEvent:
    data = {
        "approvalId": uid(),
        "workOrderId": wo,
        "originalApproverId": "usr_a",
        "escalatedToId": "usr_b",
        "reason": reason,
        "originalDueDate": at,
    }
    return ev("approval.escalated", data, at=at)


def calibration_due(
    tool: str, due: datetime, affected: list[str], *, at: datetime, auto: bool = True
) -> DomainEvent:
    data = {
        "toolId": tool,
        "calibrationDueDate": due,
        "daysUntilDue": 3,
        "affectedWorkOrders": affected,
        "autoGenerateWO": auto,
    }
    return ev("resource.tool_calibration_due", data, at=at, source="wo-scheduler")


def of_type(events: Iterable[DomainEvent], event_type: str) -> list[DomainEvent]:
    return [e for e in events if e.type == event_type]


class MiniPipeline:
    """All stages wired in memory, as the Faust layer would: route, apply, forward, tick.

    Derived events go back into every stage (``mirror``), like the bridge's ``wo.>`` ingress
    mirrors egress output onto the domain topics; ``roundtrip`` stores each state as
    ``to_dict`` and reads it back with ``from_dict``, like RocksDB.
    """

    def __init__(
        self,
        config: TenantConfig = DEFAULT_CONFIG,
        *,
        stages: Iterable[Stage] = STAGES,
        mirror: bool = True,
        roundtrip: bool = True,
    ) -> None:
        self.config = config
        self.stages = list(stages)
        self.mirror = mirror
        self.roundtrip = roundtrip
        self.tables: dict[str, dict[str, Any]] = {s.name: {} for s in self.stages}
        self.derived: list[DomainEvent] = []
        self.signals: Counter[str] = Counter()

    def state(self, stage: str, key: str) -> TableState | None:
        raw = self.tables[stage].get(key)
        if raw is None or not self.roundtrip:
            return raw
        return BY_NAME[stage].state.from_dict(raw)

    def _store(self, stage: str, key: str, result: Result[Any]) -> None:
        self.tables[stage][key] = result.state.to_dict() if self.roundtrip else result.state
        for name in ("duplicate", "late"):
            self.signals[name] += int(getattr(result, name))
        self.signals["expired"] += result.expired

    def feed(self, event: DomainEvent, now: datetime) -> list[DomainEvent]:
        """Apply one input event everywhere; returns everything derived (transitively)."""
        out: list[DomainEvent] = []
        queue = [event]
        rounds = 0
        while queue:
            rounds += 1
            assert rounds < 10_000, "derived events keep feeding back"
            item = queue.pop(0)
            produced = self._apply_event(item, now)
            out += produced
            if self.mirror:
                queue += produced
        self.derived += out
        return out

    def _apply_event(self, event: DomainEvent, now: datetime) -> list[DomainEvent]:
        produced: list[DomainEvent] = []
        for stage in self.stages:
            if stage.route is None:
                continue
            for key in stage.route(event, self.config):
                produced += self._apply(stage, key, event, now)
        return produced

    def _apply(self, stage: Stage, key: str, item: DomainEvent | Fact, now: datetime):
        result = stage.apply(self.state(stage.name, key), item, now, key=key, config=self.config)
        self._store(stage.name, key, result)
        produced = list(result.derived)
        for forward in result.forwards:
            target = BY_NAME[forward.stage]
            if target.name in self.tables:
                produced += self._apply(target, forward.key, forward.fact, now)
        return produced

    def tick(self, now: datetime) -> list[DomainEvent]:
        out: list[DomainEvent] = []
        for stage in self.stages:
            if stage.tick is None:
                continue
            for key in sorted(self.tables[stage.name]):
                result = stage.tick(self.state(stage.name, key), now, config=self.config)
                self._store(stage.name, key, result)
                out += result.derived
                for forward in result.forwards:
                    out += self._apply(BY_NAME[forward.stage], forward.key, forward.fact, now)
        for event in list(out):
            if self.mirror:
                out += [e for e in self._mirror_all(event, now)]
        self.derived += out
        return out

    def _mirror_all(self, event: DomainEvent, now: datetime) -> list[DomainEvent]:
        produced = self._apply_event(event, now)
        more = list(produced)
        for e in produced:
            more += self._mirror_all(e, now)
        return more


def arrival_outputs(
    stages: Iterable[Stage],
    events: list[DomainEvent],
    now: datetime,
    *,
    ahead: tuple[DomainEvent, DomainEvent] | None = None,
    tick: datetime | None = None,
) -> set[tuple[bytes, ...]]:
    """What ``events`` derive fed in every arrival order, each as the sorted canonical bytes of
    its derived events: one element when the order does not matter. ``ahead=(a, b)`` leaves out
    the orders in which ``a``, stamped after ``b``, is delivered before ``b`` (rules that must
    decide "right away" cannot know ``b`` yet); ``tick``: run the timers at that time last."""
    outputs = set()
    for order in itertools.permutations(events):
        if ahead is not None:
            a, b = ahead
            if a.timestamp > b.timestamp and order.index(a) < order.index(b):
                continue
        pipeline = MiniPipeline(stages=stages, mirror=False)
        out: list[DomainEvent] = []
        for event in order:
            out += pipeline.feed(event, now)
        if tick is not None:
            out += pipeline.tick(tick)
        outputs.add(tuple(sorted(e.canonical_bytes() for e in out)))
    return outputs
