"""The Faust side of a step: read states, send outputs, wait for acks, then write the tables.

Order of one record's processing (all under the partition's lock, so the agents of different
source topics never interleave on one table key):

1. decode the record and plan its :class:`~pipeline.agents.steps.Step` (reducers, no I/O);
2. send the step's derived events (``wo.derived``) and repartition records, and wait until the
   broker acknowledged every one of them (retrying with backoff while it refuses);
3. write the step's table values (RocksDB + changelog), without an ``await`` in between, so a
   cancelled agent writes all of them or none;
4. ack the record (manual acks): Faust commits its offset later, after flushing the producer.

Why the outputs go before the table writes: a reducer remembers every id it applied and drops
a redelivered one, so state written before its outputs were durable would, after a crash,
make the redelivered record a duplicate and its outputs would never be sent. In this order a
crash at any point either leaves no trace in the tables (the record is redelivered and its
outputs sent again: derived ids are deterministic, downstream drops the copies) or finds the
outputs already acknowledged. Acks are manual because Faust acks an event whose processing
raised or was cancelled; a record is acked only once its step is complete.

A redelivered duplicate writes its current value back (see ``steps.Planner._record``), so a
local store that was ahead of its changelog at a crash is re-published.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import faust
from faust.types import EventT, TopicT

from events.envelope import DomainEvent
from events.ids import unix_ms
from events.parsing import ParseError, parse_event
from pipeline.agents.records import (
    KIND_EVENT,
    KIND_FACT,
    Record,
    decode_fact,
    derived_record,
    event_record,
    fact_record,
    header_map,
)
from pipeline.agents.steps import Planner, Step
from pipeline.agents.timer_index import TimerIndex
from pipeline.metrics import WorkerMetrics
from pipeline.timers import Clock, parse_tick
from pipeline.topics import H_KIND, H_STAGES, WorkerTopics, partition_of
from tables.stages import BY_NAME

log = logging.getLogger(__name__)

_COUNTERS = {
    "duplicate": "duplicates",
    "late": "late",
    "expired": "expired",
    "error": "errors",
    "timer": "timer_runs",
    "deleted": "shards_deleted",
}


class Runner:
    """Processes the records of every source topic (one agent per topic calls it)."""

    def __init__(
        self,
        app: faust.App,
        *,
        topics: WorkerTopics,
        tables: dict[str, Any],
        clock_table: Any,
        clock: Clock,
        metrics: WorkerMetrics,
        partitions: int,
        retry_max_seconds: float = 10.0,
    ) -> None:
        self.app = app
        self.topics = topics
        self.tables = tables
        self.clock_table = clock_table
        self.clock = clock
        self.metrics = metrics
        self.partitions = partitions
        self.retry_max_seconds = retry_max_seconds
        self.planner = Planner(self._read, partitions=partitions)
        self.index = TimerIndex(
            (s.name for s in self.planner.timed), (s.name for s in self.planner.windowed)
        )
        self.derived_name = topics.derived.get_topic_name()
        self.control_name = topics.control.get_topic_name()
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        # (topic, partition) -> next offset after the last record fully processed here
        self.positions: dict[tuple[str, int], int] = {}
        self.inflight = 0
        self.signals: defaultdict[str, int] = defaultdict(int)

    # -- agents ------------------------------------------------------------------------------

    async def consume(self, stream: faust.StreamT, handler: str) -> None:
        """Agent body: every record of ``stream`` through ``handler``, acked when complete."""
        manual = stream.noack()
        handle = getattr(self, handler)
        async for event in manual.events():
            message = event.message
            try:
                async with self._locks[message.partition]:
                    await handle(event)
            except Exception as exc:
                # Reducer errors are handled per item (steps.Planner); anything else is a bug
                # or a broken store: stop the worker loudly, the record stays unacked.
                log.exception("processing %s[%d]@%d failed", message.topic,
                              message.partition, message.offset)  # fmt: skip
                await self.app.crash(exc)
                raise
            await manual.ack(event)
            self.positions[message.topic, message.partition] = message.offset + 1

    async def on_event(self, event: EventT) -> None:
        """A domain topic or ``wo.derived`` record: an event for the tables."""
        message = event.message
        parsed = self._parse(message.value, message.topic)
        if parsed is None:
            return
        p = message.partition
        now = self._now(p, parsed.timestamp)
        derived_source = message.topic == self.derived_name
        step = self.planner.event(parsed, p, now, derived_source=derived_source)
        reroutes = [
            event_record(key, stages, message.value, unix_ms(parsed.timestamp), self.partitions)
            for key, stages in step.reroutes.items()
        ]
        await self._complete(step, reroutes)
        self.metrics.events.labels(message.topic, parsed.type).inc()

    async def on_forward(self, event: EventT) -> None:
        """A repartition record: a fact or an event for the table key it is keyed by."""
        message = event.message
        headers = header_map(message.headers)
        stages = [s for s in headers.get(H_STAGES, "").split(",") if s in BY_NAME]
        kind = headers.get(H_KIND)
        key = message.key.decode() if isinstance(message.key, bytes) else None
        if not stages or key is None or kind not in (KIND_FACT, KIND_EVENT):
            self._invalid(message.topic, "repartition record without table, key or kind")
            return
        p = message.partition
        if kind == KIND_EVENT:
            parsed = self._parse(message.value, message.topic)
            if parsed is None:
                return
            step = self.planner.rerouted(parsed, stages, key, p, self._now(p, parsed.timestamp))
        else:
            try:
                fact = decode_fact(stages[0], message.value)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                self._invalid(message.topic, f"undecodable fact for {stages[0]}: {exc}")
                return
            step = self.planner.fact(stages[0], key, fact, p, self._now(p, fact.at))
        await self._complete(step)

    async def on_tick(self, event: EventT) -> None:
        """A control record: move the partition's clock and run its due timers."""
        message = event.message
        try:
            at = parse_tick(message.value)
        except ValueError:
            self._invalid(message.topic, "not a clock tick")
            return
        p = message.partition
        self._load_clock(p)
        now, persist_ms = self.clock.advance(p, at)
        if not self.index.built(p):
            self._build_index()
        now_ms = unix_ms(now)
        step = self.planner.timers(p, now, self.index.due(p, now_ms), self.index.shards(p))
        await self._complete(step)
        if persist_ms is not None:
            self.clock_table[str(p)] = persist_ms
        self.metrics.clock.set(now_ms / 1000)

    async def send_ticks(self, at: Any) -> None:
        """Wall clock: one tick per partition (the leader's timer)."""
        from pipeline.timers import tick_value

        value = tick_value(at)
        for p in range(self.partitions):
            await self.topics.control.send(value=value, partition=p)

    def on_rebalance(self) -> None:
        """Partitions moved: cached clocks and the timer index are reloaded on next use."""
        self.clock.forget()
        self.index.clear()

    # -- internals ---------------------------------------------------------------------------

    def _read(self, table: str, key: str) -> dict[str, Any] | None:
        return self.tables[table].get(key)

    def _load_clock(self, partition: int) -> None:
        if not self.clock.known(partition):
            # Read inside the partition's stream context: the value lives in its store.
            self.clock.restore(partition, self.clock_table.get(str(partition)))

    def _now(self, partition: int, fallback: Any) -> Any:
        self._load_clock(partition)
        return self.clock.now(partition, fallback)

    def _parse(self, value: bytes | None, topic: str) -> DomainEvent | None:
        parsed = parse_event(value or b"")
        if isinstance(parsed, ParseError):
            self._invalid(topic, f"{parsed.reason}: {parsed.message}")
            return None
        return parsed

    def _invalid(self, topic: str, why: str) -> None:
        log.warning("skipping a record of %s: %s", topic, why)
        self.metrics.invalid.labels(topic).inc()
        self.signals["invalid"] += 1

    def _build_index(self) -> None:
        actives = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.control_name
        }

        def entries() -> Iterable[tuple[int, str, str, int | None]]:
            for name in self.index.timed | self.index.windowed:
                timed = name in self.index.timed
                for key, value in self.tables[name].items():
                    deadline = self.planner.deadline_ms(name, value) if timed else None
                    yield partition_of(key, self.partitions), name, key, deadline

        self.index.build(actives, entries())

    async def _complete(self, step: Step, reroutes: list[Record] | None = None) -> None:
        records: list[tuple[TopicT, Record]] = [
            (self.topics.derived, derived_record(e, self.partitions)) for e in step.derived
        ]
        records += [(self.topics.forwards, fact_record(f, self.partitions)) for f in step.forwards]
        records += [(self.topics.forwards, r) for r in reroutes or ()]
        if records:
            await self._send(records)
        for write in step.writes:  # no await from here on: all of them or none
            table = self.tables[write.stage]
            if write.value is None:
                if write.key in table:
                    del table[write.key]
            else:
                table[write.key] = write.value
            self.index.update(step.partition, write)
        self._count(step)

    async def _send(self, records: list[tuple[TopicT, Record]]) -> None:
        attempt = 0
        self.inflight += len(records)
        try:
            while True:
                try:
                    futures = [
                        await topic.send(
                            key=r.key,
                            value=r.value,
                            partition=r.partition,
                            timestamp=r.timestamp,
                            headers=r.headers,
                        )
                        for topic, r in records
                    ]
                    await asyncio.gather(*futures)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the broker refused: retry the whole step's output
                    attempt += 1
                    delay = min(self.retry_max_seconds, 0.1 * 2**attempt)
                    log.warning("send failed (%r), retry %d in %.1fs", exc, attempt, delay)
                    self.signals["send_retries"] += 1
                    await asyncio.sleep(delay)
        finally:
            self.inflight -= len(records)

    def _count(self, step: Step) -> None:
        m = self.metrics
        for event in step.derived:
            m.derived.labels(event.type).inc()
        for forward in step.forwards:
            m.forwards.labels(forward.stage).inc()
        for stages in step.reroutes.values():
            for stage in stages:
                m.forwards.labels(stage).inc()
        for (signal, table), n in step.signals.items():
            getattr(m, _COUNTERS[signal]).labels(table).inc(n)
            self.signals[signal] += n
        self.signals["derived"] += len(step.derived)
