"""Kafka records the worker writes: derived events, repartitioned facts and events, dead letters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from events.envelope import DomainEvent
from events.ids import unix_ms
from events.keys import record_key
from events.subjects import subject_for
from pipeline.topics import (
    H_DLQ_AT,
    H_DLQ_DETAIL,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_DLQ_TABLE,
    H_EVENT_ID,
    H_KIND,
    H_STAGES,
    H_SUBJECT,
    H_TENANT,
    H_TYPE,
    H_VERSION,
    partition_of,
)
from tables.base import Fact, Forward
from tables.stages import BY_NAME

KIND_FACT = "fact"
KIND_EVENT = "event"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Record:
    """One record to send: the topic is chosen by the caller (derived or repartition)."""

    key: bytes | None
    value: bytes
    partition: int
    headers: Headers
    timestamp_ms: int | None = None

    @property
    def timestamp(self) -> float | None:
        # Faust takes seconds and truncates ``ts * 1000``: the half millisecond keeps it exact.
        return None if self.timestamp_ms is None else (self.timestamp_ms + 0.5) / 1000


def derived_record(event: DomainEvent, partitions: int) -> Record:
    """A derived event as the bridge would mirror it: canonical bytes, entity key, event time."""
    key = record_key(event)
    return Record(
        key=key.encode(),
        value=event.canonical_bytes(),
        partition=partition_of(key, partitions),
        headers=[
            (H_EVENT_ID, event.id.encode()),
            (H_TYPE, event.type.encode()),
            (H_VERSION, event.version.encode()),
            (H_TENANT, event.tenantId.encode()),
            (H_SUBJECT, subject_for(event.tenantId, event.type).encode()),
        ],
        timestamp_ms=unix_ms(event.timestamp),
    )


def fact_record(forward: Forward, partitions: int) -> Record:
    """A fact for ``forward.stage`` under ``forward.key`` (``fact.to_dict()`` as JSON)."""
    return Record(
        key=forward.key.encode(),
        value=orjson.dumps(forward.fact.to_dict()),
        partition=partition_of(forward.key, partitions),
        headers=[(H_STAGES, forward.stage.encode()), (H_KIND, KIND_FACT.encode())],
        timestamp_ms=unix_ms(forward.fact.at),
    )


def event_record(
    key: str, stages: Iterable[str], raw: bytes, at_ms: int, partitions: int
) -> Record:
    """An input event re-keyed to ``key`` for ``stages`` (its bytes unchanged)."""
    return Record(
        key=key.encode(),
        value=raw,
        partition=partition_of(key, partitions),
        headers=[(H_STAGES, ",".join(stages).encode()), (H_KIND, KIND_EVENT.encode())],
        timestamp_ms=at_ms,
    )


#: Longest ``wo-dlq-detail`` header kept (the reason is machine-readable on its own).
DETAIL_MAX = 500


def dead_letter_record(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None,
    timestamp_ms: int | None,
    reason: str,
    detail: str,
    table: str | None = None,
    dead_lettered_ms: int | None = None,
) -> Record:
    """A source record the worker could not use, kept whole for a replay after a fix.

    Key, value, timestamp and headers are the source record's (the bytes are never parsed
    again here); the ``wo-dlq-*`` headers add the reason (machine-readable), the detail (names
    fields and rules, never payload values), the source position, when it was dead-lettered
    (the record's own timestamp is the event time, which says nothing about how long ago the
    other tables applied it) and, for a record one table refused, that table. The partition
    number is the source's, so a replay keeps key order.
    """
    items = list(headers.items() if isinstance(headers, Mapping) else headers or [])
    extra = [
        (H_DLQ_REASON, reason.encode()),
        (H_DLQ_DETAIL, detail[:DETAIL_MAX].encode()),
        (H_DLQ_SOURCE, f"{topic}/{partition}/{offset}".encode()),
    ]
    if table is not None:
        extra.append((H_DLQ_TABLE, table.encode()))
    if dead_lettered_ms is not None:
        extra.append((H_DLQ_AT, str(dead_lettered_ms).encode()))
    return Record(
        key=key,
        value=value or b"",
        partition=partition,
        headers=[(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in items] + extra,
        timestamp_ms=timestamp_ms,
    )


def header_map(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None) -> dict[str, str]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in items}


def decode_fact(stage: str, value: bytes) -> Fact:
    """A repartitioned fact for ``stage``; the stage's fact models say which (by ``kind``)."""
    models = BY_NAME[stage].facts
    data = orjson.loads(value)
    if len(models) == 1:
        return models[0].from_dict(data)
    for model in models:
        if data.get("kind") == model.model_fields["kind"].default:
            return model.from_dict(data)
    raise ValueError(f"no fact model of {stage} for kind {data.get('kind')!r}")
