"""Resource payloads (catalog §6) and wo-stream's input type certification_recorded."""

from __future__ import annotations

from pydantic import Field

from events.enums import ResourceRole, ResourceType
from events.payloads.base import Payload
from events.primitives import Lax, NonEmptyText, OpaqueId, SignedInt, UtcDateTime, Uuid


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


# --- wo-stream's input type (issue 4, not in the catalog) -------------------------------------


class CertificationRecorded(Payload):
    """resource.certification_recorded (wo-stream input): a person holds a certification.

    ``experienceId`` identifies the training record; a later event with the same id and a new
    expirationDate is a renewal.
    """

    personId: OpaqueId
    experienceId: OpaqueId
    certification: NonEmptyText = Field(description="Name of the certification")
    expirationDate: UtcDateTime
