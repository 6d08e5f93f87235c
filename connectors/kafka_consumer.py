"""Shared plumbing of our plain aiokafka consumers: start after topics exist, poll, stop."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from connectors.kafka_topics import ensure_topics

Batches = dict[TopicPartition, list[ConsumerRecord]]


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
