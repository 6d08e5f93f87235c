"""Enums of the event catalog: its literal unions, plus the four enums it names but never defines.

Two kinds live here:

* **Catalog enums** - every ``"A" | "B"`` literal union of the catalog (§1.2, §3-§7) became a
  ``StrEnum`` whose values are exactly the catalog's strings.
* **Our definitions** - the catalog uses ``WorkOrderType``, ``WorkOrderStatus``, ``Priority`` and
  ``ApprovalRole`` without defining them (they live in documents we do not have). The values
  below are wo-stream's definitions for a GMP/QMS work-order system; they are marked
  "(our definition)" and must be reconciled with the platform's state machine when it is
  published. Two further enums, ``EventSource`` and ``ModelTier``, list values that the catalog
  only mentions in comments on ``string`` fields; the fields stay strings (a new producer or
  model tier must not break the contract), the enums exist for producers' convenience.

All are ``StrEnum``: a member compares equal to its JSON string and serialises as that string.
"""

from __future__ import annotations

from enum import StrEnum

# --- Our definitions (not in the catalog) ---------------------------------------------------


class WorkOrderType(StrEnum):
    """Kind of work order (our definition; the catalog names the type but does not define it).

    PREVENTIVE_MAINTENANCE: scheduled maintenance of equipment to prevent failure.
    CORRECTIVE_MAINTENANCE: repair after a failure or malfunction.
    CALIBRATION: calibration of an instrument or tool against a traceable standard.
    QUALIFICATION: equipment/system qualification (IQ/OQ/PQ).
    VALIDATION: process, method or computerised-system validation (e.g. CSV for Part 11).
    CLEANING: cleaning/sanitisation of equipment or areas, with its verification.
    INSPECTION: inspection or routine check of an asset or area.
    DEVIATION: investigation of a deviation from an approved procedure or specification.
    CAPA: corrective and preventive action.
    CHANGE_CONTROL: implementation of an approved change under change control.
    AUDIT: internal or supplier audit activity.
    MASTER: a master work order that groups linked work orders (the catalog's ``masterId``).
    """

    PREVENTIVE_MAINTENANCE = "PREVENTIVE_MAINTENANCE"
    CORRECTIVE_MAINTENANCE = "CORRECTIVE_MAINTENANCE"
    CALIBRATION = "CALIBRATION"
    QUALIFICATION = "QUALIFICATION"
    VALIDATION = "VALIDATION"
    CLEANING = "CLEANING"
    INSPECTION = "INSPECTION"
    DEVIATION = "DEVIATION"
    CAPA = "CAPA"
    CHANGE_CONTROL = "CHANGE_CONTROL"
    AUDIT = "AUDIT"
    MASTER = "MASTER"


class WorkOrderStatus(StrEnum):
    """Lifecycle state of a work order (our definition; the catalog names it only).

    DRAFT: being written, not yet submitted.
    PLANNED: accepted and planned, no slot yet.
    SCHEDULED: has a scheduled start/end and resources.
    IN_PROGRESS: work is being executed.
    ON_HOLD: paused deliberately (e.g. waiting for parts or a decision).
    BLOCKED: cannot proceed because of a dependency or a failed guard.
    PENDING_REVIEW: execution finished, awaiting review/approval.
    APPROVED: review passed (signed where regulatory).
    REJECTED: review failed; needs rework or cancellation.
    COMPLETED: work and its approvals are done.
    CLOSED: final; the record is immutable (catalog §2.6).
    CANCELLED: abandoned before completion; terminal.
    """

    DRAFT = "DRAFT"
    PLANNED = "PLANNED"
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    ON_HOLD = "ON_HOLD"
    BLOCKED = "BLOCKED"
    PENDING_REVIEW = "PENDING_REVIEW"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    COMPLETED = "COMPLETED"
    CLOSED = "CLOSED"
    CANCELLED = "CANCELLED"


class Priority(StrEnum):
    """Work-order priority (our definition; same ladder as the catalog's ``Severity``).

    LOW: routine, no impact if delayed.
    MEDIUM: normal business priority.
    HIGH: affects production or compliance if delayed.
    CRITICAL: product quality, patient safety or a regulatory commitment is at stake.
    """

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class ApprovalRole(StrEnum):
    """Role in which an approver signs (our definition; the catalog names it only).

    SUPERVISOR: line/area supervisor approving execution.
    TECHNICAL_REVIEWER: subject-matter expert reviewing technical content.
    SYSTEM_OWNER: owner of the equipment or computerised system.
    QUALITY_ASSURANCE: QA approval (the GMP quality unit).
    VALIDATION: validation lead (qualification/validation work orders).
    REGULATORY_AFFAIRS: regulatory affairs sign-off.
    """

    SUPERVISOR = "SUPERVISOR"
    TECHNICAL_REVIEWER = "TECHNICAL_REVIEWER"
    SYSTEM_OWNER = "SYSTEM_OWNER"
    QUALITY_ASSURANCE = "QUALITY_ASSURANCE"
    VALIDATION = "VALIDATION"
    REGULATORY_AFFAIRS = "REGULATORY_AFFAIRS"


class EventSource(StrEnum):
    """Known producers for the envelope's ``source`` (catalog §1.2 comment, plus ``wo-stream``).

    The field itself is a lower-case token, not this enum: a new producer must not make its
    events unparseable. WO_STREAM (our addition) is this pipeline, the source of derived events.
    """

    WO_API = "wo-api"
    WO_AGENTS = "wo-agents"
    WO_SCHEDULER = "wo-scheduler"
    WO_COMPLIANCE = "wo-compliance"
    WO_STREAM = "wo-stream"


class ModelTier(StrEnum):
    """Known values of ``agent.task_dispatched.modelAssignment`` (catalog §5.1 comment).

    The field itself is a non-empty string: model tiers change faster than event schemas.
    """

    HAIKU = "haiku"
    SONNET = "sonnet"
    OPUS = "opus"


# --- Catalog enums (literal unions of the catalog) ------------------------------------------


class ActorType(StrEnum):
    """Kind of actor behind an event (§1.2 ``actor.type``)."""

    HUMAN = "HUMAN"
    AGENT = "AGENT"
    SYSTEM = "SYSTEM"


class DataClassification(StrEnum):
    """Data classification of an event (§1.2 ``metadata.dataClassification``).

    L0 public, L1 internal-low, L2 internal, L3 confidential, L4 regulated (per the catalog's
    tables: "L2 (Internal)", "L3 (Confidential)", "L4 (Regulated)").
    """

    L0 = "L0"
    L1 = "L1"
    L2 = "L2"
    L3 = "L3"
    L4 = "L4"


class ApprovalDecision(StrEnum):
    """Decision on an approval (§3.2 ``decision``)."""

    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    RETURNED_FOR_REVISION = "RETURNED_FOR_REVISION"


class EscalationReason(StrEnum):
    """Why an approval was escalated (§3.3 ``reason``)."""

    OVERDUE = "OVERDUE"
    DELEGATION = "DELEGATION"
    RISK_ESCALATION = "RISK_ESCALATION"


class Regulation(StrEnum):
    """Regulation a violation is against (§4.1 ``regulation``)."""

    FDA_21_CFR_11 = "FDA_21_CFR_11"
    HIPAA = "HIPAA"
    SOC2 = "SOC2"
    GDPR = "GDPR"


class Severity(StrEnum):
    """Severity of a compliance violation (§4.1 ``severity``); CAPA assessment from HIGH up."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class IntegrityCheckScope(StrEnum):
    """Scope of an audit-trail integrity check (§4.2 ``scope``)."""

    FULL = "FULL"
    INCREMENTAL = "INCREMENTAL"


class SignatureVerificationResult(StrEnum):
    """Outcome of an electronic-signature verification (§4.3 ``verificationResult``)."""

    VALID = "VALID"
    INVALID = "INVALID"
    EXPIRED_KEY = "EXPIRED_KEY"


class PHIType(StrEnum):
    """Kind of protected health information detected (§4.4 ``phiType``)."""

    NAME = "NAME"
    MRN = "MRN"
    DOB = "DOB"
    SSN = "SSN"
    ADDRESS = "ADDRESS"
    PHONE = "PHONE"
    EMAIL = "EMAIL"
    OTHER = "OTHER"


class PHIAction(StrEnum):
    """What was done about detected PHI (§4.4 ``action``)."""

    BLOCKED = "BLOCKED"
    FLAGGED_FOR_REVIEW = "FLAGGED_FOR_REVIEW"


class AgentPattern(StrEnum):
    """Orchestration pattern of an agent task (§5.1 ``pattern``)."""

    CHAIN = "CHAIN"
    ROUTE = "ROUTE"
    PARALLEL = "PARALLEL"
    ORCH_WORKERS = "ORCH_WORKERS"
    EVAL_OPT = "EVAL_OPT"


class AgentTaskResult(StrEnum):
    """Outcome of an agent task (§5.2 ``result``)."""

    SUCCESS = "SUCCESS"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"


class CircuitBreakerState(StrEnum):
    """State of an agent node's circuit breaker (§5.3)."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class CheckpointType(StrEnum):
    """Kind of agent checkpoint (§5.4 ``checkpointType``)."""

    ARCHITECTURE_DECISION = "ARCHITECTURE_DECISION"
    COMPLIANCE_GATE = "COMPLIANCE_GATE"
    SECURITY_FINDING = "SECURITY_FINDING"
    BLOCKER = "BLOCKER"


class ResourceType(StrEnum):
    """Kind of resource assigned to a work order (§6.1 ``resourceType``)."""

    PERSON = "PERSON"
    TEAM = "TEAM"
    VENDOR = "VENDOR"


class ResourceRole(StrEnum):
    """Role of an assigned resource (§6.1 ``role``)."""

    ASSIGNEE = "ASSIGNEE"
    VENDOR = "VENDOR"


class TenantTier(StrEnum):
    """Commercial tier of a tenant (§7.1 ``tier``)."""

    STARTER = "STARTER"
    PROFESSIONAL = "PROFESSIONAL"
    ENTERPRISE = "ENTERPRISE"


class BackupType(StrEnum):
    """Kind of backup (§7.3 ``type``)."""

    FULL = "FULL"
    WAL = "WAL"
    SNAPSHOT = "SNAPSHOT"


class BackupVerificationResult(StrEnum):
    """Outcome of a backup's verification (§7.3 ``verificationResult``)."""

    VERIFIED = "VERIFIED"
    FAILED = "FAILED"


# --- Enums of wo-stream's own event types (issue 4, not in the catalog) ---------------------


class SlaBreachType(StrEnum):
    """Kind of SLA breach of ``work_order.sla_breached`` (wo-stream's derived type).

    LATE_COMPLETION: completedAt is after scheduledEnd.
    OVERDUE_OPEN: the work order is still open after its scheduledEnd (timer, once per order).
    DURATION_OVERRUN: variancePercent exceeds the tenant's threshold (default 20 %).
    """

    LATE_COMPLETION = "LATE_COMPLETION"
    OVERDUE_OPEN = "OVERDUE_OPEN"
    DURATION_OVERRUN = "DURATION_OVERRUN"
