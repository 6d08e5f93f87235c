"""Compliance aggregates per tenant (1 d windows) and the per-work-order compliance summary."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from events import DomainEvent
from events.ids import unix_ms
from tables import compliance
from tables.base import make_key
from tables.config import TenantConfig
from tables.windows import shard_key
from tests.tables_testkit import (
    T0,
    TENANT,
    closed,
    created,
    days,
    decision,
    escalated,
    hours,
    phi,
    signature_verified,
    status_changed,
    uid,
    violation,
)

CONFIG = TenantConfig()
DAY = CONFIG.compliance_windows[0]


class Aggregates:
    def __init__(self) -> None:
        self.shards: dict[str, compliance.ComplianceWindows] = {}

    def feed(self, event: DomainEvent, now: datetime) -> bool:
        late = False
        for key in compliance.route_aggregate(event, CONFIG):
            result = compliance.apply_aggregate(
                self.shards.get(key), event, now, key=key, config=CONFIG
            )
            self.shards[key] = result.state
            late = late or result.late
        return late

    def window(self, at: datetime) -> compliance.ComplianceAggregate:
        shard = self.shards.get(shard_key(TENANT, at, CONFIG.compliance_windows))
        if shard is None:
            return compliance.ComplianceAggregate()
        return shard.window("1d", at, CONFIG.compliance_windows)


def test_daily_counts_by_regulation_severity_result_action_and_reason() -> None:
    wo = uid()
    events = [
        violation(wo, "HIGH", at=T0),
        violation(wo, "LOW", at=T0 + hours(1), regulation="HIPAA"),
        violation(None, "HIGH", at=T0 + hours(2)),
        signature_verified(wo, "VALID", at=T0),
        signature_verified(wo, "INVALID", at=T0),
        phi("BLOCKED", at=T0),
        phi("FLAGGED_FOR_REVIEW", at=T0),
        escalated(wo, "OVERDUE", at=T0),
        escalated(wo, "OVERDUE", at=T0 + days(1)),  # next day
        created(wo, at=T0),  # not an aggregate input
    ]
    agg = Aggregates()
    for event in events:
        agg.feed(event, T0 + days(2))
    today = agg.window(T0)
    assert today.count == 8
    assert today.violationsByRegulation == {"FDA_21_CFR_11": 2, "HIPAA": 1}
    assert today.violationsBySeverity == {"HIGH": 2, "LOW": 1}
    assert today.signaturesByResult == {"VALID": 1, "INVALID": 1}
    assert today.phiByAction == {"BLOCKED": 1, "FLAGGED_FOR_REVIEW": 1}
    assert today.escalationsByReason == {"OVERDUE": 1}
    assert agg.window(T0 + days(1)).count == 1
    assert len(agg.shards) == 2  # one shard per tenant and UTC day
    for shard in agg.shards.values():
        assert compliance.ComplianceWindows.from_dict(shard.to_dict()) == shard


def test_each_day_keeps_its_newest_violations_newest_first_ids_and_codes_only() -> None:
    wo = uid()
    agg = Aggregates()
    # more than RECENT_MAX violations in one day, fed in a scrambled order, each twice
    n = compliance.RECENT_MAX + 5
    events = [violation(wo, "HIGH" if i % 3 else "LOW", at=T0 + timedelta(minutes=i))
              for i in range(n)]  # fmt: skip
    order = events[1::2] + events[::2]
    for event in order + order:
        agg.feed(event, T0 + days(1))
    shard = agg.shards[shard_key(TENANT, T0, CONFIG.compliance_windows)]
    newest = sorted(events, key=lambda e: e.timestamp, reverse=True)[: compliance.RECENT_MAX]
    assert [v.violationId for v in shard.recent] == [str(e.data.violationId) for e in newest]
    first = shard.recent[0]
    assert (first.workOrderId, first.regulation, first.requirement, first.severity) == (
        wo,
        "FDA_21_CFR_11",
        newest[0].data.requirement,
        str(newest[0].data.severity),
    )
    assert first.at == unix_ms(newest[0].timestamp)
    assert "description" not in first.model_dump()  # free text stays out of the view
    assert agg.window(T0).count == n  # the duplicates changed nothing
    assert compliance.ComplianceWindows.from_dict(shard.to_dict()) == shard


def test_a_late_violation_is_not_listed_either() -> None:
    agg = Aggregates()
    agg.feed(violation(None, "LOW", at=T0), T0 + days(31))
    assert all(not shard.recent for shard in agg.shards.values())


def test_late_compliance_event_is_reported() -> None:
    agg = Aggregates()
    assert agg.feed(violation(None, "LOW", at=T0), T0 + days(31))
    assert agg.window(T0).count == 0


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40 * 24),  # hour after T0
            st.sampled_from(["violation", "signature", "phi", "escalation"]),
            st.integers(0, 3),  # redeliveries
        ),
        min_size=1,
        max_size=40,
    )
)
def test_window_sums_equal_the_number_of_events_in_the_window(
    items: list[tuple[int, str, int]],
) -> None:
    wo = uid()
    make = {
        "violation": lambda at: violation(wo, "MEDIUM", at=at),
        "signature": lambda at: signature_verified(wo, "VALID", at=at),
        "phi": lambda at: phi("BLOCKED", at=at),
        "escalation": lambda at: escalated(wo, "DELEGATION", at=at),
    }
    agg = Aggregates()
    counted: list[DomainEvent] = []
    now = T0 + days(33)  # the first days are beyond retention
    for hour, kind, redeliveries in items:
        event = make[kind](T0 + timedelta(hours=hour))
        late = agg.feed(event, now)
        assert late == DAY.is_late(unix_ms(event.timestamp), now)
        if not late:
            counted.append(event)
        for _ in range(redeliveries):
            before = dict(agg.shards)
            assert not agg.feed(event, now) or late
            assert agg.shards == before
    retained = [
        (s, a) for shard in agg.shards.values() for s, a in shard.windows.get("1d", {}).items()
    ]
    for start, window in retained:
        inside = [e for e in counted if DAY.start_of(unix_ms(e.timestamp)) == start]
        assert window.count == len(inside)
        sums = (
            sum(window.violationsBySeverity.values())
            + sum(window.signaturesByResult.values())
            + sum(window.phiByAction.values())
            + sum(window.escalationsByReason.values())
        )
        assert sums == window.count
        assert sum(window.violationsByRegulation.values()) == sum(
            window.violationsBySeverity.values()
        )
    assert sum(w.count for _, w in retained) == len(counted)


# --- summary ----------------------------------------------------------------------------------


class Summary:
    def __init__(self) -> None:
        self.states: dict[str, compliance.WorkOrderCompliance] = {}

    def feed(self, event: DomainEvent) -> list[DomainEvent]:
        out: list[DomainEvent] = []
        for key in compliance.route_summary(event):
            result = compliance.apply_summary(
                self.states.get(key), event, event.timestamp, key=key, config=CONFIG
            )
            self.states[key] = result.state
            out += result.derived
        return out

    def tick(self, now: datetime) -> list[DomainEvent]:
        out: list[DomainEvent] = []
        for key, state in list(self.states.items()):
            result = compliance.tick_summary(state, now, config=CONFIG)
            self.states[key] = result.state
            out += result.derived
        return out

    def close(self, event: DomainEvent) -> list[DomainEvent]:
        """Feed a close, then let its grace pass (the check runs on the timer)."""
        assert self.feed(event) == []  # nothing until the grace has passed
        return self.tick(event.timestamp + CONFIG.close_grace)


def _history(wo: str) -> list[DomainEvent]:
    signature = uid()
    return [
        created(wo, regulatory=True, at=T0),  # audited
        status_changed(wo, "IN_PROGRESS", at=T0 + hours(1)),  # audited
        decision(wo, at=T0 + hours(2), signature=signature),  # audited, signature 1
        signature_verified(wo, "VALID", at=T0 + hours(3), signature=signature),  # same signature
        violation(wo, "HIGH", at=T0 + hours(4)),  # audited, deviation, capa
    ]


def test_summary_matching_the_stream_passes() -> None:
    s, wo = Summary(), uid()
    for event in _history(wo):
        s.feed(event)
    observed = s.states[make_key(TENANT, wo)].summary()
    assert observed.model_dump() == {
        "auditEntries": 5,
        "signatures": 1,
        "deviations": 1,
        "capaRequired": True,
    }
    done = closed(wo, at=T0 + hours(5), audit_entries=5, signatures=1, deviations=1, capa=True)
    assert s.close(done) == []


def test_summary_counts_what_the_audit_trail_holds_whatever_the_flag_says() -> None:
    # catalog 2.2 marks status_changed "Audit Required: Yes": a producer's auditRequired false
    # does not keep it out of the trail (events.registry.requires_audit), nor out of this count
    s, wo = Summary(), uid()
    history = _history(wo)
    history[1] = history[1].model_copy(
        update={"metadata": history[1].metadata.model_copy(update={"auditRequired": False})}
    )
    for event in history:
        s.feed(event)
    assert s.states[make_key(TENANT, wo)].summary().auditEntries == 5


def test_summary_differing_from_the_stream_is_a_violation() -> None:
    s, wo = Summary(), uid()
    for event in _history(wo):
        s.feed(event)
    done = closed(wo, at=T0 + hours(5), audit_entries=5, signatures=1, deviations=0, capa=False)
    out = s.close(done)
    assert [e.type for e in out] == ["compliance.violation_detected"]  # MEDIUM: no CAPA
    found = out[0].data
    assert (found.requirement, found.severity, found.workOrderId) == ("§11.10(e)", "MEDIUM", wo)
    assert "deviations reported 0 observed 1" in found.description
    assert "capaRequired reported False observed True" in found.description
    assert out[0].causationId == done.id
    assert s.feed(done) == [] and s.tick(T0 + days(3)) == []  # redelivered close, re-tick


def test_own_derived_violations_count_as_deviations_but_never_derive() -> None:
    s, wo = Summary(), uid()
    s.feed(created(wo, at=T0))
    done = closed(wo, at=T0 + hours(5), audit_entries=0)
    derived = s.close(done)  # 1 audit entry observed, 0 reported
    assert len(derived) == 1
    for event in derived:  # comes back through wo.derived / the NATS mirror
        assert s.feed(event) == []
    assert s.states[make_key(TENANT, wo)].summary().deviations == 1


def test_the_close_check_counts_what_happened_before_the_close_in_any_arrival_order() -> None:
    # The decision (approval topic) is stamped before the close (workorder topic) but may be
    # delivered after it; a violation stamped after the close does not belong to it.
    from tables.stages import BY_NAME
    from tests.tables_testkit import arrival_outputs

    wo, signature = uid(), uid()
    done = closed(wo, at=T0 + hours(2), audit_entries=2, signatures=1, deviations=0, capa=False)
    events = [
        created(wo, at=T0),
        decision(wo, at=T0 + hours(1), signature=signature),
        done,
        violation(wo, "LOW", at=T0 + hours(3)),  # after the close: not the close's business
    ]
    stages, now, later = [BY_NAME["wo_compliance"]], T0 + hours(4), T0 + days(1)
    outputs = arrival_outputs(stages, events, now, tick=later)
    assert outputs == {()}  # the reported summary is right in every order
    wrong = closed(wo, at=T0 + hours(2), audit_entries=2, signatures=0, deviations=0, capa=False)
    outputs = arrival_outputs(stages, [*events[:2], wrong], now, tick=later)
    assert len(outputs) == 1 and len(next(iter(outputs))) == 1  # one violation, same id
