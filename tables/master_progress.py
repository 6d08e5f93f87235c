"""Master work-order progress: a two-stage pipeline from child events to master progress.

Stage 1, table ``wo_children``, key ``{tenant}:{workOrderId}`` (the input topics' own key, no
repartition): ``apply_child`` keeps, per work order, its link to a master and its status. The
link comes from ``created.masterId`` (and from ``updated`` changing ``masterId``, or a non-null
``masterId`` on ``blocked``/``completed``); ``status_changed`` and ``closed`` carry no masterId,
which is why the link has to live here. Every event of a linked child (created, status_changed,
blocked, completed, closed, or a relink) is forwarded as a ``ChildFact`` to the master's key.

Stage 2, table ``wo_masters``, key ``{tenant}:{masterId}`` (repartitioned by the facts):
``apply_fact`` keeps the master's children and emits ``work_order.master_progress_updated``
for every fact that changed a child.

Order independence (children's events may arrive in any order, a completion even before the
master's own creation): stage 1 resolves by *latest wins* on the (event time, event id) stamp:
a child's status is the one of its latest status-bearing event, its master the one of its
latest link-bearing event, so stage 1's view is a function of the *set* of a child's events.
Each fact carries the child's revision, a counter stage 1 bumps on every event it applies;
stage 2 applies a fact only if its revision is higher than the one it holds for that child, so
it ends with stage 1's final view whatever the order in which facts of different children (or
replays of one child's facts) arrive. The master's own ``created`` is not needed: a master's
numbers come only from its children.

Progress = children COMPLETED or CLOSED / linked children * 100 (0 without children), rounded
to 2 decimals; blocked = BLOCKED, in progress = IN_PROGRESS. A CANCELLED child still counts in
the total (the issue's definition).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.enums import WorkOrderStatus
from events.envelope import DomainEvent
from tables.base import (
    Fact,
    Forward,
    Result,
    Stamp,
    TableState,
    admit,
    make_key,
    newer,
    split_key,
    stamp_of,
)
from tables.config import DEFAULT_CONFIG, TenantConfig
from tables.derive import Cause, derive
from tables.lifecycle import DONE, WORK_ORDER_LIFECYCLE, status_of

CHILD_STAGE = "wo_children"
MASTER_STAGE = "wo_masters"
PROGRESS_UPDATED = "work_order.master_progress_updated"
INPUT_TYPES = WORK_ORDER_LIFECYCLE

# Events that say which master a work order belongs to; None = "says nothing".
_LINK_ALWAYS = frozenset({"work_order.created"})  # null here means "no master"
_LINK_IF_SET = frozenset({"work_order.blocked", "work_order.completed"})


class ChildLink(TableState):
    """Stage 1 value: one work order's master link and status."""

    workOrderId: str
    masterId: str | None = None
    linkStamp: Stamp | None = None
    status: str | None = None
    statusStamp: Stamp | None = None
    revision: int = 0  # bumped on every applied event; orders this child's facts
    forwardedTo: str | None = None  # master that last received this child's facts


class ChildFact(Fact):
    """What stage 1 tells a master about one child (``linked`` False: it left the master)."""

    kind: Literal["child"] = "child"
    masterId: str
    childId: str
    linked: bool
    status: str | None
    revision: int
    cause: Cause


class ChildEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: str | None = None
    revision: int
    linked: bool = True


class MasterProgress(TableState):
    """Stage 2 value: a master's children (unlinked ones kept as tombstones for ordering)."""

    masterId: str
    children: dict[str, ChildEntry] = Field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        linked = [c for c in self.children.values() if c.linked]
        total = len(linked)
        completed = sum(1 for c in linked if c.status in DONE)
        return {
            "totalChildren": total,
            "completedChildren": completed,
            "blockedChildren": sum(1 for c in linked if c.status == WorkOrderStatus.BLOCKED),
            "inProgressChildren": sum(1 for c in linked if c.status == WorkOrderStatus.IN_PROGRESS),
            "progressPercent": round(completed * 100 / total, 2) if total else 0.0,
        }


def child_key(event: DomainEvent) -> str:
    return make_key(event.tenantId, event.data.workOrderId)


def route(event: DomainEvent, config: TenantConfig = DEFAULT_CONFIG) -> list[str]:
    """Stage 1 keys of an input event (its own work-order key)."""
    return [child_key(event)] if event.type in INPUT_TYPES else []


def _link_of(event: DomainEvent) -> tuple[bool, str | None]:
    """(says something about the link, master id or None)."""
    data = event.data
    if event.type in _LINK_ALWAYS:
        return True, data.masterId
    if event.type in _LINK_IF_SET and data.masterId is not None:
        return True, data.masterId
    if event.type == "work_order.updated":
        for change in data.changedFields:
            if change.field == "masterId" and (
                change.newValue is None or isinstance(change.newValue, str)
            ):
                return True, change.newValue.lower() if change.newValue else None
    return False, None


def apply_child(
    state: ChildLink | None,
    event: DomainEvent,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[ChildLink]:
    """Stage 1: update the child's link/status and forward facts to its master(s)."""
    _, wo = split_key(key)
    fresh = partial(ChildLink, tenant=event.tenantId, workOrderId=wo or "")
    st, duplicate = admit(state, fresh, key, event.tenantId, event.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if event.type not in INPUT_TYPES or event.data.workOrderId != st.workOrderId:
        return Result(st)

    stamp = stamp_of(event)
    says_link, master = _link_of(event)
    if master == st.workOrderId:  # a work order cannot be its own master
        says_link, master = False, None
    relinked = False
    if says_link and newer(stamp, st.linkStamp):
        relinked = master != st.masterId
        st.masterId, st.linkStamp = master, stamp
    status = status_of(event)
    if status is not None and newer(stamp, st.statusStamp):
        st.status, st.statusStamp = status, stamp
    st.revision += 1

    # Only lifecycle events of the list, or a relink, are "a change of a child".
    changes_child = event.type != "work_order.updated" or relinked
    forwards: list[Forward] = []
    cause = Cause.of(event)
    if st.forwardedTo is not None and st.forwardedTo != st.masterId:
        forwards.append(_fact(st, st.forwardedTo, linked=False, cause=cause))
    if st.masterId is not None and changes_child:
        forwards.append(_fact(st, st.masterId, linked=True, cause=cause))
    if forwards:
        st.forwardedTo = st.masterId
    return Result(st, forwards=tuple(forwards))


def _fact(st: ChildLink, master: str, *, linked: bool, cause: Cause) -> Forward:
    fact = ChildFact(
        id=cause.id,
        tenant=st.tenant,
        at=cause.timestamp,
        masterId=master,
        childId=st.workOrderId,
        linked=linked,
        status=st.status,
        revision=st.revision,
        cause=cause,
    )
    return Forward(MASTER_STAGE, make_key(st.tenant, master), fact)


def apply_fact(
    state: MasterProgress | None,
    fact: ChildFact,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[MasterProgress]:
    """Stage 2: apply a child fact if it is newer; emit the master's progress if it changed."""
    fresh = partial(MasterProgress, tenant=fact.tenant, masterId=fact.masterId)
    st, duplicate = admit(state, fresh, key, fact.tenant, fact.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if fact.masterId != st.masterId:
        return Result(st)
    entry = st.children.get(fact.childId)
    if entry is not None and fact.revision <= entry.revision:
        return Result(st)  # an older or replayed view of the child
    st.children[fact.childId] = ChildEntry(
        status=fact.status, revision=fact.revision, linked=fact.linked
    )
    data = {"masterId": st.masterId, **st.counts(), "lastChangedChildId": fact.childId}
    event = derive(fact.cause, PROGRESS_UPDATED, data, key=st.masterId)
    return Result(st, derived=(event,))
