"""The Faust worker (``python pipeline.py worker``) on a real Tansu broker, against the reference.

The scenario (tests/apps/worker_scenario.py: two tenants' masters, children completing late
and overdue, approvals with and without signatures, an invalid signature, a PHI flag, a
certification expiring under an assignment, closes with a wrong and a right summary, a late
event, plus a third tenant's volume) is written to the domain topics as the bridge writes it,
phase by phase, with control-clock ticks in between. Each test compares what the worker left
in Kafka, read from outside (``wo.derived`` and the tables' changelogs, last value per key),
with the in-memory reference driver's output for the same input.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.embedded import EmbeddedStack
from events.keys import record_key
from events.parsing import parse_event
from pipeline.topics import partition_of
from tables.stages import STAGES
from tests.apps.worker_harness import Broker, PipelineWorker
from tests.apps.worker_scenario import ACME, GLOBEX, Scenario, build, normalized

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PARTITIONS = 4
TABLES = [s.name for s in STAGES]


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build(PARTITIONS)


@pytest.fixture
def make_worker(
    private_stack: EmbeddedStack, tmp_path: Path
) -> Iterator[Callable[[str], PipelineWorker]]:
    app_id = f"wo-test-{uuid.uuid4().hex[:8]}"
    made: list[PipelineWorker] = []

    def make(name: str) -> PipelineWorker:
        made.append(
            PipelineWorker(
                bootstrap=private_stack.kafka_bootstrap,
                app_id=app_id,
                data_dir=tmp_path / f"data-{name}",
                log_dir=tmp_path,
                partitions=PARTITIONS,
                name=name,
            )
        )
        return made[-1]

    try:
        yield make
    finally:
        for w in made:
            w.cleanup()


async def wait_assigned(broker: Broker, *workers: PipelineWorker, limit: float = 90.0) -> float:
    """Until every worker owns partitions and together they own each exactly once."""
    started = time.monotonic()
    while True:
        for w in workers:
            w.check_healthy()
        statuses = [await w.status() for w in workers]
        owned = [p for s in statuses if s for p in s["assigned"]]
        if all(s and s["assigned"] for s in statuses) and sorted(owned) == list(range(PARTITIONS)):
            return time.monotonic() - started
        assert time.monotonic() - started < limit, "\n".join(
            w.describe(stuck=True) for w in workers
        )
        await asyncio.sleep(0.2)


async def check_output(broker: Broker, scenario: Scenario) -> dict[str, int]:
    """wo.derived and the changelogs equal the reference; returns counts for the report."""
    records = await broker.read_derived()
    got: dict[str, bytes] = {}
    for key, value, headers, ts, partition in records:
        event = parse_event(value)
        assert not hasattr(event, "reason"), event
        assert headers["wo-event-id"] == event.id.encode()
        assert headers["wo-type"] == event.type.encode()
        assert key == record_key(event).encode()
        assert partition == partition_of(key.decode(), PARTITIONS)
        assert ts == int(event.timestamp.timestamp() * 1000)
        assert got.setdefault(event.id, value) == value, "one id, two different events"
    expected = scenario.expected_derived()
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    assert not missing and not extra, describe_difference(scenario, missing, extra, got)
    assert got == expected
    # tenant isolation: nothing of one tenant names the other's entities
    for event_id, value in got.items():
        tenant = orjson.loads(value)["tenantId"]
        for other in (ACME, GLOBEX):
            if other != tenant:
                for entity in scenario.ids[other].values():
                    assert entity.encode() not in value, (event_id, tenant, entity)
    tables = normalized(await broker.read_tables(TABLES))
    expected_tables = scenario.expected_tables()
    differing = [
        (name, key)
        for name in TABLES
        for key in sorted(set(tables.get(name, {})) | set(expected_tables.get(name, {})))
        if tables.get(name, {}).get(key) != expected_tables.get(name, {}).get(key)
    ]
    assert not differing, "\n".join(
        f"{name}[{key}]: got {tables.get(name, {}).get(key)} "
        f"want {expected_tables.get(name, {}).get(key)}"
        for name, key in differing[:10]
    )
    assert tables == expected_tables
    return {"derived records": len(records), "derived ids": len(got)}


def describe_difference(
    scenario: Scenario, missing: set[str], extra: set[str], got: dict[str, bytes]
) -> str:
    """Which derived events differ, by type, key, cause and time (enough to find the rule)."""
    causes = {e.id: e.type for e in scenario.events}
    expected = scenario.expected_derived()

    def line(mark: str, value: bytes) -> str:
        event = orjson.loads(value)
        cause = causes.get(event["causationId"], event["causationId"])
        data = {k: v for k, v in event["data"].items() if not isinstance(v, dict | list)}
        return f"{mark} {event['type']} at {event['timestamp']} cause {cause}: {data}"

    lines = [f"{len(missing)} missing, {len(extra)} extra derived events"]
    lines += sorted(line("-", expected[i]) for i in missing)
    lines += sorted(line("+", got[i]) for i in extra)
    return "\n".join(lines)


def assert_violation_metrics(metrics: str, scenario: Scenario) -> None:
    """wo_compliance_violations_total{tenant,regulation,severity} counts the derived ones."""
    want: Counter[tuple[str, str, str]] = Counter()
    for value in scenario.expected_derived().values():
        event = orjson.loads(value)
        if event["type"] == "compliance.violation_detected":
            data = event["data"]
            want[(event["tenantId"], data["regulation"], data["severity"])] += 1
    assert want, "the scenario derives violations"
    got: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(metrics):
        if family.name == "wo_compliance_violations":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (labels["tenant"], labels["regulation"], labels["severity"])
                    got[key] += int(sample.value)
    assert got == want


async def run_phases(broker: Broker, scenario: Scenario, workers: list[PipelineWorker],
                     phases: range) -> None:  # fmt: skip
    for n in phases:
        phase = scenario.phases[n]
        await broker.tick(phase.now)
        await broker.wait_idle(*workers)
        await broker.produce(phase.events)
        await broker.wait_idle(*workers)


async def test_scenario_gives_the_reference_output(
    make_worker: Callable[[str], PipelineWorker], private_stack: EmbeddedStack, scenario: Scenario
) -> None:
    worker = make_worker("w")
    timings: dict[str, float] = {}
    async with Broker(private_stack.kafka_bootstrap, worker.app_id, PARTITIONS) as broker:
        started = time.monotonic()
        worker.start()
        await wait_assigned(broker, worker)
        timings["start"] = time.monotonic() - started
        # bad records ahead of the scenario's own in the same partitions: dead-lettered, and
        # the good events after them still give exactly the reference output
        first = scenario.phases[0].events[0]
        key = record_key(first).encode()
        for value in BAD_VALUES:
            await broker.producer.send_and_wait("wo.workorder", value, key=key)
        started = time.monotonic()
        await run_phases(broker, scenario, [worker], range(len(scenario.phases)))
        timings["phases"] = time.monotonic() - started
        counts = await check_output(broker, scenario)
        await check_dead_letters_and_replay(broker, worker, private_stack.kafka_bootstrap, scenario)
        metrics = await worker.metrics()
        assert metrics is not None and await worker.get("/metrics") is None  # not on the web port
        assert 'wo_worker_late_events_total{table="compliance_windows"} 1.0' in metrics
        assert "wo_worker_derived_events_total" in metrics
        assert "faust_messages_received" in metrics  # Faust's own sensor
        assert_violation_metrics(metrics, scenario)
        # kill -USR2: the running worker logs its threads and both loops' tasks (diagnostics)
        dump = worker.task_dump()
        assert "main loop" in dump and "consumer thread loop" in dump, dump[-2000:]
        assert "in _execute_actor" in dump  # the agents' await chains, walked down
        worker.check_healthy()  # and keeps running
        worker.stop()
    print(f"\n{counts}; " + "; ".join(f"{k}: {v:.1f}s" for k, v in timings.items()))


BAD_VALUES = (b"{not json", orjson.dumps({"id": "x", "type": "work_order.nonsense"}))


async def check_dead_letters_and_replay(broker: Broker, worker: PipelineWorker,
                                        bootstrap: str, scenario: Scenario) -> None:  # fmt: skip
    """The worker's dead letters carry the bad records whole with a reason; a replay writes
    them back, the worker dead-letters them again (still bad), the tables do not change."""
    from connectors.worker_dlq import H_REPLAYED_FROM, replay_worker_dead_letters
    from pipeline.settings import Settings
    from pipeline.topics import DEAD_LETTERS, H_DLQ_REASON, H_DLQ_SOURCE
    from tests.apps.worker_harness import read_topic

    letters = await read_topic(bootstrap, DEAD_LETTERS)
    assert sorted(v for _, v, _, _, _ in letters) == sorted(BAD_VALUES)
    for _, _, headers, _, _ in letters:
        assert headers[H_DLQ_REASON] == b"invalid_event"
        assert headers[H_DLQ_SOURCE].startswith(b"wo.workorder/")
    settings = Settings(kafka_bootstrap=bootstrap, kafka_transport="tansu",
                        app_id=worker.app_id, partitions=PARTITIONS)  # fmt: skip
    report = await replay_worker_dead_letters(settings)
    assert (report.scanned, report.replayed) == (2, 2)
    await broker.wait_idle(worker)
    letters = await read_topic(bootstrap, DEAD_LETTERS)
    again = [h for _, _, h, _, _ in letters if H_REPLAYED_FROM in h]
    assert len(letters) == 4 and len(again) == 2  # the new ones say where they were replayed from
    await check_output(broker, scenario)  # the replays changed no table and derived nothing


async def derived_count(broker: Broker) -> int:
    ends = await broker.ends()
    return sum(v for (topic, _), v in ends.items() if topic == "wo.derived")


@pytest.mark.parametrize("kill_after", [0, 6], ids=["kill-at-first-output", "kill-later"])
async def test_kill_9_mid_traffic_and_restart_loses_and_doubles_nothing(
    make_worker: Callable[[str], PipelineWorker],
    private_stack: EmbeddedStack,
    scenario: Scenario,
    kill_after: int,
) -> None:
    """Two kill points: right after the phase's first derived event (records of the batch in
    flight) and a few batches later (outputs, repartitioned facts and uncommitted partitions
    of the restart in between; a run here found the loss fixed in pipeline.agents.consumer)."""
    worker = make_worker("w")
    busy = 2  # the phase with the third tenant's volume
    async with Broker(private_stack.kafka_bootstrap, worker.app_id, PARTITIONS) as broker:
        worker.start()
        await wait_assigned(broker, worker)
        await run_phases(broker, scenario, [worker], range(busy))
        phase = scenario.phases[busy]
        await broker.tick(phase.now)
        await broker.wait_idle(worker)
        before = await derived_count(broker)
        await broker.produce(phase.events)
        deadline = time.monotonic() + 60
        while await derived_count(broker) <= before + kill_after:  # the phase's output began
            assert time.monotonic() < deadline, worker.describe()
            await asyncio.sleep(0.01)
        worker.kill()
        at_kill = await derived_count(broker)
        assert at_kill < scenario.derived_after[busy], "phase finished before the kill"

        started = time.monotonic()
        worker.start()
        await wait_assigned(broker, worker)
        await broker.wait_idle(worker)
        restart = time.monotonic() - started
        status = await worker.status()
        await run_phases(broker, scenario, [worker], range(busy + 1, len(scenario.phases)))
        counts = await check_output(broker, scenario)
        worker.stop()
    print(
        f"\nkilled with {at_kill - before}/{scenario.derived_after[busy] - before} of the "
        f"phase's derived events sent; restart to idle {restart:.1f}s; after restart "
        f"{status['signals'] if status else None}; {counts}"
    )


async def test_a_second_worker_joins_and_the_output_stays_the_same(
    make_worker: Callable[[str], PipelineWorker], private_stack: EmbeddedStack, scenario: Scenario
) -> None:
    a, b = make_worker("a"), make_worker("b")
    split = 3
    async with Broker(private_stack.kafka_bootstrap, a.app_id, PARTITIONS) as broker:
        a.start()
        await wait_assigned(broker, a)
        await run_phases(broker, scenario, [a], range(split))
        started = time.monotonic()
        b.start()  # its partitions' state can only come from the changelogs
        await wait_assigned(broker, a, b)
        await broker.wait_idle(a, b)
        join = time.monotonic() - started
        shares = [len((await w.status())["assigned"]) for w in (a, b)]
        assert all(shares), shares
        await run_phases(broker, scenario, [a, b], range(split, len(scenario.phases)))
        counts = await check_output(broker, scenario)
        a.stop()
        b.stop()
    print(f"\npartitions a/b {shares}; join {join:.1f}s; {counts}")
