"""End to end on the real embedded stack: the worker scenario published to NATS, derived events
read back from NATS (issue 4, Done-when).

A private stack (NATS JetStream + Tansu) runs ``python pipeline.py bridge`` and one
``python pipeline.py worker`` (``WO_CLOCK=control``) as subprocesses. The scenario of
``tests/apps/worker_scenario.py`` (two tenants' masters with children completing, one late,
one overdue by a timer, approvals with and without signatures, an invalid signature, a PHI
flag, a certification expiring while its person is assigned, a closed work order with a wrong
summary, a late event, and a third tenant's volume) is published to ``wo.{tenant}.>`` with
``Nats-Msg-Id`` = event id, in the same phases as the Kafka-level test: a control-clock tick,
then the phase's events, the whole loop settling after each (ingress mirrored the stream,
the worker processed every record, egress published every derived event, and the echo of those
through ingress was processed too).

Then every event of the stream WO_EVENTS whose source is ``wo-stream`` is read back and must be
exactly the reference driver's derived events (ids and canonical bytes), each stored once, on
``wo.{its tenant}.{domain}.{type}``, with nothing of one tenant in another's; nothing may be
dead-lettered and neither process may log a traceback.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.embedded import EmbeddedStack
from connectors.jetstream import EVENT_SUBJECTS, connect_nats
from events.parsing import parse_event
from events.subjects import subject_for
from pipeline.settings import Settings
from tables.base import is_own
from tests.apps.e2e_pipeline import BridgeProcess, Loop, Stored, read_stream
from tests.apps.worker_harness import Broker, PipelineWorker
from tests.apps.worker_scenario import ACME, GLOBEX, Scenario, build
from tests.bridge_testkit import as_messages, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4  # the scenario's ids put one master's children in one partition of 4
# the defaults: the subprocesses see no WO_* variable but the harness's own
STREAM = Settings.model_fields["stream_name"].default
DLQ_STREAM = Settings.model_fields["dlq_stream_name"].default


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build(PARTITIONS)


@pytest.fixture
def processes(
    private_stack: EmbeddedStack, tmp_path: Path
) -> Iterator[tuple[BridgeProcess, PipelineWorker]]:
    run = uuid.uuid4().hex[:8]
    app_id = f"wo-e2e-{run}"
    bridge = BridgeProcess(
        nats_url=private_stack.nats_url,
        bootstrap=private_stack.kafka_bootstrap,
        data_dir=tmp_path / "data-bridge",
        log_dir=tmp_path,
        partitions=PARTITIONS,
        ingress_durable=f"e2e-ingress-{run}",
        egress_group=f"e2e-egress-{run}",
        app_id=app_id,
    )
    worker = PipelineWorker(
        bootstrap=private_stack.kafka_bootstrap,
        app_id=app_id,
        data_dir=tmp_path / "data-worker",
        log_dir=tmp_path,
        partitions=PARTITIONS,
        name="worker",
    )
    try:
        yield bridge, worker
    finally:
        worker.cleanup()
        bridge.cleanup()


def _ids_in(data: Any, out: set[str], key: str = "") -> None:
    """String values of id fields (``...Id``, ``...Ids``, ``id``) anywhere in ``data``."""
    if isinstance(data, dict):
        for k, v in data.items():
            _ids_in(v, out, k)
    elif isinstance(data, list):
        for v in data:
            _ids_in(v, out, key)
    elif isinstance(data, str) and (key == "id" or key.endswith(("Id", "Ids"))):
        out.add(data)


def tenant_ids(inputs: list[bytes], derived: list[bytes]) -> dict[str, set[str]]:
    """Per tenant, the ids no other tenant has: every id field of its input events (event and
    entity ids) and the event ids of its derived events (their references to other events are
    what is checked, so they do not count as ownership)."""
    per_tenant: dict[str, set[str]] = defaultdict(set)
    for value in inputs:
        doc = orjson.loads(value)
        _ids_in(doc, per_tenant[doc["tenantId"]])
    for value in derived:
        doc = orjson.loads(value)
        per_tenant[doc["tenantId"]].add(doc["id"])
    owners = Counter(i for ids in per_tenant.values() for i in ids)
    return {t: {i for i in ids if owners[i] == 1} for t, ids in per_tenant.items()}


def check_derived(stored: list[Stored], scenario: Scenario) -> dict[str, int]:
    """The stream's own events are exactly the reference's derived ones, each stored once on
    its tenant's subject; the inputs are there once each too. Returns counts for the report."""
    expected = scenario.expected_derived()
    inputs = {e.id: e for e in scenario.events}
    got: dict[str, bytes] = {}
    copies: Counter[str] = Counter()
    for m in stored:
        event = parse_event(m.data)
        assert not hasattr(event, "reason"), (m.subject, m.seq, event)
        assert m.headers.get("Nats-Msg-Id") == event.id, (m.subject, m.seq)
        # on wo.{its tenantId}.{domain}.{type}: a tenant's event in no other tenant's subjects
        assert m.subject == subject_for(event.tenantId, event.type), (m.subject, event.id)
        copies[event.id] += 1
        if is_own(event):
            got[event.id] = m.data
        else:
            assert event.id in inputs, f"an input that was never published: {m.subject}"
            assert m.data == inputs[event.id].canonical_bytes()
    stored_twice = {i: n for i, n in copies.items() if n > 1}
    assert not stored_twice, f"stored more than once: {stored_twice}"
    assert set(copies) - set(got) == set(inputs), "inputs missing from the stream"

    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, (
        f"{len(missing)} missing: {[orjson.loads(expected[i])['type'] for i in missing]}; "
        f"{len(extra)} extra: {[orjson.loads(got[i])['type'] for i in extra]}"
    )
    different = [i for i in expected if got[i] != expected[i]]
    assert not different, [(expected[i], got[i]) for i in different[:3]]

    # tenant isolation: no derived event names an id (entity or event) of another tenant
    owned = tenant_ids([e.canonical_bytes() for e in scenario.events], list(got.values()))
    for event_id, value in got.items():
        tenant = orjson.loads(value)["tenantId"]
        for other, ids in owned.items():
            if other != tenant:
                leaked = [i for i in ids if i.encode() in value]
                assert not leaked, (event_id, tenant, other, leaked)
        # the scenario's named entities, as the Kafka-level test checks them
        for other in (ACME, GLOBEX):
            if other != tenant:
                for entity in scenario.ids[other].values():
                    assert entity.encode() not in value, (event_id, tenant, entity)
    by_tenant = Counter(orjson.loads(v)["tenantId"] for v in got.values())
    assert by_tenant[ACME] and by_tenant[GLOBEX], by_tenant
    return {
        "inputs": len(inputs),
        "derived": len(got),
        **{f"derived {t}": n for t, n in sorted(by_tenant.items())},
    }


def assert_no_traceback(name: str, text: str) -> None:
    assert "Traceback" not in text, f"{name} logged a traceback:\n{text[-6000:]}"


async def test_scenario_published_to_nats_gives_exactly_the_reference_derived_events(
    private_stack: EmbeddedStack,
    processes: tuple[BridgeProcess, PipelineWorker],
    scenario: Scenario,
) -> None:
    bridge, worker = processes
    timings: dict[str, float] = {}
    nc, js = await connect_nats(private_stack.nats_url, max_reconnect_attempts=1)
    try:
        async with Broker(private_stack.kafka_bootstrap, worker.app_id, PARTITIONS) as broker:
            loop = Loop(js, STREAM, broker, bridge, worker)
            started = time.monotonic()
            bridge.start()
            worker.start()
            await loop.wait_ready()
            timings["start"] = time.monotonic() - started

            started = time.monotonic()
            for phase in scenario.phases:
                await broker.tick(phase.now)
                await loop.settle()
                if phase.events:
                    await publish(js, as_messages(phase.events), stream=STREAM)
                    await loop.settle()
            timings["phases"] = time.monotonic() - started

            started = time.monotonic()
            stored = await read_stream(js, STREAM, EVENT_SUBJECTS)
            stream_state = (await js.stream_info(STREAM)).state
            dlq_state = (await js.stream_info(DLQ_STREAM)).state
            status = await worker.status()
            health = await bridge.health()
            timings["read back"] = time.monotonic() - started
            worker.stop()
            bridge_rc = bridge.stop()
    finally:
        await nc.close()

    counts = check_derived(stored, scenario)
    assert stream_state.messages == len(stored) == counts["inputs"] + counts["derived"]
    assert dlq_state.messages == 0, f"{dlq_state.messages} dead letters"

    assert status is not None and health is not None
    assert status["signals"].get("derived") == counts["derived"], status["signals"]
    assert not status["signals"].get("error") and not status["signals"].get("invalid"), status
    ingress, egress = health["ingress"], health["egress"]
    assert health["healthy"], health
    assert ingress["mirrored"] == len(stored), ingress
    assert ingress["dead_lettered"] == 0 and ingress["errors"] == 0, ingress
    assert egress["published"] == counts["derived"], egress
    assert egress["dead_lettered"] == 0 and egress["errors"] == 0, egress

    assert bridge_rc == 0, bridge.describe()
    assert_no_traceback("bridge", bridge.log_text())
    assert_no_traceback("worker", worker.log_text())
    print(
        f"\n{counts}; egress duplicates {egress['duplicates']}; "
        + "; ".join(f"{k}: {v:.1f}s" for k, v in timings.items())
    )
