"""The bridge against a real nats-server and the real embedded Kafka broker (no faults).

One stack for the module (servers are not disturbed here); each test isolates itself with its
own tenant, durable consumer, ingress filter ``wo.{tenant}.>`` and egress group.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from connectors.bridge import Bridge
from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import replay_dead_letters
from connectors.embedded import EmbeddedStack, free_port, run_sync
from connectors.jetstream import connect_nats
from events.factory import make_event
from events.ids import unix_ms
from events.keys import record_key
from pipeline.settings import Settings
from tests.bad_inputs import TEST_MAX_PAYLOAD, corpus
from tests.bridge_testkit import (
    Rec,
    as_messages,
    bridge_settings,
    interleaved_events,
    provision,
    publish,
    read_dlq,
    read_topics,
    status_event,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(tmp_path_factory.mktemp("bridge")) as stack:
        run_sync(provision(bridge_settings(stack)))
        yield stack


def _isolated(stack: EmbeddedStack, tenant: str, **overrides) -> Settings:
    return bridge_settings(
        stack,
        ingress_durable=f"ingress-{tenant}",
        ingress_filter_subject=f"wo.{tenant}.>",
        egress_group=f"egress-{tenant}",
        **overrides,
    )


def _first_occurrences(records: list[Rec]) -> dict[bytes, list[int]]:
    """Per key, the work-order versions in Kafka order, first copy of each event id only."""
    seen: set[bytes] = set()
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for rec in records:
        event_id = rec.headers["wo-event-id"]
        if event_id in seen:
            continue
        seen.add(event_id)
        per_key[rec.key or b""].append(orjson.loads(rec.value)["data"]["version"])
    return per_key


async def test_ten_thousand_events_over_a_thousand_keys_keep_per_key_order(
    stack: EmbeddedStack,
) -> None:
    tenant = "order_t"
    settings = _isolated(stack, tenant)
    events = interleaved_events(tenant, keys=1000, total=10_000)
    by_id = {e.id: e for e in events}
    nc, js = await connect_nats(settings.nats_url)
    metrics = BridgeMetrics()
    try:
        async with Bridge(settings, metrics=metrics, egress=False) as bridge:
            started = time.monotonic()
            await publish(js, as_messages(events))
            records = await read_topics(
                settings.kafka_bootstrap,
                ["wo.workorder"],
                where=lambda r: r.headers.get("wo-tenant") == tenant.encode(),
                until=lambda rs: len({r.headers["wo-event-id"] for r in rs}) >= len(events),
                within=120,
            )
            elapsed = time.monotonic() - started
            assert bridge.healthy
            assert bridge.ingress and bridge.ingress.stats.errors == 0
    finally:
        await nc.close()
    print(f"\n10k events published and mirrored in {elapsed:.2f}s")

    assert {r.headers["wo-event-id"].decode() for r in records} == set(by_id)
    per_key = _first_occurrences(records)
    assert len(per_key) == 1000
    for versions in per_key.values():
        assert versions == list(range(1, len(versions) + 1))
    partitions_per_key = defaultdict(set)
    for rec in records:
        partitions_per_key[rec.key].add(rec.partition)
        event = by_id[rec.headers["wo-event-id"].decode()]
        assert rec.value == event.canonical_bytes()  # the original bytes, untouched
        assert rec.key == record_key(event).encode()
        assert rec.timestamp == unix_ms(event.timestamp)  # event time for Faust windows
        assert rec.headers["wo-type"] == b"work_order.status_changed"
        assert rec.headers["wo-version"] == b"1.0"
        assert rec.headers["wo-subject"] == event.subject.encode()
        assert int(rec.headers["wo-stream-seq"]) > 0
    assert all(len(p) == 1 for p in partitions_per_key.values())
    assert len({p for ps in partitions_per_key.values() for p in ps}) == 8
    assert metrics.value("wo_bridge_events_mirrored_total", {"domain": "workorder"}) >= 10_000
    assert metrics.value("wo_bridge_produce_latency_seconds_count") > 0


async def test_bad_inputs_are_dead_lettered_and_valid_ones_mirrored_in_order(
    stack: EmbeddedStack,
) -> None:
    tenant = "bad_t"
    settings = _isolated(stack, tenant, max_payload_bytes=TEST_MAX_PAYLOAD)
    work_order = str(uuid.uuid4())
    bad = corpus(tenant, status_event(tenant, work_order, 1))
    valid = [status_event(tenant, work_order, v) for v in range(1, 3 * len(bad) + 2)]
    # valid, valid, valid, bad, valid, valid, valid, bad, ... : every bad one between good ones
    messages: list[tuple[str, bytes, dict[str, str]]] = []
    valid_iter = iter(as_messages(valid))
    for b in bad:
        messages += [next(valid_iter) for _ in range(3)]
        messages.append((b.subject, b.payload, b.headers))
    messages += list(valid_iter)

    nc, js = await connect_nats(settings.nats_url)
    metrics = BridgeMetrics()
    try:
        async with Bridge(settings, metrics=metrics, egress=False) as bridge:
            seqs = await publish(js, messages)
            dead = await read_dlq(
                js,
                until=lambda ds: len([d for d in ds if _ours(d, tenant)]) >= len(bad),
            )
            records = await read_topics(
                settings.kafka_bootstrap,
                ["wo.workorder"],
                where=lambda r: r.headers.get("wo-tenant") == tenant.encode(),
                until=lambda rs: len(rs) >= len(valid),
            )
            await wait_for(lambda: bridge.ingress.stats.acked_stream_seq >= seqs[-1])
            assert bridge.healthy
            health = bridge.health()
        # Counted again after the bridge stopped: nothing more arrived late.
        dead = [d for d in await read_dlq(js) if _ours(d, tenant)]
    finally:
        await nc.close()

    assert len(dead) == len(bad)
    by_payload = {(d.headers["wo-dlq-subject"], d.data): d for d in dead}
    for b in bad:
        d = by_payload[(b.subject, b.payload)]  # the original bytes, untouched
        assert d.reason == b.reason, b.name
        assert d.subject == b.dead_letter_subject, b.name
        if b.field:
            assert d.headers.get("wo-dlq-field") == b.field, b.name
        if b.rule:
            assert d.headers.get("wo-dlq-rule") == b.rule, b.name
        assert d.headers["wo-dlq-attempts"] == "0"
        assert d.headers["wo-dlq-direction"] == "ingress"
        assert d.headers["wo-dlq-stream"] == "WO_EVENTS"
        assert int(d.headers["wo-dlq-stream-seq"]) in seqs
        for stamp in ("wo-dlq-published-at", "wo-dlq-first-seen", "wo-dlq-dead-lettered-at"):
            assert d.headers[stamp].endswith("Z")
        for name, value in b.headers.items():
            kept = f"wo-orig-{name}" if name.lower().startswith("nats-") else name
            assert d.headers[kept] == value, b.name
    spoof = next(d for d in dead if d.reason == "TENANT_MISMATCH")
    assert spoof.headers["wo-dlq-event-tenant"] == f"{tenant}_x"  # who it claimed to be

    # Valid events: all mirrored, in publish order, nothing else in the topic for this tenant.
    assert [orjson.loads(r.value)["data"]["version"] for r in records] == list(
        range(1, len(valid) + 1)
    )
    mirrored = metrics.value("wo_bridge_events_mirrored_total", {"domain": "workorder"})
    assert mirrored == len(valid)
    expected = Counter((b.dead_letter_subject.split(".")[2], b.reason) for b in bad)
    for (domain, reason), count in expected.items():
        labels = {"direction": "ingress", "domain": domain, "reason": reason}
        assert metrics.value("wo_bridge_dead_letters_total", labels) == count, (domain, reason)
    assert metrics.value("wo_bridge_kafka_retries_total") == 0
    assert metrics.value("wo_bridge_healthy", {"direction": "ingress"}) == 1
    assert health["ingress"]["dead_lettered"] == len(bad)
    assert health["ingress"]["mirrored"] == len(valid)
    assert health["ingress"]["errors"] == 0


def _ours(dead, tenant: str) -> bool:
    return dead.headers.get("wo-dlq-subject", "").startswith(f"wo.{tenant}.")


async def test_replay_re_injects_dead_letters_through_ingress(stack: EmbeddedStack) -> None:
    tenant = "replay_t"
    settings = _isolated(stack, tenant)
    work_order = str(uuid.uuid4())
    wrong_subject = status_event(tenant, work_order, 1)  # lands as TYPE_MISMATCH
    unroutable = status_event(tenant, work_order, 2)
    nc, js = await connect_nats(settings.nats_url)
    try:
        async with Bridge(settings, metrics=BridgeMetrics(), egress=False):
            await publish(
                js,
                [
                    (f"wo.{tenant}.workorder.created", wrong_subject.canonical_bytes(), None),
                    (f"wo.{tenant}.bogus.x", unroutable.canonical_bytes(), None),
                ],
            )
            dlq_filter = f"wo_dlq.{tenant}.>"
            first = await read_dlq(js, subject_filter=dlq_filter, until=lambda ds: len(ds) >= 1)
            await read_dlq(
                js,
                subject_filter="wo_dlq._invalid.>",
                until=lambda ds: any(_ours(d, tenant) for d in ds),
            )
            # Nothing was fixed, so the replayed message fails again and is dead-lettered anew.
            report = await replay_dead_letters(settings, subject_filter=dlq_filter)
            assert (report.matched, report.replayed, report.failed) == (1, 1, 0)
            assert report.by_reason == {"TYPE_MISMATCH": 1}
            again = await read_dlq(js, subject_filter=dlq_filter, until=lambda ds: len(ds) >= 2)
            # Replaying the same dead letter twice stores it once (replay-specific msg id).
            report2 = await replay_dead_letters(
                settings, subject_filter=dlq_filter, reason="TYPE_MISMATCH", limit=1
            )
            assert report2.replayed == 1 and report2.duplicates == 1
            # Dead letters without a usable original subject are reported and left alone.
            report3 = await replay_dead_letters(
                settings, subject_filter="wo_dlq._invalid.>", reason="INVALID_SUBJECT"
            )
            assert report3.unroutable >= 1 and report3.replayed == 0
    finally:
        await nc.close()
    replayed = [d for d in again if d.seq != first[0].seq]
    assert len(replayed) == 1
    assert replayed[0].data == first[0].data
    assert replayed[0].headers["wo-replayed-from"] == f"WO_DLQ:{first[0].seq}"
    assert replayed[0].reason == "TYPE_MISMATCH"


async def test_egress_stores_a_derived_event_written_twice_once(stack: EmbeddedStack) -> None:
    tenant = "egress_t"
    settings = _isolated(stack, tenant)
    derived = make_event(
        "work_order.blocked",
        {
            "workOrderId": str(uuid.uuid4()),
            "masterId": None,
            "blockReason": "dependency",
            "blockedBy": [],
            "estimatedUnblockDate": None,
        },
        tenant_id=tenant,
    )
    value = derived.canonical_bytes()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    nc, js = await connect_nats(settings.nats_url)
    metrics = BridgeMetrics()
    try:
        async with Bridge(settings, metrics=metrics) as bridge:
            key = record_key(derived).encode()
            await producer.send_and_wait(settings.egress_topic, value, key=key)
            await producer.send_and_wait(settings.egress_topic, value, key=key)
            await producer.send_and_wait(
                settings.egress_topic, b'{"not": "an event"', headers=[("trace", b"t-1")]
            )
            assert bridge.egress is not None
            await wait_for(
                lambda: (
                    bridge.egress.stats.published + bridge.egress.stats.duplicates >= 2
                    and bridge.egress.stats.dead_lettered >= 1
                ),
                within=60,
                what="egress to handle 3 records",
            )
            info = await js.stream_info(settings.stream_name, subjects_filter=derived.subject)
            stored = (info.state.subjects or {}).get(derived.subject)
            # One path: the derived event comes back into Kafka through ingress, once (a
            # second copy would be right behind the first: linger for it).
            records = await read_topics(
                settings.kafka_bootstrap,
                ["wo.workorder"],
                where=lambda r: r.headers.get("wo-tenant") == tenant.encode(),
                until=lambda rs: len(rs) >= 1,
                linger=1.0,
            )
            dead = await read_dlq(
                js,
                subject_filter="wo_dlq._invalid.>",
                until=lambda ds: any(d.headers.get("trace") == "t-1" for d in ds),
            )
    finally:
        await producer.stop()
        await nc.close()
    assert stored == 1
    assert metrics.value("wo_bridge_derived_published_total", {"domain": "workorder"}) == 1
    assert metrics.value("wo_bridge_derived_duplicates_total", {"domain": "workorder"}) == 1
    assert [r.value for r in records] == [value]
    letter = next(d for d in dead if d.headers.get("trace") == "t-1")
    assert letter.reason == "INVALID_JSON"
    assert letter.headers["wo-dlq-direction"] == "egress"
    assert letter.headers["wo-dlq-kafka-topic"] == "wo.derived"
    assert letter.data == b'{"not": "an event"'


async def test_metrics_and_health_endpoints(stack: EmbeddedStack) -> None:
    port = free_port()
    settings = _isolated(stack, "http_t", bridge_metrics_port=port)
    async with Bridge(settings, metrics=BridgeMetrics(), egress=False):

        def get(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        status, body = await asyncio.to_thread(get, "/metrics")
        assert status == 200
        for name in (
            b"wo_bridge_events_mirrored_total",
            b"wo_bridge_dead_letters_total",
            b"wo_bridge_produce_latency_seconds",
            b"wo_bridge_jetstream_pending_messages",
            b"wo_bridge_jetstream_redeliveries_total",
            b"wo_bridge_kafka_retries_total",
            b"wo_bridge_healthy",
        ):
            assert name in body
        status, body = await asyncio.to_thread(get, "/healthz")
        assert status == 200 and orjson.loads(body)["healthy"] is True
        status, _ = await asyncio.to_thread(get, "/nope")
        assert status == 404
