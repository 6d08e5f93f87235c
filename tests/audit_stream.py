"""Scenario traffic for the audit writer tests: produce events to the domain topics as ingress
does, read chains back, check exactly-once and per-work-order order, read integrity events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from connectors.ingress import Route, classify
from events.envelope import DomainEvent
from events.factory import derive_event
from tests.audit_testkit import Raw
from tests.bridge_testkit import status_event

SAMPLES = Path(__file__).parent / "samples"
INTEGRITY_TYPE = "compliance.audit_trail_integrity_check"


def _sample_data(event_type: str) -> dict[str, object]:
    return json.loads((SAMPLES / f"{event_type}.json").read_text())["data"]


def scenario(tenant: str, work_orders: int, versions: int, start: int = 1) -> list[DomainEvent]:
    """Status changes (audited) per work order with, every third, a derived SLA breach (audited)
    and a derived master progress update (not audited)."""
    wos = [
        str(uuid.UUID(int=uuid.uuid5(uuid.NAMESPACE_OID, f"{tenant}{k}").int))
        for k in range(work_orders)
    ]
    out: list[DomainEvent] = []
    for v in range(start, start + versions):
        for wo in wos:
            cause = status_event(tenant, wo, v)
            out.append(cause)
            if v % 3 == 0:
                sla = {**_sample_data("work_order.sla_breached"), "workOrderId": wo}
                out.append(derive_event(cause, "work_order.sla_breached", sla, key=wo))
                mp = {
                    **_sample_data("work_order.master_progress_updated"),
                    "lastChangedChildId": wo,
                }
                out.append(derive_event(cause, "work_order.master_progress_updated", mp, key=wo))
    return out


def audited(events: Iterable[DomainEvent]) -> list[DomainEvent]:
    return [e for e in events if e.metadata.auditRequired]


async def produce(
    bootstrap: str, events: Iterable[DomainEvent], *, raw: Iterable[tuple[str, bytes]] = ()
) -> None:
    """Write events like ingress (topic, key, headers, timestamp); ``raw``: (topic, bytes) as is."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for seq, event in enumerate(events, 1):
            route = classify(
                event.subject, event.canonical_bytes(), stream_seq=seq, max_bytes=1 << 20
            )
            assert isinstance(route, Route)
            futures.append(
                await producer.send(
                    route.topic,
                    event.canonical_bytes(),
                    key=route.key,
                    headers=route.headers,
                    timestamp_ms=route.timestamp_ms,
                )
            )
        for topic, value in raw:
            futures.append(await producer.send(topic, value, key=b"x:y"))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def chain_ids(raw: Raw, tenant: str) -> list[str]:
    return [r.event_id for r in raw.rows(tenant)]


def assert_exactly_once_in_order(raw: Raw, tenant: str, expected: list[DomainEvent]) -> None:
    """Each expected event once, nothing else, seq contiguous, each work order's events in order."""
    rows = raw.rows(tenant)
    ids = [r.event_id for r in rows]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"{len(dupes)} events appear more than once"
    assert set(ids) == {e.id for e in expected}, (len(ids), len(expected))
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    per_wo: dict[str, list[tuple[int, str]]] = defaultdict(list)
    order = {e.id: i for i, e in enumerate(expected)}
    for r in rows:
        wo = orjson.loads(r.event_json)["data"]["workOrderId"]
        per_wo[wo].append((order[r.event_id], r.event_type))
    for wo, seen in per_wo.items():
        assert seen == sorted(seen), f"work order {wo} out of order"


async def integrity_events(
    js: JetStreamContext, tenant: str, stream: str = "WO_EVENTS"
) -> list[dict]:
    """Every integrity-check event of a tenant in the event stream (parsed JSON)."""
    subject = f"wo.{tenant}.compliance.audit_trail_integrity_check"
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, filter_subject=subject,
        inactive_threshold=10.0,
    )  # fmt: skip
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    out: list[dict] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                break
            out += [orjson.loads(m.data) for m in msgs]
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out
