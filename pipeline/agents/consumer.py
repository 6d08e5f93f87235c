"""Faust consumer fixes: seek before fetch, commit what was processed; optional fast drain.

**Seek before fetch** (:func:`seek_first`, always on). After a rebalance (and at every start)
Faust's recovery ends with ``consumer.resume_partitions(<stream partitions>)``, then awaits
``perform_seek()`` (committed offsets from the broker), then ``flow_control.resume()``, which
*clears every stream buffer*, then ``resume_flow()``. The fetcher runs during all of it (the
flow was resumed to read the changelogs), so between the resume and the seek it can fetch
stream records and hand them to the streams; the seek then resets the read offsets while the
drain keeps delivering the rest of that pre-seek fetch (moving the read offset past them again,
and Faust's gap logic counts the skipped offsets as acked), and the buffer clear drops what
was delivered but not yet processed. Records in that window were never processed and never
fetched again: the 2026-11-27 CI run lost them after a kill -9 and restart
(tests/test_worker_pipeline.py), reproduced here with offset logs (a batch of offsets
skipped per partition right after the restart). Faust's issues #216 and #596 describe the same
family of races. The fix keeps the stream partitions paused until the seek is done *and* the
buffers are cleared: ``resume_partitions`` only remembers them, ``perform_seek`` marks the
seek done, and ``resume_flow`` (called after the clear) resumes them, so their first fetch
starts at the committed offset into empty buffers. A partition without a committed offset is
sought to its log start too (Faust leaves it at the client's fetch position, which records
fetched before the seek had moved on: a restart lost the head of such partitions).

**Commit what was processed** (:func:`commit_guard`, always on with the worker's runner).
Faust commits acked offsets, and its gap bookkeeping can run past records that never reached an
agent; the guard commits the offsets :class:`pipeline.agents.offsets.ProcessedOffsets` says
were processed in order instead (``app.wo_processed``, set by ``pipeline.agents.register``).

**Fast drain** (:func:`fast_drain`, ``WO_FAUST_FAST_DRAIN``, on by default since 2026-11-28:
1.25-1.3x worker throughput; the restart loss once blamed on it was the races above). Faust's
``Consumer._drain_messages`` hands every fetched record to the conductor with
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
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING, Consumer, ensure_TPset
from faust.types import TP
from mode import Service, ServiceT

__all__ = ["commit_guard", "fast_drain", "seek_first"]


class _SeekFirst:
    """Mixin: stream partitions stay paused from their assignment until seek + buffer clear."""

    _held: set[TP]  # stream partitions paused since their assignment, not yet released
    _deferred: set[TP]  # of those, the ones Faust asked to resume
    _seek_done: bool

    def _seek_state(self: Any) -> None:
        if "_held" not in self.__dict__:
            self._held, self._deferred, self._seek_done = set(), set(), False
            # Log start of each partition without a committed offset, as of the last seek: the
            # runner's first expected offset there (pipeline.agents.runner._in_order).
            self.wo_log_starts = {}

    def pause_partitions(self: Any, tps: Iterable[TP]) -> None:
        self._seek_state()
        tpset = ensure_TPset(tps)
        streams = {tp for tp in tpset if not self._is_changelog_tp(tp)}
        if streams:  # an assignment (or a stop): hold them until the next seek
            self._held |= streams
            self._deferred -= streams
            self._seek_done = False
        super().pause_partitions(tpset)  # type: ignore[misc]

    def resume_partitions(self: Any, tps: Iterable[TP]) -> None:
        self._seek_state()
        tpset = ensure_TPset(tps)
        held = tpset & self._held
        self._deferred |= held
        super().resume_partitions(tpset - held)  # type: ignore[misc]

    async def perform_seek(self: Any) -> None:
        self._seek_state()
        await super().perform_seek()  # type: ignore[misc]
        self._forget_unassigned()
        if self._deferred:  # the seek that follows resume_partitions in recovery
            await self._seek_uncommitted_to_log_start(self._deferred)
            self._seek_done = True

    def _forget_unassigned(self: Any) -> None:
        # A rebalance that interrupts a recovery (its seek cancelled) leaves the partitions of
        # that generation here; seeking or resuming one that moved to another worker raises
        # IllegalStateError, which Faust's recovery swallows *without* finishing: the worker
        # never became ready (CI 2026-11-28, tests/test_web_integration.py).
        assigned = self.assignment()
        self._held &= assigned
        self._deferred &= assigned

    async def _seek_uncommitted_to_log_start(self: Any, tps: set[TP]) -> None:
        # Faust's perform_seek leaves a partition without a committed offset where the client's
        # fetch position happens to be: past any record fetched for it before the seek (and
        # dropped with the buffers). Seek those to their log start, as a commit there would.
        committed = self._committed_offset
        uncommitted = [tp for tp in tps if committed.get(tp) is None]
        if not uncommitted:
            return
        starts = await self.earliest_offsets(*uncommitted)
        # Kept for the runner: asking the broker again per partition at its first record costs
        # a ListOffsets each, queued behind the fetch in flight on the same connection (and in
        # the consumer thread's two-slot method queue): 8 topics x 8 partitions of them stalled
        # a fresh worker for ~15 s (bench/worker_throughput.py, 2026-11-28).
        self.wo_log_starts.update({tp: start for tp, start in starts.items() if start is not None})
        thread = getattr(self, "_thread", None)
        for tp in uncommitted:
            start = starts.get(tp)
            if start is None:
                continue
            if thread is not None and hasattr(thread, "seek_wait"):
                await thread.seek_wait({tp: start})
            else:
                await self.seek(tp, start)
            self._read_offset[tp] = None  # deliver from the log start on

    def resume_flow(self: Any) -> None:
        self._seek_state()
        super().resume_flow()  # type: ignore[misc]
        if self._seek_done and self._deferred:
            self._forget_unassigned()
            release = set(self._deferred)
            self._held -= release
            self._deferred.clear()
            self._seek_done = False
            super().resume_partitions(release)  # type: ignore[misc]


class _CommitGuard:
    """Mixin: commit the offsets the worker processed in order, not Faust's acked ones."""

    def _filter_committable_offsets(self: Any, tps: Iterable[TP]) -> dict[TP, int]:
        guard = getattr(self.app, "wo_processed", None)
        if guard is None:  # an app without the worker's runner: Faust's own logic
            return cast(dict[TP, int], super()._filter_committable_offsets(tps))  # type: ignore[misc]
        offsets: dict[TP, int] = {}
        for tp in tps:
            self._new_offset(tp)  # keeps Faust's acked list trimmed; its answer is not used
            offset = guard.committable((tp.topic, tp.partition))
            if offset is not None and self._should_commit(tp, offset):
                offsets[tp] = offset
        return offsets


def commit_guard(base: type[Consumer]) -> type[Consumer]:
    """``base`` committing ``app.wo_processed`` offsets (:mod:`pipeline.agents.offsets`)."""
    return _mixed(base, _CommitGuard, "Guarded")


def seek_first(base: type[Consumer]) -> type[Consumer]:
    """``base`` (a Faust transport's Consumer class) with the seek-before-fetch fix."""
    return _mixed(base, _SeekFirst, "SeekFirst")


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
    return _mixed(base, _FastDrain, "FastDrain")


def _mixed(base: type[Consumer], mixin: type, prefix: str) -> type[Consumer]:
    """``base`` with ``mixin`` first in its MRO (once: a class that has it is returned as is)."""
    if issubclass(base, mixin):
        return base
    return cast(
        type[Consumer],
        type(f"{prefix}{base.__name__}", (mixin, base), {"__module__": __name__}),
    )
