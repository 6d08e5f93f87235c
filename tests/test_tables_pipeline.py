"""All families wired in memory: derived envelopes, reprocessing, duplicates, tenants, no loops."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import REGISTRY, DomainEvent, ParseError, is_uuid7, parse_event, uuid7_unix_ms
from events.ids import unix_ms
from tables.stages import STAGES
from tests.tables_testkit import (
    OTHER,
    T0,
    TENANT,
    MiniPipeline,
    assigned,
    blocked,
    calibration_due,
    certification,
    closed,
    completed,
    created,
    days,
    decision,
    escalated,
    hours,
    phi,
    signature_verified,
    status_changed,
    uid,
    updated,
)

NOW = T0 + days(12)
PERSON = "usr_tech_0456"


def scenario(tenant: str = TENANT) -> list[DomainEvent]:
    """Two masters' worth of regulated work, in event-time order."""
    master, a, b, c = uid(1), uid(2), uid(3), uid(4)
    t = [T0 + hours(n) for n in range(200)]

    def at(n: int) -> datetime:
        return t[n]

    events = [
        created(master, at=at(0), regulatory=True, end=at(150)),
        certification(PERSON, "cert-1", T0 + days(9), at=at(0), tenant=tenant),
        created(a, at=at(1), master=master, regulatory=True, end=at(20)),
        created(b, at=at(2), master=master, end=at(30)),
        created(c, at=at(3), master=master, regulatory=True, end=at(100)),
        assigned(a, PERSON, at=at(4), end=at(20)),
        assigned(c, PERSON, at=at(5), end=T0 + days(10)),  # past the certification: violation
        status_changed(a, "IN_PROGRESS", at=at(6), reason=None),  # regulatory, no reason
        status_changed(b, "IN_PROGRESS", at=at(7)),
        blocked(c, at=at(8), master=master),
        calibration_due("tool-9", at(40), [c, b], at=at(9)),
        decision(a, at=at(10)),  # APPROVED without signature: CRITICAL
        signature_verified(a, "EXPIRED_KEY", at=at(11)),
        phi("FLAGGED_FOR_REVIEW", at=at(12), entity=b),
        escalated(b, "OVERDUE", at=at(13)),
        completed(a, at=at(25), master=master, completed_at=at(25), variance=40.0),
        status_changed(
            c, "IN_PROGRESS", previous="BLOCKED", at=at(26), guards_failed=["partsReceived"]
        ),
        updated(b, {"scheduledEnd": (at(30).isoformat(), at(60).isoformat())}, at=at(27)),
        completed(b, at=at(50), master=master, variance=-5.0),
        closed(a, at=at(60), audit_entries=3),
        closed(b, at=at(61)),
    ]
    if tenant != TENANT:
        events = [e.model_copy(update={"tenantId": tenant}) for e in events]
    return events


SCENARIO = scenario()
INPUT_IDS = {e.id for e in SCENARIO}


def run(events: list[DomainEvent], *, mirror: bool = True) -> MiniPipeline:
    pipeline = MiniPipeline(mirror=mirror)
    for event in events:
        pipeline.feed(event, NOW)
    for n in range(0, 30):
        pipeline.tick(T0 + days(n / 2))
    return pipeline


@pytest.fixture(scope="module")
def baseline() -> MiniPipeline:
    return run(SCENARIO)


def test_the_scenario_derives_every_family(baseline: MiniPipeline) -> None:
    kinds = {e.type for e in baseline.derived}
    assert kinds == {
        "work_order.master_progress_updated",
        "work_order.sla_breached",
        "resource.certification_expiring",
        "compliance.violation_detected",
        "compliance.capa_assessment_required",
    }
    breaches = sorted(e.data.breachType for e in baseline.derived if e.type.endswith("breached"))
    assert breaches == ["DURATION_OVERRUN", "LATE_COMPLETION", "OVERDUE_OPEN", "OVERDUE_OPEN"]
    requirements = sorted(
        e.data.requirement for e in baseline.derived if e.type == "compliance.violation_detected"
    )
    assert requirements == sorted(
        [
            "§11.10(e)",  # status change without reason
            "§11.50/§11.70",  # unsigned approval
            "§11.70",  # expired key
            "§164.502(b)",  # PHI flagged
            "21 CFR 211.68(a)",  # tool calibration before c's end
            "21 CFR 211.68(a)",  # ... and before b's end once b was rescheduled
            "§11.10(i)",  # c assigned past the certification's expiry
            "§11.10(f)",  # guards failed
            "§11.10(e)",  # a's closed summary differs
            "§11.10(e)",  # b's closed summary differs
        ]
    )
    assert baseline.signals["late"] == 0 and baseline.signals["expired"] == 0


def test_derived_events_are_full_envelopes_of_the_registry(baseline: MiniPipeline) -> None:
    by_id = {e.id: e for e in SCENARIO}
    for event in baseline.derived:
        spec = REGISTRY.get(event.type)
        assert type(event) is spec.envelope and event.version == spec.version
        assert (event.source, event.actor.type, event.actor.id) == (
            "wo-stream",
            "SYSTEM",
            "wo-stream",
        )
        assert event.tenantId == TENANT
        cause = by_id[event.causationId]  # every cause is an input event: no feedback loop
        assert event.correlationId == cause.correlationId
        assert event.metadata.auditRequired is spec.audit_required
        assert event.metadata.regulatory is (cause.metadata.regulatory or spec.regulatory)
        assert event.metadata.dataClassification is spec.classification_for(
            event.metadata.regulatory
        )
        assert is_uuid7(event.id) and uuid7_unix_ms(event.id) == unix_ms(event.timestamp)
        assert event.timestamp >= cause.timestamp  # timers stamp the deadline, never earlier
        parsed = parse_event(event.canonical_bytes())
        assert not isinstance(parsed, ParseError) and parsed == event
    assert len({e.id for e in baseline.derived}) == len(baseline.derived)


def test_reprocessing_reproduces_byte_identical_derived_events(baseline: MiniPipeline) -> None:
    again = run(SCENARIO)
    assert [e.canonical_bytes() for e in again.derived] == [
        e.canonical_bytes() for e in baseline.derived
    ]
    assert again.tables == baseline.tables


def test_crash_replay_re_emits_the_same_ids_and_redelivery_emits_nothing(
    baseline: MiniPipeline,
) -> None:
    cut, rewind = 14, 9
    before_crash = MiniPipeline()
    emitted: list[DomainEvent] = []
    for event in SCENARIO[:rewind]:
        emitted += before_crash.feed(event, NOW)
    snapshot = {name: dict(table) for name, table in before_crash.tables.items()}
    for event in SCENARIO[rewind:cut]:  # processed, output sent, state not yet committed
        emitted += before_crash.feed(event, NOW)
    for event in SCENARIO[:cut]:  # JetStream redelivers what it saw unacknowledged
        assert before_crash.feed(event, NOW) == []

    restarted = MiniPipeline()  # state restored from the changelog at the last commit
    restarted.tables = snapshot
    for event in SCENARIO[rewind:]:
        emitted += restarted.feed(event, NOW)
    for n in range(0, 30):
        emitted += restarted.tick(T0 + days(n / 2))
    unique = {e.id: e.canonical_bytes() for e in emitted}
    assert unique == {e.id: e.canonical_bytes() for e in baseline.derived}
    assert restarted.tables.keys() == baseline.tables.keys()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, len(SCENARIO) - 1), max_size=25))
def test_duplicates_anywhere_never_change_state_or_output(redelivered: list[int]) -> None:
    pipeline = MiniPipeline()
    seen: list[int] = []
    for n, event in enumerate(SCENARIO):
        pipeline.feed(event, NOW)
        seen.append(n)
        for dup in (r for r in redelivered if r in seen):
            before = {name: dict(t) for name, t in pipeline.tables.items()}
            assert pipeline.feed(SCENARIO[dup], NOW) == []
            assert pipeline.tables == before
    plain = MiniPipeline()
    for event in SCENARIO:
        plain.feed(event, NOW)
    assert pipeline.tables == plain.tables
    assert [e.id for e in pipeline.derived] == [e.id for e in plain.derived]


def test_tenants_never_mix() -> None:
    mine, theirs = scenario(TENANT), scenario(OTHER)  # same entity ids in both tenants
    together = MiniPipeline()
    for a, b in zip(mine, theirs, strict=True):
        together.feed(a, NOW)
        together.feed(b, NOW)
    alone = MiniPipeline()
    for event in mine:
        alone.feed(event, NOW)
    for name, table in together.tables.items():
        assert all(key.split(":")[0] in (TENANT, OTHER) for key in table)
        assert {k: v for k, v in table.items() if k.split(":")[0] == TENANT} == alone.tables[name]
        for key, value in table.items():
            assert value["tenant"] == key.split(":")[0]
    derived_mine = [e for e in together.derived if e.tenantId == TENANT]
    assert [e.id for e in derived_mine] == [e.id for e in alone.derived]


def test_every_stage_is_described() -> None:
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names)) == 9
    for stage in STAGES:
        assert stage.key.startswith("{tenant}")
        assert (stage.route is None) == (not stage.inputs and stage.name != "wo_compliance")
        assert (stage.tick is None) == (stage.next_deadline is None)
