"""Tenant-level traffic: provisioning, and the resource, agent, compliance and system background."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from events.enums import (
    BackupType,
    BackupVerificationResult,
    CircuitBreakerState,
    EventSource,
    IntegrityCheckScope,
    PHIAction,
    PHIType,
    Regulation,
    Severity,
    TenantTier,
)
from pipeline.simulate.approvals import violation
from pipeline.simulate.lifecycle import wo_event
from pipeline.simulate.world import (
    AGENT_NODES,
    BACKUP_SERVICE,
    COMPLIANCE_ENGINE,
    DAY_MS,
    ORCHESTRATOR,
    PLATFORM_OPS,
    SCHEDULER,
    Certification,
    Ctx,
    Emit,
    Tenant,
    iso,
)

API = EventSource.WO_API
AGENTS = EventSource.WO_AGENTS
SCHED = EventSource.WO_SCHEDULER
COMPLIANCE = EventSource.WO_COMPLIANCE
CERTIFICATIONS = {
    "GMP": "GMP basics",
    "ASEP": "Aseptic gowning",
    "LOTO": "Lockout/tagout",
    "CAL": "Calibration technician",
}
# The scheduler warns this many days ahead of a certification's expiry.
EXPIRY_NOTICE_DAYS = 30
FAILURE_REASONS = ("model timeout after 30 s", "rate limited by provider", "output failed schema")
FLAGS: dict[str, tuple[Any, ...]] = {
    "e-signature-step-up": (False, True),
    "agent-auto-dispatch": (False, True),
    "approval-sla-hours": (8, 12, 24),
    "phi-scanner-threshold": (0.8, 0.85, 0.9),
}
VIOLATION_REQUIREMENTS = {
    Regulation.HIPAA: "§164.312(b)",
    Regulation.SOC2: "CC6.1",
    Regulation.GDPR: "Art. 44",
}


def tenant_provisioned(ctx: Ctx, tenant: Tenant) -> Emit:
    tenant.provisioned = True
    return Emit(
        "system.tenant_provisioned",
        {
            "tenantId": tenant.id,
            "complianceFrameworks": tenant.frameworks,
            "dataResidencyRegion": tenant.region,
            "tier": str(ctx.rng.choice(list(TenantTier))),
        },
        PLATFORM_OPS,
        API,
    )


def noise(ctx: Ctx, tenant: Tenant) -> Emit:
    """One event not tied to a work order's story: resources, agents, compliance, system."""
    kinds, weights = zip(*_KINDS.values(), strict=True)
    make = ctx.rng.choices(kinds, weights)[0]
    return make(ctx, tenant)


def _midnight(ms: int, days: int = 0) -> int:
    return ms - ms % DAY_MS + days * DAY_MS


def certification_recorded(ctx: Ctx, tenant: Tenant) -> Emit:
    """A technician passes a training (new record) or renews one (same experienceId)."""
    rng = ctx.rng
    if tenant.certifications and ctx.chance(0.4):
        experience_id = rng.choice(sorted(tenant.certifications))
        cert = tenant.certifications[experience_id]
        cert.expires_ms = max(cert.expires_ms, _midnight(ctx.now_ms)) + 365 * DAY_MS
    else:
        code = rng.choice(sorted(CERTIFICATIONS))
        experience_id = f"CERT-{code}-{rng.randint(10_000, 99_999)}"
        person = rng.choice(tenant.people("technician"))
        # Some records are old enough to expire within weeks: expiry warnings follow.
        expires = _midnight(ctx.now_ms, rng.randint(3, 180))
        cert = Certification(person.id, CERTIFICATIONS[code], expires)
        tenant.certifications[experience_id] = cert
    trainer = rng.choice(tenant.people("supervisor"))
    return Emit(
        "resource.certification_recorded",
        {
            "personId": cert.person_id,
            "experienceId": experience_id,
            "certification": cert.name,
            "expirationDate": iso(cert.expires_ms),
        },
        trainer,
        API,
    )


def certification_expiring(ctx: Ctx, tenant: Tenant) -> Emit:
    """The scheduler's warning for a recorded certification that expires soon."""
    soon = {
        experience_id: cert
        for experience_id, cert in sorted(tenant.certifications.items())
        if cert.expires_ms - ctx.now_ms <= EXPIRY_NOTICE_DAYS * DAY_MS
    }
    if not soon:
        return certification_recorded(ctx, tenant)
    experience_id = ctx.rng.choice(sorted(soon))
    cert = soon[experience_id]
    return Emit(
        "resource.certification_expiring",
        {
            "personId": cert.person_id,
            "experienceId": experience_id,
            "expirationDate": iso(cert.expires_ms),
            "daysUntilExpiry": (cert.expires_ms - ctx.now_ms) // DAY_MS,
            "affectedWorkOrders": [w.id for w in tenant.active() if w.assignee == cert.person_id],
        },
        SCHEDULER,
        SCHED,
    )


def tool_calibration_due(ctx: Ctx, tenant: Tenant) -> Emit:
    rng = ctx.rng
    active = tenant.active()
    affected = sorted(rng.sample(active, min(len(active), rng.randint(0, 3))), key=lambda w: w.id)
    days = rng.randint(-2, 14)
    return Emit(
        "resource.tool_calibration_due",
        {
            "toolId": rng.choice(tenant.tools),
            "calibrationDueDate": iso(_midnight(ctx.now_ms, days)),
            "daysUntilDue": days,
            "affectedWorkOrders": [w.id for w in affected],
            "autoGenerateWO": days <= 3,
        },
        SCHEDULER,
        SCHED,
    )


def circuit_breaker(ctx: Ctx, tenant: Tenant) -> Emit:
    """An agent node's breaker moves CLOSED -> OPEN -> HALF_OPEN -> CLOSED (or OPEN again)."""
    rng = ctx.rng
    node = rng.choice(AGENT_NODES)
    state, failures = tenant.breakers.get(node, (str(CircuitBreakerState.CLOSED), 0))
    nxt = {
        "CLOSED": CircuitBreakerState.OPEN,
        "OPEN": CircuitBreakerState.HALF_OPEN,
        "HALF_OPEN": rng.choice((CircuitBreakerState.CLOSED, CircuitBreakerState.OPEN)),
    }[state]
    failures = 0 if nxt is CircuitBreakerState.CLOSED else failures + rng.randint(1, 5)
    tenant.breakers[node] = (str(nxt), failures)
    return Emit(
        "agent.circuit_breaker_state_changed",
        {
            "agentNode": node,
            "previousState": state,
            "newState": str(nxt),
            "failureCount": failures,
            "lastFailureReason": rng.choice(FAILURE_REASONS),
        },
        ORCHESTRATOR,
        AGENTS,
    )


def integrity_check(ctx: Ctx, tenant: Tenant) -> Emit:
    """Audit-trail hash-chain check; rarely broken (a P0 incident downstream)."""
    rng = ctx.rng
    intact = not ctx.chance(0.03)
    broken = []
    if not intact:
        broken = [
            {
                "entryId": ctx.new_id(),
                "expectedHash": f"{rng.getrandbits(256):064x}",
                "actualHash": f"{rng.getrandbits(256):064x}",
            }
        ]
    full = ctx.chance(0.2)
    verified = tenant.audit_entries if full else rng.randint(0, min(tenant.audit_entries, 500))
    scope = IntegrityCheckScope.FULL if full else IntegrityCheckScope.INCREMENTAL
    return Emit(
        "compliance.audit_trail_integrity_check",
        {
            "checkId": ctx.new_id(),
            "scope": str(scope),
            "entriesVerified": verified,
            "chainIntact": intact,
            "brokenLinks": broken,
            "verifiedAt": iso(ctx.now_ms),
        },
        COMPLIANCE_ENGINE,
        COMPLIANCE,
        True,
    )


def phi_detected(ctx: Ctx, tenant: Tenant) -> Emit:
    rng = ctx.rng
    active = tenant.active()
    if not active:
        return integrity_check(ctx, tenant)
    wo = rng.choice(active)
    confidence = round(rng.uniform(0.55, 0.99), 2)
    # High-confidence hits are blocked outright; the rest go to a human.
    action = PHIAction.BLOCKED if confidence >= 0.9 else PHIAction.FLAGGED_FOR_REVIEW
    return wo_event(
        wo,
        "compliance.phi_detected",
        {
            "detectionId": ctx.new_id(),
            "entityType": "work_order",
            "entityId": wo.id,
            "fieldPath": rng.choice(("description", "metadata.notes", "comments")),
            "confidence": confidence,
            "phiType": str(rng.choice(list(PHIType))),
            "action": str(action),
        },
        COMPLIANCE_ENGINE,
        COMPLIANCE,
    )


def other_violation(ctx: Ctx, tenant: Tenant) -> Emit:
    """A HIPAA/SOC 2/GDPR finding, on a work order or on the tenant as a whole."""
    rng = ctx.rng
    regulation = rng.choice(sorted(VIOLATION_REQUIREMENTS))
    active = tenant.active()
    wo = rng.choice(active) if active and ctx.chance(0.5) else None
    severity = rng.choice(list(Severity))
    return violation(ctx, wo, regulation, VIOLATION_REQUIREMENTS[regulation], severity)


def feature_flag_changed(ctx: Ctx, tenant: Tenant) -> Emit:
    rng = ctx.rng
    flag = rng.choice(sorted(FLAGS))
    values = FLAGS[flag]
    previous = tenant.flags.get(flag, values[0])
    new = rng.choice([v for v in values if v != previous])
    tenant.flags[flag] = new
    admin = rng.choice(tenant.people("tenant_admin"))
    is_global = ctx.chance(0.15)
    actor = PLATFORM_OPS if is_global else admin
    return Emit(
        "system.feature_flag_changed",
        {
            "flagId": flag,
            "tenantId": None if is_global else tenant.id,
            "previousValue": previous,
            "newValue": new,
            "changedBy": actor.id,
        },
        actor,
        API,
        # The signature step-up changes a Part 11 control: regulatory.
        flag == "e-signature-step-up",
    )


def backup_completed(ctx: Ctx, tenant: Tenant) -> Emit:
    rng = ctx.rng
    backup_type = rng.choices(list(BackupType), (2, 10, 3))[0]
    size = {BackupType.FULL: 2**34, BackupType.WAL: 2**26, BackupType.SNAPSHOT: 2**32}[backup_type]
    failed = ctx.chance(0.03)
    result = BackupVerificationResult.FAILED if failed else BackupVerificationResult.VERIFIED
    return Emit(
        "system.backup_completed",
        {
            "backupId": ctx.new_id(),
            "type": str(backup_type),
            "sizeBytes": rng.randint(size // 4, size),
            "durationSeconds": round(rng.uniform(2, 900), 1),
            "verificationResult": str(result),
        },
        BACKUP_SERVICE,
        SCHED,
    )


# Kind -> (maker, relative weight).
_KINDS: dict[str, tuple[Callable[[Ctx, Tenant], Emit], float]] = {
    "certification_recorded": (certification_recorded, 6),
    "certification_expiring": (certification_expiring, 6),
    "tool_calibration_due": (tool_calibration_due, 10),
    "circuit_breaker": (circuit_breaker, 8),
    "integrity_check": (integrity_check, 8),
    "phi_detected": (phi_detected, 8),
    "violation": (other_violation, 3),
    "feature_flag_changed": (feature_flag_changed, 6),
    "backup_completed": (backup_completed, 8),
}
