"""Work-order stories: one work order's life from creation to closure; masters with children."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from events.enums import (
    ActorType,
    AgentPattern,
    AgentTaskResult,
    ApprovalRole,
    CheckpointType,
    ModelTier,
    Priority,
    ResourceRole,
    ResourceType,
    WorkOrderType,
)
from pipeline.simulate.approvals import approval, approval_roles
from pipeline.simulate.lifecycle import (
    AGENTS,
    CHILD_TYPES,
    MASTER_TITLES,
    PRIORITIES,
    REASONS,
    SCHED,
    TITLES,
    S,
    created,
    new_work_order,
    transition,
    wo_event,
)
from pipeline.simulate.world import (
    AGENT_NODES,
    HOUR_MS,
    MINUTE_MS,
    ORCHESTRATOR,
    SCHEDULER,
    Actor,
    Ctx,
    Sleep,
    Spawn,
    Step,
    Story,
    Tenant,
    WaitFor,
    WorkOrder,
    iso,
)


def work_order_story(
    ctx: Ctx, tenant: Tenant, *, master: WorkOrder | None = None, wo: WorkOrder | None = None
) -> Story:
    """Created -> planned -> scheduled -> in progress -> review -> completed -> closed."""
    rng = ctx.rng
    if wo is None:
        wo = new_work_order(ctx, tenant, rng.choice(CHILD_TYPES), master=master)
    asset_id, asset_name = rng.choice(tenant.assets)
    title = TITLES[wo.type].format(asset=asset_name)
    planner = rng.choice(tenant.people("planner"))
    tech = rng.choice(tenant.people("technician"))
    wo.assignee = tech.id

    if wo.depends_on:
        # A work order can only name dependencies that exist already.
        yield WaitFor(lambda: all(d.announced for d in wo.depends_on))
    yield created(ctx, tenant, wo, title, asset_id)
    yield Sleep(ctx.after(0.1, 1.0))
    if master is None and ctx.chance(0.04):
        yield transition(ctx, wo, S.CANCELLED, planner)
        return
    yield transition(ctx, wo, S.PLANNED, planner)
    yield wo_event(
        wo,
        "resource.assigned",
        {
            "workOrderId": wo.id,
            "resourceType": str(ResourceType.PERSON),
            "resourceId": tech.id,
            "role": str(ResourceRole.ASSIGNEE),
            "scheduledStart": iso(wo.scheduled_start_ms),
            "scheduledEnd": iso(wo.scheduled_end_ms),
        },
        planner,
    )
    yield transition(ctx, wo, S.SCHEDULED, planner)
    yield Sleep(max(ctx.now_ms, wo.scheduled_start_ms + rng.randint(-20, 45) * MINUTE_MS))

    waiting = [d for d in wo.depends_on if not d.done]
    if waiting:
        # The start guard fails: the work order is blocked until its dependencies are done.
        yield transition(ctx, wo, S.BLOCKED, tech, failed=["dependencies_met"])
        unblock = max(d.scheduled_end_ms for d in waiting)
        yield wo_event(
            wo,
            "work_order.blocked",
            {
                "workOrderId": wo.id,
                "masterId": wo.master_id,
                "blockReason": "Waiting for dependency work orders to complete",
                "blockedBy": [d.id for d in waiting],
                "estimatedUnblockDate": iso(max(unblock, ctx.now_ms + HOUR_MS)),
            },
            SCHEDULER,
            SCHED,
        )
        yield WaitFor(lambda: all(d.done for d in wo.depends_on))
    yield transition(ctx, wo, S.IN_PROGRESS, tech)
    wo.started_ms = ctx.now_ms
    # Actual effort scatters around the estimate; about a third of the work runs over.
    work_ms = round(wo.estimated_hours * HOUR_MS * rng.lognormvariate(-0.25, 0.3))
    yield from _execution(ctx, tenant, wo, tech, work_ms)
    yield from _review_and_close(ctx, tenant, wo, tech)


def _execution(
    ctx: Ctx, tenant: Tenant, wo: WorkOrder, tech: Actor, work_ms: int
) -> Iterator[Step]:
    """Work in progress: agent help, schedule updates, holds and blocks, then review."""
    rng = ctx.rng
    end_ms = ctx.now_ms + work_ms
    if ctx.chance(0.6):
        yield Sleep(ctx.now_ms + work_ms // 5)
        yield from _agent_task(ctx, wo)
    if ctx.chance(0.35):
        yield Sleep(ctx.now_ms + work_ms // 4)
        new_end = wo.scheduled_end_ms + rng.randint(2, 16) * 15 * MINUTE_MS
        changes: list[dict[str, Any]] = [
            {
                "field": "scheduledEnd",
                "previousValue": iso(wo.scheduled_end_ms),
                "newValue": iso(new_end),
            }
        ]
        if ctx.chance(0.3) and wo.priority is not Priority.CRITICAL:
            raised = PRIORITIES[PRIORITIES.index(wo.priority) + 1]
            changes.append(
                {"field": "priority", "previousValue": str(wo.priority), "newValue": str(raised)}
            )
            wo.priority = raised
        wo.scheduled_end_ms = new_end
        wo.version += 1
        planner = rng.choice(tenant.people("planner"))
        yield wo_event(
            wo,
            "work_order.updated",
            {"workOrderId": wo.id, "changedFields": changes, "version": wo.version},
            planner,
        )
    if ctx.chance(0.1):
        yield transition(ctx, wo, S.ON_HOLD, tech, reason=REASONS[S.ON_HOLD])
        pause = rng.randint(30, 180) * MINUTE_MS
        yield Sleep(ctx.now_ms + pause)
        end_ms += pause
        yield transition(ctx, wo, S.IN_PROGRESS, tech)
    elif ctx.chance(0.1):
        tool = rng.choice(tenant.tools)
        pause = rng.randint(60, 240) * MINUTE_MS
        yield wo_event(
            wo,
            "work_order.blocked",
            {
                "workOrderId": wo.id,
                "masterId": wo.master_id,
                "blockReason": f"Tool {tool} is past its calibration due date",
                "blockedBy": [],
                "estimatedUnblockDate": iso(ctx.now_ms + pause) if ctx.chance(0.7) else None,
            },
            tech,
        )
        yield transition(ctx, wo, S.BLOCKED, tech, failed=["tool_calibrated"])
        yield Sleep(ctx.now_ms + pause)
        end_ms += pause
        yield transition(ctx, wo, S.IN_PROGRESS, tech)
    yield Sleep(max(ctx.now_ms, end_ms))


def _agent_task(ctx: Ctx, wo: WorkOrder) -> Iterator[Step]:
    rng = ctx.rng
    node = rng.choice(AGENT_NODES)
    agent = Actor(node, ActorType.AGENT, "agent")
    task_id = ctx.new_id()
    budget = rng.choice((4_000, 8_000, 16_000, 32_000))
    yield wo_event(
        wo,
        "agent.task_dispatched",
        {
            "taskId": task_id,
            "workOrderId": wo.id,
            "agentNode": node,
            "modelAssignment": str(rng.choice(list(ModelTier))),
            "tokenBudget": budget,
            "pattern": str(rng.choice(list(AgentPattern))),
        },
        ORCHESTRATOR,
        AGENTS,
    )
    started = ctx.now_ms
    if ctx.chance(0.3):
        yield Sleep(ctx.now_ms + rng.randint(1, 10) * MINUTE_MS)
        kind = rng.choice(list(CheckpointType))
        yield wo_event(
            wo,
            "agent.checkpoint_reached",
            {
                "taskId": task_id,
                "workOrderId": wo.id,
                "checkpointType": str(kind),
                "description": f"{kind.name.replace('_', ' ').capitalize()} needs a decision",
                "requiresHumanApproval": kind
                in (CheckpointType.COMPLIANCE_GATE, CheckpointType.SECURITY_FINDING),
                "context": {"step": rng.randint(1, 6), "regulatory": wo.regulatory},
            },
            agent,
            AGENTS,
        )
    yield Sleep(ctx.now_ms + rng.randint(1, 20) * MINUTE_MS)
    result = rng.choices(list(AgentTaskResult), (80, 12, 8))[0]
    summaries = {
        AgentTaskResult.SUCCESS: "Work instructions and checklist drafted",
        AgentTaskResult.PARTIAL: "Checklist drafted; risk section needs a human",
        AgentTaskResult.FAILED: "Model output failed validation; task returned",
    }
    yield wo_event(
        wo,
        "agent.task_completed",
        {
            "taskId": task_id,
            "workOrderId": wo.id,
            "agentNode": node,
            "tokensConsumed": rng.randint(budget // 10, budget),
            "durationMs": ctx.now_ms - started,
            "result": str(result),
            "outputSummary": summaries[result],
        },
        agent,
        AGENTS,
    )


def _review_and_close(ctx: Ctx, tenant: Tenant, wo: WorkOrder, tech: Actor) -> Iterator[Step]:
    rng = ctx.rng
    rounds = 0
    while True:
        rounds += 1
        yield transition(ctx, wo, S.PENDING_REVIEW, tech)
        rejected = None
        for role in approval_roles(wo):
            rejected = yield from approval(ctx, tenant, wo, role, last_round=rounds >= 2)
            if rejected:
                break
        if not rejected:
            break
        yield transition(ctx, wo, S.REJECTED, rejected, reason=REASONS[S.REJECTED])
        yield Sleep(ctx.now_ms + rng.randint(15, 120) * MINUTE_MS)
        yield transition(ctx, wo, S.IN_PROGRESS, tech, reason="Rework after review")
        yield Sleep(ctx.now_ms + rng.randint(30, 180) * MINUTE_MS)
    approver = rng.choice(tenant.approvers(approval_roles(wo)[-1]))
    yield transition(ctx, wo, S.APPROVED, approver)
    yield Sleep(ctx.now_ms + rng.randint(5, 60) * MINUTE_MS)
    yield transition(ctx, wo, S.COMPLETED, tech)
    started = wo.started_ms if wo.started_ms is not None else wo.created_ms
    actual = round((ctx.now_ms - started) / HOUR_MS, 2)
    variance = round((actual - wo.estimated_hours) / wo.estimated_hours * 100, 2)
    wo.completed_announced = True
    yield wo_event(
        wo,
        "work_order.completed",
        {
            "workOrderId": wo.id,
            "masterId": wo.master_id,
            "completedAt": iso(ctx.now_ms),
            "actualDurationHours": actual,
            "estimatedDurationHours": wo.estimated_hours,
            "variancePercent": variance,
        },
        tech,
    )
    yield Sleep(ctx.now_ms + rng.randint(30, 360) * MINUTE_MS)
    qa = rng.choice(tenant.approvers(ApprovalRole.QUALITY_ASSURANCE))
    yield transition(ctx, wo, S.CLOSED, qa)
    linked = len(wo.children) if wo.children else len(wo.depends_on) + (1 if wo.master_id else 0)
    yield wo_event(
        wo,
        "work_order.closed",
        {
            "workOrderId": wo.id,
            "closedAt": iso(ctx.now_ms),
            "totalDurationHours": round((ctx.now_ms - wo.created_ms) / HOUR_MS, 2),
            "approvalCount": wo.approvals,
            "linkedWOCount": linked,
            "complianceSummary": {
                # This closing event is an audit entry too.
                "auditEntries": wo.audit_entries + 1,
                "signatures": wo.signatures,
                "deviations": wo.deviations,
                "capaRequired": wo.regulatory and wo.serious_deviation,
            },
        },
        qa,
    )


# -- a master work order and its children ---------------------------------------------------


def master_story(ctx: Ctx, tenant: Tenant) -> Story:
    """A MASTER work order whose children (some depending on earlier siblings) run in parallel."""
    rng = ctx.rng
    master = new_work_order(ctx, tenant, WorkOrderType.MASTER)
    asset_id, asset_name = rng.choice(tenant.assets)
    planner = rng.choice(tenant.people("planner"))
    supervisor = rng.choice(tenant.people("supervisor"))
    created_event = yield created(
        ctx, tenant, master, rng.choice(MASTER_TITLES).format(asset=asset_name), asset_id
    )
    assert created_event is not None
    yield transition(ctx, master, S.PLANNED, planner)
    children: list[WorkOrder] = []
    for _ in range(rng.randint(2, 5)):
        depends = [children[-1]] if children and ctx.chance(0.5) else []
        child = new_work_order(
            ctx, tenant, rng.choice(CHILD_TYPES), master=master, depends_on=depends
        )
        children.append(child)
        master.children.append(child)
        # Children share the master's trace: their first cause is the master's creation.
        yield Spawn(work_order_story(ctx, tenant, master=master, wo=child), created_event)
    master.scheduled_end_ms = max(c.scheduled_end_ms for c in children)
    yield transition(ctx, master, S.SCHEDULED, planner)
    yield WaitFor(lambda: any(c.started_ms is not None or c.terminal for c in children))
    yield transition(ctx, master, S.IN_PROGRESS, supervisor)
    master.started_ms = ctx.now_ms
    yield WaitFor(lambda: all(c.done for c in children))
    yield from _review_and_close(ctx, tenant, master, supervisor)
