"""Shared pieces of the reducers: keys and tenant guard, dedup memory, windows, derive, config."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import derive_event, is_uuid7, uuid7_unix_ms
from events.ids import unix_ms
from tables import master_progress
from tables.base import TenantMismatchError, check_tenant, make_key, split_key
from tables.config import Config, TenantConfig
from tables.dedup import DEDUP_HORIZON, SeenIds
from tables.derive import Cause, derive
from tables.stages import STAGES
from tables.windows import WindowSpec, shard_expired, shard_key, shard_spec
from tests.tables_testkit import OTHER, T0, TENANT, completed, created, days, hours, uid

TABLES = Path(__file__).resolve().parent.parent / "tables"


# --- purity -----------------------------------------------------------------------------------


def test_tables_import_no_faust_kafka_or_nats() -> None:
    forbidden = (
        "faust",
        "aiokafka",
        "kafka",
        "nats",
        "mode",
        "rocksdict",
        "pipeline",
        "connectors",
    )
    for path in TABLES.glob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_every_module_has_a_docstring() -> None:
    for path in TABLES.glob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text("utf-8"))), path.name


# --- keys and tenants -------------------------------------------------------------------------


def test_keys_always_start_with_the_tenant() -> None:
    assert make_key(TENANT, "wo-1") == "tenant_abc:wo-1"
    assert make_key(TENANT) == "tenant_abc"
    assert split_key("tenant_abc:wo-1") == ("tenant_abc", "wo-1")
    assert split_key("tenant_abc") == ("tenant_abc", None)
    check_tenant("tenant_abc:x", TENANT)
    with pytest.raises(TenantMismatchError):
        check_tenant("tenant_abc:x", OTHER)


def test_every_route_keys_by_the_events_tenant() -> None:
    wo = uid()
    event = created(wo, master=uid(), tenant=OTHER)
    for stage in STAGES:
        if stage.route is not None:
            assert all(k.split(":")[0] == OTHER for k in stage.route(event)), stage.name


# --- dedup ------------------------------------------------------------------------------------


def test_seen_ids_remember_without_mutating() -> None:
    memory = SeenIds()
    assert "a" not in memory
    remembered = memory.remember("a", T0)
    assert "a" in remembered and "a" not in memory
    assert remembered.remember("a", T0 + hours(1)).ids == {"a": unix_ms(T0)}  # first time kept


def test_seen_ids_forget_after_the_horizon_of_application_time() -> None:
    memory = SeenIds().remember("old", T0)
    memory = memory.remember("new", T0 + DEDUP_HORIZON)
    assert "old" in memory  # exactly at the horizon: still within retention
    memory = memory.remember("newer", T0 + DEDUP_HORIZON + hours(1))
    assert "old" not in memory and len(memory) == 2  # bounded
    # A clock that goes back (another worker after a rebalance) does not shrink the horizon.
    memory = memory.remember("skewed", T0)
    assert memory.latest == unix_ms(T0 + DEDUP_HORIZON + hours(1))
    assert {"new", "newer"} <= set(memory.ids)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 60)), max_size=80))
def test_seen_ids_hold_exactly_the_ids_applied_within_the_horizon(
    items: list[tuple[int, int]],
) -> None:
    memory, applied = SeenIds(), {}
    now = T0
    for n, step in items:
        now += hours(step)  # processing time only moves forward
        if str(n) not in memory:
            memory = memory.remember(str(n), now)
            applied[str(n)] = now
    latest = T0 + timedelta(milliseconds=memory.latest - unix_ms(T0))
    for n, at in applied.items():
        if now - at <= DEDUP_HORIZON:  # safety: a redelivery within 7 days is always caught
            assert n in memory
        if latest - at > DEDUP_HORIZON:  # bound: older ones are gone
            assert n not in memory
    assert SeenIds.model_validate(memory.model_dump(mode="json")) == memory


# --- windows ----------------------------------------------------------------------------------

HOUR = WindowSpec("1h", timedelta(hours=1), timedelta(days=30))
DAY = WindowSpec("1d", timedelta(days=1), timedelta(days=30))


def test_window_boundaries_are_epoch_aligned_utc() -> None:
    at = unix_ms(datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC))
    assert DAY.start_of(at) == unix_ms(datetime(2026, 3, 2, tzinfo=UTC))
    assert HOUR.start_of(at) == unix_ms(datetime(2026, 3, 2, 23, tzinfo=UTC))


def test_late_means_the_window_is_beyond_retention_on_the_clock() -> None:
    now = T0 + days(31)
    assert HOUR.is_late(unix_ms(T0), now)
    assert not HOUR.is_late(unix_ms(T0 + days(2)), now)
    edge = now - timedelta(days=30)  # the window ending exactly at now - retention is gone
    assert HOUR.is_late(HOUR.start_of(unix_ms(edge)) - 1, now)
    assert not HOUR.is_late(unix_ms(edge), now)


def test_window_shards_hold_whole_windows_of_one_tenant_day() -> None:
    specs = (HOUR, DAY)
    assert shard_spec(specs) is DAY
    key = shard_key(TENANT, datetime(2026, 3, 2, 17, 5, tzinfo=UTC), specs)
    assert key == f"{TENANT}:{unix_ms(datetime(2026, 3, 2, tzinfo=UTC))}"
    assert not shard_expired(key, datetime(2026, 4, 1, 0, 0, tzinfo=UTC), specs)
    assert shard_expired(key, datetime(2026, 4, 2, 0, 0, tzinfo=UTC), specs)
    with pytest.raises(ValueError):
        shard_spec((WindowSpec("7h", timedelta(hours=7), timedelta(days=30)), DAY))
    with pytest.raises(ValueError):
        shard_expired(TENANT, T0, specs)


def test_window_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        WindowSpec("x", timedelta(0), timedelta(days=1))
    with pytest.raises(ValueError):
        WindowSpec("x", timedelta(days=2), timedelta(days=1))


# --- derive -----------------------------------------------------------------------------------


def test_derive_from_a_cause_equals_derive_event() -> None:
    cause_event = completed(uid(), at=T0 + hours(3), master=uid(), variance=5)
    data = {
        "masterId": cause_event.data.masterId,
        "totalChildren": 1,
        "completedChildren": 1,
        "blockedChildren": 0,
        "inProgressChildren": 0,
        "progressPercent": 100.0,
        "lastChangedChildId": cause_event.data.workOrderId,
    }
    kind = "work_order.master_progress_updated"
    ours = derive(Cause.of(cause_event), kind, data, key="k")
    theirs = derive_event(cause_event, kind, data, key="k")
    assert ours.canonical_bytes() == theirs.canonical_bytes()
    assert is_uuid7(ours.id) and uuid7_unix_ms(ours.id) == unix_ms(cause_event.timestamp)
    assert ours.causationId == cause_event.id
    assert ours.correlationId == cause_event.correlationId
    assert (ours.source, ours.actor.type) == ("wo-stream", "SYSTEM")
    # A timer's derived event: stamped at the deadline, still reproducible.
    deadline = T0 + days(2)
    timed = derive(Cause.of(cause_event), kind, data, key="k", at=deadline)
    assert timed.timestamp == deadline and uuid7_unix_ms(timed.id) == unix_ms(deadline)
    assert timed == derive(Cause.of(cause_event), kind, data, key="k", at=deadline)
    assert timed.id != ours.id


# --- config -----------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    config = TenantConfig()
    assert config.duration_overrun_percent == 20
    assert config.certification_thresholds_days == (30, 14, 7, 1, 0)
    assert TenantConfig(certification_thresholds_days=(1, 10, 5)).certification_thresholds_days == (
        10,
        5,
        1,
    )
    for bad in [(), (3, 3), (-1,)]:
        with pytest.raises(ValueError):
            TenantConfig(certification_thresholds_days=bad)
    strict = TenantConfig(duration_overrun_percent=5)
    configs = Config(tenants={OTHER: strict})
    assert configs.for_tenant(OTHER) is strict
    assert configs.for_tenant(TENANT) == config


def test_a_state_is_refused_under_another_tenants_key() -> None:
    wo = uid()
    event = created(wo, master=uid())
    state = master_progress.apply_child(None, event, T0, key=make_key(TENANT, wo)).state
    other_event = created(wo, master=uid(), tenant=OTHER)
    with pytest.raises(TenantMismatchError):
        master_progress.apply_child(state, other_event, T0, key=make_key(OTHER, wo))
    with pytest.raises(TenantMismatchError):
        master_progress.apply_child(None, other_event, T0, key=make_key(TENANT, wo))


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 20)), max_size=40))
def test_remembering_in_place_equals_remembering_into_a_copy(
    steps: list[tuple[int, int]],
) -> None:
    from tables.dedup import SeenIds

    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    copied, in_place = SeenIds(), SeenIds()
    for day, item in steps:
        now = t0 + timedelta(days=day)
        before = copied
        copied = copied.remember(f"id-{item}", now)
        in_place.remember_in_place(f"id-{item}", now)
        assert in_place == copied
        assert before is not copied  # remember never changes the memory it was given


def test_admit_copies_once_per_batch_and_key() -> None:
    from tables.base import admit, batch_ownership, disown, owned_by_batch
    from tables.compliance import WorkOrderCompliance

    now = datetime(2026, 3, 1, tzinfo=UTC)
    stored = WorkOrderCompliance(tenant="acme", workOrderId="wo-1")
    fresh = stored  # never used: state is given
    first, _ = admit(stored, fresh, "acme:wo-1", "acme", "e1", now, timedelta(days=7))
    assert first is not stored and "e1" not in stored.seen  # outside a batch: always a copy
    with batch_ownership():
        a, _ = admit(stored, fresh, "acme:wo-1", "acme", "e1", now, timedelta(days=7))
        b, _ = admit(a, fresh, "acme:wo-1", "acme", "e2", now, timedelta(days=7))
        assert a is not stored and b is a and owned_by_batch(b)  # copied once, then in place
        assert "e1" in b.seen and "e2" in b.seen and "e1" not in stored.seen
        dup, duplicate = admit(b, fresh, "acme:wo-1", "acme", "e2", now, timedelta(days=7))
        assert duplicate and dup is b
        disown(b)
        c, _ = admit(b, fresh, "acme:wo-1", "acme", "e3", now, timedelta(days=7))
        assert c is not b and "e3" not in b.seen
    assert not owned_by_batch(c)  # the batch is over: its copies are shared again
