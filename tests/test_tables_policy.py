"""Policy rules: each rule, CAPA at >= HIGH, waiting for the regulatory flag, no feedback."""

from __future__ import annotations

from datetime import datetime

import pytest

from events import DomainEvent, derive_event
from tables import policy
from tables.base import make_key
from tables.config import TenantConfig
from tables.derive import Cause
from tests.tables_testkit import (
    T0,
    TENANT,
    calibration_due,
    closed,
    created,
    days,
    decision,
    hours,
    of_type,
    phi,
    signature_verified,
    status_changed,
    uid,
    updated,
    violation,
)

CONFIG = TenantConfig()
VIOLATION, CAPA = policy.VIOLATION, policy.CAPA


class Driver:
    def __init__(self) -> None:
        self.states: dict[str, policy.PolicyState] = {}
        self.expired = 0

    def feed(self, event: DomainEvent, now: datetime | None = None) -> list[DomainEvent]:
        now = now or event.timestamp
        out: list[DomainEvent] = []
        for key in policy.route(event):
            result = policy.apply(self.states.get(key), event, now, key=key, config=CONFIG)
            self.states[key] = result.state
            self.expired += result.expired
            out += result.derived
        return out


def _violations(out: list[DomainEvent]) -> list[tuple[str, str, str]]:
    return [
        (str(v.data.regulation), v.data.requirement, str(v.data.severity))
        for v in of_type(out, VIOLATION)
    ]


def test_regulatory_status_change_without_reason() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, regulatory=True, at=T0))
    change = status_changed(wo, "IN_PROGRESS", at=T0 + hours(1), reason="  ")
    out = d.feed(change)
    assert _violations(out) == [("FDA_21_CFR_11", "§11.10(e)", "HIGH")]
    violation_, capa = out
    assert capa.type == CAPA and capa.data.violationId == violation_.data.violationId
    assert (capa.data.regulation, capa.data.requirement, capa.data.severity) == (
        "FDA_21_CFR_11",
        "§11.10(e)",
        "HIGH",
    )
    assert violation_.data.workOrderId == wo and not violation_.data.autoRemediable
    assert violation_.causationId == change.id and capa.causationId == change.id
    # With a reason, or on a non-regulatory order, no violation.
    assert d.feed(status_changed(wo, "ON_HOLD", at=T0 + hours(2), reason="parts")) == []
    other = uid()
    d.feed(created(other, regulatory=False, at=T0))
    assert d.feed(status_changed(other, "IN_PROGRESS", at=T0 + hours(1), reason=None)) == []


def test_status_change_before_created_waits_for_the_regulatory_flag() -> None:
    d, wo, plain = Driver(), uid(), uid()
    change = status_changed(wo, "IN_PROGRESS", at=T0 + hours(1), reason=None)
    assert d.feed(change) == []
    out = d.feed(created(wo, regulatory=True, at=T0), now=T0 + hours(2))
    assert _violations(out) == [("FDA_21_CFR_11", "§11.10(e)", "HIGH")]
    assert out[0].causationId == change.id  # derived from the waiting check's own cause
    # Same check on a non-regulatory order resolves to nothing.
    d.feed(status_changed(plain, "IN_PROGRESS", at=T0 + hours(1), reason=None))
    assert d.feed(created(plain, regulatory=False, at=T0)) == []
    assert d.states[make_key(TENANT, plain)].pending == []


def test_the_events_own_regulatory_metadata_decides_at_once() -> None:
    d, wo = Driver(), uid()
    out = d.feed(status_changed(wo, "IN_PROGRESS", at=T0, reason=None, regulatory=True))
    assert _violations(out) == [("FDA_21_CFR_11", "§11.10(e)", "HIGH")]


def test_waiting_checks_are_given_up_after_the_horizon_and_reported() -> None:
    d, wo = Driver(), uid()
    d.feed(status_changed(wo, "IN_PROGRESS", at=T0, reason=None))
    d.feed(status_changed(wo, "ON_HOLD", at=T0 + hours(1), reason="x"), now=T0 + days(8))
    assert d.expired == 1 and d.states[make_key(TENANT, wo)].pending == []
    assert d.feed(created(wo, regulatory=True, at=T0), now=T0 + days(9)) == []


def test_transition_although_guards_failed() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, at=T0))
    out = d.feed(
        status_changed(wo, "COMPLETED", at=T0 + hours(1), guards_failed=["signedOff", "allQc"])
    )
    assert _violations(out) == [("FDA_21_CFR_11", "§11.10(f)", "HIGH")]
    assert "allQc, signedOff" in out[0].data.description
    assert of_type(out, CAPA)


@pytest.mark.parametrize(
    ("signature", "verified", "violates"),
    [(None, True, True), ("sig", False, True), ("sig", True, False)],
)
def test_unsigned_approval_of_a_regulatory_order(
    signature: str | None, verified: bool, violates: bool
) -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, regulatory=True, at=T0))
    sig = uid() if signature else None
    out = d.feed(decision(wo, at=T0 + hours(1), signature=sig, verified=verified))
    expected = [("FDA_21_CFR_11", "§11.50/§11.70", "CRITICAL")] if violates else []
    assert _violations(out) == expected
    assert len(of_type(out, CAPA)) == (1 if violates else 0)


def test_unsigned_rejection_or_non_regulatory_approval_is_fine() -> None:
    d, wo, plain = Driver(), uid(), uid()
    d.feed(created(wo, regulatory=True, at=T0))
    d.feed(created(plain, regulatory=False, at=T0))
    assert d.feed(decision(wo, at=T0 + hours(1), decision_="REJECTED")) == []
    assert d.feed(decision(plain, at=T0 + hours(1))) == []


def test_approval_before_created_waits() -> None:
    d, wo = Driver(), uid()
    assert d.feed(decision(wo, at=T0 + hours(1))) == []  # decisions are regulatory by type
    out = d.feed(created(wo, regulatory=True, at=T0))
    assert _violations(out) == [("FDA_21_CFR_11", "§11.50/§11.70", "CRITICAL")]


@pytest.mark.parametrize(("result", "violates"), [("INVALID", 1), ("EXPIRED_KEY", 1), ("VALID", 0)])
def test_failed_signature_verification(result: str, violates: int) -> None:
    out = Driver().feed(signature_verified(uid(), result, at=T0))
    assert _violations(out) == [("FDA_21_CFR_11", "§11.70", "HIGH")] * violates
    assert len(of_type(out, CAPA)) == violates


def test_phi_flagged_for_review_without_leaking_it() -> None:
    wo = uid()
    out = Driver().feed(phi("FLAGGED_FOR_REVIEW", at=T0, entity=wo))
    assert _violations(out) == [("HIPAA", "§164.502(b)", "MEDIUM")]
    assert out[0].data.workOrderId == wo
    assert "NAME" in out[0].data.description and "description" in out[0].data.description
    assert not of_type(out, CAPA)  # MEDIUM: no CAPA
    assert Driver().feed(phi("BLOCKED", at=T0)) == []
    # PHI in another kind of record: a violation about no work order, keyed by the tenant.
    elsewhere = Driver()
    out = elsewhere.feed(phi("FLAGGED_FOR_REVIEW", at=T0, entity_type="asset", entity="A-1"))
    assert out[0].data.workOrderId is None and list(elsewhere.states) == [TENANT]


def test_tool_calibration_due_before_an_affected_orders_end() -> None:
    d = Driver()
    late, fine, unknown = uid(1), uid(2), uid(3)
    d.feed(created(late, at=T0, end=T0 + days(10)))
    d.feed(created(fine, at=T0, end=T0 + days(2)))
    due = calibration_due("tool-9", T0 + days(5), [late, fine, unknown], at=T0 + hours(1))
    out = d.feed(due)
    assert [v.data.workOrderId for v in of_type(out, VIOLATION)] == [late]
    found = out[0].data
    assert (found.severity, found.requirement, found.autoRemediable) == (
        "MEDIUM",
        "21 CFR 211.68(a)",
        True,
    )
    # The unknown order learns its schedule later: checked then, derived from the tool event.
    later = d.feed(created(unknown, at=T0, end=T0 + days(7)), now=T0 + hours(2))
    assert [v.data.workOrderId for v in later] == [unknown]
    assert later[0].causationId == due.id
    # Once per (tool, due date, order): a reschedule does not repeat it.
    end = (T0 + days(12)).isoformat()
    assert d.feed(updated(late, {"scheduledEnd": (None, end)}, at=T0 + hours(3))) == []


def test_calibration_of_a_closed_order_is_not_a_violation() -> None:
    d, wo = Driver(), uid()
    d.feed(created(wo, at=T0, end=T0 + days(10)))
    d.feed(closed(wo, at=T0 + hours(1)))
    assert d.feed(calibration_due("tool-9", T0 + days(5), [wo], at=T0 + hours(2))) == []


def test_external_high_violation_gets_a_capa_and_own_events_are_ignored() -> None:
    d, wo = Driver(), uid()
    external = violation(wo, "CRITICAL", at=T0)
    out = d.feed(external)
    assert [e.type for e in out] == [CAPA]
    assert out[0].data.violationId == external.data.violationId
    assert d.feed(violation(wo, "LOW", at=T0 + hours(1))) == []
    # wo-stream's own violation coming back through the mirror: no second CAPA (no loop).
    d.feed(created(wo, regulatory=True, at=T0))
    ours = d.feed(status_changed(wo, "IN_PROGRESS", at=T0 + hours(2), reason=None))
    for event in ours:
        assert event.source == "wo-stream"
        assert d.feed(event) == []


def test_derived_ids_are_deterministic_and_violation_id_is_the_event_id() -> None:
    wo = uid()
    events = [
        created(wo, regulatory=True, at=T0),
        status_changed(wo, "IN_PROGRESS", at=T0 + hours(1), reason=None, guards_failed=["x"]),
    ]
    d1, d2 = Driver(), Driver()
    run1 = [e for ev in events for e in d1.feed(ev)]
    run2 = [e for ev in events for e in d2.feed(ev)]
    assert [e.canonical_bytes() for e in run1] == [e.canonical_bytes() for e in run2]
    assert len({e.id for e in run1}) == len(run1) == 4  # two violations, two CAPAs
    for v in of_type(run1, VIOLATION):
        assert v.data.violationId == v.id


def test_emit_matches_derive_event() -> None:
    wo = uid()
    cause = status_changed(wo, "IN_PROGRESS", at=T0, reason=None)
    found = policy.failed_guards("A", "B", ["g"])
    assert found is not None
    ours = policy.emit(Cause.of(cause), wo, found, key="k")[0]
    theirs = derive_event(cause, VIOLATION, ours.data, key="k")
    assert ours == theirs


def test_a_calibration_notice_is_judged_by_event_time_in_every_arrival_order() -> None:
    # created and completed come on the workorder topic, the notice on the resource topic
    from tables.stages import BY_NAME
    from tests.tables_testkit import arrival_outputs, completed

    for notice_at, expect in ((T0 + hours(1), True), (T0 + days(4) + hours(1), False)):
        wo = uid()
        notice = calibration_due("tool-9", T0 + days(2), [wo], at=notice_at)
        done = completed(wo, at=T0 + days(4))
        events = [created(wo, at=T0, end=T0 + days(5)), notice, done]
        # not a notice issued after the completion but delivered before it (decided right away)
        stages = [BY_NAME["wo_policy"]]
        outputs = arrival_outputs(stages, events, T0 + days(6), ahead=(notice, done))
        assert len(outputs) == 1, notice_at
        [out_bytes] = outputs
        assert (len(out_bytes) == 1) is expect, notice_at  # MEDIUM: no CAPA request
