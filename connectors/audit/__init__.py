"""Audit trail storage: SQLite (embedded default) or PostgreSQL (``WO_AUDIT_DSN``), append-only."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from connectors.audit.base import (
    AppendResult,
    AuditStore,
    Checkpoint,
    EntryRejected,
    StoreUnavailable,
)
from pipeline.settings import Settings

T = TypeVar("T")

SQLITE_FILE = Path("audit") / "audit.sqlite3"


def sqlite_path(settings: Settings) -> Path:
    """Where the embedded default keeps the audit trail: ``{data_dir}/audit/audit.sqlite3``."""
    return Path(settings.data_dir) / SQLITE_FILE


def open_store(settings: Settings) -> AuditStore:
    """PostgreSQL when ``audit_dsn`` is set, else the SQLite file in the data dir (lazy)."""
    if settings.audit_dsn is not None:
        from connectors.audit.postgres import PostgresAuditStore

        return PostgresAuditStore(settings.audit_dsn.get_secret_value())
    from connectors.audit.sqlite import SqliteAuditStore

    return SqliteAuditStore(sqlite_path(settings))


def describe(settings: Settings) -> str:
    """Where the audit trail lives, for logs (never the DSN: it can hold a password)."""
    return "postgres (WO_AUDIT_DSN)" if settings.audit_dsn else f"sqlite {sqlite_path(settings)}"


class AsyncStore:
    """Runs a store's blocking calls on one dedicated thread (one connection, one thread)."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"audit-{store.backend}")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        await self.call(self.store.close)
        self._pool.shutdown(wait=True)


__all__ = [
    "AppendResult",
    "AsyncStore",
    "AuditStore",
    "Checkpoint",
    "EntryRejected",
    "StoreUnavailable",
    "describe",
    "open_store",
    "sqlite_path",
]
