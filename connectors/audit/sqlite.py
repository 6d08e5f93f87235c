"""SQLite backend: one file in the data dir, WAL, synchronous=FULL, BEGIN IMMEDIATE per append."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from connectors.audit.base import (
    CHECKPOINT_COLUMNS,
    ENTRY_COLUMNS,
    AuditStore,
    Checkpoint,
    EntryRejected,
    StoreUnavailable,
)
from connectors.audit.schema import SQLITE_DDL
from tables.audit_chain import ChainEntry

T = TypeVar("T")
_BUSY_TIMEOUT_MS = 10_000
_IN_CHUNK = 500  # bound on "?" placeholders per statement


class SqliteAuditStore(AuditStore):
    """The embedded default; the connection is opened lazily and reopened after an error."""

    backend = "sqlite"
    param = "?"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
            try:
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL in WAL mode: a committed append survives power loss, not only a crash.
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(SQLITE_DDL)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _transaction(self, work: Callable[[Any], T], *, write: bool) -> T:
        try:
            conn = self._connect()
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = work(cur)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            return result
        except sqlite3.DataError as exc:
            raise EntryRejected(type(exc).__name__) from exc
        except sqlite3.Error as exc:
            # Locked, I/O, full disk, a lost file: transient from the writer's point of view.
            self._drop()
            raise StoreUnavailable(f"sqlite: {type(exc).__name__}: {exc}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _lock_tenant(self, cur: Any, tenant_id: str) -> None:
        """BEGIN IMMEDIATE holds the database write lock already."""

    def _existing_ids(self, cur: Any, tenant_id: str, event_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(event_ids), _IN_CHUNK):
            chunk = event_ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            cur.execute(
                f"SELECT event_id FROM audit_entry WHERE tenant_id = ? AND event_id IN ({marks})",
                (tenant_id, *chunk),
            )
            found.update(r[0] for r in cur.fetchall())
        return found

    def _fetch(self, cur: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cur.execute(sql, tuple(params))
        return cur.fetchall()

    def _insert_entries(self, cur: Any, entries: Sequence[ChainEntry]) -> None:
        marks = ",".join("?" * len(ENTRY_COLUMNS))
        cur.executemany(
            f"INSERT INTO audit_entry ({', '.join(ENTRY_COLUMNS)}) VALUES ({marks})",
            [_row(e) for e in entries],
        )

    def _insert_checkpoint(self, cur: Any, checkpoint: Checkpoint) -> None:
        marks = ",".join("?" * len(CHECKPOINT_COLUMNS))
        cur.execute(
            f"INSERT INTO audit_checkpoint ({', '.join(CHECKPOINT_COLUMNS)}) VALUES ({marks})",
            _checkpoint_row(checkpoint),
        )

    def close(self) -> None:
        self._drop()


def _row(e: ChainEntry) -> tuple[Any, ...]:
    return tuple(getattr(e, c) for c in ENTRY_COLUMNS)


def _checkpoint_row(c: Checkpoint) -> tuple[Any, ...]:
    return tuple(getattr(c, name) for name in CHECKPOINT_COLUMNS)
