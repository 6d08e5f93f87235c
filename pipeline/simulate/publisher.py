"""Publishes generated events to NATS JetStream, pipelined and paced, or as JSON lines."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from connectors.jetstream import connect_nats
from events.envelope import DomainEvent
from pipeline.simulate.ratelimit import TokenBucket

log = logging.getLogger(__name__)

# Futures settled per batch: large enough to pipeline (nats-py allows 4000 pending), small
# enough that a failing stream is noticed within a fraction of a second.
BATCH = 512
ACK_TIMEOUT = 10.0
RETRIES = 3
MSG_ID = "Nats-Msg-Id"


@dataclass
class PublishStats:
    """What a publish run did."""

    published: int = 0
    duplicates: int = 0
    retried: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Out:
    subject: str
    payload: bytes
    event_id: str


class PublishError(RuntimeError):
    """An event could not be stored in JetStream after retries."""


class _Pipeline:
    """In-flight publishes and their PubAck futures; settles and retries them in batches."""

    def __init__(self, js: JetStreamContext, stats: PublishStats, stream: str | None) -> None:
        self.js = js
        self.stats = stats
        self.stream = stream
        self.pending: list[tuple[_Out, asyncio.Future[Any]]] = []

    def _headers(self, out: _Out) -> dict[str, str]:
        # The event id as message id: JetStream drops a republish within its duplicate window.
        return {MSG_ID: out.event_id}

    async def send(self, out: _Out) -> None:
        future = await self.js.publish_async(
            out.subject, out.payload, headers=self._headers(out), stream=self.stream
        )
        self.pending.append((out, future))
        if len(self.pending) >= BATCH:
            await self.settle()

    async def settle(self) -> None:
        """Wait for every pending PubAck; republish (idempotently) what failed or timed out."""
        batch, self.pending = self.pending, []
        if not batch:
            return
        done, _ = await asyncio.wait([f for _, f in batch], timeout=ACK_TIMEOUT)
        for out, future in batch:
            if future in done and future.exception() is None:
                self._count(future.result())
                continue
            if not future.done():
                future.cancel()
            await self._republish(out, future.exception() if future.done() else None)

    async def _republish(self, out: _Out, first_error: BaseException | None) -> None:
        error = first_error
        for attempt in range(1, RETRIES + 1):
            self.stats.retried += 1
            try:
                ack = await self.js.publish(
                    out.subject, out.payload, timeout=ACK_TIMEOUT, headers=self._headers(out),
                    stream=self.stream,
                )  # fmt: skip
            except (NatsTimeoutError, NoStreamResponseError, APIError) as exc:
                error = exc
                log.warning("publish of %s failed (attempt %d): %r", out.event_id, attempt, exc)
                await asyncio.sleep(0.2 * attempt)
                continue
            self._count(ack)
            return
        raise PublishError(
            f"event {out.event_id} on {out.subject} not stored after {RETRIES} retries: {error!r}"
        )

    def _count(self, ack: Any) -> None:
        if getattr(ack, "duplicate", False):
            self.stats.duplicates += 1
        else:
            self.stats.published += 1


async def quiet_nats_error(exc: Exception) -> None:
    """nats-py's default error callback logs a full traceback per failed connect attempt."""
    log.debug("nats: %r", exc)


def _prepare(event: DomainEvent, max_payload_bytes: int) -> _Out:
    payload = event.canonical_bytes()
    if len(payload) > max_payload_bytes:
        # Would be rejected downstream (and by NATS); a generator bug, not a transient error.
        raise PublishError(f"event {event.id} is {len(payload)} bytes, over {max_payload_bytes}")
    return _Out(event.subject, payload, event.id)


def _progress(total: int | None) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]simulate"),
        BarColumn(),
        MofNCompleteColumn() if total else TextColumn("{task.completed} events"),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>7.0f} ev/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


async def publish_events(
    events: Iterable[DomainEvent],
    nats_url: str,
    *,
    total: int | None = None,
    rate: float = 0.0,
    stop: asyncio.Event | None = None,
    progress: bool = False,
    report_every: float = 0.0,
    max_payload_bytes: int = 1024 * 1024,
    stream: str | None = None,
    bucket: TokenBucket | None = None,
    report: Any = print,
) -> PublishStats:
    """Publish `events` with Nats-Msg-Id = event id at `rate` events/s (0 = unpaced).

    PubAcks are awaited in batches (pipelined), and always before returning, also when `stop`
    is set; a failed or lost ack is retried with the same message id, so nothing is stored twice.
    """
    bucket = bucket or TokenBucket(rate)
    stats = PublishStats()
    nc, js = await connect_nats(
        nats_url, name="wo-stream-simulate", max_reconnect_attempts=10, error_cb=quiet_nats_error
    )
    pipeline = _Pipeline(js, stats, stream)
    bar = _progress(total) if progress else None
    task = bar.add_task("publish", total=total, rate=0.0) if bar else None
    next_report = time.monotonic() + report_every if report_every else None
    sent = 0
    try:
        if bar:
            bar.start()
        for event in events:
            if stop is not None and stop.is_set():
                break
            if bucket.try_acquire() > 0:
                # About to idle for pacing: settle acks now rather than let them age.
                await pipeline.settle()
                await bucket.acquire()
            await pipeline.send(_prepare(event, max_payload_bytes))
            sent += 1
            if bar and task is not None and sent % 64 == 0:
                bar.update(task, completed=sent, rate=sent / max(stats.seconds, 1e-9))
            if next_report is not None and time.monotonic() >= next_report:
                await pipeline.settle()
                report(
                    f"simulate: {stats.published} published, {stats.duplicates} duplicates, "
                    f"{stats.rate:.0f} ev/s"
                )
                next_report += report_every
            # Yield to the loop now and then so signal handlers and acks get their turn.
            if sent % BATCH == 0:
                await asyncio.sleep(0)
        await pipeline.settle()
    finally:
        stats.finished = time.monotonic()
        if bar and task is not None:
            bar.update(task, completed=sent, rate=stats.rate)
            bar.stop()
        await nc.drain()
    return stats


def write_json_lines(events: Iterable[DomainEvent], out: IO[bytes]) -> int:
    """Dry run: each event's canonical bytes on one line; returns the count."""
    count = 0
    for event in events:
        out.write(event.canonical_bytes())
        out.write(b"\n")
        count += 1
    out.flush()
    return count
