"""Replay of the worker's dead letters (Kafka ``wo.dlq.worker``) to their source topics.

A dead letter carries its source record whole plus ``wo-dlq-*`` headers
(:func:`pipeline.agents.records.dead_letter_record`). A replay writes the record back to the
topic and partition named by ``wo-dlq-source`` (same key, value, timestamp and original
headers, the ``wo-dlq-*`` ones removed, ``wo-dlq-replayed-from`` added), so the worker reads
it again after a fix. Tables that already applied an event drop it by id (§1.4), so replaying
a record that one table refused does not double-count it in the others; a record that still
fails is dead-lettered again with its new reason.

Decisions:

* **Position.** Replays read from the consumer group ``{app_id}-dlq-replay`` and commit, after
  every replayed record was acknowledged (acks=all), the position past the last record they
  looked at: a second run replays only dead letters written since. Records a filter passed over
  are passed over for good unless ``from_start`` scans the topic again (repeats are harmless
  for events: deduplicated by id).
* **Bounded.** A run reads up to the topic's end offsets taken when it starts, never waits for
  new dead letters, and stops after ``limit`` replayed records (committing up to the last one).
* **Dry run** counts what would be replayed and commits nothing.
* A dead letter without a usable ``wo-dlq-source`` is counted as ``unroutable`` and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from connectors.kafka_consumer import consumer_class, stop_quietly
from pipeline.settings import Settings
from pipeline.topics import DEAD_LETTERS, H_DLQ_REASON, H_DLQ_SOURCE

__all__ = ["H_REPLAYED_FROM", "WorkerReplayReport", "replay_worker_dead_letters", "source_of"]

log = logging.getLogger(__name__)

H_REPLAYED_FROM = "wo-dlq-replayed-from"  # "{dlq topic}/{partition}/{offset}" of the replay


@dataclass
class WorkerReplayReport:
    """What one replay did; ``by_reason`` / ``by_topic`` count the replayed records."""

    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    unroutable: int = 0
    dry_run: bool = False
    by_reason: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "matched": self.matched,
            "replayed": self.replayed,
            "unroutable": self.unroutable,
            "dry_run": self.dry_run,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_topic": dict(sorted(self.by_topic.items())),
        }


def source_of(headers: dict[str, bytes]) -> tuple[str, int] | None:
    """Topic and partition from ``wo-dlq-source`` (``topic/partition/offset``), if valid."""
    raw = headers.get(H_DLQ_SOURCE)
    if raw is None:
        return None
    parts = raw.decode(errors="replace").rsplit("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _replay_headers(record: ConsumerRecord) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in record.headers if not k.startswith("wo-dlq-")]
    origin = f"{record.topic}/{record.partition}/{record.offset}".encode()
    return [*kept, (H_REPLAYED_FROM, origin)]


async def replay_worker_dead_letters(
    settings: Settings,
    *,
    reason: str | None = None,
    source_topic: str | None = None,
    limit: int | None = None,
    from_start: bool = False,
    dry_run: bool = False,
    topic: str = DEAD_LETTERS,
) -> WorkerReplayReport:
    """Replay the dead letters matching ``reason`` / ``source_topic`` (module doc)."""
    if not settings.kafka_bootstrap:
        raise ValueError("replaying worker dead letters needs a Kafka bootstrap address")
    report = WorkerReplayReport(dry_run=dry_run)
    consumer = consumer_class(settings)(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="wo-stream-dlq-replay",
        group_id=f"{settings.app_id}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await consumer.start()
    try:
        await producer.start()
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            await consumer.topics()  # metadata for a topic not fetched yet
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return report  # no dead letter was ever written
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            committed = None if from_start else await consumer.committed(tp)
            consumer.seek(tp, committed if committed is not None else starts[tp])
        done = await _scan(consumer, producer, report, ends, reason, source_topic, limit, dry_run)
        if not dry_run and done:
            await consumer.commit(done)
        return report
    finally:
        await producer.stop()
        await stop_quietly(consumer)


async def _scan(
    consumer: Any,
    producer: AIOKafkaProducer,
    report: WorkerReplayReport,
    ends: dict[TopicPartition, int],
    reason: str | None,
    source_topic: str | None,
    limit: int | None,
    dry_run: bool,
) -> dict[TopicPartition, int]:
    """Replay up to ``ends``; the positions to commit (past each partition's last look)."""
    positions = {tp: await consumer.position(tp) for tp in ends}
    pending: list[asyncio.Future[Any]] = []
    while any(positions[tp] < ends[tp] for tp in ends):
        batches = await consumer.getmany(timeout_ms=1000, max_records=500)
        for tp in ends.keys() - batches.keys():  # moved on without records (control records)
            positions[tp] = max(positions[tp], min(ends[tp], await consumer.position(tp)))
        for tp, records in batches.items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                if limit is not None and report.matched >= limit:
                    await asyncio.gather(*pending)
                    return positions
                positions[tp] = record.offset + 1
                report.scanned += 1
                headers = dict(record.headers)
                why = headers.get(H_DLQ_REASON, b"").decode(errors="replace")
                source = source_of(headers)
                if source is None:
                    report.unroutable += 1
                    log.warning("dead letter %s[%d]@%d has no source; skipped",
                                tp.topic, tp.partition, record.offset)  # fmt: skip
                    continue
                if (reason is not None and why != reason) or (
                    source_topic is not None and source[0] != source_topic
                ):
                    continue
                report.matched += 1
                if dry_run:
                    continue
                pending.append(await producer.send(
                    source[0], value=record.value, key=record.key, partition=source[1],
                    timestamp_ms=record.timestamp, headers=_replay_headers(record),
                ))  # fmt: skip
                report.replayed += 1
                report.by_reason[why] += 1
                report.by_topic[source[0]] += 1
    await asyncio.gather(*pending)  # every replayed record acked before the commit
    return positions
