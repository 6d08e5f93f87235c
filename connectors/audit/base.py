"""The audit store contract and the append algorithm both backends share (sync, one thread)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from tables.audit_chain import ChainEntry, ChainHead, EntryFields, format_ts, seal_all

T = TypeVar("T")

ENTRY_COLUMNS = (
    "tenant_id", "seq", "event_id", "event_type", "event_version", "actor_id", "actor_type",
    "actor_role", "event_ts", "recorded_at", "event_json", "prev_hash", "hash",
)  # fmt: skip
CHECKPOINT_COLUMNS = (
    "tenant_id", "seq", "head_hash", "event_id", "signed_at", "key_id", "signature",
)  # fmt: skip
PAGE = 5000


class StoreUnavailable(Exception):
    """The database cannot be reached or refused for a transient reason: retry later."""


class EntryRejected(Exception):
    """The database refused the content itself (a data error): retrying cannot help."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that a tenant's chain had ``head_hash`` at ``seq``."""

    tenant_id: str
    seq: int
    head_hash: str
    event_id: str
    signed_at: str
    key_id: str
    signature: str  # hex


@dataclass(slots=True)
class AppendResult:
    """What one append transaction did."""

    appended: int = 0
    duplicates: int = 0
    heads: dict[str, ChainHead] = field(default_factory=dict)


def group_by_tenant(items: Iterable[EntryFields]) -> dict[str, list[EntryFields]]:
    """Items per tenant in arrival order, later copies of an event id dropped."""
    out: dict[str, list[EntryFields]] = {}
    seen: set[tuple[str, str]] = set()
    for item in items:
        key = (item.tenant_id, item.event_id)
        if key in seen:
            continue
        seen.add(key)
        out.setdefault(item.tenant_id, []).append(item)
    return out


class AuditStore(abc.ABC):
    """An append-only audit table; every method runs one transaction (call from one thread)."""

    backend: str = "?"

    # -- what a backend provides ---------------------------------------------------------

    @abc.abstractmethod
    def _transaction(self, work: Callable[[Any], T], *, write: bool) -> T:
        """Run ``work(cursor)`` in one transaction; map driver errors to ours."""

    @abc.abstractmethod
    def _lock_tenant(self, cur: Any, tenant_id: str) -> None:
        """Serialise appends to one tenant's chain until the transaction ends."""

    @abc.abstractmethod
    def _existing_ids(self, cur: Any, tenant_id: str, event_ids: list[str]) -> set[str]: ...

    @abc.abstractmethod
    def _fetch(self, cur: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _insert_entries(self, cur: Any, entries: Sequence[ChainEntry]) -> None: ...

    @abc.abstractmethod
    def _insert_checkpoint(self, cur: Any, checkpoint: Checkpoint) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # placeholder style of the driver ("?" or "%s")
    param: str = "?"

    # -- shared ----------------------------------------------------------------------------

    def append(self, items: Sequence[EntryFields], now: datetime | None = None) -> AppendResult:
        """Append the new events (idempotent by tenant + event id) in one transaction."""
        recorded = format_ts(now or datetime.now(UTC))
        groups = group_by_tenant(items)

        def work(cur: Any) -> AppendResult:
            result = AppendResult()
            for tenant_id in sorted(groups):  # one lock order: no deadlock between writers
                group = groups[tenant_id]
                self._lock_tenant(cur, tenant_id)
                known = self._existing_ids(cur, tenant_id, [g.event_id for g in group])
                fresh = [g for g in group if g.event_id not in known]
                result.duplicates += len(group) - len(fresh)
                if not fresh:
                    continue
                entries, head = seal_all(fresh, self._head(cur, tenant_id), recorded)
                self._insert_entries(cur, entries)
                result.appended += len(entries)
                result.heads[tenant_id] = head
            result.duplicates += len(items) - sum(len(g) for g in groups.values())
            return result

        return self._transaction(work, write=True)

    def _head(self, cur: Any, tenant_id: str) -> ChainHead:
        p = self.param
        rows = self._fetch(
            cur,
            f"SELECT seq, hash, recorded_at, event_id FROM audit_entry WHERE tenant_id = {p} "
            "ORDER BY seq DESC LIMIT 1",
            (tenant_id,),
        )
        return ChainHead(*rows[0]) if rows else ChainHead()

    def head(self, tenant_id: str) -> ChainHead:
        """The last entry of a tenant's chain (genesis head when empty)."""
        return self._transaction(lambda cur: self._head(cur, tenant_id), write=False)

    def tenants(self) -> list[str]:
        """Every tenant with entries or checkpoints, sorted."""
        sql = (
            "SELECT tenant_id FROM audit_entry GROUP BY tenant_id UNION "
            "SELECT tenant_id FROM audit_checkpoint GROUP BY tenant_id"
        )
        rows = self._transaction(lambda cur: self._fetch(cur, sql, ()), write=False)
        return sorted(r[0] for r in rows)

    def entries(self, tenant_id: str, after_seq: int = 0, limit: int = PAGE) -> list[ChainEntry]:
        """Up to ``limit`` entries with seq > ``after_seq``, in seq order."""
        p = self.param
        sql = (
            f"SELECT {', '.join(ENTRY_COLUMNS)} FROM audit_entry "
            f"WHERE tenant_id = {p} AND seq > {p} ORDER BY seq LIMIT {p}"
        )
        rows = self._transaction(
            lambda cur: self._fetch(cur, sql, (tenant_id, after_seq, limit)), write=False
        )
        return [ChainEntry(*row) for row in rows]

    def iter_entries(self, tenant_id: str, after_seq: int = 0) -> Iterable[ChainEntry]:
        """Every entry after ``after_seq`` in seq order, read page by page."""
        while True:
            page = self.entries(tenant_id, after_seq)
            yield from page
            if len(page) < PAGE:
                return
            after_seq = page[-1].seq

    def count(self, tenant_id: str) -> int:
        p = self.param
        sql = f"SELECT count(*) FROM audit_entry WHERE tenant_id = {p}"
        rows = self._transaction(lambda cur: self._fetch(cur, sql, (tenant_id,)), write=False)
        return int(rows[0][0])

    def checkpoints(self, tenant_id: str) -> list[Checkpoint]:
        """A tenant's signed checkpoints, oldest first."""
        p = self.param
        sql = (
            f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM audit_checkpoint "
            f"WHERE tenant_id = {p} ORDER BY seq, signed_at"
        )
        rows = self._transaction(lambda cur: self._fetch(cur, sql, (tenant_id,)), write=False)
        return [Checkpoint(*row) for row in rows]

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._transaction(lambda cur: self._insert_checkpoint(cur, checkpoint), write=True)
