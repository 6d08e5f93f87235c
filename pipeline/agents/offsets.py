"""Source offsets this process processed in order: the only offsets the worker commits.

Faust commits what was *acked*, and its bookkeeping can run ahead of what was processed: its
gap logic counts offsets it never delivered as acked, and ``Consumer._new_offset`` accepts an
acked run that starts one past the committed offset (faust-streaming #606), so a record that
never reached an agent can be committed over and is lost for good. The worker therefore tracks,
per source partition, the next offset it has processed every record before, and commits that
(``pipeline.agents.consumer.commit_guard``). Records reach the runner in offset order per
partition; one that arrives past the expected offset reveals a gap: it is held back (acked, not
processed) and the partition is sought back to the first missing offset, so the missing records
come again, in order. The runner seeks again while they do not come; after :data:`GIVE_UP_AFTER`
seeks it skips them only if the broker deleted them (log start past them), and otherwise stops
the worker rather than lose them (``Runner._watch_gap``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

Partition = tuple[str, int]

#: Seeks back to one missing offset before the runner skips it (deleted) or stops (not).
GIVE_UP_AFTER = 3
#: Seconds before the same gap may be sought again (the first seek needs time to take effect:
#: records fetched before it keep arriving meanwhile).
RESEEK_AFTER = 5.0


class Order(Enum):
    NEXT = "next"  # the expected offset: process it
    OLD = "old"  # below the expected offset: processed before (a redelivery after a seek)
    GAP = "gap"  # past the expected offset: records are missing before it


class ProcessedOffsets:
    """Per (topic, partition): the next offset planned and the next offset fully processed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._planned: dict[Partition, int] = {}
        self._done: dict[Partition, int] = {}
        self._seeks: dict[Partition, tuple[int, int, float]] = {}  # expected, count, at
        self._clock = clock

    def clear(self) -> None:
        """Forget everything (a rebalance: the committed offsets are the new start)."""
        self._planned.clear()
        self._done.clear()
        self._seeks.clear()

    def knows(self, tp: Partition) -> bool:
        """Whether ``tp`` has an expected offset (seen since the last :meth:`clear`)."""
        return tp in self._planned

    def classify(self, tp: Partition, offset: int, committed: int | None) -> tuple[Order, int]:
        """Where ``offset`` stands against the expected one (returned too); NEXT advances it.

        ``committed`` is where the partition starts when this process has not seen it since
        its assignment: the group's committed offset, or for a partition never committed its
        log start (None: unknown, the first record delivered is the start).
        """
        expected = self._planned.get(tp)
        if expected is None:
            expected = committed if committed is not None else offset
            self._planned[tp] = expected
            self._done.setdefault(tp, expected)
        if offset == expected:
            self._planned[tp] = offset + 1
            return Order.NEXT, expected
        return (Order.OLD if offset < expected else Order.GAP), expected

    def done(self, tp: Partition, offset: int) -> None:
        """The record at ``offset`` (classified NEXT) is processed and its outputs are durable."""
        if self._done.get(tp, offset) <= offset:
            self._done[tp] = offset + 1

    def committable(self, tp: Partition) -> int | None:
        """The offset to commit: every record before it was processed (None: nothing known)."""
        return self._done.get(tp)

    def seek_due(self, tp: Partition, expected: int) -> bool:
        """Whether to seek back to ``expected`` now (not again while a seek is taking effect)."""
        now = self._clock()
        last = self._seeks.get(tp)
        if last is not None and last[0] == expected:
            if now - last[2] < RESEEK_AFTER:
                return False
            self._seeks[tp] = (expected, last[1] + 1, now)
        else:
            self._seeks[tp] = (expected, 1, now)
        return True

    def accept_gap(self, tp: Partition, offset: int) -> None:
        """Give up on the records before ``offset``: the next expected one is ``offset``."""
        self._planned[tp] = offset
        self._done[tp] = max(self._done.get(tp, offset), offset)
        self._seeks.pop(tp, None)
