"""Compliance policy rules, each deriving ``compliance.violation_detected`` (+ CAPA at >= HIGH).

The rules are pure functions from facts to a ``Violation`` (or None); ``emit`` turns one into
the violation event and, at severity HIGH or CRITICAL, a ``compliance.capa_assessment_required``
(catalog §4.1). The violationId is the violation event's own deterministic id, so a replay
reproduces both events and the CAPA request points at the same violation.

Table ``wo_policy``, key ``{tenant}:{workOrderId}`` (``{tenant}`` for events about no work
order): ``apply`` runs the rules that need what is known about the work order.

=========================================  =====================  ========  ================
rule                                       requirement            severity  state needed
=========================================  =====================  ========  ================
regulatory status change without reason    FDA_21_CFR_11 §11.10(e)  HIGH    regulatory flag
transition although guardsFailed not empty FDA_21_CFR_11 §11.10(f)  HIGH    -
APPROVED on regulatory order, unsigned or  FDA_21_CFR_11            CRITICAL regulatory flag
  signature not verified                     §11.50/§11.70
signature_verified INVALID / EXPIRED_KEY   FDA_21_CFR_11 §11.70     HIGH    -
phi_detected FLAGGED_FOR_REVIEW            HIPAA §164.502(b)        MEDIUM  -
tool calibration due before scheduledEnd   FDA_21_CFR_11 (ours:     MEDIUM  scheduledEnd
                                             21 CFR 211.68(a))
closed summary differs from observed       FDA_21_CFR_11 §11.10(e)  MEDIUM  (tables.compliance)
person assigned past a certification's     FDA_21_CFR_11 §11.10(i)  HIGH    (tables.
  expiry                                                                    certifications)
=========================================  =====================  ========  ================

Whether a work order is regulatory comes from its ``created`` (or an ``updated`` of
``regulatory``). ``created`` may arrive after a status change or a decision (different
subjects); a status change whose own metadata says regulatory is judged at once, the other
checks that need the flag wait in the state until it is known, and are given up (reported in
``Result.expired``) once they waited longer than the dedup horizon (7 days of processing time:
JetStream delivers ``created`` within its retention or never). ``tool_calibration_due`` is fanned
out to the keys of its affectedWorkOrders and checked against each order's scheduledEnd when
both are known, once per (tool, due date, work order).

External violations (source other than wo-stream) of severity >= HIGH also get a CAPA request;
violations wo-stream derived itself already got theirs, and no rule derives anything from an
event of source wo-stream (no feedback loops).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from events.enums import (
    ApprovalDecision,
    PHIAction,
    Regulation,
    Severity,
    SignatureVerificationResult,
)
from events.envelope import DomainEvent
from events.ids import derived_event_id, is_uuid
from events.payloads.workorder import ComplianceSummary
from tables.base import (
    Result,
    Stamp,
    TableState,
    admit,
    is_own,
    make_key,
    newer,
    split_key,
    stamp_of,
)
from tables.config import DEFAULT_CONFIG, TenantConfig
from tables.derive import Cause, derive
from tables.lifecycle import is_open, schedule_of, status_of

STAGE = "wo_policy"
VIOLATION = "compliance.violation_detected"
CAPA = "compliance.capa_assessment_required"
_RANK: Final = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}
CAPA_FROM: Final = Severity.HIGH

INPUT_TYPES: Final = frozenset(
    {
        "work_order.created",
        "work_order.updated",
        "work_order.status_changed",
        "work_order.blocked",
        "work_order.completed",
        "work_order.closed",
        "approval.decision_submitted",
        "compliance.signature_verified",
        "compliance.phi_detected",
        "compliance.violation_detected",
        "resource.tool_calibration_due",
    }
)
# entityType values of phi_detected that name a work order (the catalog leaves it free text).
_WORK_ORDER_ENTITIES: Final = frozenset({"work_order", "workorder", "work-order"})


@dataclass(frozen=True, slots=True)
class Violation:
    """What a rule found; ``emit`` makes the events. Texts never carry payload free text."""

    regulation: Regulation
    requirement: str
    severity: Severity
    description: str
    recommendedAction: str
    autoRemediable: bool


# --- rules ------------------------------------------------------------------------------------


def status_without_reason(previous: str, new: str, reason: str | None) -> Violation | None:
    """A status change of a regulatory work order without a reason (call only if regulatory)."""
    if reason is not None and reason.strip():
        return None
    return Violation(
        Regulation.FDA_21_CFR_11,
        "§11.10(e)",
        Severity.HIGH,
        f"Status change {previous} -> {new} of a regulatory work order was recorded without a "
        "reason",
        "Record the reason for the transition as an attributable amendment and review it",
        False,
    )


def failed_guards(previous: str, new: str, guards_failed: list[str]) -> Violation | None:
    """A transition that happened although guards failed (sequencing enforcement)."""
    if not guards_failed:
        return None
    return Violation(
        Regulation.FDA_21_CFR_11,
        "§11.10(f)",
        Severity.HIGH,
        f"Transition {previous} -> {new} happened although guards failed: "
        + ", ".join(sorted(guards_failed)),
        "Review the transition, revert it if unjustified, and fix guard enforcement",
        False,
    )


def unsigned_approval(decision: str, signature_id: str | None, verified: bool) -> Violation | None:
    """An APPROVED decision on a regulatory work order without a verified signature."""
    if decision != ApprovalDecision.APPROVED or (signature_id is not None and verified):
        return None
    missing = (
        "without an electronic signature"
        if signature_id is None
        else ("with a signature that was not verified")
    )
    return Violation(
        Regulation.FDA_21_CFR_11,
        "§11.50/§11.70",
        Severity.CRITICAL,
        f"Approval of a regulatory work order was recorded {missing}",
        "Invalidate the approval and have it re-approved with a verified electronic signature",
        False,
    )


def invalid_signature(result: str) -> Violation | None:
    """A signature verification that failed (INVALID or EXPIRED_KEY)."""
    if result not in (SignatureVerificationResult.INVALID, SignatureVerificationResult.EXPIRED_KEY):
        return None
    return Violation(
        Regulation.FDA_21_CFR_11,
        "§11.70",
        Severity.HIGH,
        f"Electronic signature verification failed ({result}); the signature-record link is "
        "not intact",
        "Quarantine the signed record and re-sign it with a valid key",
        False,
    )


def phi_flagged(action: str, phi_type: str, entity_type: str, field_path: str) -> Violation | None:
    """PHI detected and flagged for human review (BLOCKED PHI never reached a record)."""
    if action != PHIAction.FLAGGED_FOR_REVIEW:
        return None
    return Violation(
        Regulation.HIPAA,
        "§164.502(b)",
        Severity.MEDIUM,
        f"Possible PHI ({phi_type}) flagged for review in {entity_type}.{field_path}",
        "Review the field and redact the PHI if confirmed (minimum necessary)",
        False,
    )


def calibration_before_end(
    tool: str, due: datetime, scheduled_end: datetime, auto_generate: bool
) -> Violation | None:
    """A tool whose calibration falls due before the work order using it ends."""
    if not due < scheduled_end:
        return None
    # The catalog's Regulation enum has no GMP value; calibration is 21 CFR 211.68(a)
    # (820.72 for devices), recorded under the FDA entry with the exact section.
    return Violation(
        Regulation.FDA_21_CFR_11,
        "21 CFR 211.68(a)",
        Severity.MEDIUM,
        f"Tool {tool} falls due for calibration at {due.isoformat()}, before the work order's "
        f"scheduled end {scheduled_end.isoformat()}",
        "Calibrate the tool before use or assign a calibrated tool",
        auto_generate,
    )


def summary_mismatch(reported: ComplianceSummary, observed: ComplianceSummary) -> Violation | None:
    """A closed work order whose compliance summary differs from what the pipeline observed."""
    fields = ("auditEntries", "signatures", "deviations", "capaRequired")
    diffs = [
        f"{f} reported {getattr(reported, f)} observed {getattr(observed, f)}"
        for f in fields
        if getattr(reported, f) != getattr(observed, f)
    ]
    if not diffs:
        return None
    return Violation(
        Regulation.FDA_21_CFR_11,
        "§11.10(e)",
        Severity.MEDIUM,
        "Compliance summary of the closed work order differs from the event stream: "
        + "; ".join(diffs),
        "Reconcile the work order's audit trail with the event stream",
        False,
    )


def expired_certification(
    *,
    person: str,
    experience: str,
    certification: str,
    expiry: datetime,
    scheduled_end: datetime,
) -> Violation:
    """A person assigned to a work order that ends after one of their certifications expires."""
    return Violation(
        Regulation.FDA_21_CFR_11,
        "§11.10(i)",
        Severity.HIGH,
        f"Person {person} is assigned to a work order ending {scheduled_end.isoformat()} but "
        f"certification {experience} ({certification}) expires {expiry.isoformat()}",
        "Renew the certification before the work starts or assign a qualified person",
        False,
    )


# --- events -----------------------------------------------------------------------------------


def emit(
    cause: Cause, work_order: str | None, violation: Violation, *, key: str
) -> list[DomainEvent]:
    """The violation event, plus a CAPA request when severity >= HIGH; ids from (cause, key).

    The violationId is the violation event's own id (deterministic, see ``tables.derive``).
    """
    violation_id = derived_event_id(cause.timestamp, cause.id, VIOLATION, key)
    data = {
        "violationId": violation_id,
        "workOrderId": work_order,
        "regulation": violation.regulation,
        "requirement": violation.requirement,
        "severity": violation.severity,
        "description": violation.description,
        "recommendedAction": violation.recommendedAction,
        "autoRemediable": violation.autoRemediable,
    }
    out = [derive(cause, VIOLATION, data, key=key)]
    if needs_capa(violation.severity):
        out.append(
            capa(
                cause,
                violation_id,
                work_order,
                violation.regulation,
                violation.requirement,
                violation.severity,
            )
        )
    return out


def needs_capa(severity: str) -> bool:
    """Catalog §4.1: a CAPA assessment from severity HIGH up."""
    return _RANK[Severity(severity)] >= _RANK[CAPA_FROM]


def capa(
    cause: Cause,
    violation_id: str,
    work_order: str | None,
    regulation: str,
    requirement: str,
    severity: str,
) -> DomainEvent:
    data = {
        "violationId": violation_id,
        "workOrderId": work_order,
        "regulation": regulation,
        "requirement": requirement,
        "severity": severity,
    }
    return derive(cause, CAPA, data, key=violation_id)


# --- table ------------------------------------------------------------------------------------


class Pending(BaseModel):
    """A check waiting for the work order's regulatory flag."""

    model_config = ConfigDict(extra="ignore")

    key: str
    cause: Cause
    since: datetime  # when the check started waiting (processing time)
    regulation: Regulation
    requirement: str
    severity: Severity
    description: str
    recommendedAction: str
    autoRemediable: bool


class Calibration(BaseModel):
    model_config = ConfigDict(extra="ignore")

    dueDate: datetime
    stamp: Stamp
    cause: Cause
    autoGenerateWO: bool


class PolicyState(TableState):
    """One work order's facts the rules need (or a tenant's, for events about no order)."""

    workOrderId: str | None = None
    regulatory: bool | None = None
    regulatoryStamp: Stamp | None = None
    scheduledEnd: datetime | None = None
    endStamp: Stamp | None = None
    status: str | None = None
    statusStamp: Stamp | None = None
    pending: list[Pending] = Field(default_factory=list)
    calibrations: dict[str, Calibration] = Field(default_factory=dict)
    # calibration checks already reported: "{tool}@{due}"
    flagged: list[str] = Field(default_factory=list)


def route(event: DomainEvent, config: TenantConfig = DEFAULT_CONFIG) -> list[str]:
    """Keys of an input event: its work order(s), or the tenant."""
    if event.type not in INPUT_TYPES:
        return []
    if event.type == "resource.tool_calibration_due":
        return [make_key(event.tenantId, wo) for wo in sorted(set(event.data.affectedWorkOrders))]
    wo = work_order_of(event)
    return [make_key(event.tenantId, wo)]


def work_order_of(event: DomainEvent) -> str | None:
    if event.type == "compliance.phi_detected":
        data = event.data
        if data.entityType.lower() in _WORK_ORDER_ENTITIES and is_uuid(data.entityId):
            return data.entityId.lower()
        return None
    wo = getattr(event.data, "workOrderId", None)
    return wo if isinstance(wo, str) else None


def apply(
    state: PolicyState | None,
    event: DomainEvent,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[PolicyState]:
    """Run the rules an event triggers against what is known about its work order."""
    _, wo = split_key(key)
    fresh = partial(PolicyState, tenant=event.tenantId, workOrderId=wo)
    st, duplicate = admit(state, fresh, key, event.tenantId, event.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if event.type not in INPUT_TYPES or is_own(event) or not _concerns(st, event):
        return Result(st)

    derived: list[DomainEvent] = []
    stamp, cause, data = stamp_of(event), Cause.of(event), event.data
    _learn(st, event, stamp)

    if event.type == "work_order.status_changed":
        prev, new = str(data.previousStatus), str(data.newStatus)
        _judge(st, derived, cause, failed_guards(prev, new, data.guardsFailed), "guards")
        candidate = status_without_reason(prev, new, data.reason)
        if candidate is not None:
            regulatory = True if event.metadata.regulatory else st.regulatory
            _when_regulatory(now, st, derived, cause, candidate, "reason", regulatory)
    elif event.type == "approval.decision_submitted":
        candidate = unsigned_approval(str(data.decision), data.signatureId, data.signatureVerified)
        if candidate is not None:
            # decision_submitted is regulatory by type, so its metadata says nothing here.
            key_ = f"approval:{data.approvalId}"
            _when_regulatory(now, st, derived, cause, candidate, key_, st.regulatory)
    elif event.type == "compliance.signature_verified":
        _judge(st, derived, cause, invalid_signature(str(data.verificationResult)), "signature")
    elif event.type == "compliance.phi_detected":
        found = phi_flagged(str(data.action), str(data.phiType), data.entityType, data.fieldPath)
        _judge(st, derived, cause, found, f"phi:{data.detectionId}")
    elif event.type == "compliance.violation_detected":
        if needs_capa(data.severity):
            derived.append(
                capa(
                    cause,
                    data.violationId,
                    data.workOrderId,
                    str(data.regulation),
                    data.requirement,
                    str(data.severity),
                )
            )
    elif event.type == "resource.tool_calibration_due":
        known = st.calibrations.get(data.toolId)
        if known is None or newer(stamp, known.stamp):
            st.calibrations[data.toolId] = Calibration(
                dueDate=data.calibrationDueDate,
                stamp=stamp,
                cause=cause,
                autoGenerateWO=data.autoGenerateWO,
            )

    # What this event taught us may settle checks that were waiting for it.
    _settle_pending(st, derived)
    _check_calibrations(st, derived)
    expired = _expire_pending(st, now, config)
    return Result(st, derived=tuple(derived), expired=expired)


def _concerns(st: PolicyState, event: DomainEvent) -> bool:
    # A fanned-out calibration event is applied under each affected order's key.
    if event.type == "resource.tool_calibration_due":
        return st.workOrderId in event.data.affectedWorkOrders
    return work_order_of(event) == st.workOrderId


def _learn(st: PolicyState, event: DomainEvent, stamp: Stamp) -> None:
    if event.type == "work_order.created" and newer(stamp, st.regulatoryStamp):
        st.regulatory, st.regulatoryStamp = event.data.regulatory, stamp
    if event.type == "work_order.updated":
        for change in event.data.changedFields:
            if change.field == "regulatory" and isinstance(change.newValue, bool):
                if newer(stamp, st.regulatoryStamp):
                    st.regulatory, st.regulatoryStamp = change.newValue, stamp
    schedule = schedule_of(event)
    if "scheduledEnd" in schedule and newer(stamp, st.endStamp):
        st.scheduledEnd, st.endStamp = schedule["scheduledEnd"], stamp
    status = status_of(event)
    if status is not None and newer(stamp, st.statusStamp):
        st.status, st.statusStamp = status, stamp


def _judge(
    st: PolicyState, derived: list[DomainEvent], cause: Cause, v: Violation | None, rule: str
) -> None:
    if v is not None:
        derived += emit(cause, st.workOrderId, v, key=f"{st.workOrderId or '-'}:{rule}")


def _when_regulatory(
    now: datetime,
    st: PolicyState,
    derived: list[DomainEvent],
    cause: Cause,
    v: Violation,
    rule: str,
    regulatory: bool | None,
) -> None:
    if regulatory is None:
        st.pending.append(
            Pending(
                key=f"{st.workOrderId or '-'}:{rule}",
                cause=cause,
                since=now,
                regulation=v.regulation,
                requirement=v.requirement,
                severity=v.severity,
                description=v.description,
                recommendedAction=v.recommendedAction,
                autoRemediable=v.autoRemediable,
            )
        )
    elif regulatory:
        _judge(st, derived, cause, v, rule)


def _settle_pending(st: PolicyState, derived: list[DomainEvent]) -> None:
    if st.regulatory is None or not st.pending:
        return
    if st.regulatory:
        for p in st.pending:
            v = Violation(
                p.regulation,
                p.requirement,
                p.severity,
                p.description,
                p.recommendedAction,
                p.autoRemediable,
            )
            derived += emit(p.cause, st.workOrderId, v, key=p.key)
    st.pending = []


def _expire_pending(st: PolicyState, now: datetime, config: TenantConfig) -> int:
    # created arrives within the stream retention or never (§1.4): after the dedup horizon
    # of waiting, give up and say so (Result.expired).
    keep = [p for p in st.pending if now - p.since <= config.dedup_horizon]
    expired = len(st.pending) - len(keep)
    st.pending = keep
    return expired


def _check_calibrations(st: PolicyState, derived: list[DomainEvent]) -> None:
    # Judged by event time: a calibration notice counts if it was issued while the order was
    # open, even when the completion (another topic) arrived first; one issued after the
    # order closed does not.
    end = st.scheduledEnd
    if end is None:
        return
    closed = None if is_open(st.status) else st.statusStamp
    for tool in sorted(st.calibrations):
        cal = st.calibrations[tool]
        flag = f"{tool}@{cal.dueDate.isoformat()}"
        if flag in st.flagged or (closed is not None and tuple(cal.stamp) >= tuple(closed)):
            continue
        v = calibration_before_end(tool, cal.dueDate, end, cal.autoGenerateWO)
        if v is not None:
            st.flagged.append(flag)
            derived += emit(cal.cause, st.workOrderId, v, key=f"{st.workOrderId}:cal:{flag}")
