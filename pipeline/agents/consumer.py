"""Faust's consumer without a task per message while the flow runs (faust-streaming 0.15).

Faust's ``Consumer._drain_messages`` hands every fetched record to the conductor with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks and an
``asyncio.wait`` per record, only so that a rebalance (``stop_flow()`` sets ``suspend_flow``)
can abandon a delivery that is stuck on a full stream buffer. That costs more than decoding
the record. :func:`fast_drain` returns the consumer class with the same loop, except that
while the flow is not suspended the delivery is awaited directly; when it is suspended, the
loop takes Faust's path unchanged.

Why a direct delivery is still safe at a rebalance that starts while it waits: it can only
wait for room in a stream buffer (or the producer's), and the streams keep draining their
buffers during a rebalance (records of the old generation are skipped, not processed), so it
completes; the record it delivers belongs to the old generation and is skipped like the ones
already buffered. A stop cancels the fetcher's task, which cancels the delivery as before.
Offsets, acks and commits are untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from mode import Service, ServiceT

__all__ = ["fast_drain"]


class _FastDrain:
    """Mixin overriding ``_drain_messages`` (a copy of Faust 0.15.3's, see the module doc)."""

    async def _drain_messages(self: Any, fetcher: ServiceT) -> None:  # pragma: no cover
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        suspended = self.suspend_flow.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator, getmany(timeout=1.0))
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if suspended():
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:
                                await callback(message)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset,
                                         message.key, message.value)  # fmt: skip
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


def fast_drain(base: type[Consumer]) -> type[Consumer]:
    """``base`` (a Faust transport's Consumer class) with the direct delivery."""
    if issubclass(base, _FastDrain):
        return base
    return cast(
        type[Consumer],
        type(f"FastDrain{base.__name__}", (_FastDrain, base), {"__module__": __name__}),
    )
