"""PostgreSQL backend (psycopg 3): per-tenant advisory locks, executemany in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from connectors.audit.base import (
    CHECKPOINT_COLUMNS,
    ENTRY_COLUMNS,
    AuditStore,
    Checkpoint,
    EntryRejected,
    StoreUnavailable,
)
from connectors.audit.schema import PG_SCHEMA_LOCK, POSTGRES_DDL
from tables.audit_chain import ChainEntry

T = TypeVar("T")
_CONNECT_TIMEOUT = 5
# Advisory-lock namespace of the per-tenant chain locks (hashtextextended seed).
_TENANT_LOCK_SEED = 0x5741


class PostgresAuditStore(AuditStore):
    """WO_AUDIT_DSN; the connection is opened lazily and replaced after any connection error."""

    backend = "postgres"
    param = "%s"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._dsn,
                connect_timeout=_CONNECT_TIMEOUT,
                application_name="wo-stream-audit",
                # A dead server is noticed in seconds, not after the kernel's TCP timeout.
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
            )  # fmt: skip
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PG_SCHEMA_LOCK,))
                    conn.execute(POSTGRES_DDL)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _transaction(self, work: Callable[[Any], T], *, write: bool) -> T:
        try:
            conn = self._connect()
            with conn.transaction(), conn.cursor() as cur:
                return work(cur)
        except psycopg.DataError as exc:
            raise EntryRejected(type(exc).__name__) from exc
        except pg_errors.UniqueViolation as exc:
            # Another writer took the position first (should not happen under the lock): retry.
            raise StoreUnavailable(f"postgres: {type(exc).__name__}") from exc
        except psycopg.Error as exc:
            self._drop()
            raise StoreUnavailable(_describe(exc)) from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _lock_tenant(self, cur: Any, tenant_id: str) -> None:
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (tenant_id, _TENANT_LOCK_SEED)
        )

    def _existing_ids(self, cur: Any, tenant_id: str, event_ids: list[str]) -> set[str]:
        cur.execute(
            "SELECT event_id FROM audit_entry WHERE tenant_id = %s AND event_id = ANY(%s)",
            (tenant_id, event_ids),
        )
        return {r[0] for r in cur.fetchall()}

    def _fetch(self, cur: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cur.execute(sql, tuple(params))
        return cur.fetchall()

    def _insert_entries(self, cur: Any, entries: Sequence[ChainEntry]) -> None:
        marks = ",".join(["%s"] * len(ENTRY_COLUMNS))
        cur.executemany(
            f"INSERT INTO audit_entry ({', '.join(ENTRY_COLUMNS)}) VALUES ({marks})",
            [tuple(getattr(e, c) for c in ENTRY_COLUMNS) for e in entries],
        )

    def _insert_checkpoint(self, cur: Any, checkpoint: Checkpoint) -> None:
        marks = ",".join(["%s"] * len(CHECKPOINT_COLUMNS))
        cur.execute(
            f"INSERT INTO audit_checkpoint ({', '.join(CHECKPOINT_COLUMNS)}) VALUES ({marks})",
            tuple(getattr(checkpoint, c) for c in CHECKPOINT_COLUMNS),
        )

    def close(self) -> None:
        self._drop()


def _describe(exc: psycopg.Error) -> str:
    """Class and SQLSTATE; the text only for libpq's connection errors (host, port, user: what
    an operator needs). A server message's DETAIL can quote row values, and a DSN parse error
    quotes the DSN's own tokens (a password with a stray ``%``), so neither reaches the logs."""
    if exc.sqlstate is not None:
        return f"postgres: {type(exc).__name__} (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, psycopg.OperationalError):
        return f"postgres: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    return f"postgres: {type(exc).__name__} (message withheld: it may quote the DSN)"
