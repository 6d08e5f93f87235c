"""The worker's Runner and Planner on in-memory topics: same output as the reference driver."""

from __future__ import annotations

import pytest

from pipeline.agents.records import derived_record
from pipeline.topics import partition_of
from tables.stages import STAGES
from tests.apps.memory_layer import MemoryLayer
from tests.apps.worker_scenario import ACME, GLOBEX, Scenario, build, normalized

PARTITIONS = 4


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build(PARTITIONS)


async def run(scenario: Scenario, seed: int, *, redeliver: bool = False) -> MemoryLayer:
    layer = MemoryLayer(PARTITIONS, seed)
    for phase in scenario.phases:
        layer.tick(phase.now)
        await layer.drain()
        for event in phase.events:
            layer.produce(event)
            if redeliver:  # at-least-once: every event a second time
                layer.produce(event)
        await layer.drain()
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
