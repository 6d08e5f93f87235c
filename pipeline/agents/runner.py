"""The Faust side of a step: read states, send outputs, wait for acks, then write the tables.

Records are processed in batches: an agent takes the records its stream has ready (up to
``batch_max``, without waiting for more), and one batch at a time, across all agents (one lock,
so agents of different source topics never interleave on one table key), goes through:

1. decode every record and plan its :class:`~pipeline.agents.steps.Step` (reducers, no I/O),
   in order; a record reads the values the records before it in the batch planned
   (:class:`~pipeline.agents.batch.Pending`), so the batch computes what one-by-one would;
2. send all the batch's derived events (``wo.derived``) and repartition records, pipelined,
   and wait until the broker acknowledged every one of them (retrying with backoff while it
   refuses);
3. write the batch's table values, the last one per key (RocksDB + one changelog record),
   without an ``await`` in between, so a cancelled agent writes all of them or none;
4. ack the batch's records (manual acks): Faust commits their offsets later, after flushing
   the producer (changelog records included).

Why the outputs go before the table writes: a reducer remembers every id it applied and drops
a redelivered one, so state written before its outputs were durable would, after a crash,
make the redelivered record a duplicate and its outputs would never be sent. In this order a
crash at any point either leaves no trace of the batch in the tables (its records are
redelivered and their outputs sent again: derived ids are deterministic, downstream drops the
copies) or finds all its outputs already acknowledged. Acks are manual because Faust acks an
event whose processing raised or was cancelled; a record is acked only once its batch is
complete.

A redelivered duplicate writes its current value back (see ``steps.Planner._record``), so a
local store that was ahead of its changelog at a crash is re-published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.types import EventT, TopicT

from events.envelope import DomainEvent
from events.ids import unix_ms
from events.parsing import ParseError, parse_event
from pipeline.agents import offsets
from pipeline.agents.batch import Pending
from pipeline.agents.cache import StateCache
from pipeline.agents.offsets import Order, ProcessedOffsets
from pipeline.agents.records import (
    KIND_EVENT,
    KIND_FACT,
    Record,
    dead_letter_record,
    decode_fact,
    derived_record,
    event_record,
    fact_record,
    header_map,
)
from pipeline.agents.steps import Planner, Step, Write, refusal_detail
from pipeline.agents.timer_index import TimerIndex
from pipeline.domain_metrics import DomainMetrics
from pipeline.metrics import WorkerMetrics
from pipeline.timers import Clock, parse_tick
from pipeline.topics import H_KIND, H_STAGES, WorkerTopics, partition_of
from tables.base import TableState, batch_ownership
from tables.stages import BY_NAME, Stage

log = logging.getLogger(__name__)

CLOCK = "wo_clock"  # the clock table's name in a Write (not a stage)

_COUNTERS = {
    "duplicate": "duplicates",
    "late": "late",
    "expired": "expired",
    "error": "errors",
    "timer": "timer_runs",
    "deleted": "shards_deleted",
}

#: Records per batch at most (see the module docstring); a batch never waits for more.
BATCH_MAX = 500


@dataclass(slots=True)
class Planned:
    """One record's planned effect: its step (None: nothing to do) and its output records."""

    step: Step | None = None
    records: list[tuple[TopicT, Record]] = field(default_factory=list)
    event_type: str | None = None  # input events: for the per-type counter
    event: DomainEvent | None = None  # input events: for the domain metrics


Plan = Callable[[EventT], Planned]


@dataclass(slots=True)
class _Gathering:
    """The records an agent has taken from its stream for the next batch."""

    batch: list[EventT] = field(default_factory=list)


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
        batch_max: int = BATCH_MAX,
        copy_per_update: bool = False,
    ) -> None:
        self.app = app
        # True: every update copies its state (no batch_ownership), for comparison/fallback.
        self.copy_per_update = copy_per_update
        self.topics = topics
        self.tables = tables
        self.clock_table = clock_table
        self.clock = clock
        self.metrics = metrics
        # Served by the same registry as the worker metrics (/metrics).
        self.domain = DomainMetrics(metrics.registry)
        self.partitions = partitions
        self.retry_max_seconds = retry_max_seconds
        self.batch_max = batch_max
        self.planner = Planner(
            self._read, partitions=partitions, decode=self._decode, forget=self._forget
        )
        self.index = TimerIndex(
            (s.name for s in self.planner.timed), (s.name for s in self.planner.windowed)
        )
        self.derived_name = topics.derived.get_topic_name()
        self.control_name = topics.control.get_topic_name()
        # One batch at a time across all agents: a batch's reads must see every earlier
        # batch's writes, and those wait for the earlier batch's output acks.
        self._lock = asyncio.Lock()
        self._pending: Pending | None = None  # the batch being planned
        self.cache = StateCache()
        # (topic, partition) -> next offset after the last record fully processed here
        self.positions: dict[tuple[str, int], int] = {}
        # what the consumer commits: offsets processed in order (pipeline.agents.offsets)
        self.processed = ProcessedOffsets()
        self._gap_watch: dict[tuple[str, int], asyncio.Future[None]] = {}
        self.inflight = 0
        self.signals: defaultdict[str, int] = defaultdict(int)
        # wall-clock seconds of the first and the latest record completed (benchmarks, status)
        self.first_done: float | None = None
        self.last_done: float | None = None

    # -- agents ------------------------------------------------------------------------------

    async def consume(self, stream: faust.StreamT, handler: str) -> None:
        """Agent body: the records of ``stream`` in batches through ``handler``'s planner."""
        manual = stream.noack()
        plan = self._planner_for(handler)
        # Ticks run timers from the index, which only written batches update: one per batch.
        limit = 1 if handler == "on_tick" else self.batch_max
        queue = manual.channel.queue
        gathering = _Gathering()
        guard = asyncio.ensure_future(self._release_on_suspend(manual, gathering))
        try:
            async for event in manual.events():
                batch = gathering.batch
                batch.append(event)
                if len(batch) < limit and not queue.empty():
                    continue  # more records are ready: take them into this batch
                events, gathering.batch = batch, []
                await self._run(events, plan, manual)
        finally:
            guard.cancel()

    async def _release_on_suspend(self, manual: Any, gathering: _Gathering) -> None:
        """Ack the batch being gathered when a rebalance suspends the flow.

        Between two records of a batch Faust's stream yields to the loop before it reads its
        queue; a rebalance starting right then clears the queues, so the next record never
        comes, and the rebalance waits (without a timeout) for every delivered record to be
        acked: the worker would hang. The gathered records are acked unprocessed instead: what
        is committed comes from ``processed`` only, so they are read again after the rebalance.
        While this task runs the agent can only be waiting for its next record (it empties the
        batch before any other await), so the batch is never half-processed here.
        """
        consumer = self.app.consumer
        while True:
            await consumer.suspend_flow.wait()
            events, gathering.batch = gathering.batch, []
            if events:
                first = events[0].message
                log.info("flow suspended: %d gathered record(s) from %s[%d]@%d released, to "
                         "be read again", len(events), first.topic, first.partition,
                         first.offset)  # fmt: skip
                for event in events:
                    await manual.ack(event)
            await consumer.can_resume_flow.wait()

    async def _run(self, events: list[EventT], plan: Plan, manual: Any) -> None:
        """One gathered batch: process the records that are in order, then ack all of them."""
        ready = await self._in_order(events)
        try:
            if ready:
                await self._process(ready, plan, manual._set_current_event)
        except Exception as exc:
            # Reducer errors are handled per item (steps.Planner); anything else is a bug
            # or a broken store: stop the worker loudly, the batch stays unacked.
            first = ready[0].message
            log.exception("processing a batch of %d from %s[%d]@%d failed", len(ready),
                          first.topic, first.partition, first.offset)  # fmt: skip
            await self.app.crash(exc)
            raise
        now = time.monotonic()
        for event in ready:
            message = event.message
            self.processed.done((message.topic, message.partition), message.offset)
            self.positions[message.topic, message.partition] = message.offset + 1
            if message.time_in is not None:  # Faust's sensor clock is monotonic
                self.metrics.latency.observe(now - message.time_in)
        # Every delivered record is acked (Faust's bookkeeping wants it); what is committed
        # comes from self.processed, so held-back records are not committed over.
        for event in events:
            await manual.ack(event)
        if ready:
            self._done()

    async def _seek(self, tp: Any, offset: int) -> None:
        """Seek in the consumer's own thread and wait for the new position (as Faust's recovery
        does), falling back to ``Consumer.seek`` for consumers without that thread.

        A partition a rebalance took away meanwhile is not ours to seek: aiokafka raises
        IllegalStateError, which would kill the agent; its held records were not committed,
        so the new owner reads them from the committed offset.
        """
        thread = getattr(self.app.consumer, "_thread", None)
        try:
            if thread is not None and hasattr(thread, "seek_wait"):
                await thread.seek_wait({tp: offset})
            else:
                await self.app.consumer.seek(tp, offset)
        except IllegalStateError:
            log.warning("%s: not assigned any more; not sought to %d", tp, offset)

    async def _watch_gap(self, faust_tp: Any, tp: tuple[str, int], expected: int) -> None:
        """Seek again while the missing records do not come; stop the worker if they never do.

        Records the broker deleted (log start past them) are skipped, loudly; records it still
        has but never delivers stop the worker (its restart reads from the committed offset,
        which never passed them) rather than be lost.
        """
        try:
            for _ in range(offsets.GIVE_UP_AFTER):
                await asyncio.sleep(offsets.RESEEK_AFTER)
                done = self.processed.committable(tp)
                if done is None or done > expected:
                    return  # filled, or the partition moved (a rebalance cleared it)
                log.error("%s[%d]: offset %d still missing; seeking back again", *tp, expected)
                await self._seek(faust_tp, expected)
            done = self.processed.committable(tp)
            if done is None or done > expected:
                return
            start = await self._log_start(faust_tp)
            if start is not None and start > expected:
                log.error("records %s[%d] %d..%d were deleted by the broker; skipped",
                          tp[0], tp[1], expected, start - 1)  # fmt: skip
                self.metrics.gaps.labels(tp[0], "skipped").inc()
                self.processed.accept_gap(tp, start)
                await self._seek(faust_tp, start)
                return
            error = RuntimeError(
                f"{tp[0]}[{tp[1]}]: records from offset {expected} are in the log but were not "
                f"delivered after {offsets.GIVE_UP_AFTER} seeks; stopping instead of skipping them"
            )
            log.critical("%s", error)
            await self.app.crash(error)
        finally:
            # a rebalance may have replaced this watch already: only remove our own entry
            if self._gap_watch.get(tp) is asyncio.current_task():
                del self._gap_watch[tp]

    async def _log_start(self, tp: Any) -> int | None:
        try:
            return (await self.app.consumer.earliest_offsets(tp)).get(tp)
        except Exception:  # the broker did not answer: the first record is the start
            log.warning("no log start offset for %s; trusting the first record", tp)
            return None

    async def _in_order(self, events: Sequence[EventT]) -> list[EventT]:
        """The records of ``events`` to process now, in order (see :mod:`.offsets`).

        A record past its partition's expected offset holds back the rest of that partition in
        the batch and seeks the partition back to the first missing offset; one below it was
        processed before (a redelivery after such a seek) and is skipped.
        """
        ready: list[EventT] = []
        blocked: set[tuple[str, int]] = set()
        consumer = self.app.consumer
        committed = getattr(consumer, "_committed_offset", None) or {}
        log_starts = getattr(consumer, "wo_log_starts", None) or {}
        for event in events:
            message = event.message
            tp = (message.topic, message.partition)
            if tp in blocked:
                continue
            start = committed.get(message.tp)
            if start is None and not self.processed.knows(tp):
                # Never committed: the partition starts at its log start, whatever came first
                # (a restart lost the first records of such partitions before this check).
                # The seek at assignment looked it up (pipeline.agents.consumer); ask the
                # broker only for a partition it did not.
                start = log_starts.get(message.tp)
                if start is None:
                    start = await self._log_start(message.tp)
            order, expected = self.processed.classify(tp, message.offset, start)
            if order is Order.NEXT:
                ready.append(event)
            elif order is Order.GAP:
                blocked.add(tp)
                if tp not in self._gap_watch and self.processed.seek_due(tp, expected):
                    log.error("%s[%d]: offset %d delivered, %d expected; seeking back",
                              tp[0], tp[1], message.offset, expected)  # fmt: skip
                    self.metrics.gaps.labels(tp[0], "sought").inc()
                    self.signals["gaps"] += 1
                    await self._seek(message.tp, expected)
                    self._gap_watch[tp] = asyncio.ensure_future(
                        self._watch_gap(message.tp, tp, expected)
                    )
        return ready

    async def on_event(self, event: EventT) -> None:
        """A domain topic or ``wo.derived`` record, processed alone (tests, tools)."""
        await self._process([event], self._plan_event)

    async def on_forward(self, event: EventT) -> None:
        """A repartition record, processed alone (tests, tools)."""
        await self._process([event], self._plan_forward)

    async def on_tick(self, event: EventT) -> None:
        """A control record, processed alone (tests, tools)."""
        await self._process([event], self._plan_tick)

    async def send_ticks(self, at: Any) -> None:
        """Wall clock: one tick per partition (the leader's timer)."""
        from pipeline.timers import tick_value

        value = tick_value(at)
        for p in range(self.partitions):
            await self.topics.control.send(value=value, partition=p)

    def on_rebalance(self) -> None:
        """Partitions moved: cached clocks and the timer index are reloaded on next use, and
        gap watches stop (their expected offsets belong to the old assignment: one left
        running would seek a kept partition forward, past records not processed yet)."""
        self.clock.forget()
        self.index.clear()
        self.cache.clear()
        self.processed.clear()
        for watch in self._gap_watch.values():
            watch.cancel()
        self._gap_watch.clear()

    # -- planning (no I/O) -------------------------------------------------------------------

    def _planner_for(self, handler: str) -> Plan:
        return {
            "on_event": self._plan_event,
            "on_forward": self._plan_forward,
            "on_tick": self._plan_tick,
        }[handler]

    def _plan_event(self, event: EventT) -> Planned:
        """A domain topic or ``wo.derived`` record: an event for the tables."""
        message = event.message
        parsed = parse_event(message.value or b"")
        if isinstance(parsed, ParseError):
            return self._invalid(message, "invalid_event", f"{parsed.reason}: {parsed.message}")
        p = message.partition
        now = self._now(p, parsed.timestamp)
        derived_source = message.topic == self.derived_name
        step = self.planner.event(parsed, p, now, derived_source=derived_source)
        reroutes = [
            event_record(key, stages, message.value, unix_ms(parsed.timestamp), self.partitions)
            for key, stages in step.reroutes.items()
        ]
        return Planned(step, self._outputs(step, reroutes, message), parsed.type, parsed)

    def _plan_forward(self, event: EventT) -> Planned:
        """A repartition record: a fact or an event for the table key it is keyed by."""
        message = event.message
        headers = header_map(message.headers)
        stages = [s for s in headers.get(H_STAGES, "").split(",") if s in BY_NAME]
        kind = headers.get(H_KIND)
        key = message.key.decode() if isinstance(message.key, bytes) else None
        if not stages or key is None or kind not in (KIND_FACT, KIND_EVENT):
            why = "repartition record without table, key or kind"
            return self._invalid(message, "invalid_repartition", why)
        p = message.partition
        if kind == KIND_EVENT:
            parsed = parse_event(message.value or b"")
            if isinstance(parsed, ParseError):
                why = f"{parsed.reason}: {parsed.message}"
                return self._invalid(message, "invalid_event", why)
            step = self.planner.rerouted(parsed, stages, key, p, self._now(p, parsed.timestamp))
        else:
            try:
                fact = decode_fact(stages[0], message.value)
            except ValueError as exc:  # orjson's and pydantic's errors are ValueErrors
                why = f"undecodable fact for {stages[0]}: {refusal_detail(exc)}"
                return self._invalid(message, "invalid_fact", why)
            step = self.planner.fact(stages[0], key, fact, p, self._now(p, fact.at))
        return Planned(step, self._outputs(step, (), message))

    def _plan_tick(self, event: EventT) -> Planned:
        """A control record: move the partition's clock and run its due timers."""
        message = event.message
        try:
            at = parse_tick(message.value)
        except ValueError:
            return self._invalid(message, "invalid_tick", "not a clock tick")
        p = message.partition
        self._load_clock(p)
        now, persist_ms = self.clock.advance(p, at)
        if not self.index.built(p):
            self._build_index()
        now_ms = unix_ms(now)
        step = self.planner.timers(p, now, self.index.due(p, now_ms), self.index.shards(p))
        if persist_ms is not None:
            step.writes.append(Write(CLOCK, str(p), persist_ms))  # type: ignore[arg-type]
        self.metrics.clock.set(now_ms / 1000)
        return Planned(step, self._outputs(step))

    def _outputs(
        self, step: Step, reroutes: Sequence[Record] = (), message: Any = None
    ) -> list[tuple[TopicT, Record]]:
        records: list[tuple[TopicT, Record]] = [
            (self.topics.derived, derived_record(e, self.partitions)) for e in step.derived
        ]
        records += [(self.topics.forwards, fact_record(f, self.partitions)) for f in step.forwards]
        records += [(self.topics.forwards, r) for r in reroutes]
        for table, reason, detail in step.refused:  # the tables that took it keep it
            self.metrics.dead_letters.labels(message.topic, reason).inc()
            records.append((self.topics.dead_letters,
                            self._dead_letter(message, reason, detail, table)))  # fmt: skip
        return records

    # -- one batch ---------------------------------------------------------------------------

    async def _process(
        self,
        events: Sequence[EventT],
        plan: Plan,
        context: Callable[[EventT | None], None] = lambda event: None,
    ) -> None:
        """Plan ``events`` in order, send their outputs, then write their tables (docstring)."""
        async with self._lock:
            pending = self._pending = Pending()
            planned: list[Planned] = []
            try:
                # a key's state is copied once per batch, then updated in place (tables.base)
                with nullcontext() if self.copy_per_update else batch_ownership():
                    for event in events:
                        context(event)  # reads (RocksDB) go to the store of its partition
                        item = plan(event)
                        if item.step is not None:
                            for write in item.step.writes:
                                pending.add(write, item.step.partition, event)
                        planned.append(item)
            finally:
                self._pending = None
            records = [r for item in planned for r in item.records]
            if records:
                await self._send(records)
            for entry in pending.writes():  # no await from here on: all of them or none
                context(entry.context)  # Faust takes the changelog partition from it
                self._write(entry.write, entry.partition)
            context(None)
            wall = time.time()
            for event, item in zip(events, planned, strict=True):
                if item.step is not None:
                    self._count(item.step)
                if item.event_type is not None:
                    self.metrics.events.labels(event.message.topic, item.event_type).inc()
                if item.event is not None:
                    self.domain.observe_processed(item.event, wall)

    def _write(self, write: Write, partition: int) -> None:
        if write.stage == CLOCK:
            self.clock_table[write.key] = write.value
            return
        table = self.tables[write.stage]
        if write.value is None:
            if write.key in table:
                del table[write.key]
        else:
            table[write.key] = write.value
        self.cache.put(write.stage, write.key, write.value, write.state)
        self.index.update(partition, write)

    # -- internals ---------------------------------------------------------------------------

    def _read(self, table: str, key: str) -> dict[str, Any] | None:
        if self._pending is not None:
            write = self._pending.get(table, key)
            if write is not None:
                return write.value
        cached = self.cache.get(table, key)
        if cached is not None:
            return cached[0]
        value = self.tables[table].get(key)
        self.cache.put(table, key, value, None)
        return value

    def _decode(self, stage: Stage, key: str, raw: dict[str, Any]) -> TableState:
        """The model of ``raw`` (a value ``_read`` returned), validated once per value."""
        if self._pending is not None:
            write = self._pending.get(stage.name, key)
            if write is not None and write.value is raw and write.state is not None:
                return write.state
        cached = self.cache.get(stage.name, key)
        if cached is not None and cached[0] is raw and cached[1] is not None:
            return cached[1]
        state = stage.state.from_dict(raw)
        if cached is not None and cached[0] is raw:
            self.cache.put(stage.name, key, raw, state)
        return state

    def _forget(self, table: str, key: str) -> None:
        """The batch's decoded state of (table, key) may be half-updated (a reducer failed):
        later reads of this batch decode its last planned value again."""
        if self._pending is not None:
            self._pending.forget_state(table, key)

    def _load_clock(self, partition: int) -> None:
        if not self.clock.known(partition):
            # Read inside the partition's stream context: the value lives in its store.
            self.clock.restore(partition, self.clock_table.get(str(partition)))

    def _now(self, partition: int, fallback: Any) -> Any:
        self._load_clock(partition)
        return self.clock.now(partition, fallback)

    def _invalid(self, message: Any, reason: str, detail: str) -> Planned:
        """A record no table can use: its dead letter is the batch's only output for it."""
        log.warning("dead-lettering %s[%d]@%d: %s: %s", message.topic, message.partition,
                    message.offset, reason, detail)  # fmt: skip
        self.metrics.invalid.labels(message.topic).inc()
        self.metrics.dead_letters.labels(message.topic, reason).inc()
        self.signals["invalid"] += 1
        record = self._dead_letter(message, reason, detail)
        return Planned(records=[(self.topics.dead_letters, record)])

    def _dead_letter(self, message: Any, reason: str, detail: str, table: str | None = None
                     ) -> Record:  # fmt: skip
        self.signals["dead_letters"] += 1
        ts = getattr(message, "timestamp", None)
        return dead_letter_record(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            headers=message.headers,
            timestamp_ms=None if ts is None else round(ts * 1000),
            reason=reason,
            detail=detail,
            table=table,
            dead_lettered_ms=int(time.time() * 1000),
        )

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
                    try:
                        deadline = self.planner.deadline_ms(name, value) if timed else None
                    except Exception:  # an unreadable stored value: its timer cannot run
                        log.exception("timer index: %s[%s] skipped", name, key)
                        continue
                    yield partition_of(key, self.partitions), name, key, deadline

        self.index.build(actives, entries())

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
                except Exception as exc:  # the broker refused: retry the whole batch's output
                    attempt += 1
                    delay = min(self.retry_max_seconds, 0.1 * 2**attempt)
                    log.warning("send failed (%r), retry %d in %.1fs", exc, attempt, delay)
                    self.signals["send_retries"] += 1
                    await asyncio.sleep(delay)
        finally:
            self.inflight -= len(records)

    def _done(self) -> None:
        self.last_done = time.time()
        if self.first_done is None:
            self.first_done = self.last_done

    def _count(self, step: Step) -> None:
        m = self.metrics
        for event in step.derived:
            m.derived.labels(event.type).inc()
            self.domain.observe_derived(event)
        for forward in step.forwards:
            m.forwards.labels(forward.stage).inc()
        for stages in step.reroutes.values():
            for stage in stages:
                m.forwards.labels(stage).inc()
        for (signal, table), n in step.signals.items():
            getattr(m, _COUNTERS[signal]).labels(table).inc(n)
            self.signals[signal] += n
        self.signals["derived"] += len(step.derived)
