"""SLA variance: breaches at completion, OVERDUE_OPEN timer, windows, late events."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from events import DomainEvent, SlaBreachType
from events.ids import unix_ms
from tables import sla
from tables.base import Forward, Result, make_key
from tables.config import TenantConfig
from tables.windows import shard_key
from tests.tables_testkit import (
    T0,
    TENANT,
    completed,
    created,
    days,
    hours,
    status_changed,
    uid,
    updated,
)

CONFIG = TenantConfig()
LATE, OVERRUN, OVERDUE = (
    SlaBreachType.LATE_COMPLETION,
    SlaBreachType.DURATION_OVERRUN,
    SlaBreachType.OVERDUE_OPEN,
)


class Driver:
    def __init__(self, config: TenantConfig = CONFIG) -> None:
        self.config = config
        self.orders: dict[str, sla.WorkOrderSla] = {}
        self.shards: dict[str, sla.SlaWindows] = {}
        self.outcomes: list[Forward] = []
        self.late = 0

    def window(self, name: str, at: datetime) -> sla.SlaAggregate:
        shard = self.shards.get(shard_key(TENANT, at, self.config.sla_windows))
        return sla.SlaAggregate() if shard is None else shard.window(name, at, CONFIG.sla_windows)

    def feed(self, event: DomainEvent, now: datetime | None = None) -> list[DomainEvent]:
        now = now or event.timestamp
        out: list[DomainEvent] = []
        for key in sla.route(event):
            result = sla.apply(self.orders.get(key), event, now, key=key, config=self.config)
            out += self._keep(key, result, now)
        return out

    def tick(self, now: datetime) -> list[DomainEvent]:
        out: list[DomainEvent] = []
        for key, state in list(self.orders.items()):
            out += self._keep(key, sla.tick(state, now, config=self.config), now)
        return out

    def _keep(self, key: str, result: Result[sla.WorkOrderSla], now: datetime):
        self.orders[key] = result.state
        for forward in result.forwards:
            self.outcomes.append(forward)
            applied = sla.apply_outcome(
                self.shards.get(forward.key), forward.fact, now, key=forward.key, config=self.config
            )
            self.shards[forward.key] = applied.state
            self.late += int(applied.late)
        return list(result.derived)


def _types(events: list[DomainEvent]) -> list[str]:
    return [e.data.breachType for e in events]


def test_on_time_completion_within_estimate_emits_nothing() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, at=T0, end=T0 + hours(8)))
    assert d.feed(completed(wo, at=T0 + hours(7), variance=20.0)) == []  # 20 is not > 20
    agg = d.window("1h", T0 + hours(7))
    assert (agg.count, agg.onTime, agg.breached) == (1, 1, 0)


def test_late_completion_and_duration_overrun() -> None:
    d, wo, master = Driver(), uid(), uid()
    d.feed(created(wo, at=T0, end=T0 + hours(8), master=master))
    done = completed(wo, at=T0 + hours(9), completed_at=T0 + hours(9), variance=35.0)
    out = d.feed(done)
    assert _types(out) == [OVERRUN, LATE]
    late = out[1].data
    assert (late.workOrderId, late.masterId) == (wo, master)
    assert (late.scheduledEnd, late.completedAt, late.variancePercent) == (
        T0 + hours(8),
        T0 + hours(9),
        35.0,
    )
    for e in out:
        assert e.causationId == done.id and e.correlationId == done.correlationId
        assert (e.source, e.actor.type, e.metadata.auditRequired) == ("wo-stream", "SYSTEM", True)
    agg = d.window("1d", T0)
    assert (agg.count, agg.onTime, agg.breached, agg.varianceMax) == (1, 0, 1, 35.0)


def test_overrun_threshold_is_per_tenant() -> None:
    d, wo = Driver(TenantConfig(duration_overrun_percent=5)), uid()
    d.feed(created(wo, at=T0, end=T0 + hours(8)))
    assert _types(d.feed(completed(wo, at=T0 + hours(1), variance=6.0))) == [OVERRUN]


def test_completion_before_created_waits_for_the_schedule_with_the_same_ids() -> None:
    wo = uid()
    create = created(wo, at=T0, end=T0 + hours(8))
    done = completed(wo, at=T0 + hours(9), variance=30.0)
    first, second = Driver(), Driver()
    out_a = first.feed(create) + first.feed(done)
    out_b = second.feed(done)
    assert out_b == [] and second.outcomes == []  # both breaches wait for the schedule
    out_b += second.feed(create, now=T0 + hours(9))
    # the same events, payloads included (scheduledEnd, masterId), not only the same ids
    assert sorted(e.canonical_bytes() for e in out_a) == sorted(e.canonical_bytes() for e in out_b)
    assert sorted(_types(out_a)) == sorted([OVERRUN, LATE])
    assert [o.fact for o in first.outcomes] == [o.fact for o in second.outcomes]


def test_completion_without_a_schedule_is_evaluated_after_the_grace_period() -> None:
    d, wo = Driver(), uid()
    d.feed(completed(wo, at=T0, variance=0.0))
    assert d.tick(T0 + CONFIG.schedule_grace - timedelta(seconds=1)) == [] and not d.outcomes
    assert d.orders[make_key(TENANT, wo)].next_deadline(CONFIG) == T0 + CONFIG.schedule_grace
    assert d.tick(T0 + CONFIG.schedule_grace) == []
    assert [o.fact.onTime for o in d.outcomes] == [None]
    agg = d.window("1h", T0)
    assert (agg.count, agg.onTime, agg.breached) == (1, 0, 0)


def test_overdue_open_fires_once_per_work_order_on_the_injected_clock() -> None:
    d, wo = Driver(), uid()
    create = created(wo, at=T0, end=T0 + hours(8))
    d.feed(create)
    state = d.orders[make_key(TENANT, wo)]
    assert state.next_deadline(CONFIG) == T0 + hours(8)
    assert d.tick(T0 + hours(8)) == []  # not yet past scheduledEnd
    out = d.tick(
        T0
        + hours(
            8,
        )
        + timedelta(milliseconds=1)
    )
    assert _types(out) == [OVERDUE]
    overdue = out[0]
    assert overdue.timestamp == T0 + hours(8)  # stamped at the deadline it crossed
    assert overdue.causationId == create.id
    assert (overdue.data.completedAt, overdue.data.variancePercent) == (None, None)
    # Once per work order: later ticks, even after a reschedule, emit nothing more.
    for n in range(1, 30):
        assert d.tick(T0 + days(n)) == []
    d.feed(updated(wo, {"scheduledEnd": (None, (T0 + days(40)).isoformat())}, at=T0 + days(30)))
    assert d.tick(T0 + days(50)) == []
    # Re-ticking the state from before the emission reproduces the same event (same id).
    again = sla.tick(state, T0 + days(3), config=CONFIG)
    assert again.derived == (overdue,)


def test_no_overdue_for_closed_cancelled_or_unscheduled_orders() -> None:
    d = Driver()
    cancelled, unscheduled, done = uid(), uid(), uid()
    d.feed(created(cancelled, at=T0, end=T0 + hours(1)))
    d.feed(status_changed(cancelled, "CANCELLED", at=T0 + hours(0.5)))
    d.feed(created(unscheduled, at=T0))
    d.feed(created(done, at=T0, end=T0 + hours(1)))
    d.feed(completed(done, at=T0 + hours(0.5)))
    assert d.tick(T0 + days(5)) == []


def test_schedule_from_updated_moves_the_deadline() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, at=T0, end=T0 + hours(8)))
    d.feed(updated(wo, {"scheduledEnd": (None, "2026-03-03T08:00:00Z")}, at=T0 + hours(1)))
    assert d.tick(T0 + hours(20)) == []
    assert _types(d.tick(T0 + days(1) + hours(1))) == [OVERDUE]
    # A stale update (older than the one applied) does not move it back.
    e = updated(wo, {"scheduledEnd": (None, "2026-03-02T09:00:00Z")}, at=T0 + hours(0.5))
    d.feed(e)
    assert d.orders[make_key(TENANT, wo)].scheduledEnd == T0 + days(1)


def test_unreadable_update_values_are_ignored() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, at=T0, end=T0 + hours(8)))
    d.feed(updated(wo, {"scheduledEnd": (None, "next tuesday")}, at=T0 + hours(1)))
    d.feed(updated(wo, {"scheduledEnd": (None, "2026-03-03T08:00:00")}, at=T0 + hours(2)))
    d.feed(updated(wo, {"estimatedDurationHours": (None, "lots")}, at=T0 + hours(3)))
    state = d.orders[make_key(TENANT, wo)]
    assert state.scheduledEnd == T0 + hours(8) and state.estimatedHours is None


def test_duplicate_completion_changes_nothing() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, at=T0, end=T0 + hours(8)))
    done = completed(wo, at=T0 + hours(9), variance=50.0)
    d.feed(done)
    before_order, before_shards = d.orders.copy(), d.shards.copy()
    assert d.feed(done) == []
    assert d.orders == before_order and d.shards == before_shards
    shard = d.outcomes[0].key
    replay = sla.apply_outcome(d.shards[shard], d.outcomes[0].fact, T0, key=shard, config=CONFIG)
    assert replay.duplicate and replay.state is d.shards[shard]


def test_late_outcome_is_reported_not_counted() -> None:
    d, old = Driver(), uid()
    d.feed(created(old, at=T0))
    # Completed 31 days ago on the clock: its windows are beyond the 30-day retention.
    d.feed(completed(old, at=T0), now=T0 + days(31))
    assert d.late == 1
    assert d.window("1d", T0).count == 0 and d.window("1h", T0).count == 0


def test_windows_round_trip_as_plain_json() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, at=T0, end=T0 + hours(1)))
    d.feed(completed(wo, at=T0 + hours(2), variance=-3.5))
    for shard in d.shards.values():
        assert sla.SlaWindows.from_dict(shard.to_dict()) == shard
    order = d.orders[make_key(TENANT, wo)]
    assert sla.WorkOrderSla.from_dict(order.to_dict()) == order
    assert d.window("1h", T0 + hours(2)).varianceMean == -3.5


# --- property: window sums ----------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 45 * 24 * 60),  # minutes after T0
            st.floats(-50, 80, allow_nan=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_window_sums_equal_the_number_of_events_in_the_window(
    items: list[tuple[int, float, bool]],
) -> None:
    shards: dict[str, sla.SlaWindows] = {}
    counted: dict[str, list[sla.SlaOutcome]] = {spec.name: [] for spec in CONFIG.sla_windows}
    now = T0 + days(31)  # the first day's windows are beyond retention: late
    for n, (minute, variance, on_time) in enumerate(items):
        at = T0 + timedelta(minutes=minute)
        fact = sla.SlaOutcome(
            id=uid(5000 + n),
            tenant=TENANT,
            at=at,
            workOrderId=uid(9000 + n),
            onTime=on_time,
            breached=variance > 20 or not on_time,
            variancePercent=variance,
        )
        key = shard_key(TENANT, at, CONFIG.sla_windows)
        result = sla.apply_outcome(shards.get(key), fact, now, key=key, config=CONFIG)
        shards[key] = result.state
        late = [s for s in CONFIG.sla_windows if s.is_late(unix_ms(at), now)]
        assert result.late == bool(late)  # late is reported, never silent
        for spec in CONFIG.sla_windows:
            if spec not in late:
                counted[spec.name].append(fact)
        again = sla.apply_outcome(shards[key], fact, now, key=key, config=CONFIG)
        assert again.duplicate and again.state is shards[key]
    for spec in CONFIG.sla_windows:
        retained = [
            (s, a) for shard in shards.values() for s, a in shard.windows.get(spec.name, {}).items()
        ]
        for start, agg in retained:
            inside = [f for f in counted[spec.name] if spec.start_of(unix_ms(f.at)) == start]
            assert agg.count == len(inside)
            assert agg.onTime == sum(1 for f in inside if f.onTime)
            assert agg.breached == sum(1 for f in inside if f.breached)
            assert agg.varianceMax == max(f.variancePercent for f in inside)
        assert sum(a.count for _, a in retained) == len(counted[spec.name])
    for key, shard in shards.items():
        assert key == f"{TENANT}:{shard.start}"


def test_a_reschedule_stamped_after_the_completion_does_not_count_in_any_order() -> None:
    # A reschedule made after the fact (stamped after the completion) may be delivered before
    # it: lateness is judged against the scheduledEnd in force at the completion.
    from tables.stages import BY_NAME
    from tests.tables_testkit import arrival_outputs

    wo = uid()
    change = ((T0 + hours(4)).isoformat(), (T0 + hours(10)).isoformat())
    events = [
        created(wo, at=T0, end=T0 + hours(4)),
        completed(wo, at=T0 + hours(6), completed_at=T0 + hours(6), variance=0.0),
        updated(wo, {"scheduledEnd": change}, at=T0 + hours(7)),  # moved after the fact
    ]
    stages = [BY_NAME["wo_sla"], BY_NAME["sla_windows"]]
    outputs = arrival_outputs(stages, events, T0 + hours(8))
    assert len(outputs) == 1
    [derived] = outputs
    [late] = [orjson.loads(raw) for raw in derived]
    assert late["data"]["breachType"] == "LATE_COMPLETION"
    assert late["data"]["scheduledEnd"].startswith((T0 + hours(4)).strftime("%Y-%m-%dT%H:%M"))
