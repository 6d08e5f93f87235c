"""Compliance payloads (catalog §4) and wo-stream's derived capa_assessment_required."""

from __future__ import annotations

from pydantic import Field

from events.base import ContractModel
from events.enums import (
    IntegrityCheckScope,
    PHIAction,
    PHIType,
    Regulation,
    Severity,
    SignatureVerificationResult,
)
from events.payloads.base import Payload
from events.primitives import Confidence, Count, Lax, NonEmptyText, OpaqueId, UtcDateTime, Uuid


class ComplianceViolationDetected(Payload):
    """compliance.violation_detected (§4.1); CAPA assessment if severity >= HIGH."""

    violationId: Uuid
    workOrderId: Uuid | None
    regulation: Lax[Regulation]
    requirement: NonEmptyText = Field(description='e.g. "§11.10(e)"')
    severity: Lax[Severity]
    description: NonEmptyText
    recommendedAction: NonEmptyText
    autoRemediable: bool


class BrokenLink(ContractModel):
    """One audit-trail entry whose hash chain does not verify (§4.2)."""

    entryId: Uuid
    expectedHash: NonEmptyText
    actualHash: NonEmptyText


class AuditTrailIntegrityCheck(Payload):
    """compliance.audit_trail_integrity_check (§4.2); chainIntact false is a P0 incident."""

    checkId: Uuid
    scope: Lax[IntegrityCheckScope]
    entriesVerified: Count
    chainIntact: bool
    brokenLinks: list[BrokenLink]
    verifiedAt: UtcDateTime


class SignatureVerified(Payload):
    """compliance.signature_verified (§4.3)."""

    signatureId: Uuid
    workOrderId: Uuid
    signerId: OpaqueId
    verificationResult: Lax[SignatureVerificationResult]
    hashMatch: bool
    certificateValid: bool


class PHIDetected(Payload):
    """compliance.phi_detected (§4.4); carries where PHI was found, never the PHI itself."""

    detectionId: Uuid
    entityType: NonEmptyText
    entityId: OpaqueId
    fieldPath: NonEmptyText = Field(description='e.g. "description", "metadata.notes"')
    confidence: Confidence
    phiType: Lax[PHIType]
    action: Lax[PHIAction]


# --- wo-stream's derived type (issue 4, not in the catalog) -----------------------------------


class CapaAssessmentRequired(Payload):
    """compliance.capa_assessment_required (wo-stream): a violation of severity >= HIGH (§4.1)."""

    violationId: Uuid
    workOrderId: Uuid | None
    regulation: Lax[Regulation]
    requirement: NonEmptyText
    severity: Lax[Severity]
