"""Building blocks of work-order traffic: creation, status transitions with guards, versions."""

from __future__ import annotations

from typing import Any

from events.enums import (
    EventSource,
    Priority,
    WorkOrderStatus,
    WorkOrderType,
)
from pipeline.simulate.world import (
    HOUR_MS,
    SCHEDULER,
    Actor,
    Ctx,
    Emit,
    Tenant,
    WorkOrder,
    iso,
    quarter_hour,
)

S = WorkOrderStatus
API = EventSource.WO_API
AGENTS = EventSource.WO_AGENTS
SCHED = EventSource.WO_SCHEDULER
COMPLIANCE = EventSource.WO_COMPLIANCE

# Work-order types that are GxP-relevant most of the time.
USUALLY_REGULATORY = frozenset(
    {
        WorkOrderType.CALIBRATION,
        WorkOrderType.QUALIFICATION,
        WorkOrderType.VALIDATION,
        WorkOrderType.DEVIATION,
        WorkOrderType.CAPA,
        WorkOrderType.CHANGE_CONTROL,
    }
)
CHILD_TYPES = [t for t in WorkOrderType if t is not WorkOrderType.MASTER]
PRIORITIES = (Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL)
PRIORITY_WEIGHTS = (25, 45, 22, 8)
TITLES = {
    WorkOrderType.PREVENTIVE_MAINTENANCE: "Preventive maintenance of {asset}",
    WorkOrderType.CORRECTIVE_MAINTENANCE: "Repair {asset} after alarm",
    WorkOrderType.CALIBRATION: "Calibrate sensors of {asset}",
    WorkOrderType.QUALIFICATION: "OQ/PQ of {asset}",
    WorkOrderType.VALIDATION: "Cleaning validation run on {asset}",
    WorkOrderType.CLEANING: "Clean and sanitise {asset}",
    WorkOrderType.INSPECTION: "Routine inspection of {asset}",
    WorkOrderType.DEVIATION: "Investigate temperature excursion on {asset}",
    WorkOrderType.CAPA: "CAPA: replace seal design on {asset}",
    WorkOrderType.CHANGE_CONTROL: "Implement change control on {asset}",
    WorkOrderType.AUDIT: "Internal audit of {asset} records",
}
MASTER_TITLES = (
    "Annual shutdown of {asset}",
    "Requalification campaign for {asset}",
    "Line changeover around {asset}",
)
REASONS = {
    S.PLANNED: "Scope reviewed and accepted",
    S.SCHEDULED: "Slot and assignee confirmed",
    S.IN_PROGRESS: "Work started on the floor",
    S.ON_HOLD: "Waiting for spare parts",
    S.BLOCKED: "Start guard failed",
    S.PENDING_REVIEW: "Execution finished, records attached",
    S.APPROVED: "All approvals signed",
    S.REJECTED: "Reviewer rejected the execution record",
    S.COMPLETED: "Work and approvals done",
    S.CLOSED: "Compliance summary generated",
    S.CANCELLED: "Duplicate request",
}
GUARDS = {
    S.PLANNED: ["required_fields_present"],
    S.SCHEDULED: ["resource_assigned", "schedule_window_valid"],
    S.IN_PROGRESS: ["dependencies_met", "resource_certified", "tool_calibrated"],
    S.ON_HOLD: [],
    S.BLOCKED: [],
    S.PENDING_REVIEW: ["execution_record_complete"],
    S.APPROVED: ["approvals_complete", "signatures_valid"],
    S.REJECTED: [],
    S.COMPLETED: ["approvals_complete"],
    S.CLOSED: ["compliance_summary_generated"],
    S.CANCELLED: [],
}


def wo_event(
    wo: WorkOrder, type_: str, data: dict[str, Any], actor: Actor, source: EventSource = API
) -> Emit:
    """An event about `wo`; it counts towards the audit entries of its compliance summary."""
    wo.audit_entries += 1
    return Emit(type_, data, actor, source, regulatory=wo.regulatory)


def transition(
    ctx: Ctx,
    wo: WorkOrder,
    new: WorkOrderStatus,
    actor: Actor,
    *,
    failed: list[str] | None = None,
    reason: str | None = None,
    source: EventSource = API,
) -> Emit:
    """work_order.status_changed, keeping the simulator's status and version in step."""
    failed = failed or []
    evaluated = [g for g in GUARDS.get(new, []) if g not in failed]
    if reason is None:
        if wo.regulatory:
            # Regulatory transitions need a reason; a few arrive without one (a compliance gap
            # the pipeline has to notice).
            if ctx.chance(0.06):
                wo.deviations += 1
            else:
                reason = REASONS[new]
        elif ctx.chance(0.3):
            reason = REASONS[new]
    previous, wo.status = wo.status, new
    wo.version += 1
    data = {
        "workOrderId": wo.id,
        "previousStatus": str(previous),
        "newStatus": str(new),
        "reason": reason,
        "guardsEvaluated": evaluated,
        "guardsFailed": failed,
        "version": wo.version,
    }
    return wo_event(wo, "work_order.status_changed", data, actor, source)


def new_work_order(
    ctx: Ctx,
    tenant: Tenant,
    type_: WorkOrderType,
    *,
    master: WorkOrder | None = None,
    depends_on: list[WorkOrder] | None = None,
) -> WorkOrder:
    rng = ctx.rng
    regulatory = ctx.chance(0.8 if type_ in USUALLY_REGULATORY else 0.25)
    if master is not None and master.regulatory:
        regulatory = True  # a regulated campaign regulates its parts
    estimated = rng.choice((1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0))
    start = quarter_hour(ctx.after(0.5, 4.0))
    wo = WorkOrder(
        id=ctx.new_id(),
        type=type_,
        regulatory=regulatory,
        priority=rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0],
        created_ms=ctx.now_ms,
        estimated_hours=estimated,
        scheduled_start_ms=start,
        scheduled_end_ms=start + round(estimated * HOUR_MS),
        master_id=master.id if master else None,
        depends_on=depends_on or [],
    )
    tenant.work_orders[wo.id] = wo
    return wo


def created(ctx: Ctx, tenant: Tenant, wo: WorkOrder, title: str, asset_id: str | None) -> Emit:
    wo.announced = True
    planner = ctx.rng.choice(tenant.people("planner"))
    by_scheduler = wo.type is WorkOrderType.PREVENTIVE_MAINTENANCE and ctx.chance(0.6)
    data = {
        "workOrderId": wo.id,
        "type": str(wo.type),
        "regulatory": wo.regulatory,
        "priority": str(wo.priority),
        "title": title,
        "assetId": asset_id,
        "masterId": wo.master_id,
        "dependsOn": [d.id for d in wo.depends_on],
        "scheduledStart": iso(wo.scheduled_start_ms),
        "scheduledEnd": iso(wo.scheduled_end_ms),
    }
    if by_scheduler:
        return wo_event(wo, "work_order.created", data, SCHEDULER, SCHED)
    return wo_event(wo, "work_order.created", data, planner)


# -- one work order's life ----------------------------------------------------------------
