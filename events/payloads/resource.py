"""Resource payloads (catalog §6): assigned, certification_expiring, tool_calibration_due."""

from __future__ import annotations

from pydantic import Field

from events.enums import ResourceRole, ResourceType
from events.payloads.base import Payload
from events.primitives import Lax, OpaqueId, SignedInt, UtcDateTime, Uuid


class ResourceAssigned(Payload):
    """resource.assigned (§6.1)."""

    workOrderId: Uuid
    resourceType: Lax[ResourceType]
    resourceId: OpaqueId
    role: Lax[ResourceRole]
    scheduledStart: UtcDateTime
    scheduledEnd: UtcDateTime


class CertificationExpiring(Payload):
    """resource.certification_expiring (§6.2)."""

    personId: OpaqueId
    experienceId: OpaqueId
    expirationDate: UtcDateTime
    daysUntilExpiry: SignedInt = Field(description="Negative once the certification has expired")
    affectedWorkOrders: list[Uuid]


class ToolCalibrationDue(Payload):
    """resource.tool_calibration_due (§6.3)."""

    toolId: OpaqueId
    calibrationDueDate: UtcDateTime
    daysUntilDue: SignedInt = Field(description="Negative when calibration is overdue")
    affectedWorkOrders: list[Uuid]
    autoGenerateWO: bool
