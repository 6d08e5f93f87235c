"""Bridge logic without brokers: classification, retry policy, ordered retries, dead-letter form."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.msg import Msg

from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import (
    INVALID_DLQ_SUBJECT,
    BridgeReason,
    Fault,
    RetryPolicy,
    Stopping,
    dead_letter_subject,
    egress_dead_letter,
    ingress_dead_letter,
    pause,
    replay_headers,
)
from connectors.ingress import Ingress, Route, _Item, ack_position, classify
from events.keys import record_key
from events.parsing import ParseError
from pipeline.settings import Settings
from tests.bad_inputs import TEST_MAX_PAYLOAD, corpus
from tests.bridge_testkit import status_event

TENANT = "tenant_unit"


def _template():
    return status_event(TENANT, str(uuid.uuid4()), 1)


# -- classification ------------------------------------------------------------------------


def test_corpus_has_at_least_twenty_distinct_bad_messages() -> None:
    bad = corpus(TENANT, _template())
    assert len(bad) >= 20
    assert len({b.name for b in bad}) == len(bad)
    assert len({(b.subject, b.payload) for b in bad}) == len(bad)
    assert len({b.reason for b in bad}) == 11  # every reason a message itself can cause


@pytest.mark.parametrize("bad", corpus(TENANT, _template()), ids=lambda b: b.name)
def test_classify_rejects_each_bad_message_with_its_reason(bad) -> None:
    outcome = classify(bad.subject, bad.payload, stream_seq=7, max_bytes=TEST_MAX_PAYLOAD)
    assert isinstance(outcome, Fault), bad.name
    assert outcome.reason == bad.reason
    if bad.field is not None:
        assert outcome.field == bad.field
    if bad.rule is not None:
        assert outcome.rule == bad.rule
    # Nothing from the input's values ends up in the texts that go to logs and headers.
    for text in (outcome.detail or "", outcome.field or "", outcome.rule or ""):
        assert "EXPLODED" not in text and "tenant a" not in text


def test_classify_routes_a_valid_event() -> None:
    event = _template()
    outcome = classify(event.subject, event.canonical_bytes(), stream_seq=42, max_bytes=1 << 20)
    assert isinstance(outcome, Route)
    assert outcome.topic == "wo.workorder"
    assert outcome.key == record_key(event).encode()
    assert outcome.timestamp_ms == int(event.timestamp.timestamp() * 1000)
    assert dict(outcome.headers) == {
        "wo-event-id": event.id.encode(),
        "wo-type": b"work_order.status_changed",
        "wo-version": b"1.0",
        "wo-tenant": TENANT.encode(),
        "wo-subject": event.subject.encode(),
        "wo-stream-seq": b"42",
    }


def test_spoofing_is_reported_with_the_claimed_ids_but_routed_by_subject_tenant() -> None:
    bad = next(b for b in corpus(TENANT, _template()) if b.name == "tenant_spoofing")
    fault = classify(bad.subject, bad.payload, stream_seq=1, max_bytes=1 << 20)
    assert isinstance(fault, Fault) and fault.reason == BridgeReason.TENANT_MISMATCH
    assert fault.tenant_id == f"{TENANT}_x"
    assert bad.dead_letter_subject == f"wo_dlq.{TENANT}.workorder.status_changed"


# -- retry policy ----------------------------------------------------------------------------


def test_retry_policy_is_exponential_and_spends_five_attempts() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert policy.delay(9) == 16
    assert not policy.exhausted(4) and policy.exhausted(5)
    settings = Settings(kafka_retry_base_seconds=0.5, kafka_retry_max_seconds=3)
    assert [RetryPolicy.from_settings(settings).delay(n) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 3]


async def test_pause_raises_stopping_as_soon_as_stop_is_set() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(Stopping):
        await asyncio.wait_for(pause(60, stop), 5)


# -- ordered retries (fake producer) ---------------------------------------------------------


@dataclass
class _FakeBatch:
    values: list[bytes]


class _FakeWriter:
    """Accepts batches of at most ``per_batch`` records; fails the first ``failures`` sends."""

    def __init__(self, failures: int, per_batch: int = 3) -> None:
        self.failures = failures
        self.per_batch = per_batch
        self.log: list[list[bytes]] = []  # what the "broker" stored, in order
        self.sends = 0

    def build(self, records):
        values = [value for _, value in records[: self.per_batch]]
        return _FakeBatch(values), len(values)

    async def send(self, topic: str, partition: int, batch: _FakeBatch) -> None:
        self.sends += 1
        if self.failures > 0:
            self.failures -= 1
            raise TimeoutError("broker away")
        self.log.append(batch.values)

    async def recover(self) -> None:
        pass


def _ingress(writer: Any, sleeps: list[float], **settings: Any) -> Ingress:
    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)

    return Ingress(
        nc=None,  # type: ignore[arg-type]
        js=None,  # type: ignore[arg-type]
        writer=writer,
        settings=Settings(**settings),
        metrics=BridgeMetrics(),
        stop=asyncio.Event(),
        sleep=fake_sleep,
    )


def _items(n: int) -> list[_Item]:
    route = Route("wo.workorder", b"k", 0, [], "workorder", "id", "work_order.created", "t")
    return [_Item(Msg(None, data=f"m{i}".encode()), i, route) for i in range(n)]  # type: ignore[arg-type]


async def test_failed_batches_are_retried_in_order_before_later_ones() -> None:
    writer, sleeps = _FakeWriter(failures=3), []
    ingress = _ingress(writer, sleeps)
    exhausted = await ingress._write_partition("wo.workorder", 0, _items(8))
    assert exhausted == []
    assert [v for batch in writer.log for v in batch] == [f"m{i}".encode() for i in range(8)]
    assert sleeps == [1, 2, 4]  # exponential backoff between the attempts
    assert ingress.stats.kafka_retries == 3
    assert ingress._metrics.value("wo_bridge_kafka_retries_total") == 3


async def test_retry_budget_spent_dead_letters_the_batch_with_its_attempts() -> None:
    writer, sleeps = _FakeWriter(failures=5), []
    ingress = _ingress(writer, sleeps)
    items = _items(5)
    exhausted = await ingress._write_partition("wo.workorder", 0, items)
    # The first batch (3 records) failed 5 times; the rest went through afterwards.
    assert exhausted == items[:3]
    assert {it.attempts for it in exhausted} == {5}
    assert {it.failure for it in exhausted} == {"TimeoutError"}
    assert writer.log == [[b"m3", b"m4"]]
    assert sleeps == [1, 2, 4, 8]


# -- dead-letter form ------------------------------------------------------------------------


def test_dead_letter_subject_only_from_validated_tokens() -> None:
    assert dead_letter_subject("wo.t1.workorder.created") == "wo_dlq.t1.workorder.created"
    for junk in ("wo.t1.bogus.created", "wo.*.workorder.created", "wo.>", "wo.t 1.x.y", None):
        assert dead_letter_subject(junk) == INVALID_DLQ_SUBJECT


def test_ingress_dead_letter_keeps_original_and_renames_control_headers() -> None:
    headers = {
        "Nats-Msg-Id": "orig-id",
        "Nats-Expected-Last-Sequence": "5",
        "wo-dlq-reason": "FORGED",
        "traceparent": "00-ab-cd-01",
    }
    error = ParseError("SCHEMA_VIOLATION", "data.version", "data.version: must be an integer",  # type: ignore[arg-type]
                       rule="int_type")  # fmt: skip
    letter = ingress_dead_letter(
        subject="wo.t1.workorder.status_changed",
        payload=b"\x00raw",
        headers=headers,
        stream="WO_EVENTS",
        stream_seq=17,
        published_at=None,
        first_seen="2026-03-02T08:00:00.000Z",
        fault=Fault.from_parse_error(error),
        attempts=0,
    )
    h = letter.headers
    assert letter.subject == "wo_dlq.t1.workorder.status_changed"
    assert letter.payload == b"\x00raw"
    assert h["traceparent"] == "00-ab-cd-01"
    assert h["wo-orig-Nats-Msg-Id"] == "orig-id"
    assert h["wo-orig-Nats-Expected-Last-Sequence"] == "5"
    assert h["wo-orig-wo-dlq-reason"] == "FORGED"
    assert h["wo-dlq-reason"] == "SCHEMA_VIOLATION"
    assert h["wo-dlq-field"] == "data.version" and h["wo-dlq-rule"] == "int_type"
    assert h["wo-dlq-attempts"] == "0" and h["wo-dlq-direction"] == "ingress"
    assert h["wo-dlq-subject"] == "wo.t1.workorder.status_changed"
    assert h["wo-dlq-stream"] == "WO_EVENTS" and h["wo-dlq-stream-seq"] == "17"
    assert h["Nats-Msg-Id"] == "dlq:WO_EVENTS:17"
    assert "Nats-Expected-Last-Sequence" not in h
    assert (letter.domain, letter.reason) == ("workorder", "SCHEMA_VIOLATION")

    back = replay_headers(h, "WO_DLQ", 99)
    assert back == {
        "traceparent": "00-ab-cd-01",
        "wo-dlq-reason": "FORGED",  # the original's own header comes back as it was
        "Nats-Msg-Id": "replay:WO_DLQ:99",
        "wo-replayed-from": "WO_DLQ:99",
    }


def test_egress_dead_letter_keeps_binary_and_odd_kafka_headers() -> None:
    letter = egress_dead_letter(
        payload=None,
        headers=[("trace", b"abc"), ("bin", b"\xff\x00"), ("bad name:", b"v")],
        topic="wo.derived",
        partition=3,
        offset=12,
        timestamp_ms=1_772_438_400_000,
        first_seen="2026-03-02T08:00:00.000Z",
        fault=Fault("INVALID_JSON", detail="input is not valid JSON"),
    )
    h = letter.headers
    assert letter.subject == INVALID_DLQ_SUBJECT and letter.payload == b""
    assert h["trace"] == "abc"
    assert h["bin-hex"] == "ff00"
    assert h["wo-kafka-header-2"] == "626164206e616d653a=v"
    assert h["Nats-Msg-Id"] == "dlq:kafka:wo.derived:3:12"
    assert h["wo-dlq-published-at"] == "2026-03-02T08:00:00.000Z"


def test_ack_position_reads_both_ack_subject_forms() -> None:
    v1 = "$JS.ACK.WO_EVENTS.wo-stream-ingress.2.1234.77.1700000000000000000.9"
    v2 = "$JS.ACK._.ACCHASH.WO_EVENTS.wo-stream-ingress.2.1234.77.1700000000000000000.9.rnd"
    for reply in (v1, v2):
        msg = Msg(None, subject="wo.t.workorder.created", reply=reply)  # type: ignore[arg-type]
        meta = msg.metadata
        expected = (meta.num_delivered, meta.sequence.stream, meta.sequence.consumer,
                    meta.num_pending)  # fmt: skip
        assert ack_position(msg) == expected == (2, 1234, 77, 9)
