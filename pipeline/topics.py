"""Kafka topics of the Faust worker: names, partitioning and their Faust declarations.

=======================================  =====================  ==================================
topic                                    key                    value
=======================================  =====================  ==================================
``wo.workorder`` ... ``wo.system``       ``{tenant}:{entity}``  event bytes (the bridge's mirror)
``wo.derived``                           ``{tenant}:{entity}``  derived event bytes (canonical)
``{app_id}-forwards-repartition``        table key              fact JSON or event bytes
``wo.control.clock``                     none                   ``{"now": epoch ms}`` tick
``wo.dlq.worker``                        the source record's    the source record's bytes, its
                                         key                    headers + ``wo-dlq-*`` headers
``{app_id}-{table}-changelog``           table key (JSON)       table value (JSON)
=======================================  =====================  ==================================

Every one of them has ``settings.partitions`` partitions and every record this worker writes
goes to the partition of the Java client's murmur2 hash of its key (:func:`partition_of`), the
same hash the bridge's ingress uses. A table key therefore lives in exactly one partition
number across all topics; the worker applies an item to a table key only while processing a
record of that partition number, so a table's changelog partition always matches its keys and
all topics are co-partitioned (Faust assigns equal partition numbers of them together).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import faust
from aiokafka.partitioner import murmur2
from faust.types import TopicT

from events.subjects import DOMAIN_TOPICS

DOMAIN: tuple[str, ...] = tuple(DOMAIN_TOPICS.values())
"""The bridge's six domain topics, ``wo.workorder`` ... ``wo.system``."""
CONTROL_CLOCK = "wo.control.clock"
DEAD_LETTERS = "wo.dlq.worker"
"""Records the worker could not use (undecodable, or refused by a table): see records.py."""

# Record headers (the ingress's names for the event ones, so both look alike downstream).
H_EVENT_ID = "wo-event-id"
H_TYPE = "wo-type"
H_VERSION = "wo-version"
H_TENANT = "wo-tenant"
H_SUBJECT = "wo-subject"
H_STAGES = "wo-stages"  # repartition records: target table(s), comma separated
H_KIND = "wo-kind"  # repartition records: "fact" or "event"
H_DLQ_REASON = "wo-dlq-reason"  # dead letters: machine-readable reason
H_DLQ_DETAIL = "wo-dlq-detail"  # dead letters: what was wrong (names fields, never values)
H_DLQ_SOURCE = "wo-dlq-source"  # dead letters: "{topic}/{partition}/{offset}"
H_DLQ_TABLE = "wo-dlq-table"  # dead letters refused by one table: its name
H_DLQ_AT = "wo-dlq-at"  # dead letters: when the worker wrote it (wall clock, epoch ms)


def forwards_topic(app_id: str) -> str:
    return f"{app_id}-forwards-repartition"


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's changelog topic name of ``table``."""
    return f"{app_id}-{table}-changelog"


@lru_cache(maxsize=262_144)
def partition_of(key: str, partitions: int) -> int:
    """Partition of ``key`` as the Java client (and aiokafka's DefaultPartitioner) picks it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class WorkerTopics:
    """The Faust topic objects the worker reads and writes."""

    domain: dict[str, TopicT]
    derived: TopicT
    forwards: TopicT
    control: TopicT
    dead_letters: TopicT

    def sources(self) -> dict[str, TopicT]:
        """Every topic an agent reads, by name."""
        return {
            **self.domain,
            self.derived.get_topic_name(): self.derived,
            self.forwards.get_topic_name(): self.forwards,
            self.control.get_topic_name(): self.control,
        }


def declare(
    app: faust.App,
    *,
    partitions: int,
    derived: str = "wo.derived",
    control: str = CONTROL_CLOCK,
    dead_letters: str = DEAD_LETTERS,
) -> WorkerTopics:
    """Declare the topics on ``app``; keys and values stay bytes (decoded by the agents).

    The domain topics and ``wo.derived`` belong to the bridge (it creates them); the
    repartition, control and dead-letter topics are the worker's own, created by Faust
    (``internal``).
    """

    def raw(name: str, *, internal: bool = False) -> TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
            internal=internal,
        )

    return WorkerTopics(
        domain={name: raw(name) for name in DOMAIN},
        derived=raw(derived),
        forwards=raw(forwards_topic(app.conf.id), internal=True),
        control=raw(control, internal=True),
        dead_letters=raw(dead_letters, internal=True),
    )
