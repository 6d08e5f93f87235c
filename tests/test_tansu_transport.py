"""connectors.tansu_transport against a real Tansu broker: latest offsets = Fetch high watermark.

Tansu 0.6.0 answers ListOffsets(latest) with the last record batch's base offset + 1;
``test_tansu_list_offsets_latest_is_short`` pins that down (if it starts failing, Tansu was
fixed and the transport may be retired). The other tests check that the transport's
lookups equal the number of records in the partition, as the Fetch high watermark says.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from faust.transport import by_url
from yarl import URL

from connectors import tansu_transport
from connectors.embedded import EmbeddedStack
from connectors.tansu_transport import TansuAIOKafkaConsumer, TansuFetcher
from pipeline.app import EMBEDDED_BROKER_SESSION_TIMEOUT, broker_url, create_app
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

#: produce_mix() writes this many records: a batch of 10, 3 singles, 5 pipelined.
MIX_RECORDS = 18


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, n, 1) for t, n in partitions.items()])
    finally:
        await admin.close()


async def produce_batch(producer: AIOKafkaProducer, topic: str, partition: int, n: int) -> None:
    """``n`` records as one record batch."""
    batch = producer.create_batch()
    for i in range(n):
        assert batch.append(key=None, value=b"b%d" % i, timestamp=None) is not None
    batch.close()
    await (await producer.send_batch(batch, topic, partition=partition))


async def produce_mix(bootstrap: str, topic: str, partition: int) -> None:
    """The measured scenario: a batch of 10, 3 single records, 5 pipelined records."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        await produce_batch(producer, topic, partition, 10)
        for i in range(3):
            await producer.send_and_wait(topic, b"s%d" % i, partition=partition)
        pipelined = [await producer.send(topic, b"p%d" % i, partition=partition) for i in range(5)]
        await asyncio.gather(*pipelined)
    finally:
        await producer.stop()


async def fetch_highwater(bootstrap: str, tp: TopicPartition) -> tuple[int, int]:
    """(records read, consumer.highwater) reading ``tp`` from 0 with a plain consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        count = 0
        for _ in range(50):
            batch = await consumer.getmany(tp, timeout_ms=200)
            count += len(batch.get(tp, []))
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                return count, highwater
        raise AssertionError(f"could not read {tp} to its high watermark")
    finally:
        await consumer.stop()


@pytest.fixture
async def mix_topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    """A 3-partition topic: partition 0 holds the batch/single/pipelined mix, 1 and 2 are empty."""
    topic = _topic("hw-mix")
    await create_topics(kafka_bootstrap, {topic: 3})
    await produce_mix(kafka_bootstrap, topic, 0)
    yield topic


async def test_tansu_list_offsets_latest_is_short(
    embedded_stack: EmbeddedStack, kafka_bootstrap: str, mix_topic: str
) -> None:
    """Documents the broker bug the transport works around (fails once Tansu is fixed)."""
    if not embedded_stack.manages_kafka:
        pytest.skip("documents a Tansu bug; the broker is an external one")
    tp0 = TopicPartition(mix_topic, 0)
    assert await fetch_highwater(kafka_bootstrap, tp0) == (MIX_RECORDS, MIX_RECORDS)
    plain = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await plain.start()
    try:
        listed = (await plain.end_offsets([tp0]))[tp0]
        earliest = (await plain.beginning_offsets([tp0]))[tp0]
    finally:
        await plain.stop()
    assert listed < MIX_RECORDS, (
        f"ListOffsets(latest) = {listed} = the true end: Tansu seems fixed; "
        "connectors/tansu_transport.py may no longer be needed"
    )
    # earliest is right, so the transport leaves it alone
    assert earliest == 0


async def test_end_offsets_equal_fetch_high_watermark(kafka_bootstrap: str, mix_topic: str) -> None:
    tps = [TopicPartition(mix_topic, p) for p in range(3)]
    consumer = TansuAIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        assert type(consumer._fetcher) is TansuFetcher
        assert await consumer.end_offsets(tps) == {tps[0]: MIX_RECORDS, tps[1]: 0, tps[2]: 0}
        assert await consumer.end_offsets(tps[1:]) == {tps[1]: 0, tps[2]: 0}  # only empty ones
        assert await consumer.beginning_offsets(tps) == dict.fromkeys(tps, 0)
    finally:
        await consumer.stop()


async def test_seek_to_end_and_latest_reset(kafka_bootstrap: str, mix_topic: str) -> None:
    """seek_to_end() and auto_offset_reset='latest' use ListOffsets(latest) too."""
    tp0 = TopicPartition(mix_topic, 0)
    consumer = TansuAIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="latest")
    await consumer.start()
    try:
        consumer.assign([tp0])
        assert await consumer.position(tp0) == MIX_RECORDS  # reset to latest
        consumer.seek(tp0, 3)
        assert await consumer.seek_to_end(tp0)
        assert await consumer.position(tp0) == MIX_RECORDS
    finally:
        await consumer.stop()


async def test_faust_consumer_highwaters(
    kafka_bootstrap: str, mix_topic: str, tmp_path: Path
) -> None:
    """The Faust consumer of a tansu:// app: what table recovery calls."""
    tps = [TopicPartition(mix_topic, p) for p in range(3)]
    app = create_app(
        Settings(kafka_transport="tansu", kafka_bootstrap=kafka_bootstrap),
        data_dir=tmp_path,
        app_id=_topic("hw-faust"),
    )
    assert isinstance(app.transport, tansu_transport.Transport)
    consumer = app.consumer
    await consumer.start()
    try:
        assert await consumer.highwaters(*tps) == {tps[0]: MIX_RECORDS, tps[1]: 0, tps[2]: 0}
        assert await consumer.earliest_offsets(*tps) == dict.fromkeys(tps, 0)
    finally:
        await consumer.stop()


async def test_many_partitions_one_fetch_per_node(kafka_bootstrap: str) -> None:
    """2 topics x 12 partitions (some empty, some one batch, some many): one round trip each."""
    topics = {_topic("hw-many-a"): 12, _topic("hw-many-b"): 12}
    await create_topics(kafka_bootstrap, topics)
    expected: dict[TopicPartition, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        for t_index, topic in enumerate(topics):
            for p in range(12):
                tp = TopicPartition(topic, p)
                sizes = [] if p % 4 == 0 else [p + t_index] * (1 + p % 3) + [1]
                for n in sizes:
                    await produce_batch(producer, topic, p, n)
                expected[tp] = sum(sizes)
    finally:
        await producer.stop()

    consumer = TansuAIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    sent: list[Any] = []
    real_send = consumer._client.send

    async def counting_send(node_id: int, request: Any, **kwargs: Any) -> Any:
        sent.append(request)
        return await real_send(node_id, request, **kwargs)

    consumer._client.send = counting_send  # type: ignore[method-assign]
    try:
        assert await consumer.end_offsets(list(expected)) == expected
    finally:
        consumer._client.send = real_send  # type: ignore[method-assign]
        await consumer.stop()
    nodes = {broker.nodeId for broker in consumer._client.cluster.brokers()}
    assert sum(isinstance(r, OffsetRequest) for r in sent) == len(nodes)
    assert sum(isinstance(r, FetchRequest) for r in sent) == len(nodes)
    for tp, n in expected.items():
        if n:
            assert await fetch_highwater(kafka_bootstrap, tp) == (n, n)


async def test_fetch_high_watermarks_directly(kafka_bootstrap: str, mix_topic: str) -> None:
    """Any valid fetch position works, including the end and the start."""
    tps = [TopicPartition(mix_topic, p) for p in range(3)]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        consumer._client.add_topic(mix_topic)
        await consumer._client.force_metadata_update()
        node = consumer._client.cluster.leader_for_partition(tps[0])
        for start in (0, 13, MIX_RECORDS):
            positions = {tps[0]: start, tps[1]: 0, tps[2]: 0}
            got = await tansu_transport.fetch_high_watermarks(consumer._client, node, positions)
            assert got == {tps[0]: MIX_RECORDS, tps[1]: 0, tps[2]: 0}
    finally:
        await consumer.stop()


# -- transport selection (no broker needed) ---------------------------------------------------


def test_tansu_scheme_loads_the_transport() -> None:
    assert by_url(URL("tansu://127.0.0.1:9092")) is tansu_transport.Transport


@pytest.mark.parametrize(
    ("settings", "broker", "expected"),
    [
        # embedded: WO_KAFKA_BOOTSTRAP unset, the stack's address passed in
        (Settings(kafka_bootstrap=None), "127.0.0.1:1234", "tansu://127.0.0.1:1234"),
        # a configured broker (production)
        (Settings(kafka_bootstrap="k1:9092,k2:9092"), None, "kafka://k1:9092,k2:9092"),
        (Settings(kafka_transport="tansu", kafka_bootstrap="h:1"), None, "tansu://h:1"),
        (Settings(kafka_transport="kafka", kafka_bootstrap=None), "h:1", "kafka://h:1"),
        (
            Settings(kafka_transport="tansu", kafka_bootstrap=None),
            "kafka://h:1",
            "kafka://h:1",
        ),  # explicit URL wins
    ],
)
def test_broker_url(settings: Settings, broker: str | None, expected: str) -> None:
    assert broker_url(settings, broker) == expected


def test_create_app_settings(tmp_path: Path) -> None:
    app = create_app(
        Settings(kafka_bootstrap="k:9092", partitions=5, web_port=7077),
        data_dir=tmp_path,
        app_id="wo-test",
    )
    assert [str(u) for u in app.conf.broker] == ["kafka://k:9092"]
    assert app.conf.broker_session_timeout == 60.0  # Faust's default outside tansu
    assert str(app.conf.store) == "rocksdb:"
    assert app.conf.topic_partitions == 5
    assert app.conf.web_port == 7077
    assert app.conf.consumer_auto_offset_reset == "earliest"
    assert app.conf.datadir == tmp_path / "faust" / "wo-test"
    embedded = create_app(
        Settings(kafka_bootstrap=None), broker="h:1", data_dir=tmp_path, app_id="x"
    )
    assert embedded.conf.broker_session_timeout == EMBEDDED_BROKER_SESSION_TIMEOUT
    with pytest.raises(ValueError, match="No Kafka broker"):
        create_app(Settings(kafka_bootstrap=None), data_dir=tmp_path)
