"""Consumer-side idempotency (catalog §1.4): a bounded, serialisable memory of applied ids.

Memory per table key: each applied id with the time it was applied (the injected ``now``, in
epoch ms). JetStream redelivers an event only while it holds it, at most 7 days (§1.4
retention) after its first delivery, so an id is forgotten ``horizon`` (default 7 days) after
it was applied, measured against the latest application time the memory has seen. The memory
therefore holds at most one week of that key's ids and never grows with history.

Why application time and not event time: a first delivery of an old event (a backfill, a
slow producer) can still be redelivered for 7 days; an event-time horizon would forget such an
id at once and count its redelivery twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from events.ids import unix_ms

DEDUP_HORIZON = timedelta(days=7)


class SeenIds(BaseModel):
    """Ids applied under one key -> epoch ms when they were applied."""

    model_config = ConfigDict(extra="ignore")

    latest: int = 0  # epoch ms of the latest application (never goes back with a skewed clock)
    ids: dict[str, int] = Field(default_factory=dict)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.ids

    def remember(self, item_id: str, now: datetime, horizon: timedelta = DEDUP_HORIZON) -> SeenIds:
        """A new memory with ``item_id`` added and ids older than the horizon forgotten."""
        latest = max(self.latest, unix_ms(now))
        floor = latest - horizon // timedelta(milliseconds=1)
        current = self.ids
        if current and min(current.values()) < floor:
            ids = {i: at for i, at in current.items() if at >= floor}
        else:  # nothing to forget (the common case): a plain copy keeps the same order
            ids = dict(current)
        ids.setdefault(item_id, latest)
        # both fields are already valid (ints), so skip validation
        return SeenIds.model_construct(latest=latest, ids=ids)

    def remember_in_place(
        self, item_id: str, now: datetime, horizon: timedelta = DEDUP_HORIZON
    ) -> None:
        """What :meth:`remember` returns, made in this memory itself: only for a memory nobody
        else holds (a state its batch already copied, ``tables.base.batch_ownership``)."""
        latest = max(self.latest, unix_ms(now))
        floor = latest - horizon // timedelta(milliseconds=1)
        ids = self.ids
        if ids and min(ids.values()) < floor:
            for old in [i for i, at in ids.items() if at < floor]:
                del ids[old]
        ids.setdefault(item_id, latest)
        self.latest = latest

    def __len__(self) -> int:
        return len(self.ids)
