"""Kafka record keys ``{tenantId}:{entityId}``: which entity each event type is ordered by.

Kafka keeps order per partition and the partition follows the key, so an event's key names the
entity whose events must stay in order. The tenant comes first, so two tenants' entities never
share a key (and a tenant id, one ``[A-Za-z0-9_-]`` token, can never contain the ``:``).

Entity per event type (``data.<field>``; "tenant" = the envelope ``tenantId``):

==========================================  ==================  ================================
event type                                  entity              why
==========================================  ==================  ================================
work_order.created                          workOrderId         the work order's lifecycle
work_order.status_changed                   workOrderId         (status sequence must hold)
work_order.updated                          workOrderId
work_order.blocked                          workOrderId
work_order.completed                        workOrderId
work_order.closed                           workOrderId
work_order.sla_breached                     workOrderId         (derived by wo-stream)
work_order.master_progress_updated          masterId            the master work order
approval.requested                          approvalId          an approval's request ->
approval.decision_submitted                 approvalId          decision / escalation
approval.escalated                          approvalId
compliance.violation_detected               workOrderId         the work order it concerns;
                                                                tenant when workOrderId is null
compliance.audit_trail_integrity_check      tenant              checks the tenant's audit trail
compliance.signature_verified               workOrderId         the signed work order
compliance.phi_detected                     entityId            the record PHI was found in
compliance.capa_assessment_required         workOrderId         as its violation_detected;
                                                                tenant when workOrderId is null
agent.task_dispatched                       workOrderId         a task's dispatch -> checkpoint
agent.checkpoint_reached                    workOrderId         -> completion, in line with the
agent.task_completed                        workOrderId         work order it serves
agent.circuit_breaker_state_changed         agentNode           the agent node's breaker states
resource.assigned                           workOrderId         (re)assignments of a work order
resource.certification_expiring             personId            the person
resource.certification_recorded             personId            the person
resource.tool_calibration_due               toolId              the tool
system.tenant_provisioned                   tenantId (data)     the provisioned tenant
system.feature_flag_changed                 tenant              the tenant's configuration
system.backup_completed                     tenant              the tenant's backups
==========================================  ==================  ================================

A type without an entry here (a type registered later), or a null entity field, falls back to
the tenant: the coarsest key, which can only make ordering stricter, never weaker. Agent task
events are keyed by work order rather than task because one task serves one work order, so
the work order's order implies the task's.
"""

from __future__ import annotations

from typing import Final

from events.envelope import DomainEvent

TENANT: Final = "@tenant"
"""Marker entity: key by the envelope's tenant."""

ENTITY_FIELD: Final[dict[str, str]] = {
    "work_order.created": "workOrderId",
    "work_order.status_changed": "workOrderId",
    "work_order.updated": "workOrderId",
    "work_order.blocked": "workOrderId",
    "work_order.completed": "workOrderId",
    "work_order.closed": "workOrderId",
    "work_order.sla_breached": "workOrderId",
    "work_order.master_progress_updated": "masterId",
    "approval.requested": "approvalId",
    "approval.decision_submitted": "approvalId",
    "approval.escalated": "approvalId",
    "compliance.violation_detected": "workOrderId",
    "compliance.audit_trail_integrity_check": TENANT,
    "compliance.signature_verified": "workOrderId",
    "compliance.phi_detected": "entityId",
    "compliance.capa_assessment_required": "workOrderId",
    "agent.task_dispatched": "workOrderId",
    "agent.task_completed": "workOrderId",
    "agent.checkpoint_reached": "workOrderId",
    "agent.circuit_breaker_state_changed": "agentNode",
    "resource.assigned": "workOrderId",
    "resource.certification_expiring": "personId",
    "resource.certification_recorded": "personId",
    "resource.tool_calibration_due": "toolId",
    "system.tenant_provisioned": "tenantId",
    "system.feature_flag_changed": TENANT,
    "system.backup_completed": TENANT,
}


def entity_id(event: DomainEvent) -> str:
    """The id of the entity ``event`` is ordered by (see the module table)."""
    field = ENTITY_FIELD.get(event.type, TENANT)
    if field == TENANT:
        return event.tenantId
    value = getattr(event.data, field, None)
    # A nullable entity (violation without a work order) or a field a future major renamed.
    if not isinstance(value, str) or not value:
        return event.tenantId
    return value


def record_key(event: DomainEvent) -> str:
    """The Kafka record key ``{tenantId}:{entityId}`` of ``event``."""
    return f"{event.tenantId}:{entity_id(event)}"
