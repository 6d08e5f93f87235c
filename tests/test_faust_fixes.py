"""Units of the Faust fixes: seek before fetch, commit what was processed, draining flush.

The integration proof is the kill -9 test in tests/test_worker_pipeline.py (it lost records
without the consumer fix); these tests pin the call orders Faust's recovery uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.errors import IllegalStateError
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from pipeline.agents.consumer import commit_guard, seek_first
from pipeline.agents.offsets import RESEEK_AFTER, Order, ProcessedOffsets
from pipeline.agents.producer import DrainingProducerBuffer, draining_producer
from pipeline.metrics import WorkerMetrics

CHANGELOG = TP("app-table-changelog", 0)
STREAMS = {TP("wo.workorder", 0), TP("wo.workorder", 1)}


class FakeConsumer:
    """The parts of faust.transport.consumer.Consumer the fix overrides, with a log."""

    def __init__(self) -> None:
        self.active: set[TP] = set()
        self.flow = False
        self.log: list[str] = []
        # wo.workorder 0 was committed at 7; partition 1 never was (log start 0)
        self._committed_offset: dict[TP, int | None] = {TP("wo.workorder", 0): 7}
        self._read_offset: dict[TP, int | None] = {TP("wo.workorder", 1): 12}
        self.sought: list[tuple[TP, int]] = []
        self.assigned: set[TP] = {CHANGELOG, *STREAMS}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def _check_assigned(self, tps: Any) -> None:
        if not set(tps) <= self.assigned:  # as aiokafka's seek/position/pause/resume do
            raise IllegalStateError(f"{set(tps) - self.assigned} are not assigned")

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    async def seek(self, tp: TP, offset: int) -> None:
        self._check_assigned({tp})
        self.sought.append((tp, offset))

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    def pause_partitions(self, tps: Any) -> None:
        self.active -= set(tps)

    def resume_partitions(self, tps: Any) -> None:
        self._check_assigned(tps)
        self.active |= set(tps)

    async def perform_seek(self) -> None:
        self.log.append(f"seek with {sorted(tp.partition for tp in self.active & STREAMS)} active")

    def resume_flow(self) -> None:
        self.flow = True

    def stop_flow(self) -> None:
        self.flow = False


Fixed = seek_first(FakeConsumer)  # type: ignore[arg-type]


async def recovery(consumer: Any, *, early_seek: bool = False) -> None:
    """Faust 0.15's order from assignment to "Worker ready" (app/base.py, tables/recovery.py)."""
    consumer.stop_flow()
    consumer.pause_partitions({CHANGELOG, *STREAMS})  # _on_partitions_assigned
    if early_seek:  # getmany while the flow is stopped seeks back to committed offsets
        await consumer.perform_seek()
    consumer.resume_partitions({CHANGELOG})  # read the changelogs
    consumer.resume_flow()
    assert not consumer.active & STREAMS, "streams fetched during recovery"
    consumer.pause_partitions({CHANGELOG})  # done reading
    consumer.resume_partitions(STREAMS)  # on_recovery_completed ...
    await consumer.perform_seek()  # ... then seek ...
    assert not consumer.active & STREAMS, "streams fetch before the buffers are cleared"
    consumer.resume_flow()  # ... after flow_control.resume() cleared the stream buffers


async def test_stock_order_fetches_stream_partitions_before_the_seek() -> None:
    consumer = FakeConsumer()
    consumer.pause_partitions({CHANGELOG, *STREAMS})
    consumer.resume_partitions(STREAMS)
    await consumer.perform_seek()
    assert consumer.log == ["seek with [0, 1] active"]  # the race the fix closes


@pytest.mark.parametrize("early_seek", [False, True])
async def test_stream_partitions_resume_only_after_seek_and_buffer_clear(early_seek: bool) -> None:
    consumer = Fixed()
    await recovery(consumer, early_seek=early_seek)
    assert consumer.log[-1] == "seek with [] active"
    assert consumer.active == STREAMS and consumer.flow
    # the never-committed partition starts at its log start, not at the fetch position
    assert consumer.sought == [(TP("wo.workorder", 1), 0)]
    assert consumer._read_offset[TP("wo.workorder", 1)] is None


async def test_a_second_rebalance_holds_the_partitions_again() -> None:
    consumer = Fixed()
    await recovery(consumer)
    await recovery(consumer)  # asserts inside: nothing fetched before its seek
    assert consumer.active == STREAMS


async def test_a_rebalance_between_resume_and_seek_starts_over() -> None:
    consumer = Fixed()
    consumer.pause_partitions({CHANGELOG, *STREAMS})
    consumer.resume_partitions(STREAMS)
    consumer.pause_partitions({CHANGELOG, *STREAMS})  # the next generation's assignment
    await consumer.perform_seek()
    consumer.resume_flow()
    assert not consumer.active & STREAMS  # its own resume + seek have not happened yet
    await recovery(consumer)
    assert consumer.active == STREAMS


async def test_partitions_moved_away_by_an_interrupted_recovery_are_forgotten() -> None:
    """Generation 0 owns both partitions; a rebalance cancels its recovery after the resume,
    before the seek; generation 1 owns only partition 0. Its recovery must finish (seeking or
    resuming partition 1 raised IllegalStateError, and Faust's recovery then never finished)."""
    p0, p1 = sorted(STREAMS)
    consumer = Fixed()
    consumer.pause_partitions({CHANGELOG, p0, p1})
    consumer.resume_partitions({p0, p1})  # on_recovery_completed, then the seek is cancelled
    consumer.assigned = {CHANGELOG, p0}
    consumer._committed_offset = {}  # neither was committed: both would be sought
    consumer.stop_flow()
    consumer.pause_partitions({CHANGELOG, p0})
    consumer.resume_partitions({CHANGELOG})
    consumer.resume_flow()
    consumer.pause_partitions({CHANGELOG})
    consumer.resume_partitions({p0})
    await consumer.perform_seek()
    consumer.resume_flow()
    assert consumer.sought == [(p0, 0)]
    assert consumer.active == {p0} and consumer.flow


async def test_changelog_partitions_are_never_held() -> None:
    consumer = Fixed()
    consumer.pause_partitions({CHANGELOG, *STREAMS})
    consumer.resume_partitions({CHANGELOG})
    assert consumer.active == {CHANGELOG}


# -- the producer buffer ----------------------------------------------------------------------


class _Conf:
    producer_threaded = False


class _BufferApp:
    conf = _Conf()


class _Channel:
    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.published: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        if self.delay is None:
            await asyncio.Event().wait()  # a broker that never takes it
        await asyncio.sleep(self.delay)
        self.published.append(fut.n)


class _Fut:
    def __init__(self, n: int, channel: _Channel) -> None:
        self.n = n
        self.message = type("M", (), {"channel": channel})()


async def _flushed(buffer_class: type[ProducerBuffer], delay: float | None, n: int = 3,
                   flush_timeout: float | None = None) -> list[int]:  # fmt: skip
    buffer = buffer_class()
    buffer.app = _BufferApp()  # type: ignore[assignment]
    if flush_timeout is not None:
        buffer.flush_timeout = flush_timeout  # type: ignore[attr-defined]
    channel = _Channel(delay)
    await buffer.start()
    try:
        for i in range(n):
            buffer.put(_Fut(i, channel))  # type: ignore[arg-type]
        await buffer.flush()
        return list(channel.published)
    finally:
        with contextlib.suppress(RuntimeError):  # stopping flushes what is left once more
            await buffer.stop()


async def test_stock_flush_returns_with_records_still_buffered() -> None:
    # Each hand-off takes 0.15 s: Faust's flush gives up after 0.1 s without one.
    assert len(await _flushed(ProducerBuffer, 0.15)) < 3


async def test_draining_flush_returns_only_when_every_record_was_handed_on() -> None:
    assert await _flushed(DrainingProducerBuffer, 0.15) == [0, 1, 2]


async def test_draining_flush_fails_instead_of_returning_when_it_cannot_drain() -> None:
    with pytest.raises(RuntimeError, match="not drained"):
        await _flushed(DrainingProducerBuffer, None, n=1, flush_timeout=0.3)


def test_draining_producer_replaces_the_buffer() -> None:
    class Base:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.loop = None
            self.beacon = None
            self.buffer = ProducerBuffer()
            self.buffer.app = _BufferApp()  # type: ignore[assignment]

    producer = draining_producer(Base)()  # type: ignore[arg-type]
    assert isinstance(producer.buffer, DrainingProducerBuffer)
    assert isinstance(producer.buffer.app, _BufferApp)
    assert draining_producer(type(producer)) is type(producer)


# -- offsets: commit what was processed, seek back over gaps ------------------------------------


def test_processed_offsets_commit_only_contiguous_processed_records() -> None:
    offsets = ProcessedOffsets()
    tp = ("wo.workorder", 0)
    assert offsets.committable(tp) is None
    assert offsets.classify(tp, 10, committed=10) == (Order.NEXT, 10)
    assert offsets.classify(tp, 11, committed=10) == (Order.NEXT, 11)
    assert offsets.committable(tp) == 10  # planned is not processed
    offsets.done(tp, 10)
    assert offsets.committable(tp) == 11
    assert offsets.classify(tp, 13, committed=10) == (Order.GAP, 12)  # 12 never came
    assert offsets.classify(tp, 9, committed=10) == (Order.OLD, 12)
    offsets.done(tp, 11)
    assert offsets.committable(tp) == 12  # never past the missing 12


def test_without_a_committed_offset_the_first_record_is_the_start() -> None:
    offsets = ProcessedOffsets()
    assert offsets.classify(("t", 1), 0, committed=None) == (Order.NEXT, 0)
    offsets.done(("t", 1), 0)
    assert offsets.committable(("t", 1)) == 1


def test_a_gap_is_sought_once_until_the_pause_is_over() -> None:
    now = [0.0]
    offsets = ProcessedOffsets(clock=lambda: now[0])
    tp = ("t", 0)
    offsets.classify(tp, 5, committed=5)
    assert offsets.seek_due(tp, 6)
    assert not offsets.seek_due(tp, 6)  # records fetched before the seek still arrive
    now[0] += RESEEK_AFTER
    assert offsets.seek_due(tp, 6)
    offsets.accept_gap(tp, 9)
    assert offsets.committable(tp) == 9
    assert offsets.classify(tp, 9, committed=None) == (Order.NEXT, 9)


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.tp = TP(topic, partition)


class _SeekingConsumer:
    def __init__(self, committed: dict[TP, int], earliest: dict[TP, int] | None = None) -> None:
        self._committed_offset = committed
        self.earliest = earliest or {}
        self.seeks: list[tuple[TP, int]] = []
        self.asked: list[TP] = []

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.asked.extend(tps)
        return {tp: self.earliest[tp] for tp in tps if tp in self.earliest}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


class _App:
    def __init__(self, consumer: _SeekingConsumer) -> None:
        self.consumer = consumer
        self.crashed: list[BaseException] = []

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


_RUNNERS: list[Any] = []


@pytest.fixture(autouse=True)
async def _stop_gap_watches() -> AsyncIterator[None]:
    """Cancel the runners' gap watches after each test: left running, they would log (and
    "crash" their fake app) seconds later, inside whatever test runs then."""
    yield
    while _RUNNERS:
        for task in list(_RUNNERS.pop()._gap_watch.values()):
            task.cancel()


def _runner(consumer: _SeekingConsumer) -> Any:
    from pipeline.agents.runner import Runner

    runner = Runner.__new__(Runner)  # only what _in_order and _watch_gap use
    runner.app = _App(consumer)
    runner.processed = ProcessedOffsets()
    runner.metrics = WorkerMetrics.create()
    runner.signals = defaultdict(int)
    runner._gap_watch = {}
    _RUNNERS.append(runner)
    return runner


def events(*offsets: tuple[str, int, int]) -> list[Any]:
    return [type("E", (), {"message": _Message(*o)})() for o in offsets]


async def test_the_runner_holds_back_records_past_a_gap_and_seeks_back() -> None:
    consumer = _SeekingConsumer({TP("a", 0): 3, TP("b", 1): 7})
    runner = _runner(consumer)
    batch = events(("a", 0, 3), ("b", 1, 7), ("a", 0, 5), ("b", 1, 8), ("a", 0, 6))
    ready = await runner._in_order(batch)
    assert [(e.message.topic, e.message.offset) for e in ready] == [("a", 3), ("b", 7), ("b", 8)]
    assert consumer.seeks == [(TP("a", 0), 4)]  # a[4] is missing: fetch again from there
    for event in ready:
        runner.processed.done((event.message.topic, event.message.partition), event.message.offset)
    assert runner.processed.committable(("a", 0)) == 4
    # after the seek: a[4], a[5], a[6] in order; a[3] again is skipped as already processed
    ready = await runner._in_order(events(("a", 0, 3), ("a", 0, 4), ("a", 0, 5), ("a", 0, 6)))
    assert [e.message.offset for e in ready] == [4, 5, 6]


def test_the_commit_guard_commits_processed_offsets_not_acked_ones() -> None:
    class Base:
        def __init__(self) -> None:
            self._committed_offset: dict[TP, int | None] = {TP("a", 0): 3}
            self.trimmed: list[TP] = []

        def _new_offset(self, tp: TP) -> int:
            self.trimmed.append(tp)
            return 99  # Faust thinks everything up to 98 is done

        def _should_commit(self, tp: TP, offset: int) -> bool:
            committed = self._committed_offset.get(tp)
            return committed is None or offset > committed

        def _filter_committable_offsets(self, tps: Any) -> dict[TP, int]:
            return {tp: self._new_offset(tp) for tp in tps}

    guarded = commit_guard(Base)()  # type: ignore[arg-type]
    processed = ProcessedOffsets()
    processed.classify(("a", 0), 3, committed=3)
    processed.done(("a", 0), 3)
    guarded.app = type("App", (), {"wo_processed": processed})()
    assert guarded._filter_committable_offsets([TP("a", 0), TP("b", 0)]) == {TP("a", 0): 4}
    assert guarded.trimmed == [TP("a", 0), TP("b", 0)]
    guarded.app = type("App", (), {})()  # no runner: Faust's own answer
    assert guarded._filter_committable_offsets([TP("a", 0)]) == {TP("a", 0): 99}


async def test_a_never_committed_partition_starts_at_its_log_start() -> None:
    # The restart bug this catches: a partition without a committed offset whose first
    # delivered record was offset 1; offset 0 (a forwarded fact) was never processed.
    consumer = _SeekingConsumer({}, earliest={TP("f", 3): 0})
    runner = _runner(consumer)
    assert await runner._in_order(events(("f", 3, 1), ("f", 3, 2))) == []
    assert consumer.seeks == [(TP("f", 3), 0)]
    ready = await runner._in_order(events(("f", 3, 0), ("f", 3, 1), ("f", 3, 2)))
    assert [e.message.offset for e in ready] == [0, 1, 2]


async def test_a_gap_in_a_partition_taken_away_meanwhile_does_not_kill_the_agent() -> None:
    class Revoked(_SeekingConsumer):
        async def seek(self, tp: TP, offset: int) -> None:
            raise IllegalStateError(f"{tp} is not assigned")

    runner = _runner(Revoked({TP("a", 0): 3}))
    ready = await runner._in_order(events(("a", 0, 5), ("a", 0, 6)))
    assert ready == []  # held back, not processed, not committed


async def test_log_starts_found_at_the_seek_are_not_asked_again() -> None:
    """The seek at assignment looked up the never-committed partitions' log starts; asking the
    broker again per partition at its first record stalled a fresh worker (~15 s)."""
    consumer = _SeekingConsumer({}, earliest={TP("f", 3): 0, TP("g", 1): 4})
    consumer.wo_log_starts = {TP("f", 3): 0}  # as _SeekFirst leaves it
    runner = _runner(consumer)
    ready = await runner._in_order(events(("f", 3, 0), ("f", 3, 1), ("g", 1, 4)))
    assert [e.message.offset for e in ready] == [0, 1, 4]
    assert consumer.asked == [TP("g", 1)]  # only the partition the seek did not look up


async def test_the_seek_remembers_the_log_starts_it_found() -> None:
    consumer = Fixed()
    await recovery(consumer)
    assert consumer.wo_log_starts == {TP("wo.workorder", 1): 0}  # the never-committed one


@pytest.fixture
def quick_reseek(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.agents import offsets

    monkeypatch.setattr(offsets, "RESEEK_AFTER", 0.01)
    monkeypatch.setattr(offsets, "GIVE_UP_AFTER", 2)


async def test_missing_records_the_broker_still_has_stop_the_worker(quick_reseek: None) -> None:
    consumer = _SeekingConsumer({TP("d", 3): 0}, earliest={TP("d", 3): 0})
    runner = _runner(consumer)
    assert await runner._in_order(events(("d", 3, 1))) == []
    await runner._gap_watch[("d", 3)]
    assert consumer.seeks == [(TP("d", 3), 0)] * 3  # the first seek, then 2 more
    assert len(runner.app.crashed) == 1 and "not delivered" in str(runner.app.crashed[0])
    assert runner.processed.committable(("d", 3)) == 0  # nothing committed past them


async def test_records_the_broker_deleted_are_skipped_loudly(quick_reseek: None) -> None:
    consumer = _SeekingConsumer({TP("d", 3): 0}, earliest={TP("d", 3): 5})
    runner = _runner(consumer)
    await runner._in_order(events(("d", 3, 7)))
    await runner._gap_watch[("d", 3)]
    assert consumer.seeks[-1] == (TP("d", 3), 5) and not runner.app.crashed
    ready = await runner._in_order(events(("d", 3, 5), ("d", 3, 6)))
    assert [e.message.offset for e in ready] == [5, 6]


async def test_a_gap_filled_after_the_seek_stops_the_watch(quick_reseek: None) -> None:
    consumer = _SeekingConsumer({TP("d", 3): 0})
    runner = _runner(consumer)
    await runner._in_order(events(("d", 3, 1)))
    ready = await runner._in_order(events(("d", 3, 0), ("d", 3, 1)))
    for event in ready:
        runner.processed.done(("d", 3), event.message.offset)
    await runner._gap_watch[("d", 3)]
    assert consumer.seeks == [(TP("d", 3), 0)] and not runner.app.crashed


async def test_a_rebalance_stops_the_gap_watches_of_the_old_assignment(quick_reseek: None) -> None:
    """A watch keeps its expected offset; after a rebalance that kept the partition, with the
    last commit below that offset, it would seek forward past unprocessed records and then
    stop the worker although nothing is missing."""
    from types import SimpleNamespace

    consumer = _SeekingConsumer({TP("d", 3): 90}, earliest={TP("d", 3): 0})
    runner = _runner(consumer)
    forget = SimpleNamespace(forget=lambda: None, clear=lambda: None)
    runner.clock, runner.index, runner.cache = forget, forget, forget
    ready = await runner._in_order(events(*(("d", 3, o) for o in (*range(90, 100), 105))))
    for event in ready:
        runner.processed.done(("d", 3), event.message.offset)
    old_watch = runner._gap_watch[("d", 3)]  # waits for 100..104
    runner.on_rebalance()  # partition kept; Faust re-reads from the last commit, 95
    consumer._committed_offset[TP("d", 3)] = 95
    before = len(consumer.seeks)  # the seek back to 100 when 105 came, before the rebalance
    ready = await runner._in_order(events(("d", 3, 95), ("d", 3, 96)))
    for event in ready:
        runner.processed.done(("d", 3), event.message.offset)
    with contextlib.suppress(asyncio.CancelledError):
        await old_watch
    await asyncio.sleep(0.05)  # several re-seek periods of a watch left running
    assert (TP("d", 3), 100) not in consumer.seeks[before:] and not runner.app.crashed


async def test_a_rebalance_while_a_batch_is_gathered_releases_it_instead_of_hanging() -> None:
    """Faust's stream yields to the loop before it reads its queue; a rebalance starting then
    clears the queues and waits (no timeout) for every delivered record to be acked. The
    batch being gathered must be released (acked unprocessed: it is not committed, so it is
    read again), or the worker hangs with every partition stopped."""
    import faust
    from faust.events import Event
    from faust.types.tuples import ConsumerMessage

    from pipeline.agents.runner import Runner

    app = faust.App("wo-race-test", broker="kafka://127.0.0.1:1", store="memory://")
    channel = app.channel()
    app.flow_control.resume()
    app.consumer.resume_flow()
    processed: list[int] = []
    runner = Runner.__new__(Runner)  # only what consume uses
    runner.app = app
    runner.batch_max = 500
    runner._planner_for = lambda handler: None  # type: ignore[method-assign]

    async def in_order(events: list[Any]) -> list[Any]:
        return list(events)

    async def process(events: list[Any], plan: Any, context: Any) -> None:
        processed.extend(e.message.offset for e in events)

    runner._in_order = in_order  # type: ignore[method-assign]
    runner._process = process  # type: ignore[method-assign]
    runner.processed = ProcessedOffsets()
    runner.positions = {}
    runner.metrics = WorkerMetrics.create()
    runner._done = lambda: None  # type: ignore[method-assign]
    app.topics._acking_topics.add("t")
    stream = app.stream(channel)
    queue = stream.channel.queue
    real_empty, armed = queue.empty, [True]

    def empty() -> bool:
        ready = real_empty()
        if armed[0] and not ready:  # consume is about to gather one more record: revoke now
            armed[0] = False

            def revoke() -> None:  # what Faust's on_partitions_revoked does first
                app.consumer.stop_flow()
                app.flow_control.suspend()
                app.flow_control.clear()

            asyncio.get_running_loop().call_soon(revoke)
        return ready

    queue.empty = empty  # type: ignore[method-assign]
    for offset in range(3):
        message = ConsumerMessage("t", 0, offset, 0.0, 0, None, b"k", b"v", None, generation_id=0)
        queue.put_nowait(Event(app, b"k", b"v", {}, message))
    task = asyncio.ensure_future(runner.consume(stream, "on_event"))
    try:
        for _ in range(200):  # until the gathered record is released (the rebalance can go on)
            await asyncio.sleep(0.01)
            if not app.consumer._unacked_messages and not armed[0]:
                break
        assert not armed[0], "the race was not reached"
        assert not app.consumer._unacked_messages, "the rebalance would wait forever"
        assert processed == []  # released unprocessed: read again from the committed offset
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
