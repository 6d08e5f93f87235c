"""Every table of the pipeline as one descriptor, so the Faust layer can wire them generically."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tables import certifications, compliance, master_progress, policy, sla
from tables.base import Fact, Result, TableState
from tables.config import TenantConfig
from tables.windows import shard_expired

Apply = Callable[..., Result[Any]]
"""``apply(state | None, item, now, *, key, config) -> Result``."""
Tick = Callable[..., Result[Any]]
"""``tick(state, now, *, config) -> Result``."""


@dataclass(frozen=True, slots=True)
class Stage:
    """One table and its reducer.

    name: table name (and the ``Forward.stage`` that targets it).
    key: how the table is keyed (documentation; every key starts with the tenant).
    state: the value model (``to_dict``/``from_dict``).
    inputs: event types it consumes; ``route(event, config)`` gives their keys here (several =
        fan-out, empty = not for this table). Input events whose topic key differs must be
        repartitioned to these keys.
    facts: fact models forwarded to it by other stages (already keyed by ``Forward.key``).
    apply: the reducer, for events and facts alike.
    tick: the timer reducer, if the table has timers; ``next_deadline`` says when it is due.
    derived_inputs: whether it must also consume ``wo.derived`` (counting stages only).
    expired: for window shards, whether a key can be deleted at ``now`` (``tables.windows``).
    """

    name: str
    key: str
    state: type[TableState]
    inputs: frozenset[str]
    route: Callable[..., list[str]] | None
    facts: tuple[type[Fact], ...]
    apply: Apply
    tick: Tick | None = None
    next_deadline: Callable[[Any, TenantConfig], datetime | None] | None = None
    derived_inputs: bool = False
    expired: Callable[[str, datetime, TenantConfig], bool] | None = None


STAGES: tuple[Stage, ...] = (
    Stage(
        master_progress.CHILD_STAGE,
        "{tenant}:{workOrderId}",
        master_progress.ChildLink,
        master_progress.INPUT_TYPES,
        master_progress.route,
        (),
        master_progress.apply_child,
    ),
    Stage(
        master_progress.MASTER_STAGE,
        "{tenant}:{masterId}",
        master_progress.MasterProgress,
        frozenset(),
        None,
        (master_progress.ChildFact,),
        master_progress.apply_fact,
    ),
    Stage(
        sla.STAGE,
        "{tenant}:{workOrderId}",
        sla.WorkOrderSla,
        sla.INPUT_TYPES,
        sla.route,
        (),
        sla.apply,
        sla.tick,
        lambda st, config: st.next_deadline(config),
    ),
    Stage(
        sla.WINDOWS_STAGE,
        "{tenant}:{UTC day start ms}",
        sla.SlaWindows,
        frozenset(),
        None,
        (sla.SlaOutcome,),
        sla.apply_outcome,
        expired=lambda key, now, config: shard_expired(key, now, config.sla_windows),
    ),
    Stage(
        certifications.WORK_ORDER_STAGE,
        "{tenant}:{workOrderId}",
        certifications.WorkOrderAssignees,
        certifications.WORK_ORDER_INPUTS,
        certifications.route_work_order,
        (),
        certifications.apply_work_order,
    ),
    Stage(
        certifications.PERSON_STAGE,
        "{tenant}:{personId}",
        certifications.PersonCertifications,
        certifications.PERSON_INPUTS,
        certifications.route_person,
        (certifications.AssignmentFact,),
        certifications.apply_person,
        certifications.tick,
        lambda st, config: st.next_deadline(config),
    ),
    Stage(
        policy.STAGE,
        "{tenant}:{workOrderId} or {tenant}",
        policy.PolicyState,
        policy.INPUT_TYPES,
        policy.route,
        (),
        policy.apply,
    ),
    Stage(
        compliance.AGGREGATE_STAGE,
        "{tenant}:{UTC day start ms}",
        compliance.ComplianceWindows,
        compliance.AGGREGATE_INPUTS,
        compliance.route_aggregate,
        (),
        compliance.apply_aggregate,
        derived_inputs=True,
        expired=lambda key, now, config: shard_expired(key, now, config.compliance_windows),
    ),
    Stage(
        compliance.SUMMARY_STAGE,
        "{tenant}:{workOrderId}",
        compliance.WorkOrderCompliance,
        frozenset(),  # every event that names a work order; see route
        compliance.route_summary,
        (),
        compliance.apply_summary,
        compliance.tick_summary,
        lambda st, config: st.next_deadline(config),
        derived_inputs=True,
    ),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
