"""The worker's injectable clock: wall time in production, control-topic ticks in tests.

The reducers take ``now`` as an argument (timers, window retention, dedup memory); this module
decides where it comes from. Either way timers fire the same way: a *tick* record on the
control topic (``wo.control.clock``, one record per partition) makes the agent owning that
partition run the due timers of its table keys inside the tick's stream context, so their table
writes go to that partition's changelog like any other update.

``wall`` (``WO_CLOCK=wall``, the default)
    ``now`` is the wall clock (UTC). The group leader sends a tick to every partition every
    ``WO_TIMER_INTERVAL_SECONDS``; a tick's own value is only informative.

``control`` (``WO_CLOCK=control``, tests and replays)
    ``now`` of partition ``p`` is the latest tick received on partition ``p`` (ticks never move
    it back), persisted in the ``wo_clock`` table so a restart or a partition move resumes at
    the same instant. Nothing sends ticks by itself: the test (or a replay tool) sends them with
    :func:`tick_records`, so days of event time pass in seconds and every run sees the same
    ``now`` at the same point of its input. Before a partition's first tick, an item is applied
    at its own event time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson

from events.ids import unix_ms

ClockMode = Literal["wall", "control"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def tick_value(at: datetime) -> bytes:
    """The control record value of a tick at ``at``."""
    return orjson.dumps({"now": unix_ms(at)})


def parse_tick(value: bytes) -> datetime:
    """A tick record's instant; raises ValueError for anything else."""
    try:
        ms = orjson.loads(value)["now"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError("not a clock tick") from exc
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        raise ValueError("not a clock tick")
    try:
        return from_ms(ms)
    except OverflowError as exc:  # beyond datetime's year 9999: not an instant we can run
        raise ValueError("not a clock tick") from exc


def tick_records(at: datetime, partitions: int) -> list[tuple[int, bytes]]:
    """(partition, value) of the ticks that move every partition's clock to ``at``."""
    value = tick_value(at)
    return [(p, value) for p in range(partitions)]


class Clock:
    """``now`` per partition; ``source`` is the wall clock (injectable for unit tests)."""

    def __init__(self, mode: ClockMode = "wall", source: Callable[[], datetime] | None = None):
        if mode not in ("wall", "control"):
            raise ValueError(f"unknown clock mode {mode!r}")
        self.mode: ClockMode = mode
        self._source = source or (lambda: datetime.now(UTC))
        self._ticks: dict[int, int] = {}  # control mode: partition -> latest tick (epoch ms)

    @property
    def controlled(self) -> bool:
        return self.mode == "control"

    def known(self, partition: int) -> bool:
        """Whether the partition's control time is loaded (always true on the wall clock)."""
        return not self.controlled or partition in self._ticks

    def restore(self, partition: int, ms: int | None) -> None:
        """Load a partition's persisted control time (None: it never had a tick)."""
        if ms is not None:
            self._ticks[partition] = max(ms, self._ticks.get(partition, ms))
        else:
            self._ticks.setdefault(partition, -1)

    def forget(self, partitions: set[int] | None = None) -> None:
        """Drop cached control times (after a rebalance they are reloaded from the table)."""
        if partitions is None:
            self._ticks.clear()
        for p in partitions or ():
            self._ticks.pop(p, None)

    def now(self, partition: int, fallback: datetime) -> datetime:
        """``now`` for applying an item in ``partition``; ``fallback`` is the item's time."""
        if not self.controlled:
            return self._source()
        ms = self._ticks.get(partition, -1)
        return fallback if ms < 0 else from_ms(ms)

    def advance(self, partition: int, at: datetime) -> tuple[datetime, int | None]:
        """Apply a tick: (now for the partition's timers, epoch ms to persist or None)."""
        if not self.controlled:
            return self._source(), None
        ms = max(unix_ms(at), self._ticks.get(partition, -1))
        self._ticks[partition] = ms
        return from_ms(ms), ms
