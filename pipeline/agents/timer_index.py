"""Per partition: the next timer deadline of each timer-table key and the window-shard keys.

The timer reducers only need calling for keys whose ``next_deadline`` has passed, and window
shards only need checking for retention; this index keeps both per partition in memory so a
tick does not read every value. It is rebuilt from the local tables (one scan) after every
rebalance, when the partitions a worker owns change, and kept current by every write.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.agents.steps import Write

Entry = tuple[str, str]  # (table, key)


class TimerIndex:
    def __init__(self, timed: Iterable[str], windowed: Iterable[str]) -> None:
        self.timed = frozenset(timed)
        self.windowed = frozenset(windowed)
        self._deadlines: dict[int, dict[Entry, int]] = {}
        self._shards: dict[int, set[Entry]] = {}

    def built(self, partition: int) -> bool:
        return partition in self._deadlines

    def clear(self) -> None:
        self._deadlines.clear()
        self._shards.clear()

    def build(self, partitions: Iterable[int], entries: Iterable[tuple[int, str, str, int | None]]):
        """Index ``entries`` (partition, table, key, deadline ms) of the given partitions."""
        wanted = set(partitions)
        for p in wanted:
            self._deadlines[p] = {}
            self._shards[p] = set()
        for p, table, key, deadline in entries:
            if p in wanted:
                self._add(p, table, key, deadline)

    def update(self, partition: int, write: Write) -> None:
        if partition not in self._deadlines:
            return  # not built yet: the build will read the stored value
        entry = (write.stage, write.key)
        self._deadlines[partition].pop(entry, None)
        self._shards[partition].discard(entry)
        if write.value is not None:
            self._add(partition, write.stage, write.key, write.deadline_ms)

    def due(self, partition: int, now_ms: int) -> list[Entry]:
        """Keys whose deadline is at or before ``now_ms``, in a stable order."""
        deadlines = self._deadlines.get(partition, {})
        return sorted(e for e, at in deadlines.items() if at <= now_ms)

    def shards(self, partition: int) -> list[Entry]:
        return sorted(self._shards.get(partition, ()))

    def _add(self, partition: int, table: str, key: str, deadline: int | None) -> None:
        if table in self.timed and deadline is not None:
            self._deadlines[partition][(table, key)] = deadline
        elif table in self.windowed:
            self._shards[partition].add((table, key))
