"""Helpers of the bridge tests: stacks, valid events, publishing, reading Kafka and the DLQ."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from connectors.dead_letter import publish_pipelined
from connectors.embedded import EmbeddedStack
from connectors.jetstream import DLQ_SUBJECTS, connect_nats, ensure_streams
from connectors.kafka_topics import bridge_topics, ensure_topics
from events.envelope import DomainEvent
from events.factory import make_event
from pipeline.settings import Settings

BASE_TIME = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
STATUSES = ("DRAFT", "PLANNED", "SCHEDULED", "IN_PROGRESS", "PENDING_REVIEW", "APPROVED")


def bridge_settings(stack: EmbeddedStack, **overrides: Any) -> Settings:
    """Settings for a bridge on ``stack``: quick retries, no HTTP server, fast group join."""
    values: dict[str, Any] = {
        "nats_url": stack.nats_url,
        "kafka_bootstrap": stack.kafka_bootstrap,
        "data_dir": stack.data_dir,
        "bridge_metrics_port": 0,
        "kafka_retry_base_seconds": 0.2,
        "kafka_retry_max_seconds": 1.0,
        "kafka_request_timeout_ms": 2000,
        "egress_session_timeout_ms": 6000,
    }
    values.update(overrides)
    return Settings(**values)


async def provision(settings: Settings) -> None:
    """Streams and topics, as a deployment's provisioning step would create them."""
    assert settings.nats_url and settings.kafka_bootstrap
    nc, js = await connect_nats(settings.nats_url, max_reconnect_attempts=1)
    try:
        await ensure_streams(js, settings)
    finally:
        await nc.close()
    await ensure_topics(settings.kafka_bootstrap, bridge_topics(settings), partitions=8)


def status_event(
    tenant: str, work_order: str, version: int, *, at: datetime | None = None
) -> DomainEvent:
    """A valid work_order.status_changed, the version counting the work order's events."""
    return make_event(
        "work_order.status_changed",
        {
            "workOrderId": work_order,
            "previousStatus": STATUSES[(version - 1) % len(STATUSES)],
            "newStatus": STATUSES[version % len(STATUSES)],
            "reason": None,
            "guardsEvaluated": [],
            "guardsFailed": [],
            "version": version,
        },
        tenant_id=tenant,
        timestamp=at or BASE_TIME + timedelta(seconds=version),
    )


def interleaved_events(tenant: str, keys: int, total: int) -> list[DomainEvent]:
    """``total`` events over ``keys`` work orders, round-robin-ish with a stride."""
    work_orders = [str(uuid.uuid4()) for _ in range(keys)]
    versions = [0] * keys
    out = []
    for i in range(total):
        k = (i * 7919) % keys  # a stride co-prime with keys: neighbours are different keys
        versions[k] += 1
        out.append(status_event(tenant, work_orders[k], versions[k]))
    return out


async def publish(
    js: JetStreamContext,
    items: Iterable[tuple[str, bytes, dict[str, str] | None]],
    *,
    stream: str = "WO_EVENTS",
    chunk: int = 1000,
) -> list[int]:
    """Publish in order (pipelined); return the stream sequences; fail on any error."""
    seqs: list[int] = []
    batch: list[tuple[str, bytes, dict[str, str]]] = []

    async def flush() -> None:
        results = await publish_pipelined(js, batch, stream=stream, timeout=10)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            seqs.append(result.seq)
        batch.clear()

    for subject, data, headers in items:
        batch.append((subject, data, dict(headers or {})))
        if len(batch) >= chunk:
            await flush()
    if batch:
        await flush()
    return seqs


def as_messages(events: Iterable[DomainEvent]) -> list[tuple[str, bytes, dict[str, str]]]:
    return [(e.subject, e.canonical_bytes(), {"Nats-Msg-Id": e.id}) for e in events]


@dataclass(frozen=True)
class Rec:
    """One Kafka record as the tests see it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int
    headers: dict[str, bytes]


async def read_topics(
    bootstrap: str,
    topics: list[str],
    *,
    until: Callable[[list[Rec]], bool],
    within: float = 60.0,
    where: Callable[[Rec], bool] | None = None,
    linger: float = 0.0,
) -> list[Rec]:
    """All records of ``topics`` from the start (manual assignment, no group), in partition
    order, until ``until(records)`` holds (then ``linger`` seconds more, to catch stragglers);
    raises TimeoutError with the count otherwise."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata partitions_for_topic answers from
        tps = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Rec] = []
        deadline = time.monotonic() + within
        settled_at: float | None = None
        while True:
            if settled_at is None and until(out):
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() >= settled_at + linger:
                return out
            if settled_at is None and time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {within}s; {len(out)} records read")
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batches.items():
                for r in records:
                    rec = Rec(
                        tp.topic, tp.partition, r.offset, r.key, r.value, r.timestamp,
                        dict(r.headers or ()),
                    )  # fmt: skip
                    if where is None or where(rec):
                        out.append(rec)
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Dlq:
    """One dead letter as the tests see it."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return self.headers.get("wo-dlq-reason", "")


async def read_dlq(
    js: JetStreamContext,
    *,
    subject_filter: str = DLQ_SUBJECTS,
    stream: str = "WO_DLQ",
    until: Callable[[list[Dlq]], bool] | None = None,
    within: float = 30.0,
) -> list[Dlq]:
    """The dead letters under ``subject_filter``; polls until ``until`` holds if given."""
    deadline = time.monotonic() + within
    while True:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=subject_filter,
            inactive_threshold=10.0,
        )
        sub = await js.pull_subscribe(subject_filter, stream=stream, config=config)
        out: list[Dlq] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=0.5)
                except TimeoutError:
                    break
                out += [
                    Dlq(m.subject, m.metadata.sequence.stream, m.data, dict(m.headers or {}))
                    for m in msgs
                ]
                if msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        if until is None or until(out):
            return out
        if time.monotonic() > deadline:
            raise TimeoutError(f"DLQ condition not met within {within}s; {len(out)} dead letters")
        await asyncio.sleep(0.2)


async def wait_for(
    condition: Callable[[], Any], *, within: float = 30.0, interval: float = 0.05, what: str = ""
) -> None:
    """Poll a sync or async condition until truthy."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(interval)
