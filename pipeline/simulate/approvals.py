"""Approvals: requests, escalations, e-signatures and their verification, decisions, violations."""

from __future__ import annotations

from collections.abc import Iterator

from events.enums import (
    ApprovalDecision,
    ApprovalRole,
    EscalationReason,
    Regulation,
    Severity,
    SignatureVerificationResult,
    WorkOrderType,
)
from pipeline.simulate.lifecycle import API, COMPLIANCE, SCHED, wo_event
from pipeline.simulate.world import (
    COMPLIANCE_ENGINE,
    HOUR_MS,
    MINUTE_MS,
    SCHEDULER,
    Ctx,
    Emit,
    Sleep,
    Step,
    Tenant,
    WorkOrder,
    iso,
)


def approval_roles(wo: WorkOrder) -> list[ApprovalRole]:
    if not wo.regulatory:
        return [ApprovalRole.SUPERVISOR]
    if wo.type in (WorkOrderType.VALIDATION, WorkOrderType.QUALIFICATION):
        return [ApprovalRole.VALIDATION, ApprovalRole.QUALITY_ASSURANCE]
    return [ApprovalRole.QUALITY_ASSURANCE]


def approval(
    ctx: Ctx, tenant: Tenant, wo: WorkOrder, role: ApprovalRole, *, last_round: bool
) -> Iterator[Step]:
    """One approval, re-requested after a failed signature; returns the rejecting actor or None."""
    rng = ctx.rng
    sign = wo.regulatory
    attempts = 0
    while True:
        attempts += 1
        approver = rng.choice(tenant.approvers(role))
        approval_id = ctx.new_id()
        due_ms = ctx.now_ms + rng.randint(4, 12) * HOUR_MS
        yield wo_event(
            wo,
            "approval.requested",
            {
                "approvalId": approval_id,
                "workOrderId": wo.id,
                "approverId": approver.id,
                "role": str(role),
                "dueDate": iso(due_ms),
                "escalationDate": iso(due_ms - 2 * HOUR_MS) if wo.regulatory else None,
            },
            SCHEDULER,
            SCHED,
        )
        if ctx.chance(0.12):
            reason = rng.choice(list(EscalationReason))
            if reason is EscalationReason.OVERDUE:
                yield Sleep(due_ms + rng.randint(5, 60) * MINUTE_MS)
            else:
                yield Sleep(ctx.now_ms + rng.randint(10, 90) * MINUTE_MS)
            others = [a for a in tenant.approvers(role) if a != approver]
            others = others or tenant.people("supervisor")
            new_approver = rng.choice(others)
            yield wo_event(
                wo,
                "approval.escalated",
                {
                    "approvalId": approval_id,
                    "workOrderId": wo.id,
                    "originalApproverId": approver.id,
                    "escalatedToId": new_approver.id,
                    "reason": str(reason),
                    "originalDueDate": iso(due_ms),
                },
                SCHEDULER if reason is EscalationReason.OVERDUE else approver,
                SCHED if reason is EscalationReason.OVERDUE else API,
            )
            approver = new_approver
        yield Sleep(ctx.now_ms + rng.randint(20, 240) * MINUTE_MS)

        decision = ApprovalDecision.APPROVED
        if not last_round:
            decision = rng.choices(list(ApprovalDecision), (85, 5, 10))[0]
        signature_id = None
        verified = False
        if sign:
            signature_id = ctx.new_id()
            wo.signatures += 1
            result = rng.choices(list(SignatureVerificationResult), (90, 6, 4))[0]
            verified = result is SignatureVerificationResult.VALID
            yield wo_event(
                wo,
                "compliance.signature_verified",
                {
                    "signatureId": signature_id,
                    "workOrderId": wo.id,
                    "signerId": approver.id,
                    "verificationResult": str(result),
                    "hashMatch": result is not SignatureVerificationResult.INVALID,
                    "certificateValid": result is not SignatureVerificationResult.EXPIRED_KEY,
                },
                COMPLIANCE_ENGINE,
                COMPLIANCE,
            )
        wo.approvals += 1
        comments = None
        if decision is not ApprovalDecision.APPROVED:
            comments = "Execution record incomplete: missing torque values"
        elif ctx.chance(0.3):
            comments = "Reviewed, OK"
        yield wo_event(
            wo,
            "approval.decision_submitted",
            {
                "approvalId": approval_id,
                "workOrderId": wo.id,
                "approverId": approver.id,
                "decision": str(decision),
                "comments": comments,
                "signatureId": signature_id,
                "signatureVerified": verified,
            },
            approver,
        )
        if sign and not verified and attempts < 3:
            # A signature that fails verification does not count (Part 11 §11.70); sometimes
            # the compliance engine raises a violation, and the approval is requested again.
            wo.deviations += 1
            if ctx.chance(0.5):
                wo.serious_deviation = True
                yield violation(ctx, wo, Regulation.FDA_21_CFR_11, "§11.70", Severity.HIGH)
            continue
        return approver if decision is not ApprovalDecision.APPROVED else None


def violation(
    ctx: Ctx, wo: WorkOrder | None, regulation: Regulation, requirement: str, severity: Severity
) -> Emit:
    texts = {
        Regulation.FDA_21_CFR_11: (
            "Electronic signature failed verification on an approval",
            "Re-sign with a valid certificate and document the deviation",
        ),
        Regulation.HIPAA: (
            "Free-text field contained unmasked patient identifiers",
            "Redact the field and review access logs",
        ),
        Regulation.SOC2: (
            "Service account used outside its approved window",
            "Rotate the credentials and review the access policy",
        ),
        Regulation.GDPR: (
            "Personal data stored outside the tenant's residency region",
            "Move the data to the residency region and notify the DPO",
        ),
    }
    description, action = texts[regulation]
    data = {
        "violationId": ctx.new_id(),
        "workOrderId": wo.id if wo else None,
        "regulation": str(regulation),
        "requirement": requirement,
        "severity": str(severity),
        "description": description,
        "recommendedAction": action,
        "autoRemediable": regulation in (Regulation.HIPAA, Regulation.SOC2) and ctx.chance(0.5),
    }
    if wo is not None:
        return wo_event(wo, "compliance.violation_detected", data, COMPLIANCE_ENGINE, COMPLIANCE)
    return Emit("compliance.violation_detected", data, COMPLIANCE_ENGINE, COMPLIANCE, True)
