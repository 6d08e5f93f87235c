"""Certification expiry: person -> certifications and assigned open work orders, with a timer.

Stage 1, table ``wo_assignees``, key ``{tenant}:{workOrderId}`` (the input's own key):
``apply_work_order`` keeps the people assigned to a work order (``resource.assigned`` with
resourceType PERSON; TEAM/VENDOR assignments name no person) and its status, and forwards an
``AssignmentFact`` (person, work order, scheduledEnd, open) to each assigned person's key
whenever the assignment or the order's openness changes. ``completed``/``closed`` do not name
the assignees, which is why this stage exists.

Stage 2, table ``person_certs``, key ``{tenant}:{personId}``: ``apply_person`` takes
``resource.certification_recorded`` (keyed by personId; a record with a known experienceId is a
renewal) and the assignment facts. ``tick`` (timer, injected ``now``) emits
``resource.certification_expiring`` (catalog §6.2) once per threshold (default 30, 14, 7, 1, 0
days before expirationDate): when several thresholds were passed between two ticks (downtime,
or a certification recorded 10 days before expiry) only the most urgent one is emitted and the
others are marked done, so people get one accurate notice instead of a burst of stale ones.
The notice is stamped at the threshold's instant (never before its cause, the recording event)
and its daysUntilExpiry is computed at that instant, so a replay reproduces it exactly.
affectedWorkOrders = the person's open work orders scheduled to end after
``expiry - certification_horizon``, i.e. after the expiry or within the horizon before it.

A person assigned to an open work order that ends after one of their certifications expires
gets a ``compliance.violation_detected`` right away (``policy.expired_certification``; HIGH, so
with a CAPA request), once per (work order, certification, expiry). "Open" is judged by event
time (``_check``): assignment, certification and the order's completion travel on different
topics and may arrive in any order, and every order gives the same violation, id included.
We do not know which certification a work order needs, so every certification of the person is
checked.

Assignments of closed work orders are forgotten once closed for longer than the dedup horizon
(7 days), so a person's value holds their open work and a week of history, not every work
order they ever had.

``resource.tool_calibration_due`` links tools to affected work orders too; it needs the work
order's scheduledEnd, so it is fanned out to work-order keys and checked in ``tables.policy``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events.enums import ResourceType
from events.envelope import DomainEvent
from tables import policy
from tables.base import (
    Fact,
    Forward,
    Result,
    Stamp,
    TableState,
    admit,
    clone,
    make_key,
    newer,
    split_key,
    stamp_of,
)
from tables.config import DEFAULT_CONFIG, TenantConfig
from tables.derive import Cause, derive
from tables.lifecycle import is_open, status_of

WORK_ORDER_STAGE = "wo_assignees"
PERSON_STAGE = "person_certs"
RECORDED = "resource.certification_recorded"
ASSIGNED = "resource.assigned"
EXPIRING = "resource.certification_expiring"
STATUS_TYPES = frozenset(
    {
        "work_order.status_changed",
        "work_order.blocked",
        "work_order.completed",
        "work_order.closed",
    }
)
WORK_ORDER_INPUTS = STATUS_TYPES | {ASSIGNED}
PERSON_INPUTS = frozenset({RECORDED})
_DAY = timedelta(days=1)


class Assignee(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scheduledEnd: datetime
    stamp: Stamp
    cause: Cause | None = None  # the resource.assigned event (None: stored before it was kept)


class WorkOrderAssignees(TableState):
    """Stage 1 value: the people assigned to one work order, and its status."""

    workOrderId: str
    persons: dict[str, Assignee] = Field(default_factory=dict)
    status: str | None = None
    statusStamp: Stamp | None = None
    revision: int = 0  # bumped on every applied event; orders the facts per person


class AssignmentFact(Fact):
    kind: Literal["assignment"] = "assignment"
    personId: str
    workOrderId: str
    scheduledEnd: datetime
    open: bool
    revision: int
    cause: Cause
    # The assignment event, and the stamp of the status that closed the order (None: open):
    # what the expired-certification check judges by, whatever order things arrive in.
    assignedCause: Cause | None = None
    closedStamp: Stamp | None = None


class Certification(BaseModel):
    model_config = ConfigDict(extra="ignore")

    certification: str
    expirationDate: datetime
    stamp: Stamp
    cause: Cause
    # thresholds (days) already emitted for this expirationDate
    notified: list[int] = Field(default_factory=list)


class Assignment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scheduledEnd: datetime
    open: bool
    revision: int
    # "{experienceId}@{expiry}" already reported as a violation
    flagged: list[str] = Field(default_factory=list)
    closedAt: datetime | None = None  # processing time it was seen closed (pruned later)
    assignedCause: Cause | None = None  # see AssignmentFact
    closedStamp: Stamp | None = None


class PersonCertifications(TableState):
    """Stage 2 value: one person's certifications (by experienceId) and assignments."""

    personId: str
    certs: dict[str, Certification] = Field(default_factory=dict)
    assignments: dict[str, Assignment] = Field(default_factory=dict)

    def next_deadline(self, config: TenantConfig = DEFAULT_CONFIG) -> datetime | None:
        """When ``tick`` next has something to do (for the Faust layer's timer index)."""
        deadlines = [
            cert.expirationDate - timedelta(days=days)
            for cert in self.certs.values()
            for days in config.certification_thresholds_days
            if days not in cert.notified
        ]
        return min(deadlines, default=None)


def route_work_order(event: DomainEvent, config: TenantConfig = DEFAULT_CONFIG) -> list[str]:
    if event.type not in WORK_ORDER_INPUTS:
        return []
    return [make_key(event.tenantId, event.data.workOrderId)]


def route_person(event: DomainEvent, config: TenantConfig = DEFAULT_CONFIG) -> list[str]:
    return [make_key(event.tenantId, event.data.personId)] if event.type in PERSON_INPUTS else []


def apply_work_order(
    state: WorkOrderAssignees | None,
    event: DomainEvent,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[WorkOrderAssignees]:
    """Stage 1: track assignees and openness; forward changes to the people's keys."""
    _, wo = split_key(key)
    fresh = partial(WorkOrderAssignees, tenant=event.tenantId, workOrderId=wo or "")
    st, duplicate = admit(state, fresh, key, event.tenantId, event.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if event.type not in WORK_ORDER_INPUTS or event.data.workOrderId != st.workOrderId:
        return Result(st)
    stamp, cause = stamp_of(event), Cause.of(event)
    st.revision += 1
    targets: list[str] = []
    if event.type == ASSIGNED:
        data = event.data
        if data.resourceType != ResourceType.PERSON:
            return Result(st)
        known = st.persons.get(data.resourceId)
        if known is None or newer(stamp, known.stamp):
            st.persons[data.resourceId] = Assignee(
                scheduledEnd=data.scheduledEnd, stamp=stamp, cause=cause
            )
            targets = [data.resourceId]
    else:
        status = status_of(event)
        if status is not None and newer(stamp, st.statusStamp):
            was_open = is_open(st.status)
            st.status, st.statusStamp = status, stamp
            if is_open(status) != was_open:
                targets = sorted(st.persons)
    forwards = tuple(_assignment(st, person, cause) for person in targets)
    return Result(st, forwards=forwards)


def _assignment(st: WorkOrderAssignees, person: str, cause: Cause) -> Forward:
    fact = AssignmentFact(
        id=f"{cause.id}:{st.workOrderId}",
        tenant=st.tenant,
        at=cause.timestamp,
        personId=person,
        workOrderId=st.workOrderId,
        scheduledEnd=st.persons[person].scheduledEnd,
        open=is_open(st.status),
        revision=st.revision,
        cause=cause,
        assignedCause=st.persons[person].cause,
        closedStamp=None if is_open(st.status) else st.statusStamp,
    )
    return Forward(PERSON_STAGE, make_key(st.tenant, person), fact)


def apply_person(
    state: PersonCertifications | None,
    item: DomainEvent | AssignmentFact,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[PersonCertifications]:
    """Stage 2: record certifications and assignments; report expired-certification assignments."""
    if isinstance(item, AssignmentFact):
        tenant, item_id = item.tenant, item.id
    else:
        tenant, item_id = item.tenantId, item.id
    _, person = split_key(key)
    fresh = partial(PersonCertifications, tenant=tenant, personId=person or "")
    st, duplicate = admit(state, fresh, key, tenant, item_id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    derived: list[DomainEvent] = []
    if isinstance(item, AssignmentFact):
        if item.personId != st.personId:
            return Result(st)
        known = st.assignments.get(item.workOrderId)
        if known is None or item.revision > known.revision:
            st.assignments[item.workOrderId] = Assignment(
                scheduledEnd=item.scheduledEnd,
                open=item.open,
                revision=item.revision,
                flagged=[] if known is None else known.flagged,
                closedAt=None if item.open else now,
                assignedCause=item.assignedCause,
                closedStamp=item.closedStamp,
            )
            for experience in sorted(st.certs):
                derived += _check(st, item.workOrderId, experience, item.cause)
    elif item.type == RECORDED and item.data.personId == st.personId:
        data, stamp = item.data, stamp_of(item)
        known_cert = st.certs.get(data.experienceId)
        if known_cert is None or newer(stamp, known_cert.stamp):
            # Notices already sent stay sent for the same expiry; a renewal starts over.
            same_expiry = (
                known_cert is not None and known_cert.expirationDate == data.expirationDate
            )
            st.certs[data.experienceId] = Certification(
                certification=data.certification,
                expirationDate=data.expirationDate,
                stamp=stamp,
                cause=Cause.of(item),
                notified=known_cert.notified if same_expiry and known_cert else [],
            )
            for wo in sorted(st.assignments):
                derived += _check(st, wo, data.experienceId, Cause.of(item))
    _prune_closed(st, now, config)
    return Result(st, derived=tuple(derived))


def _prune_closed(st: PersonCertifications, now: datetime, config: TenantConfig) -> None:
    """Forget assignments closed longer than the dedup horizon: a person's value would
    otherwise keep every work order they ever worked on. A closed one is kept that long so an
    older fact arriving late (a lower revision) is still recognised and dropped."""
    expired = []
    for wo, a in st.assignments.items():
        if a.open:
            continue
        if a.closedAt is None:  # stored before closedAt existed: its horizon starts now
            a.closedAt = now
        elif now - a.closedAt > config.dedup_horizon:
            expired.append(wo)
    for wo in expired:
        del st.assignments[wo]


def tick(
    state: PersonCertifications, now: datetime, *, config: TenantConfig = DEFAULT_CONFIG
) -> Result[PersonCertifications]:
    """Timer: one certification_expiring per threshold crossed (the most urgent if several)."""
    due: dict[str, list[int]] = {}
    for experience, cert in state.certs.items():
        crossed = [
            days
            for days in config.certification_thresholds_days
            if days not in cert.notified and now >= cert.expirationDate - timedelta(days=days)
        ]
        if crossed:
            due[experience] = crossed
    if not due:
        return Result(state)
    st = clone(state)
    derived = []
    for experience in sorted(due):
        cert = st.certs[experience]
        days = min(due[experience])
        cert.notified = sorted({*cert.notified, *due[experience]}, reverse=True)
        at = max(cert.expirationDate - timedelta(days=days), cert.cause.timestamp)
        floor = cert.expirationDate - config.certification_horizon
        affected = sorted(
            wo for wo, a in st.assignments.items() if a.open and a.scheduledEnd > floor
        )
        data = {
            "personId": st.personId,
            "experienceId": experience,
            "expirationDate": cert.expirationDate,
            "daysUntilExpiry": math.floor((cert.expirationDate - at) / _DAY),
            "affectedWorkOrders": affected,
        }
        key = f"{experience}:{cert.expirationDate.isoformat()}:{days}"
        derived.append(derive(cert.cause, EXPIRING, data, key=key, at=at))
    return Result(st, derived=tuple(derived))


def _check(st: PersonCertifications, wo: str, experience: str, cause: Cause) -> list[DomainEvent]:
    """The expired-certification rule for one (assignment, certification) pair.

    Judged by event time, not arrival: the pair is a violation if the certification expires
    before the order's scheduledEnd and the later of the assignment and the certification
    record happened while the order was open (before the status that closed it). That is what
    processing in event-time order would report, and the violation is caused by that later
    event, so it is the same event, id included, in every arrival order across the topics.
    One exception, as the rule says "right away": a record stamped after the order closed but
    delivered before the closing status still finds the order open and is reported.
    """
    assignment, cert = st.assignments[wo], st.certs[experience]
    flag = f"{experience}@{cert.expirationDate.isoformat()}"
    if flag in assignment.flagged or not cert.expirationDate < assignment.scheduledEnd:
        return []
    assigned = assignment.assignedCause
    if assigned is None:  # stored before assignments kept their cause: openness as last seen
        if not assignment.open:
            return []
    else:
        assigned_stamp = (assigned.timestamp, assigned.id)
        later = max(assigned_stamp, cert.stamp)
        closed = assignment.closedStamp
        if closed is not None and later >= tuple(closed):
            return []
        cause = cert.cause if cert.stamp > assigned_stamp else assigned
    assignment.flagged.append(flag)
    violation = policy.expired_certification(
        person=st.personId,
        experience=experience,
        certification=cert.certification,
        expiry=cert.expirationDate,
        scheduled_end=assignment.scheduledEnd,
    )
    return policy.emit(cause, wo, violation, key=f"{wo}:{flag}")
