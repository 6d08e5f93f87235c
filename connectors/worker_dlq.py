"""Replay of the worker's dead letters (Kafka ``wo.dlq.worker``) to their source topics.

A dead letter carries its source record whole plus ``wo-dlq-*`` headers
(:func:`pipeline.agents.records.dead_letter_record`). A replay writes the record back to the
topic and partition named by ``wo-dlq-source`` (same key, value, timestamp and original
headers, the ``wo-dlq-*`` ones removed, ``wo-dlq-replayed-from`` added), so the worker reads
it again after a fix. Tables that already applied an event drop it by id (§1.4), so replaying
a record that one table refused does not double-count it in the others; a record that still
fails is dead-lettered again with its new reason.

Decisions:

* **Position.** A run without filters reads from the consumer group ``{app_id}-dlq-replay``
  and commits, after every replayed record was acknowledged (acks=all), the position past the
  last record it looked at: the next run replays only dead letters written since. A run with
  ``reason`` or ``source_topic`` is targeted: it scans from the same position and commits
  nothing, so the records it passed over are still there for a later run (repeating it replays
  its matches again: harmless within the dedup horizon, see next). ``from_start`` rescans the
  whole topic.
* **Dedup horizon.** Tables remember applied event ids for ``DEDUP_HORIZON`` (7 d). A dead
  letter one table refused (``wo-dlq-table`` set) was applied by the others; replayed after the
  horizon they would apply it again. Such dead letters older than the horizon (record time) are
  counted as ``expired`` and left alone unless ``force``. Letters no table applied (undecodable
  records) have no such risk and are replayed at any age.
* **Only the worker's inputs.** ``wo-dlq-source`` must name one of the worker's source topics
  (the six domain topics, the derived-events topic, its repartition topic) and a partition that
  exists; anything else is counted as ``unroutable`` and skipped, so a forged header cannot
  write into a changelog or another application's topic.
* **Bounded.** A run reads up to the topic's end offsets taken when it starts, never waits for
  new dead letters, and stops after ``limit`` replayed records.
* **Dry run** counts what would be replayed and commits nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from connectors.kafka_consumer import consumer_class, stop_quietly
from pipeline.settings import Settings
from pipeline.topics import (
    DEAD_LETTERS,
    DOMAIN,
    H_DLQ_AT,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_DLQ_TABLE,
    forwards_topic,
)
from tables.dedup import DEDUP_HORIZON

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
    expired: int = 0  # partly applied and older than the dedup horizon: left alone
    dry_run: bool = False
    by_reason: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "matched": self.matched,
            "replayed": self.replayed,
            "unroutable": self.unroutable,
            "expired": self.expired,
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
    force: bool = False,
    topic: str = DEAD_LETTERS,
    now: float | None = None,
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
        await consumer.topics()  # metadata of every topic: the DLQ's and the targets'
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return report  # no dead letter was ever written
        targets = {
            name: len(consumer.partitions_for_topic(name) or ())
            for name in (*DOMAIN, settings.egress_topic, forwards_topic(settings.app_id))
        }
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            committed = None if from_start else await consumer.committed(tp)
            consumer.seek(tp, committed if committed is not None else starts[tp])
        scan = _Scan(
            report=report, reason=reason, source_topic=source_topic, limit=limit,
            dry_run=dry_run, targets=targets,
            oldest_ms=None if force else ((now or time.time()) - _HORIZON_S) * 1000,
        )  # fmt: skip
        done = await scan.run(consumer, producer, ends)
        if not dry_run and reason is None and source_topic is None and done:
            await consumer.commit(done)
        return report
    finally:
        await producer.stop()
        await stop_quietly(consumer)


_HORIZON_S = DEDUP_HORIZON.total_seconds()


@dataclass
class _Scan:
    """One pass over the dead letters up to the end offsets taken at the start."""

    report: WorkerReplayReport
    reason: str | None
    source_topic: str | None
    limit: int | None
    dry_run: bool
    targets: dict[str, int]  # the worker's source topics -> partition count
    oldest_ms: float | None  # partly applied letters older than this are expired

    async def run(
        self, consumer: Any, producer: AIOKafkaProducer, ends: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """Replay up to ``ends``; the positions past each partition's last record looked at."""
        positions = {tp: await consumer.position(tp) for tp in ends}
        pending: list[asyncio.Future[Any]] = []
        try:
            while any(positions[tp] < ends[tp] for tp in ends):
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                for tp in ends.keys() - batches.keys():  # moved on without records (markers)
                    positions[tp] = max(positions[tp], min(ends[tp], await consumer.position(tp)))
                for tp, records in batches.items():
                    for record in records:
                        if record.offset >= ends[tp]:
                            break
                        if self._limit_reached():
                            return positions
                        positions[tp] = record.offset + 1
                        sent = await self._one(producer, record)
                        if sent is not None:
                            pending.append(sent)
            return positions
        finally:
            await asyncio.gather(*pending)  # every replayed record acked before any commit

    def _limit_reached(self) -> bool:
        # a dry run replays nothing: its limit counts what it would replay
        done = self.report.matched if self.dry_run else self.report.replayed
        return self.limit is not None and done >= self.limit

    async def _one(self, producer: AIOKafkaProducer, record: ConsumerRecord) -> Any:
        report = self.report
        report.scanned += 1
        headers = dict(record.headers)
        why = headers.get(H_DLQ_REASON, b"").decode(errors="replace")
        source = source_of(headers)
        if source is None or not 0 <= source[1] < self.targets.get(source[0], 0):
            report.unroutable += 1
            log.warning("dead letter %s[%d]@%d has no usable source; skipped",
                        record.topic, record.partition, record.offset)  # fmt: skip
            return None
        if (self.reason is not None and why != self.reason) or (
            self.source_topic is not None and source[0] != self.source_topic
        ):
            return None
        report.matched += 1
        partly_applied = H_DLQ_TABLE in headers
        if (
            partly_applied
            and self.oldest_ms is not None
            and _dead_at(headers, record) < self.oldest_ms
        ):
            report.expired += 1
            return None
        if self.dry_run:
            return None
        sent = await producer.send(
            source[0], value=record.value, key=record.key, partition=source[1],
            timestamp_ms=record.timestamp, headers=_replay_headers(record),
        )  # fmt: skip
        report.replayed += 1
        report.by_reason[why] += 1
        report.by_topic[source[0]] += 1
        return sent


def _dead_at(headers: dict[str, bytes], record: ConsumerRecord) -> int:
    """When the worker dead-lettered ``record`` (ms): the dedup horizon counts from when the
    other tables applied it, not from its event time (a backfilled event would look expired
    at once, one stamped ahead would look fresh for too long). Letters written before the
    header existed fall back to the record timestamp."""
    try:
        return int(headers[H_DLQ_AT])
    except (KeyError, ValueError):
        return record.timestamp
