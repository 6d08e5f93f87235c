"""The worker's Runner on in-memory topics and tables (no Faust, no broker), for fast tests.

Records wait in one FIFO queue per (topic, partition), as in Kafka; ``drain`` processes them in
a seeded random interleaving of the queues, like concurrently running agents would.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from events.envelope import DomainEvent
from pipeline.agents.runner import Runner
from pipeline.metrics import WorkerMetrics
from pipeline.timers import Clock, tick_records
from pipeline.topics import DOMAIN, WorkerTopics, partition_of
from tables.stages import STAGES
from tests.apps.worker_scenario import topic_record

DERIVED, FORWARDS, CONTROL = "wo.derived", "mem-forwards-repartition", "wo.control.clock"
DEAD_LETTERS = "wo.dlq.worker"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp: float | None = None


@dataclass
class MemTopic:
    name: str
    layer: MemoryLayer

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, *, key=None, value=None, partition=None, timestamp=None, headers=None):
        self.layer.append(self.name, partition, key, value, list(headers or []), timestamp)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class MemoryLayer:
    partitions: int
    seed: int = 0
    queues: dict[tuple[str, int], deque[Message]] = field(default_factory=dict)
    log: dict[str, list[Message]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.tables: dict[str, dict[str, Any]] = {s.name: {} for s in STAGES}
        self.clock_table: dict[str, int] = {}
        topics = WorkerTopics(
            domain={name: MemTopic(name, self) for name in DOMAIN},  # type: ignore[misc]
            derived=MemTopic(DERIVED, self),  # type: ignore[arg-type]
            forwards=MemTopic(FORWARDS, self),  # type: ignore[arg-type]
            control=MemTopic(CONTROL, self),  # type: ignore[arg-type]
            dead_letters=MemTopic(DEAD_LETTERS, self),  # type: ignore[arg-type]
        )
        actives = [SimpleNamespace(topic=CONTROL, partition=p) for p in range(self.partitions)]
        app = SimpleNamespace(assignor=SimpleNamespace(assigned_actives=lambda: actives))
        self.runner = Runner(
            app,  # type: ignore[arg-type]
            topics=topics,
            tables=self.tables,
            clock_table=self.clock_table,
            clock=Clock("control"),
            metrics=WorkerMetrics.create(),
            partitions=self.partitions,
        )
        self.handlers = {DERIVED: self.runner.on_event, FORWARDS: self.runner.on_forward,
                         CONTROL: self.runner.on_tick}  # fmt: skip

    def append(self, topic, partition, key, value, headers, timestamp=None) -> None:
        if partition is None:
            partition = partition_of(key.decode(), self.partitions)
        log = self.log.setdefault(topic, [])
        message = Message(topic, partition, len(log), key, value, headers, timestamp)
        log.append(message)
        self.queues.setdefault((topic, partition), deque()).append(message)

    def produce(self, event: DomainEvent) -> None:
        topic, key, value, _, headers = topic_record(event)
        self.append(topic, None, key, value, headers)

    def tick(self, now: datetime) -> None:
        for partition, value in tick_records(now, self.partitions):
            self.append(CONTROL, partition, None, value, [])

    async def drain(self, batch: int = 1) -> None:
        """Process every queued record; ``batch`` > 1: up to that many records of one queue
        per runner batch (as the worker's agents do), each batch from a random queue."""
        plans = {DERIVED: self.runner._plan_event, FORWARDS: self.runner._plan_forward,
                 CONTROL: self.runner._plan_tick}  # fmt: skip
        while True:
            # nothing reads the dead letters (as in the worker)
            ready = [q for (topic, _), q in self.queues.items() if q and topic != DEAD_LETTERS]
            if not ready:
                return
            queue = self.random.choice(ready)
            if batch == 1:
                message = queue.popleft()
                handler = self.handlers.get(message.topic, self.runner.on_event)
                await handler(SimpleNamespace(message=message))
                continue
            topic = queue[0].topic
            size = 1 if topic == CONTROL else self.random.randint(1, batch)  # ticks: one
            taken = [queue.popleft() for _ in range(min(size, len(queue)))]
            events = [SimpleNamespace(message=m) for m in taken]
            await self.runner._process(events, plans.get(topic, self.runner._plan_event))

    def derived(self) -> dict[str, bytes]:
        return {m.headers[0][1].decode(): m.value for m in self.log.get(DERIVED, [])}
