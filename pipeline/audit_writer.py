"""Audit Trail Writer (catalog §8, "MUST NOT FAIL"): domain topics -> hash-chained audit table.

A Kafka consumer group over the six domain topics (derived events come back through NATS and
ingress, so they are there too). Per ``getmany`` batch:

1. parse each record (``events.parsing``); events with ``metadata.auditRequired: false`` are
   passed over unless the catalog marks their type "Audit Required: Yes"
   (``events.registry.requires_audit``); a record that cannot be parsed is dead-lettered unless
   its JSON plainly says ``auditRequired: false`` for a type the catalog does not audit;
2. append the audit-required ones in ONE transaction, idempotent by (tenant, event id), so a
   redelivered event appends nothing; a tenant's chain order is the order of commit (Kafka
   order within each partition);
3. publish dead letters (``wo_dlq.{tenant}.{domain}.{type}``, header ``wo-dlq-direction:
   audit``) and wait for their PubAcks;
4. only then commit the Kafka offsets.

While the database is unavailable the batch is retried with exponential backoff, the
partitions are paused and nothing later is read: nothing is skipped or reordered. A batch the
database *refuses* (a data error) is retried entry by entry; an entry refused ``RETRIES`` times
is dead-lettered (``AUDIT_WRITE_REJECTED``) and counted in ``wo_audit_dead_letters_total`` (P0).
A crash anywhere before step 4 redelivers the batch, and step 2 absorbs it.
Logs carry ids, types and positions only, never payload values (PHI).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from nats.js import JetStreamContext

from connectors.audit import AsyncStore, EntryRejected, StoreUnavailable, describe, open_store
from connectors.audit.metrics import AuditMetrics
from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import (
    H_DIRECTION,
    NATS_MSG_ID,
    DeadLetter,
    DeadLetterPublisher,
    Fault,
    RetryPolicy,
    Sleep,
    Stopping,
    egress_dead_letter,
    now_iso,
    pause,
)
from connectors.kafka_consumer import (
    consume_batches,
    consumer_class,
    group_timeouts,
    start_subscribed,
    stop_quietly,
)
from events.envelope import DomainEvent
from events.parsing import ParseError, parse_event
from events.registry import requires_audit, type_requires_audit
from events.subjects import DOMAIN_TOPICS
from pipeline.settings import Settings
from tables.audit_chain import EntryFields, format_ts

log = logging.getLogger(__name__)

AUDIT = "audit"
REJECTED = "AUDIT_WRITE_REJECTED"
RETRIES = 5  # §1.4: a refused entry is dead-lettered after 5 attempts
_BACKOFF = RetryPolicy(attempts=1_000_000, base_seconds=0.25, max_seconds=10.0)
_REJECT_BACKOFF = RetryPolicy(attempts=RETRIES, base_seconds=0.2, max_seconds=2.0)


def entry_fields(event: DomainEvent) -> EntryFields:
    """What the audit entry records about an event (its canonical JSON included)."""
    actor = event.actor
    return EntryFields(
        tenant_id=event.tenantId,
        event_id=event.id,
        event_type=event.type,
        event_version=event.version,
        actor_id=actor.id,
        actor_type=str(actor.type),
        actor_role=actor.role,
        event_ts=format_ts(event.timestamp),
        event_json=event.canonical_bytes().decode("utf-8"),
    )


def plainly_not_audited(raw: bytes) -> bool:
    """True only when unparseable bytes are a JSON object saying ``auditRequired: false`` and
    not naming a type the catalog marks "Audit Required: Yes"."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not (isinstance(meta, dict) and meta.get("auditRequired") is False):
        return False
    return not type_requires_audit(obj.get("type"))


@dataclass(slots=True)
class _Item:
    record: ConsumerRecord
    fields: EntryFields


@dataclass
class WriterStats:
    """Counters for tests and health output."""

    batches: int = 0
    appended: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    commits: int = 0
    db_retries: int = 0
    started_at: float = field(default_factory=time.time)


class AuditWriter:
    """Consumes the domain topics into the audit store until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: AsyncStore,
        js: JetStreamContext,
        metrics: AuditMetrics,
        stop: asyncio.Event,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not settings.kafka_bootstrap:
            raise ValueError("the audit writer needs a Kafka bootstrap address")
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._stop = stop
        self._sleep = sleep
        self._dead_letters = DeadLetterPublisher(
            js, settings, BridgeMetrics(), sleep=sleep, stop=stop
        )
        self._consumer: AIOKafkaConsumer | None = None
        self.stats = WriterStats()

    # -- consumer lifecycle ----------------------------------------------------------------

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self._settings
        return consumer_class(s)(
            *DOMAIN_TOPICS.values(),
            bootstrap_servers=s.kafka_bootstrap,
            client_id="wo-stream-audit-writer",
            group_id=s.audit_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **group_timeouts(s.audit_session_timeout_ms),
            # A database outage may last: the heartbeat keeps the membership meanwhile.
            max_poll_interval_ms=86_400_000,
            max_poll_records=s.audit_batch_size,
            metadata_max_age_ms=30_000,
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
                            list(DOMAIN_TOPICS.values()),
                            partitions=self._settings.partitions,
                        )
                    await consume_batches(
                        self._consumer,
                        self._stop,
                        max_records=self._settings.audit_batch_size,
                        handle=self.handle_batch,
                    )
                    failures = 0
                except Stopping:
                    break
                except Exception as exc:  # broker trouble or a bug: rebuild, never commit early
                    failures += 1
                    log.warning(
                        "audit writer error %s; re-reading from the last commit",
                        type(exc).__name__,
                        exc_info=not isinstance(exc, KafkaError),
                    )
                    await self._drop_consumer()
                    try:
                        await pause(_BACKOFF.delay(failures), self._stop, self._sleep)
                    except Stopping:
                        break
        finally:
            await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        await stop_quietly(consumer)

    # -- one batch -------------------------------------------------------------------------

    async def handle_batch(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Append, dead-letter, then commit one ``getmany`` result."""
        first_seen = now_iso()
        items: list[_Item] = []
        letters: list[DeadLetter] = []
        for records in batches.values():
            for record in records:
                outcome = self._classify(record)
                if isinstance(outcome, EntryFields):
                    items.append(_Item(record, outcome))
                elif isinstance(outcome, Fault):
                    letters.append(self._letter(record, first_seen, outcome, 0))
                else:
                    self.stats.skipped += 1
        rejected = await self._write(consumer, items)
        for item, attempts in rejected:
            fault = Fault(
                REJECTED, detail="database refused the entry", event_id=item.fields.event_id,
                event_type=item.fields.event_type, tenant_id=item.fields.tenant_id,
            )  # fmt: skip
            letters.append(self._letter(item.record, first_seen, fault, attempts))
        await self._dead_letters.publish(letters)
        for letter in letters:
            self._metrics.dead_letters.labels(letter.reason).inc()
            log.error(
                "P0: audit-required message dead-lettered: reason=%s subject=%s id=%s",
                letter.reason, letter.subject, letter.headers.get("wo-dlq-event-id", "-"),
            )  # fmt: skip
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
            # Partitions moved: the new owner re-reads from the last commit; the store's
            # idempotence turns that into no-ops.
            log.warning("audit offset commit failed (%s)", type(exc).__name__)
        self.stats.batches += 1
        self._metrics.last_commit.set(time.time())

    def _classify(self, record: ConsumerRecord) -> EntryFields | Fault | None:
        raw = record.value if isinstance(record.value, bytes) else b""
        parsed = parse_event(raw, max_bytes=self._settings.max_payload_bytes)
        if isinstance(parsed, ParseError):
            return None if plainly_not_audited(raw) else Fault.from_parse_error(parsed)
        if not requires_audit(parsed):
            return None
        try:
            return entry_fields(parsed)
        except (TypeError, ValueError) as exc:
            # e.g. a value orjson cannot write back: a dead letter, not a batch retried forever
            return Fault("UNSERIALIZABLE", rule=type(exc).__name__,
                         detail="event cannot be written canonically",
                         event_id=parsed.id, event_type=parsed.type,
                         tenant_id=parsed.tenantId)  # fmt: skip

    def _letter(
        self, record: ConsumerRecord, first_seen: str, fault: Fault, attempts: int
    ) -> DeadLetter:
        letter = egress_dead_letter(
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
        letter.direction = AUDIT
        letter.headers[H_DIRECTION] = AUDIT
        letter.headers[NATS_MSG_ID] = f"dlq:audit:{record.topic}:{record.partition}:{record.offset}"
        return letter

    async def _write(
        self, consumer: AIOKafkaConsumer, items: list[_Item]
    ) -> list[tuple[_Item, int]]:
        """Append ``items`` in one transaction, retrying while the database is unavailable.

        Returns the items the database refused ``RETRIES`` times, with their attempt count.
        """
        if not items:
            return []
        try:
            await self._append_until_done([i.fields for i in items], consumer)
            return []
        except EntryRejected:
            self._metrics.write_failures.labels("rejected").inc()
            log.warning("audit batch of %d refused by the database; writing one by one", len(items))
        rejected: list[tuple[_Item, int]] = []
        for item in items:  # in order: a refused entry leaves a hole, later ones keep order
            for attempt in range(1, RETRIES + 1):
                try:
                    await self._append_until_done([item.fields], consumer)
                    break
                except EntryRejected:
                    self._metrics.write_failures.labels("rejected").inc()
                    if attempt == RETRIES:
                        rejected.append((item, attempt))
                    else:
                        await pause(_REJECT_BACKOFF.delay(attempt), self._stop, self._sleep)
        return rejected

    async def _append_until_done(
        self, fields: Sequence[EntryFields], consumer: AIOKafkaConsumer
    ) -> None:
        """One append transaction; while the store is unavailable: pause, back off, retry."""
        failures = 0
        paused: set[TopicPartition] = set()
        try:
            while True:
                try:
                    result = await self._store.call(self._store.store.append, fields)
                    break
                except StoreUnavailable as exc:
                    failures += 1
                    self.stats.db_retries += 1
                    self._metrics.up.set(0)
                    self._metrics.write_failures.labels("unavailable").inc()
                    if failures == 1 or failures % 10 == 0:
                        log.error("audit store unavailable (%s); consumption paused, retry %d",
                                  exc, failures)  # fmt: skip
                    assigned = consumer.assignment()
                    consumer.pause(*assigned)
                    paused |= set(assigned)
                    await pause(_BACKOFF.delay(failures), self._stop, self._sleep)
        finally:
            if paused:
                consumer.resume(*(paused & consumer.assignment()))
        if failures:
            log.warning("audit store available again after %d retries", failures)
        self._metrics.up.set(1)
        self._metrics.appended.inc(result.appended)
        self._metrics.duplicates.inc(result.duplicates)
        self.stats.appended += result.appended
        self.stats.duplicates += result.duplicates


# -- process entry points ----------------------------------------------------------------------


async def run_audit_writer(
    settings: Settings, *, stop: asyncio.Event, metrics: AuditMetrics | None = None
) -> None:
    """Run the writer and the periodic integrity check until ``stop`` is set."""
    from connectors.jetstream import connect_nats
    from pipeline.audit_verify import IntegrityChecker, load_signer

    if not settings.nats_url or not settings.kafka_bootstrap:
        raise ValueError("the audit writer needs WO_NATS_URL and WO_KAFKA_BOOTSTRAP")
    metrics = metrics or AuditMetrics()
    signer = load_signer(settings)
    nc, js = await connect_nats(settings.nats_url, name="wo-stream-audit")
    write_store = AsyncStore(open_store(settings))
    check_store = AsyncStore(open_store(settings))
    log.info("audit writer: store %s, group %s", describe(settings), settings.audit_group)
    writer = AuditWriter(settings, store=write_store, js=js, metrics=metrics, stop=stop)
    checker = IntegrityChecker(
        settings, store=check_store, signer=signer, js=js, metrics=metrics, stop=stop
    )
    try:
        await asyncio.gather(writer.run(), checker.run())
    finally:
        await write_store.close()
        await check_store.close()
        await nc.drain()


def serve_audit_writer(settings: Settings) -> int:
    """Blocking entry for ``python pipeline.py audit writer``: runs until SIGTERM/SIGINT."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        metrics = AuditMetrics()
        if settings.audit_metrics_port:
            from prometheus_client import start_http_server

            start_http_server(
                settings.audit_metrics_port, settings.bridge_metrics_host, metrics.registry
            )
        await run_audit_writer(settings, stop=stop, metrics=metrics)

    asyncio.run(runner())
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(serve_audit_writer(Settings()))
