"""Read-only access to the worker's RocksDB tables: one key, or one tenant's local keys.

Only the partitions this worker owns *actively* count as its data: a standby replica may lag,
so a key of another partition is answered by its owner (``pipeline.web.cluster``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faust

from pipeline.topics import partition_of

Row = dict[str, Any]


class TableReader:
    """Reads ``app.tables`` without ever writing; knows which partitions are active here."""

    def __init__(self, app: faust.App, *, clock_table: str | None = None) -> None:
        self.app = app
        self.clock_table = clock_table  # control clock: table of partition -> tick (epoch ms)

    def partitions(self, table: str) -> int:
        """Number of partitions of ``table`` (its changelog's)."""
        return int(self.app.tables[table].partitions or self.app.conf.topic_partitions)

    def changelog(self, table: str) -> str:
        """Changelog topic name of ``table`` (what the assignor distributes)."""
        return str(self.app.tables[table].changelog_topic.get_topic_name())

    def partition_of(self, table: str, key: str) -> int:
        """The partition holding ``key``: the project's murmur2 of the raw key string."""
        return partition_of(key, self.partitions(table))

    def active_partitions(self, table: str) -> set[int]:
        """Partitions of ``table`` this worker owns actively now."""
        topic = self.changelog(table)
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def get(self, table: str, key: str) -> Row | None:
        """The value under ``key`` in the local store (the caller made sure it is active here)."""
        value = self.app.tables[table].get(key)
        return value if isinstance(value, dict) else None

    def scan(self, table: str, tenant: str, project: Callable[[Row], list[Row]]
             ) -> tuple[list[int], list[Row]]:  # fmt: skip
        """``project`` of every value of ``tenant`` in this worker's active partitions, and
        those partitions. No ``await``: the partitions and the rows belong together."""
        actives = self.active_partitions(table)
        prefix = f"{tenant}:"
        store = self.app.tables[table]
        rows: list[Row] = []
        for key in list(store.keys()):
            if not (isinstance(key, str) and key.startswith(prefix)):
                continue
            if self.partition_of(table, key) not in actives:
                continue
            value = store.get(key)
            if isinstance(value, dict) and value.get("tenant") == tenant:
                rows += project(value)
        return sorted(actives), rows

    def now_ms(self) -> int:
        """The worker's clock: the latest control tick if the clock is controlled, else wall."""
        if self.clock_table is not None:
            ticks = [v for v in self.app.tables[self.clock_table].values() if isinstance(v, int)]
            if ticks:
                return max(ticks)
        return int(time.time() * 1000)
