"""System payloads (catalog §7): tenant_provisioned, feature_flag_changed, backup_completed."""

from __future__ import annotations

from pydantic import Field, JsonValue

from events.enums import BackupType, BackupVerificationResult, TenantTier
from events.payloads.base import Payload
from events.primitives import Count, Lax, NonEmptyText, NonNegativeFloat, OpaqueId, TenantId, Uuid


class TenantProvisioned(Payload):
    """system.tenant_provisioned (§7.1)."""

    tenantId: TenantId
    complianceFrameworks: list[NonEmptyText]
    dataResidencyRegion: NonEmptyText
    tier: Lax[TenantTier]


class FeatureFlagChanged(Payload):
    """system.feature_flag_changed (§7.2); regulatory flags require an audit entry."""

    flagId: OpaqueId
    tenantId: TenantId | None = Field(description="null = global flag")
    previousValue: JsonValue
    newValue: JsonValue
    changedBy: OpaqueId


class BackupCompleted(Payload):
    """system.backup_completed (§7.3)."""

    backupId: Uuid
    type: Lax[BackupType]
    sizeBytes: Count
    durationSeconds: NonNegativeFloat
    verificationResult: Lax[BackupVerificationResult]
