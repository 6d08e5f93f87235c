"""``replay-worker-dlq`` on the real embedded broker: bytes back to their source partition,
filters, the replay group's position, limits and dry runs."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from click.testing import CliRunner

from connectors.kafka_consumer import consumer_class
from connectors.kafka_topics import ensure_topics
from connectors.worker_dlq import H_REPLAYED_FROM, replay_worker_dead_letters, source_of
from pipeline.agents.records import dead_letter_record
from pipeline.settings import Settings
from pipeline.topics import H_DLQ_REASON, H_DLQ_SOURCE

pytestmark = pytest.mark.integration

PARTITIONS = 4


class Topics:
    def __init__(self, settings: Settings) -> None:
        tag = uuid.uuid4().hex[:8]
        self.settings = settings.model_copy(update={"app_id": f"replay-{tag}"})
        self.dlq, self.a, self.b = f"dlq-{tag}", f"src-a-{tag}", f"src-b-{tag}"
        self.bootstrap = settings.kafka_bootstrap or ""

    async def create(self) -> None:
        await ensure_topics(self.bootstrap, [self.dlq, self.a, self.b], partitions=PARTITIONS)

    async def dead_letter(self, topic: str, partition: int, offset: int, reason: str,
                          value: bytes, *, source: bool = True) -> None:  # fmt: skip
        record = dead_letter_record(
            topic=topic, partition=partition, offset=offset, key=b"acme:wo-" + value[:4],
            value=value, headers=[("wo-event-id", b"id-" + value)], timestamp_ms=1_700_000_000_000,
            reason=reason, detail="payload.status: enum", table="wo_sla",
        )  # fmt: skip
        headers = [h for h in record.headers if source or h[0] != H_DLQ_SOURCE]
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(self.dlq, value=record.value, key=record.key,
                                         partition=partition, timestamp_ms=record.timestamp_ms,
                                         headers=headers)  # fmt: skip
        finally:
            await producer.stop()

    async def read(self, topic: str) -> list[tuple[int, bytes | None, bytes, int, dict]]:
        consumer = consumer_class(self.settings)(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            out = []
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    out += [(tp.partition, r.key, r.value, r.timestamp, dict(r.headers))
                            for r in records]  # fmt: skip
            return sorted(out, key=lambda r: r[2])
        finally:
            await consumer.stop()

    async def replay(self, **kwargs):
        return await replay_worker_dead_letters(self.settings, topic=self.dlq, **kwargs)


@pytest.fixture
async def topics(stack_settings: Settings) -> Topics:
    t = Topics(stack_settings)
    await t.create()
    return t


async def test_replay_writes_the_source_record_back_by_filter_and_remembers_its_position(
    topics: Topics,
) -> None:
    await topics.dead_letter(topics.a, 2, 17, "refused", b"v-refused-1")
    await topics.dead_letter(topics.a, 0, 3, "invalid_event", b"v-invalid-1")
    await topics.dead_letter(topics.b, 1, 5, "refused", b"v-refused-b")
    await topics.dead_letter(topics.a, 3, 9, "refused", b"v-nosource", source=False)

    dry = await topics.replay(reason="refused", dry_run=True)
    assert (dry.scanned, dry.matched, dry.replayed, dry.unroutable) == (4, 2, 0, 1)
    assert await topics.read(topics.a) == []

    report = await topics.replay(reason="refused", source_topic=topics.a)
    assert (report.scanned, report.matched, report.replayed) == (4, 1, 1)
    assert report.to_dict()["by_topic"] == {topics.a: 1}
    [(partition, key, value, ts, headers)] = await topics.read(topics.a)
    assert (partition, key, value, ts) == (2, b"acme:wo-v-re", b"v-refused-1", 1_700_000_000_000)
    assert headers["wo-event-id"] == b"id-v-refused-1"
    assert not any(k.startswith("wo-dlq-") and k != H_REPLAYED_FROM for k in headers)
    assert headers[H_REPLAYED_FROM].decode().startswith(f"{topics.dlq}/2/")

    # the group's position moved past every record scanned, matched or not
    again = await topics.replay()
    assert (again.scanned, again.replayed) == (0, 0)
    await topics.dead_letter(topics.a, 1, 40, "invalid_event", b"v-later")
    later = await topics.replay()
    assert (later.scanned, later.replayed) == (1, 1)

    # from the start, one source topic only
    b_only = await topics.replay(from_start=True, source_topic=topics.b)
    assert (b_only.scanned, b_only.replayed) == (5, 1)
    assert [r[2] for r in await topics.read(topics.b)] == [b"v-refused-b"]


async def test_a_limit_stops_early_and_the_next_run_goes_on_from_there(topics: Topics) -> None:
    for n in range(3):
        await topics.dead_letter(topics.a, 0, n, "invalid_event", f"v-{n}".encode())
    first = await topics.replay(limit=2)
    assert (first.scanned, first.replayed) == (2, 2)
    rest = await topics.replay()
    assert (rest.scanned, rest.replayed) == (1, 1)
    assert [r[2] for r in await topics.read(topics.a)] == [b"v-0", b"v-1", b"v-2"]
    assert await topics.replay(dry_run=True, from_start=True) is not None


def test_the_command_prints_its_report(stack_settings: Settings, monkeypatch) -> None:
    from pipeline.cli import cli

    monkeypatch.setenv("WO_KAFKA_TRANSPORT", "tansu")
    monkeypatch.setenv("WO_APP_ID", f"replay-cli-{uuid.uuid4().hex[:6]}")
    result = CliRunner().invoke(
        cli, ["replay-worker-dlq", "--kafka-bootstrap", stack_settings.kafka_bootstrap or "",
              "--dry-run", "--reason", "no-such-reason"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"dry_run": true' in result.output and '"replayed": 0' in result.output


def test_source_of_reads_topic_and_partition() -> None:
    assert source_of({H_DLQ_SOURCE: b"wo.workorder/3/99"}) == ("wo.workorder", 3)
    assert source_of({H_DLQ_SOURCE: b"garbage"}) is None
    assert source_of({H_DLQ_SOURCE: b"t/x/1"}) is None
    assert source_of({H_DLQ_REASON: b"refused"}) is None
