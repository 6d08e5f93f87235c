"""One batch of source records: its planned table writes, coalesced per key, before they land.

The runner plans every record of a batch first (reducers, no I/O), sends all their outputs,
and only then writes the tables. While planning, a record must see what the records before it
in the same batch did to a key, so reads go through :class:`Pending` first; at the end each
touched key is written once, with its last value (one RocksDB put and one changelog record per
key and batch, however many records of the batch updated it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.agents.steps import Write


@dataclass(slots=True)
class PendingWrite:
    """The latest planned value of one table key in this batch, and where to write it."""

    write: Write  # value None: delete
    partition: int
    context: Any  # the source event whose partition the write belongs to (Faust's context)


class Pending:
    """Planned writes of the current batch, by (table, key), in first-touched order."""

    __slots__ = ("_writes",)

    def __init__(self) -> None:
        self._writes: dict[tuple[str, str], PendingWrite] = {}

    def get(self, table: str, key: str) -> Write | None:
        """The planned write (value None: deleted), or None when the batch did not touch it."""
        pending = self._writes.get((table, key))
        return None if pending is None else pending.write

    def add(self, write: Write, partition: int, context: Any) -> None:
        self._writes[write.stage, write.key] = PendingWrite(write, partition, context)

    def forget_state(self, table: str, key: str) -> None:
        """Keep the planned value of (table, key) but not its decoded state."""
        pending = self._writes.get((table, key))
        if pending is not None and pending.write.state is not None:
            pending.write = replace(pending.write, state=None)

    def writes(self) -> list[PendingWrite]:
        return list(self._writes.values())

    def __len__(self) -> int:
        return len(self._writes)
