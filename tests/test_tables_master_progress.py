"""Master work-order progress: child link/status stage, master stage, order independence."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from events import DomainEvent
from tables import master_progress as mp
from tables.base import Forward, make_key
from tables.lifecycle import DONE, status_of
from tests.tables_testkit import (
    T0,
    TENANT,
    blocked,
    closed,
    completed,
    created,
    hours,
    status_changed,
    uid,
    updated,
)

MASTER = uid(100)
NOW = T0 + timedelta(days=1)


class Driver:
    """Stage 1 + stage 2 in memory (facts applied immediately, as a repartition would)."""

    def __init__(self) -> None:
        self.children: dict[str, mp.ChildLink] = {}
        self.masters: dict[str, mp.MasterProgress] = {}
        self.derived: list[DomainEvent] = []
        self.facts: list[Forward] = []

    def feed(self, event: DomainEvent) -> list[DomainEvent]:
        out: list[DomainEvent] = []
        for key in mp.route(event):
            result = mp.apply_child(self.children.get(key), event, NOW, key=key)
            self.children[key] = result.state
            for forward in result.forwards:
                self.facts.append(forward)
                out += self.apply_fact(forward)
        self.derived += out
        return out

    def apply_fact(self, forward: Forward) -> list[DomainEvent]:
        result = mp.apply_fact(self.masters.get(forward.key), forward.fact, NOW, key=forward.key)
        self.masters[forward.key] = result.state
        return list(result.derived)

    def master(self, master: str = MASTER) -> mp.MasterProgress:
        return self.masters[make_key(TENANT, master)]


def _data(event: DomainEvent) -> dict[str, Any]:
    return event.data.model_dump()


def test_progress_counts_completed_closed_blocked_in_progress() -> None:
    d = Driver()
    a, b, c, e = uid(), uid(), uid(), uid()
    d.feed(created(MASTER, at=T0))
    for i, child in enumerate((a, b, c, e)):
        d.feed(created(child, at=T0 + hours(i), master=MASTER))
    d.feed(status_changed(a, "IN_PROGRESS", at=T0 + hours(5)))
    d.feed(blocked(b, at=T0 + hours(6), master=MASTER))
    d.feed(completed(c, at=T0 + hours(7), master=MASTER))
    out = d.feed(closed(e, at=T0 + hours(8)))
    assert [o.type for o in out] == [mp.PROGRESS_UPDATED]
    assert _data(out[0]) == {
        "masterId": MASTER,
        "totalChildren": 4,
        "completedChildren": 2,
        "blockedChildren": 1,
        "inProgressChildren": 1,
        "progressPercent": 50.0,
        "lastChangedChildId": e,
    }


def test_every_child_change_emits_and_the_master_itself_does_not() -> None:
    d = Driver()
    child = uid()
    assert d.feed(created(MASTER, at=T0)) == []  # the master has no master
    kinds = [
        created(child, at=T0 + hours(1), master=MASTER),
        status_changed(child, "IN_PROGRESS", at=T0 + hours(2)),
        blocked(child, at=T0 + hours(3)),
        status_changed(child, "IN_PROGRESS", at=T0 + hours(4), previous="BLOCKED"),
        completed(child, at=T0 + hours(5), master=MASTER),
        closed(child, at=T0 + hours(6)),
    ]
    for event in kinds:
        out = d.feed(event)
        assert len(out) == 1 and out[0].data.lastChangedChildId == child
        assert out[0].causationId == event.id
        assert out[0].correlationId == event.correlationId
    assert d.master().counts()["progressPercent"] == 100.0


def test_child_completed_before_anything_else_is_linked_through_its_own_master_id() -> None:
    d = Driver()
    child = uid()
    out = d.feed(completed(child, at=T0 + hours(5), master=MASTER))
    assert out[0].data.completedChildren == 1
    # status_changed carries no masterId: without a link it is only remembered ...
    other = uid()
    assert d.feed(status_changed(other, "IN_PROGRESS", at=T0 + hours(1))) == []
    # ... and forwarded once created brings the link.
    out = d.feed(created(other, at=T0, master=MASTER))
    assert (out[0].data.totalChildren, out[0].data.inProgressChildren) == (2, 1)


def test_a_stale_status_does_not_override_a_newer_one() -> None:
    d = Driver()
    child = uid()
    d.feed(created(child, at=T0, master=MASTER))
    d.feed(completed(child, at=T0 + hours(5), master=MASTER))
    assert d.feed(status_changed(child, "IN_PROGRESS", at=T0 + hours(2))) != []
    assert d.master().counts()["completedChildren"] == 1


def test_relink_moves_the_child_between_masters() -> None:
    d = Driver()
    other_master, child = uid(), uid()
    d.feed(created(child, at=T0, master=MASTER))
    out = d.feed(updated(child, {"masterId": (MASTER, other_master)}, at=T0 + hours(1)))
    assert {o.data.masterId: o.data.totalChildren for o in out} == {MASTER: 0, other_master: 1}
    # Back to no master at all.
    out = d.feed(updated(child, {"masterId": (other_master, None)}, at=T0 + hours(2)))
    assert [(o.data.masterId, o.data.totalChildren) for o in out] == [(other_master, 0)]


def test_relink_while_status_is_newer_still_removes_from_the_old_master() -> None:
    # A status newer than the link change must not make the removal look stale.
    d = Driver()
    other_master, child = uid(), uid()
    d.feed(status_changed(child, "IN_PROGRESS", at=T0 + hours(5)))
    d.feed(created(child, at=T0, master=MASTER))
    d.feed(updated(child, {"masterId": (MASTER, other_master)}, at=T0 + hours(3)))
    assert d.master().counts()["totalChildren"] == 0
    assert d.master(other_master).counts()["inProgressChildren"] == 1


def test_self_link_is_ignored() -> None:
    d = Driver()
    wo = uid()
    assert d.feed(created(wo, at=T0, master=wo)) == []


def test_duplicate_child_event_and_replayed_fact_change_nothing() -> None:
    d = Driver()
    child = uid()
    event = created(child, at=T0, master=MASTER)
    d.feed(event)
    before = (d.children.copy(), d.master().model_copy(deep=True))
    key = make_key(TENANT, child)
    result = mp.apply_child(d.children[key], event, NOW, key=key)
    assert result.duplicate and result.state is d.children[key] and not result.forwards
    replay = mp.apply_fact(d.master(), d.facts[0].fact, NOW, key=d.facts[0].key)
    assert replay.duplicate and not replay.derived
    assert (d.children, d.master()) == before


def test_states_and_facts_round_trip_as_plain_json() -> None:
    d = Driver()
    child = uid()
    d.feed(created(child, at=T0, master=MASTER))
    d.feed(blocked(child, at=T0 + hours(1)))
    for state in [*d.children.values(), *d.masters.values()]:
        assert type(state).from_dict(state.to_dict()) == state
    fact = d.facts[-1].fact
    assert mp.ChildFact.from_dict(fact.to_dict()) == fact


# --- properties -------------------------------------------------------------------------------

_STEPS = st.sampled_from(["in_progress", "blocked", "completed", "closed", "cancelled", "hold"])


@st.composite
def scenarios(draw: st.DrawFn) -> list[DomainEvent]:
    """A master's created plus, per child, created and a few later lifecycle events."""
    n = draw(st.integers(1, 5))
    minutes = iter(draw(st.permutations(range(1, 400)))[: n * 6 + 1])
    events = [created(MASTER, at=T0 + timedelta(minutes=next(minutes)))]
    for i in range(n):
        child = uid(200 + i)
        times = sorted(next(minutes) for _ in range(draw(st.integers(0, 4)) + 1))
        at = [T0 + timedelta(minutes=m) for m in times]
        events.append(created(child, at=at[0], master=MASTER))
        for when in at[1:]:
            events.append(_step(draw(_STEPS), child, when, draw(st.booleans())))
    return events


def _step(kind: str, child: str, at: datetime, with_master: bool) -> DomainEvent:
    master = MASTER if with_master else None
    if kind == "blocked":
        return blocked(child, at=at, master=master)
    if kind == "completed":
        return completed(child, at=at, master=master)
    if kind == "closed":
        return closed(child, at=at)
    status = {"in_progress": "IN_PROGRESS", "cancelled": "CANCELLED", "hold": "ON_HOLD"}[kind]
    return status_changed(child, status, at=at)


def _expected(events: list[DomainEvent]) -> dict[str, Any]:
    """The progress the issue defines, from the latest status-bearing event of each child."""
    latest: dict[str, tuple[datetime, str, str | None]] = {}
    for e in events:
        if e.data.workOrderId == MASTER:
            continue
        status = status_of(e)
        current = latest.get(e.data.workOrderId)
        if current is None:
            latest[e.data.workOrderId] = (datetime.min.replace(tzinfo=T0.tzinfo), "", None)
            current = latest[e.data.workOrderId]
        if status is not None and (e.timestamp, e.id) > current[:2]:
            latest[e.data.workOrderId] = (e.timestamp, e.id, status)
    statuses = [s for _, _, s in latest.values()]
    total = len(statuses)
    done = sum(1 for s in statuses if s in DONE)
    return {
        "totalChildren": total,
        "completedChildren": done,
        "blockedChildren": statuses.count("BLOCKED"),
        "inProgressChildren": statuses.count("IN_PROGRESS"),
        "progressPercent": round(done * 100 / total, 2) if total else 0.0,
    }


@settings(max_examples=80, deadline=None)
@given(scenarios(), st.data())
def test_final_progress_does_not_depend_on_the_order_of_events(
    events: list[DomainEvent], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(events))
    ordered, mixed = Driver(), Driver()
    for e in sorted(events, key=lambda e: (e.timestamp, e.id)):
        ordered.feed(e)
    for e in shuffled:  # includes completions before the master's and the child's creation
        mixed.feed(e)
    expected = _expected(events)
    assert ordered.master().counts() == mixed.master().counts() == expected
    # The last progress emitted is the final one.
    last = mixed.derived[-1].data
    assert {k: getattr(last, k) for k in expected} == expected


@settings(max_examples=80, deadline=None)
@given(scenarios(), st.data())
def test_progress_percent_stays_within_0_and_100(
    events: list[DomainEvent], data: st.DataObject
) -> None:
    d = Driver()
    for e in data.draw(st.permutations(events)):
        d.feed(e)
    assert d.derived
    for out in d.derived:
        assert 0 <= out.data.progressPercent <= 100
        assert out.data.completedChildren <= out.data.totalChildren
        assert out.data.blockedChildren + out.data.inProgressChildren <= out.data.totalChildren


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.data())
def test_master_stage_is_order_independent_over_any_fact_order(
    events: list[DomainEvent], data: st.DataObject
) -> None:
    d = Driver()
    for e in data.draw(st.permutations(events)):
        d.feed(e)
    facts = data.draw(st.permutations(d.facts))
    replayed = Driver()
    for forward in facts:
        replayed.apply_fact(forward)
    assert replayed.master().children == d.master().children


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.data())
def test_duplicates_never_change_state(events: list[DomainEvent], data: st.DataObject) -> None:
    once, twice = Driver(), Driver()
    order = data.draw(st.permutations(events))
    redelivered = data.draw(st.lists(st.sampled_from(order), max_size=len(order)))
    for e in order:
        once.feed(e)
    for e in order:
        twice.feed(e)
        for again in (x for x in redelivered if x.id == e.id):
            assert twice.feed(again) == []
    assert twice.children == once.children
    assert twice.masters == once.masters
    assert [e.id for e in twice.derived] == [e.id for e in once.derived]
