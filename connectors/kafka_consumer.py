"""Shared plumbing of our plain aiokafka consumers: start after topics exist, poll, stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from connectors.kafka_topics import ensure_topics
from pipeline.settings import Settings

Batches = dict[TopicPartition, list[ConsumerRecord]]


def consumer_class(settings: Settings) -> type[AIOKafkaConsumer]:
    """:class:`~connectors.tansu_transport.TansuAIOKafkaConsumer` on Tansu, else aiokafka's."""
    if settings.tansu:
        from connectors.tansu_transport import TansuAIOKafkaConsumer

        return TansuAIOKafkaConsumer
    return AIOKafkaConsumer


def group_timeouts(session_timeout_ms: int) -> dict[str, Any]:
    """Consumer-group timings from one session timeout: heartbeat a third of it (1 s..3 s
    band, at least 100 ms) and the same budget for a rebalance."""
    return {
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(min(3000, session_timeout_ms // 3), 100),
        "rebalance_timeout_ms": session_timeout_ms,
    }


async def consume_batches(
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    *,
    max_records: int,
    handle: Callable[[AIOKafkaConsumer, Batches], Awaitable[None]],
) -> None:
    """Hand every non-empty ``getmany`` result to ``handle`` until ``stop`` is set."""
    while (
        batches := await poll_until_stopped(consumer, stop, max_records=max_records)
    ) is not None:
        if batches:
            await handle(consumer, batches)


async def start_subscribed(
    consumer: AIOKafkaConsumer, bootstrap: str, topics: list[str], *, partitions: int
) -> AIOKafkaConsumer:
    """Create the consumer's topics if missing, then start it (stopped again if that fails).

    Subscribing to a missing topic lets the broker auto-create it with its own partition
    count, which breaks the co-partitioning the worker's tables rely on.
    """
    await ensure_topics(bootstrap, topics, partitions=partitions)
    try:
        await consumer.start()
    except BaseException:
        await stop_quietly(consumer)
        raise
    return consumer


async def poll_until_stopped(
    consumer: AIOKafkaConsumer, stop: asyncio.Event, *, max_records: int, timeout_ms: int = 1000
) -> Batches | None:
    """One ``getmany``, abandoned as soon as ``stop`` is set; None when stopped.

    A batch that arrives after the stop is dropped uncommitted, so it is read again next time.
    """
    if stop.is_set():
        return None
    poll = asyncio.ensure_future(consumer.getmany(timeout_ms=timeout_ms, max_records=max_records))
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({poll, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
    if not poll.done():
        poll.cancel()
        return None
    return poll.result()


async def stop_quietly(consumer: AIOKafkaConsumer | None) -> None:
    """Stop a consumer that may already be broken; its errors no longer matter."""
    if consumer is None:
        return
    try:
        await consumer.stop()
    except Exception:
        pass
