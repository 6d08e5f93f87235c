"""The worker tests' scenario: two tenants' regulated work in phases, and its expected output.

A phase is a clock tick followed by events. Within a phase the events' processing order may
differ between runs (different partitions and topics run concurrently); across phases it may
not (the tests wait until the worker is idle before the next phase). The phases are cut where
the reducers' output depends on the order of events of *different* Kafka keys, e.g. a
certification before the assignment it flags (the violation's cause is whichever came second),
or a close after the deviations it must count. Events of one master's children share one
partition of ``wo.workorder`` (ids are chosen so), so the master's facts arrive in produce order.

:class:`Reference` is the in-memory driver of ``tests.tables_testkit`` wired like the Faust
layer: derived events feed back only into the ``derived_inputs`` tables (``wo.derived``), not
into every table (that is the bridge's mirror, absent from these tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events.envelope import DomainEvent
from events.keys import record_key
from pipeline.topics import partition_of
from tables.base import is_own
from tables.compliance import SUMMARY_STAGE
from tests.tables_testkit import T0, MiniPipeline, days, ev, hours, uid

ACME, GLOBEX, INITECH = "acme", "globex", "initech"
TENANTS = (ACME, GLOBEX, INITECH)
FILLER_ORDERS = 150  # initech: created + completed each, volume for the kill test


class Reference(MiniPipeline):
    """MiniPipeline with derived events fed back only to the ``derived_inputs`` tables."""

    def _apply_event(self, event: DomainEvent, now: datetime) -> list[DomainEvent]:
        produced: list[DomainEvent] = []
        for stage in self.stages:
            if stage.route is None or (is_own(event) and not stage.derived_inputs):
                continue
            for key in stage.route(event, self.config):
                produced += self._apply(stage, key, event, now)
        return produced

    def tick(self, now: datetime) -> list[DomainEvent]:
        out = super().tick(now)
        for stage in self.stages:  # the Faust layer deletes window shards beyond retention
            if stage.expired is not None:
                table = self.tables[stage.name]
                for key in [k for k in table if stage.expired(k, now, self.config)]:
                    del table[key]
        return out


def normalized(value: Any) -> Any:
    """``value`` with lists of strings sorted: the tables keep some sets as lists in arrival
    order (signatures, violations, flags), and arrival order across keys differs per run.

    Dedup memories (``seen``) compare as their sets of ids: *when* an id was remembered is the
    receiving partition's clock, and a timer's derived event (e.g. a close check's violation,
    counted in a window shard elsewhere) can reach a partition before that partition's own
    tick of the same phase, which the reference, one clock for everything, does not model."""
    if isinstance(value, dict):
        seen = value.get("seen")
        if isinstance(seen, dict) and isinstance(seen.get("ids"), dict):
            value = {**value, "seen": sorted(seen["ids"])}
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalized(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value


@dataclass
class Phase:
    now: datetime
    events: list[DomainEvent] = field(default_factory=list)


@dataclass
class Scenario:
    partitions: int
    phases: list[Phase]
    reference: Reference
    ids: dict[str, dict[str, str]]  # tenant -> role -> entity id
    derived_after: list[int]  # reference derived events after each phase

    @property
    def events(self) -> list[DomainEvent]:
        return [e for p in self.phases for e in p.events]

    def expected_derived(self) -> dict[str, bytes]:
        return {e.id: e.canonical_bytes() for e in self.reference.derived}

    def expected_tables(self) -> dict[str, dict[str, Any]]:
        """The reference's tables, :func:`normalized`."""
        return normalized(self.reference.tables)


_next = iter(range(1, 10**6))


def _ids_in_partition(tenant: str, count: int, partition: int, partitions: int) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        candidate = uid(next(_next) + 500_000)
        if partition_of(f"{tenant}:{candidate}", partitions) == partition:
            out.append(candidate)
    return out


def _created(tenant: str, wo: str, at: datetime, end: datetime, *, master: str | None = None,
             regulatory: bool = False) -> DomainEvent:  # fmt: skip
    data = {
        "workOrderId": wo,
        "type": "MASTER" if master is None else "CALIBRATION",
        "regulatory": regulatory,
        "priority": "MEDIUM",
        "title": "Calibrate balance",
        "assetId": "asset-1",
        "masterId": master,
        "dependsOn": [],
        "scheduledStart": at,
        "scheduledEnd": end,
    }
    return ev("work_order.created", data, at=at, tenant=tenant)


def _status(tenant: str, wo: str, new: str, at: datetime, reason: str | None = "planned"):
    data = {
        "workOrderId": wo,
        "previousStatus": "SCHEDULED",
        "newStatus": new,
        "reason": reason,
        "guardsEvaluated": ["assigneeQualified"],
        "guardsFailed": [],
        "version": 2,
    }
    return ev("work_order.status_changed", data, at=at, tenant=tenant)


def _completed(tenant: str, wo: str, at: datetime, master: str | None, variance: float):
    data = {
        "workOrderId": wo,
        "masterId": master,
        "completedAt": at,
        "actualDurationHours": 4.0 * (1 + variance / 100),
        "estimatedDurationHours": 4.0,
        "variancePercent": variance,
    }
    return ev("work_order.completed", data, at=at, tenant=tenant)


def _closed(tenant: str, wo: str, at: datetime, summary: dict[str, Any]) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "closedAt": at,
        "totalDurationHours": 30.0,
        "approvalCount": 2,
        "linkedWOCount": 0,
        "complianceSummary": summary,
    }
    return ev("work_order.closed", data, at=at, tenant=tenant)


def _certification(tenant: str, person: str, expiry: datetime, at: datetime) -> DomainEvent:
    data = {
        "personId": person,
        "experienceId": "cert-balance",
        "certification": "Analytical balance calibration",
        "expirationDate": expiry,
    }
    return ev("resource.certification_recorded", data, at=at, tenant=tenant)


def _assigned(tenant: str, wo: str, person: str, at: datetime, end: datetime) -> DomainEvent:
    data = {
        "workOrderId": wo,
        "resourceType": "PERSON",
        "resourceId": person,
        "role": "ASSIGNEE",
        "scheduledStart": at,
        "scheduledEnd": end,
    }
    return ev("resource.assigned", data, at=at, tenant=tenant)


def _decision(tenant: str, wo: str, at: datetime, signature: str | None) -> DomainEvent:
    data = {
        "approvalId": uid(next(_next) + 700_000),
        "workOrderId": wo,
        "approverId": "usr_qa_lead_02",
        "decision": "APPROVED",
        "comments": None,
        "signatureId": signature,
        "signatureVerified": signature is not None,
    }
    return ev("approval.decision_submitted", data, at=at, tenant=tenant)


def _signature(tenant: str, wo: str, at: datetime, result: str, signature: str) -> DomainEvent:
    data = {
        "signatureId": signature,
        "workOrderId": wo,
        "signerId": "usr_qa_lead_02",
        "verificationResult": result,
        "hashMatch": result == "VALID",
        "certificateValid": True,
    }
    return ev("compliance.signature_verified", data, at=at, tenant=tenant)


def _phi(tenant: str, entity_type: str, entity: str, action: str, at: datetime) -> DomainEvent:
    data = {
        "detectionId": uid(next(_next) + 800_000),
        "entityType": entity_type,
        "entityId": entity,
        "fieldPath": "description",
        "confidence": 0.93,
        "phiType": "NAME",
        "action": action,
    }
    return ev("compliance.phi_detected", data, at=at, tenant=tenant)


def _escalated(tenant: str, wo: str, at: datetime) -> DomainEvent:
    data = {
        "approvalId": uid(next(_next) + 900_000),
        "workOrderId": wo,
        "originalApproverId": "usr_a",
        "escalatedToId": "usr_b",
        "reason": "OVERDUE",
        "originalDueDate": at,
    }
    return ev("approval.escalated", data, at=at, tenant=tenant)


def build(partitions: int) -> Scenario:
    """The scenario for ``partitions`` partitions (ids depend on the partitioning)."""
    ids: dict[str, dict[str, str]] = {}
    for n, tenant in enumerate((ACME, GLOBEX)):
        # one master's children in one partition; the two tenants in different ones
        master, c1, c2, c3 = _ids_in_partition(tenant, 4, n % partitions, partitions)
        ids[tenant] = {
            "master": master, "c1": c1, "c2": c2, "c3": c3, "w": uid(next(_next) + 600_000),
            "person": f"usr_tech_{tenant}", "signature": uid(next(_next) + 650_000),
        }  # fmt: skip
    filler = [uid(next(_next) + 300_000) for _ in range(FILLER_ORDERS)]

    phases: list[Phase] = []
    p0 = Phase(T0)
    for t in (ACME, GLOBEX):
        i = ids[t]
        p0.events += [
            _created(t, i["master"], T0, T0 + days(10), regulatory=True),
            _created(t, i["c1"], T0, T0 + days(1), master=i["master"], regulatory=True),
            _created(t, i["c2"], T0, T0 + days(1), master=i["master"]),
            _created(t, i["c3"], T0, T0 + days(4), master=i["master"]),
            _created(t, i["w"], T0, T0 + days(3), regulatory=True),
            _certification(t, i["person"], T0 + days(5 if t == ACME else 20), T0),
        ]
    # 40 days old: beyond the 30-day window retention, counted as late, never silently
    p0.events.append(_phi(ACME, "document", "doc-17", "BLOCKED", T0 - days(40)))
    phases.append(p0)

    at = T0 + hours(1)
    p1 = Phase(at)
    for t in (ACME, GLOBEX):
        i = ids[t]
        p1.events += [
            _assigned(t, i["c3"], i["person"], at, T0 + days(6)),  # past the acme expiry
            _status(t, i["c1"], "IN_PROGRESS", at),
            _status(t, i["c2"], "IN_PROGRESS", at),
            _status(t, i["c3"], "IN_PROGRESS", at),
            _decision(t, i["w"], at, None),  # unsigned approval of a regulatory order
            _decision(t, i["w"], at + hours(1), i["signature"]),  # signed and verified
        ]
    i = ids[ACME]
    p1.events += [
        _signature(ACME, i["w"], at, "INVALID", uid(next(_next) + 660_000)),
        _phi(ACME, "work_order", i["w"], "FLAGGED_FOR_REVIEW", at),
        _escalated(ACME, i["w"], at),
    ]
    for n, wo in enumerate(filler):
        p1.events.append(_created(INITECH, wo, at, T0 + days(3 + n % 2)))
    phases.append(p1)

    at = T0 + hours(26)  # the tick passes c1's and c2's scheduledEnd: both OVERDUE_OPEN
    p2 = Phase(at)
    for t in (ACME, GLOBEX):
        i = ids[t]
        p2.events += [
            _completed(t, i["c1"], at, i["master"], 35.0),  # late and over the estimate
            _completed(t, i["c3"], at, i["master"], 5.0),  # on time
        ]
    for n, wo in enumerate(filler):
        p2.events.append(_completed(INITECH, wo, at + hours(n % 5), None, 30.0 * (n % 2)))
    phases.append(p2)

    reference = Reference()
    derived_after: list[int] = []
    for phase in phases:
        _run_phase(reference, phase)
        derived_after.append(len(reference.derived))

    at = T0 + days(2)
    p3 = Phase(at)
    i = ids[ACME]
    wrong = {"auditEntries": 99, "signatures": 0, "deviations": 0, "capaRequired": False}
    p3.events.append(_closed(ACME, i["c1"], at, wrong))
    # W closes with exactly what the pipeline observed: no violation for it
    observed = reference.state(SUMMARY_STAGE, f"{ACME}:{i['w']}")
    assert observed is not None
    right = observed.summary().model_dump(mode="json")  # type: ignore[attr-defined]
    p3.events.append(_closed(ACME, i["w"], at + hours(1), right))
    phases.append(p3)
    _run_phase(reference, p3)
    derived_after.append(len(reference.derived))

    for now in (T0 + days(4), T0 + days(5) + hours(1), T0 + days(6) + hours(1)):
        phases.append(Phase(now))
        _run_phase(reference, phases[-1])
        derived_after.append(len(reference.derived))
    return Scenario(partitions, phases, reference, ids, derived_after)


def _run_phase(reference: Reference, phase: Phase) -> None:
    reference.tick(phase.now)
    for event in phase.events:
        reference.feed(event, phase.now)


def topic_record(event: DomainEvent) -> tuple[str, bytes, bytes, int, list[tuple[str, bytes]]]:
    """(topic, key, value, timestamp ms, headers) as the bridge's ingress writes the event."""
    from events.ids import unix_ms
    from events.subjects import subject_for, topic_for

    headers = [
        ("wo-event-id", event.id.encode()),
        ("wo-type", event.type.encode()),
        ("wo-version", event.version.encode()),
        ("wo-tenant", event.tenantId.encode()),
        ("wo-subject", subject_for(event.tenantId, event.type).encode()),
    ]
    return (
        topic_for(event.type),
        record_key(event).encode(),
        event.canonical_bytes(),
        unix_ms(event.timestamp),
        headers,
    )
