"""The traffic simulator: reproducible, valid and realistic streams, paced, published once."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.jetstream import connect_nats
from events.envelope import DomainEvent
from events.ids import is_uuid7, uuid7_unix_ms
from events.parsing import ParseError, parse_event
from events.registry import DERIVED_TYPES, REGISTRY
from events.subjects import parse_subject
from pipeline.cli import cli
from pipeline.settings import Settings
from pipeline.simulate.generator import SimConfig, generate
from pipeline.simulate.ids import seeded_uuid7
from pipeline.simulate.publisher import publish_events
from pipeline.simulate.ratelimit import FakeClock, TokenBucket

REPO = Path(__file__).resolve().parent.parent
# Allowed status moves of the simulator's work orders (our state machine, see enums.py).
TRANSITIONS = {
    ("DRAFT", "PLANNED"),
    ("DRAFT", "CANCELLED"),
    ("PLANNED", "SCHEDULED"),
    ("SCHEDULED", "IN_PROGRESS"),
    ("SCHEDULED", "BLOCKED"),
    ("BLOCKED", "IN_PROGRESS"),
    ("IN_PROGRESS", "ON_HOLD"),
    ("ON_HOLD", "IN_PROGRESS"),
    ("IN_PROGRESS", "BLOCKED"),
    ("IN_PROGRESS", "PENDING_REVIEW"),
    ("PENDING_REVIEW", "REJECTED"),
    ("REJECTED", "IN_PROGRESS"),
    ("PENDING_REVIEW", "APPROVED"),
    ("APPROVED", "COMPLETED"),
    ("COMPLETED", "CLOSED"),
}


def events_of(**config: object) -> list[DomainEvent]:
    return list(generate(SimConfig(**config)))  # type: ignore[arg-type]


def stream_bytes(events: list[DomainEvent]) -> bytes:
    return b"\n".join(e.canonical_bytes() for e in events)


@pytest.fixture(scope="module")
def big() -> list[DomainEvent]:
    """One larger run shared by the content checks."""
    return events_of(seed=7, tenants=4, events=6000)


# -- reproducibility ---------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_stream() -> None:
    first = stream_bytes(events_of(seed=42, events=1500))
    second = stream_bytes(events_of(seed=42, events=1500))
    assert first == second


def test_different_seed_or_start_gives_a_different_stream() -> None:
    base = events_of(seed=42, events=300)
    other_seed = events_of(seed=43, events=300)
    later = events_of(seed=42, events=300, start=datetime(2027, 1, 1, tzinfo=UTC))
    assert stream_bytes(base) != stream_bytes(other_seed)
    assert {e.id for e in base}.isdisjoint(e.id for e in other_seed)
    assert stream_bytes(base) != stream_bytes(later)


def test_a_prefix_of_a_longer_run_is_the_shorter_run() -> None:
    # --events only cuts the stream; it does not change what comes before the cut.
    long = stream_bytes(events_of(seed=3, events=800))
    assert long.startswith(stream_bytes(events_of(seed=3, events=200)) + b"\n")


def test_dry_run_cli_is_reproducible_json_lines() -> None:
    runner = CliRunner()
    args = ["simulate", "--dry-run", "--events", "150", "--tenants", "2"]
    one = runner.invoke(cli, [*args, "--seed", "9"])
    two = runner.invoke(cli, [*args, "--seed", "9"])
    three = runner.invoke(cli, [*args, "--seed", "10"])
    assert one.exit_code == two.exit_code == three.exit_code == 0, one.output
    assert one.stdout_bytes == two.stdout_bytes != three.stdout_bytes
    lines = one.stdout_bytes.splitlines()
    assert len(lines) == 150
    assert all(isinstance(parse_event(line), DomainEvent) for line in lines)


def test_the_generator_imports_no_nats() -> None:
    code = (
        "import sys, pipeline.simulate.generator as g; "
        "list(g.generate(g.SimConfig(events=50))); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nats', 'aiokafka', 'faust')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- ids and time ------------------------------------------------------------------------------


def test_seeded_uuid7_is_a_valid_v7_with_the_given_time() -> None:
    import random
    import uuid

    rng = random.Random(1)
    for ms in (0, 1, 1_772_438_400_000, (1 << 48) - 1):
        value = seeded_uuid7(ms, rng)
        assert is_uuid7(value)
        assert uuid.UUID(value).version == 7
        assert uuid7_unix_ms(value) == ms
    with pytest.raises(ValueError):
        seeded_uuid7(1 << 48, rng)


def test_ids_are_unique_time_ordered_uuid7s_matching_event_time(big: list[DomainEvent]) -> None:
    ids = [e.id for e in big]
    assert len(set(ids)) == len(ids)
    assert all(is_uuid7(i) for i in ids)
    stamps = [e.timestamp for e in big]
    assert stamps == sorted(stamps)
    assert ids == sorted(ids)  # strictly increasing simulated ms => sortable ids
    for event in big[:500]:
        assert uuid7_unix_ms(event.id) == int(event.timestamp.timestamp() * 1000)


def test_event_time_starts_at_start_and_advances_at_the_configured_speed() -> None:
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    fast = events_of(seed=1, events=2000, start=start, mean_gap_seconds=1.0)
    slow = events_of(seed=1, events=2000, start=start, mean_gap_seconds=100.0)
    assert fast[0].timestamp == start == slow[0].timestamp
    span = lambda evs: (evs[-1].timestamp - evs[0].timestamp).total_seconds()  # noqa: E731
    assert 1999 * 0.8 < span(fast) < 1999 * 1.2
    assert 199_900 * 0.8 < span(slow) < 199_900 * 1.2


# -- validity ------------------------------------------------------------------------------------


def test_every_event_parses_and_its_subject_matches(big: list[DomainEvent]) -> None:
    for event in big:
        raw = event.canonical_bytes()
        parsed = parse_event(raw, max_bytes=Settings().max_payload_bytes)
        assert not isinstance(parsed, ParseError), parsed
        assert parsed.canonical_bytes() == raw
        parts = parse_subject(event.subject)
        assert (parts.tenant_id, parts.event_type) == (event.tenantId, event.type)


def test_the_mix_covers_every_producer_event_type(big: list[DomainEvent]) -> None:
    counts = Counter(e.type for e in big)
    # Everything producers publish; the types only wo-stream derives are never simulated.
    assert set(counts) == set(REGISTRY.event_types()) - DERIVED_TYPES
    # Work orders, not background noise, make most of the traffic.
    work = sum(n for t, n in counts.items() if t.startswith(("work_order.", "approval.")))
    assert work > len(big) / 2


def test_each_tenant_starts_with_its_provisioning(big: list[DomainEvent]) -> None:
    first: dict[str, str] = {}
    for event in big:
        first.setdefault(event.tenantId, event.type)
    assert len(first) == 4
    assert set(first.values()) == {"system.tenant_provisioned"}
    provisioned = [e for e in big if e.type == "system.tenant_provisioned"]
    assert sorted(e.data.tenantId for e in provisioned) == sorted(first)


def test_traces_point_backwards(big: list[DomainEvent]) -> None:
    seen: set[str] = set()
    for event in big:
        assert event.causationId == event.correlationId or event.causationId in seen
        seen.add(event.id)


# -- realism -------------------------------------------------------------------------------------


def _by_work_order(events: list[DomainEvent]) -> dict[str, list[DomainEvent]]:
    out: dict[str, list[DomainEvent]] = defaultdict(list)
    for event in events:
        wo = getattr(event.data, "workOrderId", None)
        if wo is not None:
            out[wo].append(event)
    return out


def check_lifecycles(events: list[DomainEvent]) -> None:
    """Status chains, versions, masters/children and dependencies are consistent."""
    created = {e.data.workOrderId: e for e in events if e.type == "work_order.created"}
    for wo_id, wo_events in _by_work_order(events).items():
        assert wo_events[0].type == "work_order.created", "nothing precedes creation"
        status, version = "DRAFT", 1
        for event in wo_events:
            assert event.tenantId == wo_events[0].tenantId
            if event.type == "work_order.status_changed":
                move = (str(event.data.previousStatus), str(event.data.newStatus))
                assert move[0] == status and move in TRANSITIONS, move
                assert event.data.version == version + 1
                status, version = move[1], version + 1
            elif event.type == "work_order.updated":
                assert event.data.version == version + 1
                version += 1
            elif event.type == "work_order.completed":
                assert status == "COMPLETED"
            elif event.type == "work_order.closed":
                assert status == "CLOSED"
        master = created[wo_id].data.masterId
        if master is not None:
            assert created[master].data.type == "MASTER"
            assert created[master].id < created[wo_id].id
        for dep in created[wo_id].data.dependsOn:
            # Dependencies are earlier siblings under the same master.
            assert master is not None and created[dep].data.masterId == master
            assert created[dep].id < created[wo_id].id


def test_lifecycles_are_consistent(big: list[DomainEvent]) -> None:
    check_lifecycles(big)
    statuses = Counter(str(e.data.newStatus) for e in big if e.type == "work_order.status_changed")
    assert {"CLOSED", "BLOCKED", "ON_HOLD", "REJECTED", "CANCELLED"} <= set(statuses)


def test_failed_guards_only_on_blocking_transitions(big: list[DomainEvent]) -> None:
    changes = [e for e in big if e.type == "work_order.status_changed"]
    failed = [e for e in changes if e.data.guardsFailed]
    assert failed and all(str(e.data.newStatus) == "BLOCKED" for e in failed)
    assert all(set(e.data.guardsFailed).isdisjoint(e.data.guardsEvaluated) for e in changes)


def test_masters_children_and_dependencies(big: list[DomainEvent]) -> None:
    created = {e.data.workOrderId: e for e in big if e.type == "work_order.created"}
    masters = {k for k, e in created.items() if e.data.type == "MASTER"}
    children = defaultdict(list)
    for wo_id, event in created.items():
        if event.data.masterId:
            children[event.data.masterId].append(wo_id)
    assert masters and set(children) <= masters
    assert any(e.data.dependsOn for e in created.values())
    completed = {e.data.workOrderId: e for e in big if e.type == "work_order.completed"}
    started = {
        e.data.workOrderId: e
        for e in big
        if e.type == "work_order.status_changed"
        and str(e.data.previousStatus) in ("SCHEDULED", "BLOCKED")
        and str(e.data.newStatus) == "IN_PROGRESS"
    }
    # A dependant starts only after its dependencies completed.
    checked = 0
    for wo_id, start in started.items():
        for dep in created[wo_id].data.dependsOn:
            assert dep in completed and completed[dep].timestamp <= start.timestamp
            checked += 1
    assert checked > 0
    # Dependency blocks name the unfinished dependencies.
    blocks = [e for e in big if e.type == "work_order.blocked" and e.data.blockedBy]
    assert blocks
    for block in blocks:
        assert set(block.data.blockedBy) <= set(created[block.data.workOrderId].data.dependsOn)
        assert block.data.masterId == created[block.data.workOrderId].data.masterId
    # A master completes after all its children, and its closure counts them.
    closed = {e.data.workOrderId: e for e in big if e.type == "work_order.closed"}
    done_masters = [m for m in masters if m in completed]
    assert done_masters
    for master in done_masters:
        assert all(completed[c].timestamp <= completed[master].timestamp for c in children[master])
        if master in closed:
            assert closed[master].data.linkedWOCount == len(children[master])


def test_completions_are_consistent_and_some_are_late(big: list[DomainEvent]) -> None:
    schedule_end = {
        e.data.workOrderId: e.data.scheduledEnd for e in big if e.type == "work_order.created"
    }
    late = on_time = 0
    for event in big:
        if event.type == "work_order.updated":
            for change in event.data.changedFields:
                if change.field == "scheduledEnd":
                    schedule_end[event.data.workOrderId] = datetime.fromisoformat(
                        change.newValue.replace("Z", "+00:00")
                    )
        if event.type != "work_order.completed":
            continue
        d = event.data
        assert d.completedAt == event.timestamp
        expected = (d.actualDurationHours - d.estimatedDurationHours) / d.estimatedDurationHours
        assert d.variancePercent == pytest.approx(expected * 100, abs=0.01)
        if d.completedAt > schedule_end[d.workOrderId]:
            late += 1
        else:
            on_time += 1
    assert late > 0 and on_time > 0
    variances = [e.data.variancePercent for e in big if e.type == "work_order.completed"]
    assert min(variances) < 0 < max(variances)


def test_regulatory_traffic_has_reasons_signatures_and_gaps(big: list[DomainEvent]) -> None:
    regulatory = {
        e.data.workOrderId for e in big if e.type == "work_order.created" and e.data.regulatory
    }
    assert 0 < len(regulatory) < sum(1 for e in big if e.type == "work_order.created")
    reg_changes = [
        e for e in big if e.type == "work_order.status_changed" and e.data.workOrderId in regulatory
    ]
    missing = [e for e in reg_changes if e.data.reason is None]
    assert reg_changes and 0 < len(missing) < len(reg_changes) * 0.2
    assert all(e.metadata.regulatory for e in reg_changes)

    decisions = [e for e in big if e.type == "approval.decision_submitted"]
    signed = [e for e in decisions if e.data.signatureId]
    assert signed and len(signed) < len(decisions)
    assert all(e.data.workOrderId in regulatory for e in signed)
    assert any(not e.data.signatureVerified for e in signed)
    assert {str(e.data.decision) for e in decisions} == {
        "APPROVED",
        "REJECTED",
        "RETURNED_FOR_REVISION",
    }
    verifications = {
        e.data.signatureId: e for e in big if e.type == "compliance.signature_verified"
    }
    assert {str(e.data.verificationResult) for e in verifications.values()} == {
        "VALID",
        "INVALID",
        "EXPIRED_KEY",
    }
    for decision in signed:
        verdict = verifications[decision.data.signatureId]
        assert decision.data.signatureVerified == (str(verdict.data.verificationResult) == "VALID")

    closed = [e for e in big if e.type == "work_order.closed"]
    assert any(e.data.complianceSummary.capaRequired for e in closed)
    assert any(e.data.complianceSummary.signatures > 0 for e in closed)


def test_compliance_and_resource_events_have_their_variants(big: list[DomainEvent]) -> None:
    phi = {str(e.data.action) for e in big if e.type == "compliance.phi_detected"}
    assert phi == {"BLOCKED", "FLAGGED_FOR_REVIEW"}
    assigned = [e for e in big if e.type == "resource.assigned"]
    assert assigned and {str(e.data.resourceType) for e in assigned} == {"PERSON"}
    escalations = {str(e.data.reason) for e in big if e.type == "approval.escalated"}
    assert "OVERDUE" in escalations
    flags = [e for e in big if e.type == "system.feature_flag_changed"]
    assert all(e.data.previousValue != e.data.newValue for e in flags)


def test_certification_warnings_match_the_recorded_certifications(
    big: list[DomainEvent],
) -> None:
    records: dict[str, DomainEvent] = {}
    renewals = warnings = 0
    for event in big:
        if event.type == "resource.certification_recorded":
            previous = records.get(event.data.experienceId)
            if previous is not None:
                renewals += 1
                assert previous.data.personId == event.data.personId
                assert event.data.expirationDate > previous.data.expirationDate
            records[event.data.experienceId] = event
        elif event.type == "resource.certification_expiring":
            warnings += 1
            record = records[event.data.experienceId]  # warned only about recorded ones
            assert record.tenantId == event.tenantId
            assert record.data.personId == event.data.personId
            assert record.data.expirationDate == event.data.expirationDate
            left = (event.data.expirationDate - event.timestamp).total_seconds() / 86_400
            assert event.data.daysUntilExpiry == math.floor(left) <= 30
    assert renewals > 0 and warnings > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    tenants=st.integers(min_value=1, max_value=6),
    events=st.integers(min_value=0, max_value=1200),
    gap=st.floats(min_value=0.5, max_value=600),
)
def test_any_config_gives_valid_consistent_events(
    seed: int, tenants: int, events: int, gap: float
) -> None:
    produced = events_of(seed=seed, tenants=tenants, events=events, mean_gap_seconds=gap)
    assert len(produced) == events
    for event in produced:
        assert isinstance(parse_event(event.canonical_bytes()), DomainEvent)
    assert len({e.tenantId for e in produced}) <= tenants
    check_lifecycles(produced)


def test_endless_config_keeps_going() -> None:
    stream: Iterator[DomainEvent] = generate(SimConfig(events=None, tenants=1))
    assert sum(1 for _, _ in zip(range(3000), stream, strict=False)) == 3000


# -- pacing --------------------------------------------------------------------------------------


async def test_token_bucket_paces_on_a_fake_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket.with_clock(10, clock, burst=1)
    for _ in range(50):
        await bucket.acquire()
    # The first token is there at start; 49 more at 10/s take 4.9 s.
    assert clock.t == pytest.approx(4.9)
    assert all(s > 0 for s in clock.sleeps)


async def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket.with_clock(100, clock, burst=20)
    for _ in range(20):
        await bucket.acquire()
    assert clock.t == 0 and clock.sleeps == []
    for _ in range(100):
        await bucket.acquire()
    assert clock.t == pytest.approx(1.0)
    clock.t += 10  # idle: the bucket refills, but only up to the burst
    for _ in range(20):
        await bucket.acquire()
    assert clock.t == pytest.approx(11.0)
    await bucket.acquire()
    assert clock.t == pytest.approx(11.01)


async def test_rate_zero_never_waits() -> None:
    clock = FakeClock()
    bucket = TokenBucket.with_clock(0, clock)
    for _ in range(10_000):
        await bucket.acquire()
    assert clock.t == 0 and clock.sleeps == []
    with pytest.raises(ValueError):
        TokenBucket(-1)


# -- against the session's NATS ------------------------------------------------------------------


async def _stream_messages(nats_url: str, stream: str) -> int:
    nc, js = await connect_nats(nats_url, max_reconnect_attempts=1)
    try:
        return (await js.stream_info(stream)).state.messages
    finally:
        await nc.close()


@pytest.mark.integration
async def test_publish_adds_exactly_the_events_and_republish_adds_nothing(nats_url: str) -> None:
    stream = Settings().stream_name
    config = SimConfig(seed=20260227, tenants=3, events=2000)
    before = await _stream_messages(nats_url, stream)

    stats = await publish_events(generate(config), nats_url, total=2000, stream=stream)
    assert (stats.published, stats.duplicates) == (2000, 0)
    assert await _stream_messages(nats_url, stream) == before + 2000

    # Same seed, same ids: JetStream's duplicate window drops every one (Nats-Msg-Id).
    again = await publish_events(generate(config), nats_url, total=2000, stream=stream)
    assert (again.published, again.duplicates) == (0, 2000)
    assert await _stream_messages(nats_url, stream) == before + 2000


@pytest.mark.integration
async def test_publish_is_paced_by_the_bucket(nats_url: str) -> None:
    clock = FakeClock()
    bucket = TokenBucket.with_clock(50, clock, burst=1)
    events = generate(SimConfig(seed=99, events=101))
    stats = await publish_events(events, nats_url, bucket=bucket)
    assert stats.published == 101
    assert clock.t == pytest.approx(2.0)  # 100 waits of 1/50 s


@pytest.mark.integration
async def test_publish_stops_when_asked_and_still_settles_acks(nats_url: str) -> None:
    import asyncio

    stop = asyncio.Event()
    produced = 0

    def events() -> Iterator[DomainEvent]:
        nonlocal produced
        for event in generate(SimConfig(seed=5, events=None)):
            produced += 1
            if produced == 700:
                stop.set()
            yield event

    stats = await publish_events(events(), nats_url, stop=stop)
    assert stats.published == 699  # the 700th is drawn, then the stop is seen


@pytest.mark.integration
def test_simulate_cli_publishes_to_nats(nats_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "pipeline.py", "simulate", "--events", "300", "--rate", "0",
         "--seed", "77", "--nats-url", nats_url, "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "published 300 events (0 duplicates" in proc.stdout


def test_simulated_tenant_ids_are_the_tenants_of_the_traffic() -> None:
    """`run` hands out dev dashboard tokens for these ids before any event exists."""
    from pipeline.simulate.generator import simulated_tenant_ids

    ids = simulated_tenant_ids(7, 3)
    seen = {e.tenantId for e in itertools.islice(generate(SimConfig(seed=7, tenants=3)), 3000)}
    assert len(ids) == 3 and set(ids) == seen
