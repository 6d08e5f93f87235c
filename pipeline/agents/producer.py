"""Faust's producer with a buffer flush that waits until every buffered record was handed on.

Table writes reach their changelog through ``Producer.send_soon``: the record waits in the
producer's :class:`~faust.transport.producer.ProducerBuffer` until a background task hands it
to aiokafka. Before committing offsets Faust calls ``producer.flush()``, which flushes that
buffer and then aiokafka. But faust-streaming 0.15's ``ProducerBuffer.flush`` returns as soon
as no record left the buffer for 0.1 s, even with records still in it (a busy loop on two
cores easily starves the buffer task that long); aiokafka's flush then covers only what had
already reached aiokafka. Offsets could be committed while the changelog records of the
records they cover were still in memory, and a kill -9 at that moment lost those writes from
the changelog for good (the local RocksDB still had them, but a rebuild, a standby or another
worker taking the partition over reads the changelog).

:func:`draining_producer` gives the transport's Producer a buffer whose ``flush`` returns only
when the buffer is empty and no record is being handed on. A broker that refuses writes
therefore holds the commit back instead of letting it run ahead of the changelog: correctness
over progress, which is what Faust's own commit path already does for aiokafka's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from faust.transport.producer import Producer, ProducerBuffer
from faust.types.tuples import FutureMessage

__all__ = ["DrainingProducerBuffer", "draining_producer"]


class DrainingProducerBuffer(ProducerBuffer):
    """A ProducerBuffer whose ``flush`` waits until every record was handed to the client."""

    #: Seconds a flush may wait for the buffer to drain before it fails.
    flush_timeout: float = 120.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sending = 0  # records taken from the queue and not yet handed on

    async def _send_pending(self, fut: FutureMessage) -> None:
        self.sending += 1  # before the first await: the queue's get returned just now
        try:
            await super()._send_pending(fut)
        finally:
            self.sending -= 1
            self.message_sent.set()

    async def flush(self) -> None:
        """Return once the buffer is empty and nothing is in hand; raise after ``timeout``.

        Raising (instead of Faust's silent return) makes the commit that called it fail, so
        no offset is committed ahead of its changelog records.
        """
        app = cast(Any, self.app)
        if app is not None and app.conf.producer_threaded:
            await super().flush()  # the threaded producer drains its own queue
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flush_timeout
        while self.size or self.sending:
            if self.state != "running":
                raise RuntimeError("Cannot flush: producer buffer not running")
            left = deadline - loop.time()
            if left <= 0:
                raise RuntimeError(
                    f"producer buffer not drained in {self.flush_timeout:.0f} s "
                    f"({self.size} waiting, {self.sending} in hand)"
                )
            self.message_sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=min(left, 1.0))

    async def flush_atmost(self, max_messages: int | None) -> int:
        if max_messages is None:
            await self.flush()
            return 0
        return await super().flush_atmost(max_messages)


def draining_producer(base: type[Producer]) -> type[Producer]:
    """``base`` (a Faust transport's Producer class) using :class:`DrainingProducerBuffer`."""
    if getattr(base, "_draining_buffer", False):
        return base

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        old = self.buffer
        buffer = DrainingProducerBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = old.app
        if hasattr(old, "threaded_producer"):
            buffer.threaded_producer = old.threaded_producer
        self.buffer = buffer

    return cast(
        type[Producer],
        type(
            f"Draining{base.__name__}",
            (base,),
            {"__init__": __init__, "_draining_buffer": True, "__module__": __name__},
        ),
    )
