"""Tumbling event-time windows: bucket math, sharded table keys, retention and late detection.

A window of size ``s`` starts at a multiple of ``s`` since the Unix epoch (UTC), so 1 d windows
are UTC days and every partition computes the same boundaries. Events are assigned to windows
by their event time.

Sharding: a per-tenant aggregate table is keyed ``{tenant}:{shard start ms}``, where the shard
is the largest window of the family (e.g. the UTC day for 1 h + 1 d); each smaller window must
divide it, so a shard holds whole windows. One value then holds one day of one tenant (its
windows and the ids counted in them) instead of 30 days, which keeps RocksDB values and
changelog records small, and a shard is dropped as a whole when it leaves retention.

Retention and lateness run on the injected clock: a window is retained while its end is later
than ``now - retention``; an event whose window is already beyond that is *late*: it is not
counted and the reducer reports it (``Result.late``) for the late-events metric, never silently.
``shard_expired`` tells the Faust layer which keys it can delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from events.ids import unix_ms
from tables.base import make_key, split_key


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One tumbling window family: its name (state key), size and retention."""

    name: str
    size: timedelta
    retention: timedelta

    def __post_init__(self) -> None:
        if self.size <= timedelta(0) or self.retention < self.size:
            raise ValueError("window size must be positive and retention at least one window")
        if self.size % timedelta(milliseconds=1):
            raise ValueError("window size must be whole milliseconds")

    @property
    def size_ms(self) -> int:
        return self.size // timedelta(milliseconds=1)

    @property
    def retention_ms(self) -> int:
        return self.retention // timedelta(milliseconds=1)

    def start_of(self, at_ms: int) -> int:
        """Start (epoch ms) of the window containing ``at_ms``."""
        return at_ms - at_ms % self.size_ms

    def is_late(self, at_ms: int, now: datetime) -> bool:
        """True if the window of ``at_ms`` is already beyond retention at ``now``."""
        return self.start_of(at_ms) + self.size_ms <= unix_ms(now) - self.retention_ms


def shard_spec(specs: Sequence[WindowSpec]) -> WindowSpec:
    """The largest window of a family; every other one must divide it."""
    shard = max(specs, key=lambda s: s.size)
    for spec in specs:
        if shard.size % spec.size:
            raise ValueError(f"window {spec.name} does not divide the shard {shard.name}")
    return shard


def shard_key(tenant: str, at: datetime, specs: Sequence[WindowSpec]) -> str:
    """Table key of the shard holding ``at``'s windows: ``{tenant}:{shard start ms}``."""
    return make_key(tenant, str(shard_spec(specs).start_of(unix_ms(at))))


def shard_expired(key: str, now: datetime, specs: Sequence[WindowSpec]) -> bool:
    """True once every window of the shard under ``key`` is beyond retention (delete it)."""
    _, start = split_key(key)
    if start is None or not start.isdigit():
        raise ValueError(f"not a window shard key: {key!r}")
    return all(spec.is_late(int(start) + shard_spec(specs).size_ms - 1, now) for spec in specs)
