"""Work-order payloads (§2) and wo-stream's derived master_progress_updated and sla_breached."""

from __future__ import annotations

from pydantic import Field, JsonValue

from events.base import ContractModel
from events.enums import Priority, SlaBreachType, WorkOrderStatus, WorkOrderType
from events.payloads.base import Payload
from events.primitives import (
    Count,
    Lax,
    NonEmptyText,
    NonNegativeFloat,
    OpaqueId,
    Percent,
    PositiveInt,
    UtcDateTime,
    Uuid,
)


class WorkOrderCreated(Payload):
    """work_order.created (§2.1)."""

    workOrderId: Uuid
    type: Lax[WorkOrderType]
    regulatory: bool
    priority: Lax[Priority]
    title: NonEmptyText
    assetId: OpaqueId | None
    masterId: Uuid | None
    dependsOn: list[Uuid]
    scheduledStart: UtcDateTime | None
    scheduledEnd: UtcDateTime | None


class WorkOrderStatusChanged(Payload):
    """work_order.status_changed (§2.2)."""

    workOrderId: Uuid
    previousStatus: Lax[WorkOrderStatus]
    newStatus: Lax[WorkOrderStatus]
    # The catalog requires a reason for regulatory work orders; the payload does not say
    # whether the work order is regulatory, so that rule belongs to the producer/state machine.
    reason: str | None
    guardsEvaluated: list[NonEmptyText] = Field(description="Guard names that passed")
    guardsFailed: list[NonEmptyText] = Field(description="Empty if the transition succeeded")
    version: PositiveInt = Field(description="Work-order version after the transition")


class FieldChange(ContractModel):
    """One changed field of work_order.updated; values are any JSON value."""

    field: NonEmptyText
    previousValue: JsonValue
    newValue: JsonValue


class WorkOrderUpdated(Payload):
    """work_order.updated (§2.3)."""

    workOrderId: Uuid
    changedFields: list[FieldChange]
    version: PositiveInt


class WorkOrderBlocked(Payload):
    """work_order.blocked (§2.4)."""

    workOrderId: Uuid
    masterId: Uuid | None
    blockReason: NonEmptyText
    blockedBy: list[Uuid] = Field(description="Dependency work-order ids if dependency-blocked")
    estimatedUnblockDate: UtcDateTime | None


class WorkOrderCompleted(Payload):
    """work_order.completed (§2.5)."""

    workOrderId: Uuid
    masterId: Uuid | None
    completedAt: UtcDateTime
    actualDurationHours: NonNegativeFloat
    estimatedDurationHours: NonNegativeFloat
    variancePercent: float = Field(description="Signed: negative when faster than estimated")


class ComplianceSummary(ContractModel):
    """Final compliance summary of a closed work order (§2.6)."""

    auditEntries: Count
    signatures: Count
    deviations: Count
    capaRequired: bool


class WorkOrderClosed(Payload):
    """work_order.closed (§2.6); the record becomes immutable."""

    workOrderId: Uuid
    closedAt: UtcDateTime
    totalDurationHours: NonNegativeFloat
    approvalCount: Count
    linkedWOCount: Count
    complianceSummary: ComplianceSummary


# --- wo-stream's derived types (issue 4, not in the catalog) ---------------------------------


class MasterProgressUpdated(Payload):
    """work_order.master_progress_updated (wo-stream): a child of a master work order changed.

    Progress counts a master's linked children (children link through ``created.masterId``).
    """

    masterId: Uuid
    totalChildren: Count
    completedChildren: Count = Field(description="Children that are COMPLETED or CLOSED")
    blockedChildren: Count
    inProgressChildren: Count
    progressPercent: Percent = Field(description="completedChildren / totalChildren * 100")
    lastChangedChildId: Uuid


class SlaBreached(Payload):
    """work_order.sla_breached (wo-stream): a work order missed its schedule or estimate."""

    workOrderId: Uuid
    masterId: Uuid | None
    breachType: Lax[SlaBreachType]
    scheduledEnd: UtcDateTime | None = Field(description="null when the order has no schedule")
    completedAt: UtcDateTime | None = Field(description="null for OVERDUE_OPEN")
    variancePercent: float | None = Field(description="null for OVERDUE_OPEN")
