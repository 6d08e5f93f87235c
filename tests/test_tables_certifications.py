"""Certification expiry: thresholds once each, affected work orders, expired-certification check."""

from __future__ import annotations

from datetime import datetime

from events import DomainEvent
from tables import certifications as certs
from tables.base import make_key
from tables.config import TenantConfig
from tests.tables_testkit import (
    T0,
    TENANT,
    assigned,
    certification,
    closed,
    days,
    hours,
    of_type,
    status_changed,
    uid,
)

PERSON = "usr_tech_0456"
EXPERIENCE = "cert-balance-cal-2025-0456"
EXPIRY = T0 + days(40)
CONFIG = TenantConfig()


class Driver:
    def __init__(self, config: TenantConfig = CONFIG) -> None:
        self.config = config
        self.orders: dict[str, certs.WorkOrderAssignees] = {}
        self.people: dict[str, certs.PersonCertifications] = {}

    def feed(self, event: DomainEvent, now: datetime | None = None) -> list[DomainEvent]:
        now = now or event.timestamp
        out: list[DomainEvent] = []
        for key in certs.route_work_order(event):
            result = certs.apply_work_order(
                self.orders.get(key), event, now, key=key, config=self.config
            )
            self.orders[key] = result.state
            for forward in result.forwards:
                out += self._person(forward.key, forward.fact, now)
        for key in certs.route_person(event):
            out += self._person(key, event, now)
        return out

    def _person(self, key, item, now) -> list[DomainEvent]:
        result = certs.apply_person(self.people.get(key), item, now, key=key, config=self.config)
        self.people[key] = result.state
        return list(result.derived)

    def tick(self, now: datetime) -> list[DomainEvent]:
        out: list[DomainEvent] = []
        for key, state in list(self.people.items()):
            result = certs.tick(state, now, config=self.config)
            self.people[key] = result.state
            out += result.derived
        return out

    def person(self, person: str = PERSON) -> certs.PersonCertifications:
        return self.people[make_key(TENANT, person)]


STEP = hours(6)


def _run_clock(d: Driver, start: datetime, end: datetime) -> list[DomainEvent]:
    out, now = [], start
    while now <= end:
        out += d.tick(now)
        now += STEP
    return out


def test_each_threshold_fires_exactly_once_on_the_injected_clock() -> None:
    d = Driver()
    recorded = certification(PERSON, EXPERIENCE, EXPIRY, at=T0)
    d.feed(recorded)
    out = _run_clock(d, T0, EXPIRY + days(5))
    assert [e.data.daysUntilExpiry for e in out] == [30, 14, 7, 1, 0]
    assert [e.timestamp for e in out] == [EXPIRY - days(n) for n in (30, 14, 7, 1, 0)]
    for e in out:
        assert e.type == "resource.certification_expiring"
        assert (e.data.personId, e.data.experienceId) == (PERSON, EXPERIENCE)
        assert e.data.expirationDate == EXPIRY
        assert e.causationId == recorded.id and e.correlationId == recorded.correlationId
        assert (e.source, e.actor.type) == ("wo-stream", "SYSTEM")
        assert e.metadata.regulatory and e.metadata.auditRequired
    assert len({e.id for e in out}) == 5
    assert d.tick(EXPIRY + days(100)) == []
    assert d.person().next_deadline(CONFIG) is None


def test_thresholds_are_configurable() -> None:
    d = Driver(TenantConfig(certification_thresholds_days=(3, 10)))
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0))
    assert d.person().next_deadline(d.config) == EXPIRY - days(10)
    out = _run_clock(d, T0, EXPIRY + days(1))
    assert [e.data.daysUntilExpiry for e in out] == [10, 3]


def test_several_thresholds_passed_at_once_give_one_accurate_notice() -> None:
    d = Driver()
    recorded_at = EXPIRY - days(10)  # 30 and 14 are already behind us
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=recorded_at))
    first = d.tick(recorded_at + hours(1))
    assert [e.data.daysUntilExpiry for e in first] == [10]
    assert first[0].timestamp == recorded_at  # never before its cause
    rest = _run_clock(d, recorded_at + hours(2), EXPIRY + days(1))
    assert [e.data.daysUntilExpiry for e in rest] == [7, 1, 0]


def test_a_tick_replayed_from_the_same_state_derives_the_same_event() -> None:
    d = Driver()
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0))
    state = d.person()
    a = certs.tick(state, EXPIRY - days(29), config=CONFIG)
    b = certs.tick(state, EXPIRY - days(20), config=CONFIG)  # a later tick, same crossing
    assert a.derived == b.derived and len(a.derived) == 1
    assert a.state == b.state and state.certs[EXPERIENCE].notified == []  # input untouched


def test_affected_work_orders_are_open_and_end_after_expiry_or_within_the_horizon() -> None:
    d = Driver()
    after, within, before, done = uid(1), uid(2), uid(3), uid(4)
    d.feed(assigned(after, PERSON, at=T0, end=EXPIRY + days(1)))
    d.feed(assigned(within, PERSON, at=T0, end=EXPIRY - days(3)))
    d.feed(assigned(before, PERSON, at=T0, end=EXPIRY - days(20)))
    d.feed(assigned(done, PERSON, at=T0, end=EXPIRY + days(2)))
    d.feed(closed(done, at=T0 + hours(1)))
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0 + hours(2)))
    notice = d.tick(EXPIRY - days(30))
    expiring = of_type(notice, "resource.certification_expiring")
    assert expiring[0].data.affectedWorkOrders == sorted([after, within])


def test_assigning_past_a_certifications_expiry_is_a_violation_right_away() -> None:
    d = Driver()
    wo = uid()
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0))
    assign = assigned(wo, PERSON, at=T0 + hours(1), end=EXPIRY + days(1))
    out = d.feed(assign)
    assert [e.type for e in out] == [
        "compliance.violation_detected",
        "compliance.capa_assessment_required",
    ]
    violation, capa = out
    assert violation.data.workOrderId == wo
    assert (violation.data.regulation, violation.data.requirement) == ("FDA_21_CFR_11", "§11.10(i)")
    assert violation.data.severity == "HIGH"
    assert violation.data.violationId == violation.id == capa.data.violationId
    assert violation.causationId == capa.causationId == assign.id
    assert violation.metadata.dataClassification == "L4"
    # The same assignment again (a redelivery) or a second status change: nothing new.
    assert d.feed(assign) == []
    assert d.feed(status_changed(wo, "IN_PROGRESS", at=T0 + hours(2))) == []


def test_the_check_also_fires_when_the_certification_arrives_after_the_assignment() -> None:
    d = Driver()
    wo, ok_wo = uid(), uid()
    d.feed(assigned(wo, PERSON, at=T0, end=EXPIRY + days(1)))
    d.feed(assigned(ok_wo, PERSON, at=T0, end=EXPIRY - days(1)))
    recorded = certification(PERSON, EXPERIENCE, EXPIRY, at=T0 + hours(1))
    out = d.feed(recorded)
    violations = of_type(out, "compliance.violation_detected")
    assert [v.data.workOrderId for v in violations] == [wo]
    assert violations[0].causationId == recorded.id


def test_closed_work_orders_and_team_assignments_are_not_checked() -> None:
    d = Driver()
    wo, team_wo = uid(), uid()
    d.feed(assigned(wo, PERSON, at=T0, end=EXPIRY + days(1)))
    d.feed(closed(wo, at=T0 + hours(1)))
    d.feed(assigned(team_wo, "team-7", at=T0, end=EXPIRY + days(1), resource_type="TEAM"))
    assert d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0 + hours(2))) == []
    assert make_key(TENANT, "team-7") not in d.people


def test_renewal_resets_the_thresholds_for_the_new_expiry() -> None:
    d = Driver()
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0))
    assert len(_run_clock(d, T0, EXPIRY - days(13))) == 2  # 30 and 14
    renewed = EXPIRY + days(365)
    d.feed(certification(PERSON, EXPERIENCE, renewed, at=EXPIRY - days(12)))
    assert d.tick(EXPIRY) == []
    out = _run_clock(d, EXPIRY, renewed)
    assert [e.data.daysUntilExpiry for e in out] == [30, 14, 7, 1, 0]
    assert {e.data.expirationDate for e in out} == {renewed}


def test_stale_certification_record_does_not_override_a_newer_one() -> None:
    d = Driver()
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY + days(365), at=T0 + hours(2)))
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0 + hours(1)))
    assert d.person().certs[EXPERIENCE].expirationDate == EXPIRY + days(365)


def test_states_and_facts_round_trip_as_plain_json() -> None:
    d = Driver()
    wo = uid()
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0))
    d.feed(assigned(wo, PERSON, at=T0, end=EXPIRY + days(1)))
    d.tick(EXPIRY - days(29))
    for state in [*d.orders.values(), *d.people.values()]:
        assert type(state).from_dict(state.to_dict()) == state


def test_closed_assignments_are_forgotten_after_the_dedup_horizon() -> None:
    d = Driver()
    orders = [uid() for _ in range(50)]
    for wo in orders:
        d.feed(assigned(wo, PERSON, at=T0, end=EXPIRY - days(1)))
        d.feed(closed(wo, at=T0 + hours(1)))
    kept = d.person().assignments
    assert len(kept) == 50 and not any(a.open for a in kept.values())
    # within the horizon the tombstones stay: an older fact arriving late is still dropped
    d.feed(certification(PERSON, EXPERIENCE, EXPIRY, at=T0 + days(3)))
    assert len(d.person().assignments) == 50
    open_wo = uid()
    d.feed(assigned(open_wo, PERSON, at=T0 + days(8), end=EXPIRY - days(1)))
    assert list(d.person().assignments) == [open_wo]  # the closed ones are gone, the open stays
    assert d.person().certs[EXPERIENCE].expirationDate == EXPIRY


def test_the_expired_certification_check_is_the_same_in_every_arrival_order() -> None:
    # Assignment (resource topic), certification record (resource, another key) and completion
    # (workorder topic) may arrive in any order: the result is what event-time order gives,
    # id and payload included. A violation iff the later of assignment and record happened
    # while the order was open.
    from tables.stages import BY_NAME
    from tests.tables_testkit import arrival_outputs, completed

    stages = [BY_NAME["wo_assignees"], BY_NAME["person_certs"]]
    for cert_at, expect in ((T0 - days(300), True), (T0 + hours(1), True),
                            (T0 + days(5), False)):  # fmt: skip
        wo = uid()
        record = certification(PERSON, EXPERIENCE, T0 + days(2), at=cert_at)  # expires in 2 d
        done = completed(wo, at=T0 + days(4))
        events = [record, assigned(wo, PERSON, at=T0, end=T0 + days(5)), done]  # ends in 5 d
        # not a record stamped after the completion but delivered before it: decided "right
        # away" while the order still looked open (documented in _check)
        outputs = arrival_outputs(stages, events, T0 + days(6), ahead=(record, done))
        assert len(outputs) == 1, cert_at
        [out_bytes] = outputs
        assert (len(out_bytes) == 2) is expect, cert_at  # violation + CAPA request, or nothing
