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
from pipeline.topics import H_DLQ_REASON, H_DLQ_SOURCE, forwards_topic

pytestmark = pytest.mark.integration

PARTITIONS = 4
TS = 1_700_000_000_000  # the dead letters' record time (= the source record's event time)
NOW = TS / 1000 + 3600  # "now" for the dedup-horizon rule: an hour later


class Topics:
    def __init__(self, settings: Settings) -> None:
        tag = uuid.uuid4().hex[:8]
        app_id, derived = f"replay-{tag}", f"derived-{tag}"
        self.settings = settings.model_copy(update={"app_id": app_id, "egress_topic": derived})
        # two of the worker's own source topics, private to this test
        self.dlq, self.a, self.b = f"dlq-{tag}", forwards_topic(app_id), derived
        self.bootstrap = settings.kafka_bootstrap or ""

    async def create(self) -> None:
        await ensure_topics(self.bootstrap, [self.dlq, self.a, self.b], partitions=PARTITIONS)
        await ensure_topics(self.bootstrap, [f"{self.dlq}-other"], partitions=1)

    async def dead_letter(self, topic: str, partition: int, offset: int, reason: str,
                          value: bytes, *, source: bool = True, table: str | None = None,
                          ts: int = TS, at: int | None = TS) -> None:  # fmt: skip
        record = dead_letter_record(
            topic=topic, partition=partition, offset=offset, key=b"acme:wo-" + value[:4],
            value=value, headers=[("wo-event-id", b"id-" + value)], timestamp_ms=ts,
            reason=reason, detail="payload.status: enum", table=table, dead_lettered_ms=at,
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

    async def read(self, topic: str, partitions: int = PARTITIONS
                   ) -> list[tuple[int, bytes | None, bytes, int, dict]]:  # fmt: skip
        consumer = consumer_class(self.settings)(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
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
        kwargs.setdefault("now", NOW)
        return await replay_worker_dead_letters(self.settings, topic=self.dlq, **kwargs)


@pytest.fixture
async def topics(stack_settings: Settings) -> Topics:
    t = Topics(stack_settings)
    await t.create()
    return t


async def test_replay_writes_the_source_record_back_and_remembers_its_position(
    topics: Topics,
) -> None:
    await topics.dead_letter(topics.a, 2, 17, "refused", b"v-refused-1", table="wo_sla")
    await topics.dead_letter(topics.a, 0, 3, "invalid_event", b"v-invalid-1")
    await topics.dead_letter(topics.b, 1, 5, "refused", b"v-refused-b", table="wo_sla")
    await topics.dead_letter(topics.a, 3, 9, "refused", b"v-nosource", source=False)

    dry = await topics.replay(reason="refused", dry_run=True)
    assert (dry.scanned, dry.matched, dry.replayed, dry.unroutable) == (4, 2, 0, 1)
    assert await topics.read(topics.a) == []

    # a filtered run is targeted: it replays its matches and commits nothing
    report = await topics.replay(reason="refused", source_topic=topics.a)
    assert (report.scanned, report.matched, report.replayed) == (4, 1, 1)
    assert report.to_dict()["by_topic"] == {topics.a: 1}
    [(partition, key, value, ts, headers)] = await topics.read(topics.a)
    assert (partition, key, value, ts) == (2, b"acme:wo-v-re", b"v-refused-1", TS)
    assert headers["wo-event-id"] == b"id-v-refused-1"
    assert not any(k.startswith("wo-dlq-") and k != H_REPLAYED_FROM for k in headers)
    assert headers[H_REPLAYED_FROM].decode().startswith(f"{topics.dlq}/2/")
    invalid = await topics.replay(reason="invalid_event")
    assert (invalid.scanned, invalid.replayed) == (4, 1)  # still there for it

    # an unfiltered run replays everything and moves the group's position past it
    everything = await topics.replay()
    assert (everything.scanned, everything.replayed, everything.unroutable) == (4, 3, 1)
    again = await topics.replay()
    assert (again.scanned, again.replayed) == (0, 0)
    await topics.dead_letter(topics.a, 1, 40, "invalid_event", b"v-later")
    later = await topics.replay()
    assert (later.scanned, later.replayed) == (1, 1)

    # from the start, one source topic only
    b_only = await topics.replay(from_start=True, source_topic=topics.b)
    assert (b_only.scanned, b_only.replayed) == (5, 1)
    assert [r[2] for r in await topics.read(topics.b)] == [b"v-refused-b", b"v-refused-b"]


async def test_only_the_workers_source_partitions_are_written(topics: Topics) -> None:
    await topics.dead_letter(topics.a, 1, 1, "invalid_event", b"v-ok")
    await topics.dead_letter(f"{topics.dlq}-other", 0, 1, "invalid_event", b"v-other-topic")
    await topics.dead_letter(topics.a, 3, 1, "invalid_event", b"v-no-partition")
    # the header names a partition the topic does not have
    producer = AIOKafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.dlq,
            value=b"v-p9",
            partition=0,
            headers=[(H_DLQ_SOURCE, f"{topics.a}/9/1".encode()), (H_DLQ_REASON, b"invalid_event")],
        )
    finally:
        await producer.stop()
    report = await topics.replay()
    assert (report.scanned, report.replayed, report.unroutable) == (4, 2, 2)
    assert sorted(r[2] for r in await topics.read(topics.a)) == [b"v-no-partition", b"v-ok"]
    assert await topics.read(f"{topics.dlq}-other", partitions=1) == []


async def test_partly_applied_letters_older_than_the_dedup_horizon_need_force(
    topics: Topics,
) -> None:
    """A letter one table refused was applied by the others, which forget its id after 7 d."""
    await topics.dead_letter(topics.a, 0, 1, "refused", b"v-partly", table="wo_sla")
    await topics.dead_letter(topics.a, 0, 2, "invalid_event", b"v-nobody")
    eight_days = NOW + 8 * 86_400
    report = await topics.replay(now=eight_days, reason="refused")
    assert (report.matched, report.expired, report.replayed) == (1, 1, 0)
    report = await topics.replay(now=eight_days)
    assert (report.expired, report.replayed) == (1, 1)  # the undecodable one: no risk
    forced = await topics.replay(now=eight_days, from_start=True, force=True, reason="refused")
    assert (forced.expired, forced.replayed) == (0, 1)
    assert sorted(r[2] for r in await topics.read(topics.a)) == [b"v-nobody", b"v-partly"]


async def test_the_horizon_counts_from_the_dead_lettering_not_the_event_time(
    topics: Topics,
) -> None:
    """The other tables applied the record when it was dead-lettered; its event time can be
    days before (a backfill) or after (a producer clock ahead) that."""
    day = 86_400_000
    await topics.dead_letter(topics.a, 0, 1, "refused", b"v-backfill", table="wo_sla",
                             ts=TS - 10 * day, at=TS)  # fmt: skip
    await topics.dead_letter(topics.a, 0, 2, "refused", b"v-ahead", table="wo_sla",
                             ts=TS + 3 * day, at=TS - 8 * day)  # fmt: skip
    await topics.dead_letter(
        topics.a, 0, 3, "refused", b"v-old-letter", table="wo_sla", ts=TS - 8 * day, at=None
    )  # written before wo-dlq-at existed
    report = await topics.replay(now=NOW)
    assert (report.matched, report.expired, report.replayed) == (3, 2, 1)
    assert [r[2] for r in await topics.read(topics.a)] == [b"v-backfill"]


async def test_a_limit_stops_early_and_the_next_run_goes_on_from_there(topics: Topics) -> None:
    for n in range(6):
        await topics.dead_letter(topics.a, n % 3, n, "invalid_event", f"v-{n}".encode())
    first = await topics.replay(limit=2)
    assert first.replayed == 2
    rest = await topics.replay()
    assert rest.replayed == 4  # none twice, none lost, across partitions
    assert sorted(r[2] for r in await topics.read(topics.a)) == [f"v-{n}".encode()
                                                                 for n in range(6)]  # fmt: skip


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
