"""SLA variance: per work order schedule and completion, per tenant windowed SLA aggregates.

Stage 1, table ``wo_sla``, key ``{tenant}:{workOrderId}`` (the input's own key): ``apply`` keeps
the schedule (scheduledStart/End from ``created``, changed by ``updated``), the estimate
(``estimatedDurationHours`` from ``updated`` or ``completed``), the status and the completion.
On ``work_order.completed`` it emits ``work_order.sla_breached``:

* DURATION_OVERRUN when the event's variancePercent exceeds the tenant threshold (default 20);
* LATE_COMPLETION when completedAt > scheduledEnd.

Both carry the schedule (scheduledEnd, masterId), so both wait for it: if ``created`` has not
arrived yet, the completion waits (up to ``schedule_grace``, then ``tick`` evaluates it
without one). Breaches are derived from the stored completion and schedule, so id and payload
are the same whichever of the two arrived first.

Once evaluated, the completion is forwarded as an ``SlaOutcome`` to stage 2. ``tick`` (timer,
injected ``now``) emits OVERDUE_OPEN once per work order when an open order passes its
scheduledEnd; its cause is the event that set that scheduledEnd and its timestamp the
scheduledEnd itself, so a re-tick or a replay reproduces the same id.

Stage 2, table ``sla_windows``, key ``{tenant}:{UTC day start ms}`` (one shard per tenant and
day, ``tables.windows``): ``apply_outcome`` counts completions in tumbling event-time windows
(1 h and 1 d, retained 30 d): count, on time (completedAt <= scheduledEnd), breached (any
breach at completion), sum/max of variancePercent (mean = sum / count). Event time is the
completed event's timestamp. Late outcomes are reported, not counted.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events.enums import SlaBreachType
from events.envelope import DomainEvent
from events.ids import unix_ms
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
from tables.lifecycle import WORK_ORDER_LIFECYCLE, is_open, schedule_of, status_of
from tables.windows import WindowSpec, shard_key, shard_spec

STAGE = "wo_sla"
WINDOWS_STAGE = "sla_windows"
SLA_BREACHED = "work_order.sla_breached"
INPUT_TYPES = WORK_ORDER_LIFECYCLE


class Completion(BaseModel):
    model_config = ConfigDict(extra="ignore")

    completedAt: datetime
    variancePercent: float
    cause: Cause


class EndChange(BaseModel):
    """One scheduledEnd the order had from ``stamp`` on (created or an update)."""

    model_config = ConfigDict(extra="ignore")

    stamp: Stamp
    value: datetime | None


ENDS_KEPT = 32  # scheduledEnd changes kept per order (reschedules are few; bounded anyway)


class WorkOrderSla(TableState):
    """Stage 1 value: one work order's schedule, estimate, status and completion."""

    workOrderId: str
    masterId: str | None = None
    scheduledStart: datetime | None = None
    scheduledEnd: datetime | None = None
    scheduleKnown: bool = False  # created seen, or scheduledEnd set by an update
    startStamp: Stamp | None = None
    endStamp: Stamp | None = None
    endCause: Cause | None = None  # the event that set scheduledEnd (OVERDUE_OPEN's cause)
    # every scheduledEnd by event time: the one at completion counts
    ends: list[EndChange] = Field(default_factory=list)
    estimatedHours: float | None = None
    status: str | None = None
    statusStamp: Stamp | None = None
    completion: Completion | None = None
    evaluated: bool = False
    # breach types already emitted (each at most once)
    breaches: list[str] = Field(default_factory=list)

    def next_deadline(self, config: TenantConfig = DEFAULT_CONFIG) -> datetime | None:
        """When ``tick`` next has something to do (for the Faust layer's timer index)."""
        deadlines = []
        if self._overdue_pending() and self.scheduledEnd is not None:
            deadlines.append(self.scheduledEnd)
        if self.completion is not None and not self.evaluated:
            deadlines.append(self.completion.cause.timestamp + config.schedule_grace)
        return min(deadlines, default=None)

    def _overdue_pending(self) -> bool:
        return (
            SlaBreachType.OVERDUE_OPEN.value not in self.breaches
            and self.scheduledEnd is not None
            and self.completion is None
            and is_open(self.status)
        )


class SlaOutcome(Fact):
    """One evaluated completion, for the tenant's windows."""

    kind: Literal["sla_outcome"] = "sla_outcome"
    workOrderId: str
    onTime: bool | None  # None: the order had no scheduledEnd
    breached: bool
    variancePercent: float


class SlaAggregate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    count: int = 0
    onTime: int = 0
    breached: int = 0
    varianceSum: float = 0.0
    varianceMax: float | None = None

    @property
    def varianceMean(self) -> float | None:
        return self.varianceSum / self.count if self.count else None


class SlaWindows(TableState):
    """Stage 2 value: one shard (a tenant's UTC day) of SLA windows, by name and start (ms)."""

    start: int = 0  # shard start, epoch ms
    windows: dict[str, dict[int, SlaAggregate]] = Field(default_factory=dict)

    def window(self, name: str, at: datetime, specs: tuple[WindowSpec, ...]) -> SlaAggregate:
        """The aggregate of the ``name`` window containing ``at`` (empty if none)."""
        spec = next(s for s in specs if s.name == name)
        return self.windows.get(name, {}).get(spec.start_of(unix_ms(at)), SlaAggregate())


def route(event: DomainEvent, config: TenantConfig = DEFAULT_CONFIG) -> list[str]:
    return [make_key(event.tenantId, event.data.workOrderId)] if event.type in INPUT_TYPES else []


def apply(
    state: WorkOrderSla | None,
    event: DomainEvent,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[WorkOrderSla]:
    """Stage 1: track schedule/status/completion; emit breaches known at completion."""
    _, wo = split_key(key)
    fresh = partial(WorkOrderSla, tenant=event.tenantId, workOrderId=wo or "")
    st, duplicate = admit(state, fresh, key, event.tenantId, event.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if event.type not in INPUT_TYPES or event.data.workOrderId != st.workOrderId:
        return Result(st)

    stamp, data = stamp_of(event), event.data
    schedule = schedule_of(event)
    if "scheduledStart" in schedule:
        _set_start(st, schedule["scheduledStart"], stamp)
    if "scheduledEnd" in schedule:
        st.scheduleKnown = True
        _set_end(st, schedule["scheduledEnd"], stamp, event)
    if event.type == "work_order.created":
        st.scheduleKnown = True
        st.masterId = st.masterId or data.masterId
    elif event.type == "work_order.updated":
        for change in data.changedFields:
            _apply_change(st, change.field, change.newValue)
    masterId = getattr(data, "masterId", None)
    if masterId is not None and event.type != "work_order.created":
        st.masterId = masterId
    status = status_of(event)
    if status is not None and newer(stamp, st.statusStamp):
        st.status, st.statusStamp = status, stamp

    derived: list[DomainEvent] = []
    forwards: list[Forward] = []
    if event.type == "work_order.completed" and st.completion is None:
        st.completion = Completion(
            completedAt=data.completedAt,
            variancePercent=data.variancePercent,
            cause=Cause.of(event),
        )
        st.estimatedHours = data.estimatedDurationHours
    if st.completion is not None and not st.evaluated and _schedule_at_completion_known(st):
        _evaluate(st, derived, forwards, config)
    return Result(st, derived=tuple(derived), forwards=tuple(forwards))


def tick(
    state: WorkOrderSla, now: datetime, *, config: TenantConfig = DEFAULT_CONFIG
) -> Result[WorkOrderSla]:
    """Timer: OVERDUE_OPEN once per order; completions that waited too long for a schedule."""
    end = state.scheduledEnd
    overdue = state._overdue_pending() and end is not None and now > end
    waited = (
        state.completion is not None
        and not state.evaluated
        and now >= state.completion.cause.timestamp + config.schedule_grace
    )
    if not (overdue or waited):
        return Result(state)
    st = clone(state)
    derived: list[DomainEvent] = []
    forwards: list[Forward] = []
    if overdue:
        derived.append(_breach(st, SlaBreachType.OVERDUE_OPEN))
    if waited:
        _evaluate(st, derived, forwards, config)
    return Result(st, derived=tuple(derived), forwards=tuple(forwards))


def apply_outcome(
    state: SlaWindows | None,
    fact: SlaOutcome,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[SlaWindows]:
    """Stage 2: count one completion in every window of its shard; report it if late."""
    start = shard_spec(config.sla_windows).start_of(unix_ms(fact.at))
    fresh = partial(SlaWindows, tenant=fact.tenant, start=start)
    st, duplicate = admit(state, fresh, key, fact.tenant, fact.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if st.start != start:
        raise ValueError(f"outcome at {fact.at.isoformat()} routed to shard {key!r}")
    at_ms, late = unix_ms(fact.at), False
    for spec in config.sla_windows:
        if spec.is_late(at_ms, now):
            late = True
            continue
        windows = st.windows.setdefault(spec.name, {})
        window = spec.start_of(at_ms)
        windows[window] = _add(windows.get(window, SlaAggregate()), fact)
    return Result(st, late=late)


# --- internals --------------------------------------------------------------------------------


def _set_start(st: WorkOrderSla, value: datetime | None, stamp: Stamp) -> None:
    if newer(stamp, st.startStamp):
        st.scheduledStart, st.startStamp = value, stamp


def _set_end(st: WorkOrderSla, value: datetime | None, stamp: Stamp, event: DomainEvent) -> None:
    if newer(stamp, st.endStamp):
        st.scheduledEnd, st.endStamp, st.endCause = value, stamp, Cause.of(event)
    st.ends.append(EndChange(stamp=stamp, value=value))
    st.ends.sort(key=lambda e: tuple(e.stamp))
    del st.ends[:-ENDS_KEPT]


def _schedule_at_completion_known(st: WorkOrderSla) -> bool:
    """Whether the schedule in force at the completion has arrived (created, or an update
    stamped before the completion); a later reschedule alone does not tell it."""
    if not st.ends or st.completion is None:  # stored before the history was kept
        return st.scheduleKnown
    done = st.completion.cause.timestamp
    return any(e.stamp[0] <= done for e in st.ends)


def _end_at_completion(st: WorkOrderSla, completion: Completion) -> datetime | None:
    """The scheduledEnd in force when the order was completed (event time): a reschedule
    stamped after the completion but delivered before it does not move the goalposts."""
    if not st.ends:  # stored before the history was kept
        return st.scheduledEnd
    # by event time only: a change at the completion's own instant is in force (ids do not
    # order events of the same instant in any meaningful way)
    done = completion.cause.timestamp
    before = [e for e in st.ends if e.stamp[0] <= done]
    return before[-1].value if before else None


def _apply_change(st: WorkOrderSla, field: str, value: object) -> None:
    # updated carries any JSON; a value we cannot read leaves the order as it was.
    if field == "estimatedDurationHours" and isinstance(value, int | float):
        if not isinstance(value, bool) and value >= 0:
            st.estimatedHours = float(value)
    elif field == "masterId" and (value is None or isinstance(value, str)):
        st.masterId = value.lower() if value else None


def _evaluate(
    st: WorkOrderSla, derived: list[DomainEvent], forwards: list[Forward], config: TenantConfig
) -> None:
    completion = st.completion
    if completion is None:
        raise ValueError("nothing to evaluate")
    st.evaluated = True
    # Both breaches carry scheduledEnd and masterId, so both wait for the schedule like this:
    # derived at completion, a DURATION_OVERRUN's payload depended on whether created had
    # arrived yet, under the same id.
    if completion.variancePercent > config.duration_overrun_percent:
        derived.append(_breach(st, SlaBreachType.DURATION_OVERRUN))
    end = _end_at_completion(st, completion)
    on_time = None if end is None else completion.completedAt <= end
    if on_time is False:
        derived.append(_breach(st, SlaBreachType.LATE_COMPLETION))
    breached = any(
        b in st.breaches for b in (SlaBreachType.LATE_COMPLETION, SlaBreachType.DURATION_OVERRUN)
    )
    outcome = SlaOutcome(
        id=completion.cause.id,
        tenant=st.tenant,
        at=completion.cause.timestamp,
        workOrderId=st.workOrderId,
        onTime=on_time,
        breached=breached,
        variancePercent=completion.variancePercent,
    )
    key = shard_key(st.tenant, outcome.at, config.sla_windows)
    forwards.append(Forward(WINDOWS_STAGE, key, outcome))


def _breach(st: WorkOrderSla, breach: SlaBreachType) -> DomainEvent:
    st.breaches.append(breach.value)
    key = f"{st.workOrderId}:{breach.value}"
    data = {
        "workOrderId": st.workOrderId,
        "masterId": st.masterId,
        "breachType": breach,
        "scheduledEnd": st.scheduledEnd,
        "completedAt": None,
        "variancePercent": None,
    }
    if breach is SlaBreachType.OVERDUE_OPEN:
        # Timer: caused by the event that set scheduledEnd, stamped at the deadline it crossed
        # (never before its cause), so a re-tick or a replay derives the same event.
        if st.endCause is None or st.scheduledEnd is None:
            raise ValueError("OVERDUE_OPEN needs a scheduledEnd and its cause")
        at = max(st.scheduledEnd, st.endCause.timestamp)
        return derive(st.endCause, SLA_BREACHED, data, key=key, at=at)
    if st.completion is None:
        raise ValueError(f"{breach.value} needs a completion")
    data["scheduledEnd"] = _end_at_completion(st, st.completion)
    data["completedAt"] = st.completion.completedAt
    data["variancePercent"] = st.completion.variancePercent
    return derive(st.completion.cause, SLA_BREACHED, data, key=key)


def _add(agg: SlaAggregate, fact: SlaOutcome) -> SlaAggregate:
    variance = fact.variancePercent
    return SlaAggregate(
        count=agg.count + 1,
        onTime=agg.onTime + (1 if fact.onTime else 0),
        breached=agg.breached + (1 if fact.breached else 0),
        varianceSum=agg.varianceSum + variance,
        varianceMax=variance if agg.varianceMax is None else max(agg.varianceMax, variance),
    )
