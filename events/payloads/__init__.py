"""Typed payloads (``data``) of the 23 catalog event types, one module per domain (§2-§7).

wo-stream adds four types of its own (issue 4), in the module of their domain:
resource.certification_recorded (input), work_order.master_progress_updated,
work_order.sla_breached and compliance.capa_assessment_required (derived).

Field names are exactly the catalog's camelCase names; every field is required (the catalog
has no optional members), ``T | null`` fields accept JSON null. Rules shared by all payloads:

Identifiers
    * **UUIDs** (any version, canonical 8-4-4-4-12 form, normalised to lower case): ids the
      platform mints for its own entities and events - workOrderId, masterId, dependsOn[],
      blockedBy[], approvalId, signatureId, violationId, checkId, brokenLinks[].entryId,
      detectionId, taskId, backupId, affectedWorkOrders[]. (The envelope's ``id`` must be a
      UUIDv7; correlationId/causationId are UUIDs of any version.)
    * **Opaque ids** (``OpaqueId``: 1-256 characters, no control characters, no leading or
      trailing whitespace): ids minted outside the work-order service or by identity/asset
      systems we do not control - people (personId, approverId, originalApproverId,
      escalatedToId, signerId, changedBy, actor.id), tools and assets (toolId, assetId),
      resources (resourceId), training records (experienceId), flags (flagId), agents
      (agentNode) and the polymorphic entityId of phi_detected.
    * **Tenant ids** (tenant_provisioned.tenantId, feature_flag_changed.tenantId): the subject
      token alphabet of ``events.subjects``.

Date-times
    Every date-time field is an RFC 3339 string with a UTC offset; naive ones are rejected and
    all are normalised to UTC. This includes the catalog's "date" fields (dueDate,
    expirationDate, calibrationDueDate, ...), which are instants, not calendar dates.

Numbers
    Counts, token numbers, sizes and durations are non-negative; integers stay within
    +/-(2**53 - 1); floats must be finite; confidence is in [0, 1]; variancePercent and the
    days-until fields may be negative (faster than estimated / already overdue).

Free values
    The catalog's ``any`` fields (previousValue/newValue, checkpoint context) accept any JSON
    value.
"""

from events.payloads.agent import (
    AgentCheckpointReached,
    AgentTaskCompleted,
    AgentTaskDispatched,
    CircuitBreakerStateChanged,
)
from events.payloads.approval import (
    ApprovalDecisionSubmitted,
    ApprovalEscalated,
    ApprovalRequested,
)
from events.payloads.base import Payload
from events.payloads.compliance import (
    AuditTrailIntegrityCheck,
    BrokenLink,
    CapaAssessmentRequired,
    ComplianceViolationDetected,
    PHIDetected,
    SignatureVerified,
)
from events.payloads.resource import (
    CertificationExpiring,
    CertificationRecorded,
    ResourceAssigned,
    ToolCalibrationDue,
)
from events.payloads.system import BackupCompleted, FeatureFlagChanged, TenantProvisioned
from events.payloads.workorder import (
    ComplianceSummary,
    FieldChange,
    MasterProgressUpdated,
    SlaBreached,
    WorkOrderBlocked,
    WorkOrderClosed,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderStatusChanged,
    WorkOrderUpdated,
)

__all__ = [
    "AgentCheckpointReached",
    "AgentTaskCompleted",
    "AgentTaskDispatched",
    "ApprovalDecisionSubmitted",
    "ApprovalEscalated",
    "ApprovalRequested",
    "AuditTrailIntegrityCheck",
    "BackupCompleted",
    "BrokenLink",
    "CapaAssessmentRequired",
    "CertificationExpiring",
    "CertificationRecorded",
    "CircuitBreakerStateChanged",
    "ComplianceSummary",
    "ComplianceViolationDetected",
    "FeatureFlagChanged",
    "FieldChange",
    "MasterProgressUpdated",
    "PHIDetected",
    "Payload",
    "ResourceAssigned",
    "SignatureVerified",
    "SlaBreached",
    "TenantProvisioned",
    "ToolCalibrationDue",
    "WorkOrderBlocked",
    "WorkOrderClosed",
    "WorkOrderCompleted",
    "WorkOrderCreated",
    "WorkOrderStatusChanged",
    "WorkOrderUpdated",
]
