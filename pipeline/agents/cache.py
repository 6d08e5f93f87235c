"""Table values with their decoded state models, so a hot key is not re-read and re-validated.

Every table value read from RocksDB costs a store lookup, a JSON decode and a pydantic
validation. This cache keeps, per (table, key), the value this process last read or wrote and
the model it came from. It is only valid while nobody else writes the key: this process owns
the key's partition, and a rebalance (recovery may replace a partition's store) clears it. Models
are shared between reads, which is safe because reducers never mutate the state they are given
(they copy first, ``tables.base.admit``).
"""

from __future__ import annotations

from typing import Any

from tables.base import TableState

Entry = tuple[dict[str, Any] | None, TableState | None]  # (value, its model or None)


class StateCache:
    """(table, key) -> (value, model); cleared whole when it outgrows ``limit`` keys."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._entries: dict[tuple[str, str], Entry] = {}

    def get(self, table: str, key: str) -> Entry | None:
        return self._entries.get((table, key))

    def put(self, table: str, key: str, value: dict[str, Any] | None, model: Any) -> None:
        if len(self._entries) >= self.limit:
            self._entries.clear()  # cheaper than LRU bookkeeping on every read
        self._entries[table, key] = (value, model)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
