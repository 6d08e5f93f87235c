"""Approval payloads (catalog §3): requested, decision_submitted, escalated."""

from __future__ import annotations

from pydantic import Field

from events.enums import ApprovalDecision, ApprovalRole, EscalationReason
from events.payloads.base import Payload
from events.primitives import Lax, OpaqueId, UtcDateTime, Uuid


class ApprovalRequested(Payload):
    """approval.requested (§3.1)."""

    approvalId: Uuid
    workOrderId: Uuid
    approverId: OpaqueId
    role: Lax[ApprovalRole]
    dueDate: UtcDateTime
    escalationDate: UtcDateTime | None


class ApprovalDecisionSubmitted(Payload):
    """approval.decision_submitted (§3.2); FDA §11.50/§11.70 signature manifestation."""

    approvalId: Uuid
    workOrderId: Uuid
    approverId: OpaqueId
    decision: Lax[ApprovalDecision]
    comments: str | None
    signatureId: Uuid | None = Field(description="Present for regulatory work orders")
    signatureVerified: bool


class ApprovalEscalated(Payload):
    """approval.escalated (§3.3)."""

    approvalId: Uuid
    workOrderId: Uuid
    originalApproverId: OpaqueId
    escalatedToId: OpaqueId
    reason: Lax[EscalationReason]
    originalDueDate: UtcDateTime
