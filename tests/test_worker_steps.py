"""The worker's Runner and Planner on in-memory topics: same output as the reference driver."""

from __future__ import annotations

import pytest

from pipeline.agents.records import derived_record
from pipeline.topics import partition_of
from tables.stages import STAGES
from tests.apps.memory_layer import CONTROL, FORWARDS, MemoryLayer
from tests.apps.worker_scenario import ACME, GLOBEX, Scenario, build, normalized

PARTITIONS = 4


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build(PARTITIONS)


async def run(scenario: Scenario, seed: int, *, redeliver: bool = False, batch: int = 1,
              layer: MemoryLayer | None = None) -> MemoryLayer:  # fmt: skip
    layer = layer or MemoryLayer(PARTITIONS, seed)
    for phase in scenario.phases:
        layer.tick(phase.now)
        await layer.drain(batch)
        for event in phase.events:
            layer.produce(event)
            if redeliver:  # at-least-once: every event a second time
                layer.produce(event)
        await layer.drain(batch)
    return layer


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_any_interleaving_gives_the_reference_output(scenario: Scenario, seed: int) -> None:
    layer = await run(scenario, seed)
    assert layer.derived() == scenario.expected_derived()
    assert len(layer.log["wo.derived"]) == len(scenario.reference.derived)  # none sent twice
    assert normalized(layer.tables) == scenario.expected_tables()
    assert layer.runner.signals["late"] == 1
    assert layer.runner.signals.get("error", 0) == 0
    # every key is stored where the partition of its key says (co-partitioning)
    for name, table in layer.tables.items():
        for key in table:
            assert key.split(":")[0] in (ACME, GLOBEX, "initech"), (name, key)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("redeliver", [False, True])
async def test_batches_give_the_reference_output(scenario: Scenario, seed: int,
                                                 redeliver: bool) -> None:  # fmt: skip
    """Batches of random size, as the worker's agents take them: a key updated several times in
    one batch is copied once and updated in place after that (tables.base.batch_ownership),
    which must give exactly what the reference's copy per update gives."""
    layer = await run(scenario, seed, redeliver=redeliver, batch=40)
    assert layer.derived() == scenario.expected_derived()
    assert len(layer.log["wo.derived"]) == len(scenario.reference.derived)
    assert normalized(layer.tables) == scenario.expected_tables()
    assert layer.runner.signals.get("error", 0) == 0


async def test_redelivered_events_change_nothing(scenario: Scenario) -> None:
    layer = await run(scenario, 5, redeliver=True)
    assert layer.derived() == scenario.expected_derived()
    assert normalized(layer.tables) == scenario.expected_tables()
    assert layer.runner.signals["duplicate"] > 0


async def test_a_duplicate_writes_its_value_back(scenario: Scenario) -> None:
    layer = await run(scenario, 3)
    writes: list[tuple[str, str]] = []

    class Spy(dict):
        def __setitem__(self, key, value):
            writes.append(key)
            super().__setitem__(key, value)

    layer.tables["wo_sla"] = Spy(layer.tables["wo_sla"])
    layer.runner.tables["wo_sla"] = layer.tables["wo_sla"]
    first = scenario.phases[0].events[0]  # a created, applied long ago
    layer.produce(first)
    await layer.drain()
    key = f"{first.tenantId}:{first.data.workOrderId}"
    assert writes == [key]
    assert normalized(layer.tables["wo_sla"][key]) == scenario.expected_tables()["wo_sla"][key]


def test_derived_records_go_to_the_partition_of_their_key(scenario: Scenario) -> None:
    for event in scenario.reference.derived:
        record = derived_record(event, PARTITIONS)
        assert record.partition == partition_of(record.key.decode(), PARTITIONS)
        assert record.value == event.canonical_bytes()
        assert dict(record.headers)["wo-event-id"] == event.id.encode()
        assert int(record.timestamp * 1000) == int(event.timestamp.timestamp() * 1000)


def test_every_stage_has_a_table() -> None:
    layer = MemoryLayer(PARTITIONS)
    assert set(layer.tables) == {s.name for s in STAGES}


def _key_in(partition: int, tenant: str) -> str:
    n = 0
    while partition_of(f"{tenant}:dlq-{n}", PARTITIONS) != partition:
        n += 1
    return f"{tenant}:dlq-{n}"


async def test_bad_records_go_to_dead_letters_and_the_good_ones_around_them_are_kept(
    scenario: Scenario,
) -> None:
    """Each kind of unusable record lands in wo.dlq.worker, whole, with its reason; the
    scenario's own events, interleaved with them, still give exactly the reference output."""
    layer = MemoryLayer(PARTITIONS, 7)
    forwards, control = FORWARDS, CONTROL
    globex_event = scenario.phases[0].events[-2]  # any valid event of another tenant
    acme_key = _key_in(1, ACME)
    bad: list[tuple[str, int, bytes | None, bytes, list[tuple[str, bytes]], str]] = [
        ("wo.workorder", 0, b"acme:x", b"{not json", [("wo-type", b"x")], "invalid_event"),
        ("wo.workorder", 1, b"acme:y", b'{"id": 1}', [], "invalid_event"),
        (forwards, 2, None, b"{}", [], "invalid_repartition"),
        (forwards, 1, acme_key.encode(), b'{"kind": "nope"}',
         [("wo-stages", b"wo_masters"), ("wo-kind", b"fact")], "invalid_fact"),
        (control, 3, None, b"tick?", [], "invalid_tick"),
        # an event of globex re-keyed to an acme key: wo_sla refuses it (tenant guard)
        (forwards, 1, acme_key.encode(), globex_event.canonical_bytes(),
         [("wo-stages", b"wo_sla"), ("wo-kind", b"event")], "refused"),
        # a repartition record in a partition that does not own its key
        (forwards, 2, acme_key.encode(), globex_event.canonical_bytes(),
         [("wo-stages", b"wo_sla"), ("wo-kind", b"event")], "misrouted"),
    ]  # fmt: skip
    for n, phase in enumerate(scenario.phases):
        layer.tick(phase.now)
        await layer.drain()
        for i, event in enumerate(phase.events):
            layer.produce(event)
            if n == 1 and i < len(bad):
                topic, partition, key, value, headers, _ = bad[i]
                layer.append(topic, partition, key, value, headers)
        await layer.drain()

    assert layer.derived() == scenario.expected_derived()
    assert normalized(layer.tables) == scenario.expected_tables()
    letters = layer.log["wo.dlq.worker"]
    assert len(letters) == len(bad)
    by_value_and_reason = {}
    for letter in letters:
        headers = dict(letter.headers)
        by_value_and_reason[letter.value, headers["wo-dlq-reason"].decode()] = (letter, headers)
    for topic, partition, key, value, headers, reason in bad:
        letter, got = by_value_and_reason[value, reason]
        assert letter.key == key and letter.partition == partition
        assert got["wo-dlq-source"].decode().startswith(f"{topic}/{partition}/")
        assert got["wo-dlq-detail"]
        for name, header in headers:  # the source's headers travel with it
            assert got[name] == header
    refused = by_value_and_reason[globex_event.canonical_bytes(), "refused"][1]
    assert refused["wo-dlq-table"] == b"wo_sla"
    assert b"TenantMismatchError" in refused["wo-dlq-detail"]
    counted = {
        (s.labels["topic"], s.labels["reason"]): s.value
        for family in layer.runner.metrics.registry.collect()
        if family.name == "wo_worker_dead_letters"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert sum(counted.values()) == len(bad)
    assert counted[forwards, "refused"] == 1 and counted["wo.workorder", "invalid_event"] == 2


def test_a_refusal_detail_names_fields_not_values() -> None:
    from pydantic import BaseModel, ValidationError

    from pipeline.agents.steps import refusal_detail

    class M(BaseModel):
        name: int

    with pytest.raises(ValidationError) as caught:
        M(name="Jane Doe, DOB 1970-01-01")
    detail = refusal_detail(caught.value)
    assert "name: int_parsing" in detail
    assert "Jane" not in detail and "1970" not in detail


@pytest.mark.parametrize("table", ["wo_compliance", "compliance_windows", "wo_policy"])
async def test_a_reducer_failing_halfway_in_a_batch_leaves_no_trace(
    scenario: Scenario, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a batch a key's state is updated in place; a reducer that fails after changing
    it must leave the key as if the item had been refused before it started (the batch's last
    planned value is decoded again), exactly as with a copy per update."""
    import dataclasses

    from tables import stages

    real = stages.BY_NAME[table]

    def failing(after: bool):
        calls = {"n": 0}

        def apply(state, item, now, **kwargs):
            calls["n"] += 1
            if calls["n"] % 2:
                return real.apply(state, item, now, **kwargs)
            if after:
                real.apply(state, item, now, **kwargs)  # changes a batch-owned state, then fails
            raise RuntimeError("reducer bug")

        return apply

    outcomes = []
    for after in (True, False):
        stage = dataclasses.replace(real, apply=failing(after))
        layer = MemoryLayer(PARTITIONS, 11)
        planner = layer.runner.planner
        for name in ("stages", "routed", "routed_derived", "timed", "windowed"):
            setattr(planner, name, tuple(stage if s is real else s for s in getattr(planner, name)))
        monkeypatch.setitem(stages.BY_NAME, table, stage)  # repartitioned items look it up
        await run(scenario, 11, batch=40, layer=layer)
        assert layer.runner.signals["error"] > 0
        outcomes.append((normalized(layer.tables), layer.derived()))
    assert outcomes[0] == outcomes[1]


async def test_extreme_but_valid_times_are_dead_letters_not_a_crash_loop() -> None:
    """A close stamped 9999-12-31T23:30Z is schema-valid, but its check's deadline (close +
    1 h) overflows; a tick past year 9999 likewise. Each is refused with its reason; a raise
    would fail the batch, and the restarted worker would read the same record again."""
    from datetime import UTC, datetime

    from tests.apps.memory_layer import DEAD_LETTERS
    from tests.tables_testkit import T0, closed, created, uid

    layer = MemoryLayer(PARTITIONS, 3)
    wo = uid()
    layer.produce(created(wo, at=T0))
    layer.produce(closed(wo, at=datetime(9999, 12, 31, 23, 30, tzinfo=UTC)))
    layer.append(CONTROL, 0, None, b'{"now": 300000000000000}', [])
    await layer.drain()
    reasons = sorted(dict(m.headers)["wo-dlq-reason"].decode() for m in layer.log[DEAD_LETTERS])
    assert reasons == ["invalid_tick", "refused"]
    assert layer.runner.signals.get("error", 0) >= 1
