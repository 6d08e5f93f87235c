"""Egress Kafka -> NATS: derived events from ``wo.derived`` published to their JetStream subject.

Agents write derived events to the Kafka topic ``wo.derived``; egress publishes each, byte for
byte, to ``wo.{tenant}.{domain}.{event}`` with ``Nats-Msg-Id`` = the event id, so JetStream
stores a re-published event once (within the stream's duplicate window; beyond it consumers
dedup by id, §1.4). From there ingress mirrors it like any other event: NATS stays the log of
record and there is one path into the domain topics.

Per batch (``getmany``): parse every record, publish the valid ones pipelined (one PubAck per
message, awaited together), dead-letter the invalid ones (never into ``wo.>``), and only then
commit the batch's offsets. A crash before the commit re-publishes the batch, which the
``Nats-Msg-Id`` absorbs.

Failures: while NATS is unreachable (timeouts, no responders, disconnects) publishing is retried
with backoff for as long as it takes, without committing: that is not the message's fault, and
the dead-letter stream lives on the same server. A publish JetStream *refuses* (API error, over
the payload limit) counts against the retry budget and is dead-lettered as
``NATS_PUBLISH_FAILED`` after it. Order: records are published in partition order; after a
partial failure the unconfirmed ones are re-published in order, so an event whose first publish
failed can be stored after a later one (derived events carry their own causation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import nats.errors
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import (
    EGRESS,
    NATS_MSG_ID,
    BridgeReason,
    DeadLetter,
    DeadLetterPublisher,
    Fault,
    RetryPolicy,
    Sleep,
    Stopping,
    egress_dead_letter,
    now_iso,
    pause,
    publish_pipelined,
)
from connectors.kafka_consumer import (
    group_timeouts,
    poll_until_stopped,
    start_subscribed,
    stop_quietly,
)
from events.parsing import ParseError, parse_event
from events.subjects import domain_for
from pipeline.settings import Settings

log = logging.getLogger(__name__)

_ERROR_BACKOFF = RetryPolicy(attempts=1_000_000, base_seconds=0.5, max_seconds=10.0)


@dataclass
class EgressStats:
    """Counters for health output and tests."""

    batches: int = 0
    published: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    publish_retries: int = 0
    commits: int = 0
    errors: int = 0
    last_error: str | None = None
    assigned: bool = False
    started_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Out:
    record: ConsumerRecord
    subject: str
    domain: str
    event_id: str
    event_type: str
    tenant_id: str
    attempts: int = 0
    error: str | None = None


def _refused(exc: BaseException) -> bool:
    """A publish JetStream answered with a refusal (counts against the budget), not an outage."""
    if isinstance(exc, NoStreamResponseError | ServiceUnavailableError):
        return False
    return isinstance(exc, APIError | nats.errors.MaxPayloadError)


class Egress:
    """Runs the Kafka -> NATS direction until ``stop`` is set."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        settings: Settings,
        metrics: BridgeMetrics,
        stop: asyncio.Event,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not settings.kafka_bootstrap:
            raise ValueError("the bridge needs a Kafka bootstrap address")
        self._js = js
        self._settings = settings
        self._metrics = metrics
        self._stop = stop
        self._sleep = sleep
        self._retry = RetryPolicy.from_settings(settings)
        self._dead_letters = DeadLetterPublisher(
            js, settings, metrics, sleep=sleep, stop=stop, on_trouble=self._trouble
        )
        self._consumer: AIOKafkaConsumer | None = None
        self.stats = EgressStats()
        self.healthy = True
        metrics.healthy.labels(EGRESS).set(1)

    def _trouble(self, on: bool) -> None:
        if on:
            self._set_health(False)

    def _set_health(self, healthy: bool) -> None:
        self.healthy = healthy
        self._metrics.healthy.labels(EGRESS).set(1 if healthy else 0)

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self._settings
        return AIOKafkaConsumer(
            s.egress_topic,
            bootstrap_servers=s.kafka_bootstrap,
            client_id="wo-stream-bridge-egress",
            group_id=s.egress_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **group_timeouts(s.egress_session_timeout_ms),
            max_poll_records=s.egress_batch_size,
            # Derived events written in aborted transactions must never reach NATS.
            isolation_level="read_committed",
        )

    async def run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._consumer is None:
                        self._consumer = await start_subscribed(
                            self._new_consumer(),
                            self._settings.kafka_bootstrap or "",
                            [self._settings.egress_topic],
                            partitions=self._settings.partitions,
                        )
                    await self._loop(self._consumer)
                    failures = 0
                except Stopping:
                    break
                except Exception as exc:  # broker trouble or a bug: never die, never commit early
                    failures += 1
                    self.stats.errors += 1
                    self.stats.last_error = type(exc).__name__
                    self._set_health(False)
                    log.warning("egress error %s: %s; retrying", type(exc).__name__, exc)
                    await self._drop_consumer()
                    try:
                        await pause(_ERROR_BACKOFF.delay(failures), self._stop, self._sleep)
                    except Stopping:
                        break
        finally:
            await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        await stop_quietly(consumer)

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        size = self._settings.egress_batch_size
        while (
            batches := await poll_until_stopped(consumer, self._stop, max_records=size)
        ) is not None:
            self.stats.assigned = bool(consumer.assignment())
            if not batches:
                self._set_health(True)
                continue
            await self.handle_batch(consumer, batches)

    async def handle_batch(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Publish, dead-letter, then commit one ``getmany`` result."""
        first_seen = now_iso()
        outs: list[_Out] = []
        letters: list[DeadLetter] = []
        for records in batches.values():
            for record in records:
                item = self._classify(record, first_seen)
                if isinstance(item, _Out):
                    outs.append(item)
                else:
                    letters.append(item)
        letters.extend(await self._publish(outs, first_seen))
        await self._dead_letters.publish(letters)
        self.stats.dead_lettered += len(letters)
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "")
            for tp, records in batches.items()
            if records
        }
        try:
            await consumer.commit(offsets)
            self.stats.commits += 1
        except KafkaError as exc:
            # A rebalance took the partitions: the new owner re-publishes from the last commit
            # and Nats-Msg-Id drops what was stored already.
            log.warning("egress offset commit failed (%s)", type(exc).__name__)
        self.stats.batches += 1
        self._metrics.last_progress.labels(EGRESS).set(time.time())
        self._set_health(True)

    def _classify(self, record: ConsumerRecord, first_seen: str) -> _Out | DeadLetter:
        value = record.value
        parsed = parse_event(
            value if isinstance(value, bytes) else b"", max_bytes=self._settings.max_payload_bytes
        )
        if isinstance(parsed, ParseError):
            return self._letter(record, first_seen, Fault.from_parse_error(parsed), 0)
        return _Out(
            record, parsed.subject, domain_for(parsed.type), parsed.id, parsed.type,
            parsed.tenantId,
        )  # fmt: skip

    def _letter(
        self, record: ConsumerRecord, first_seen: str, fault: Fault, attempts: int
    ) -> DeadLetter:
        return egress_dead_letter(
            payload=record.value if isinstance(record.value, bytes) else b"",
            headers=list(record.headers or ()),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            first_seen=first_seen,
            fault=fault,
            attempts=attempts,
        )

    async def _publish(self, outs: list[_Out], first_seen: str) -> list[DeadLetter]:
        """Publish until every event has a PubAck or spent its budget; returns dead letters."""
        letters: list[DeadLetter] = []
        pending = outs
        outages = 0
        while pending:
            results = await publish_pipelined(
                self._js,
                [(o.subject, o.record.value, {NATS_MSG_ID: o.event_id}) for o in pending],
                stream=self._settings.stream_name,
                timeout=self._settings.nats_publish_timeout_seconds,
            )
            retry: list[_Out] = []
            for out, result in zip(pending, results, strict=True):
                if isinstance(result, PubAck):
                    if result.duplicate:
                        self.stats.duplicates += 1
                        self._metrics.derived_duplicates.labels(out.domain).inc()
                    else:
                        self.stats.published += 1
                        self._metrics.derived_published.labels(out.domain).inc()
                    continue
                out.error = type(result).__name__
                if _refused(result):
                    out.attempts += 1
                    if self._retry.exhausted(out.attempts):
                        fault = Fault(
                            BridgeReason.NATS_PUBLISH_FAILED,
                            detail=out.error,
                            event_id=out.event_id,
                            event_type=out.event_type,
                            tenant_id=out.tenant_id,
                        )
                        letters.append(self._letter(out.record, first_seen, fault, out.attempts))
                        continue
                retry.append(out)
            pending = retry
            if pending:
                outages += 1
                self.stats.publish_retries += 1
                self._metrics.nats_publish_retries.labels(EGRESS).inc()
                self._set_health(False)
                log.warning(
                    "egress publish of %d derived events failed (%s); retrying",
                    len(pending), pending[0].error,
                )  # fmt: skip
                await pause(self._retry.delay(min(outages, 8)), self._stop, self._sleep)
        return letters
