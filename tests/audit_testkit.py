"""Helpers of the audit tests: backends, raw (trigger-bypassing) tampering, a signing key."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from connectors.audit import sqlite_path
from connectors.audit.base import ENTRY_COLUMNS
from pipeline.settings import Settings
from tables.audit_chain import ChainEntry, ChainHead, EntryFields, seal_all
from tests.pg import PgServer, pg_bin_dir

SIGNING_SEED = bytes(range(32))
SIGNING_KEY = base64.b64encode(SIGNING_SEED).decode()
NO_PG = "PostgreSQL binaries not found under /usr/lib/postgresql (apt-get install postgresql)"


def pg_server() -> Iterator[PgServer]:
    """Body of a PostgreSQL fixture; skips only when the Debian binaries are absent."""
    if pg_bin_dir() is None:
        pytest.skip(NO_PG)
    with PgServer() as server:
        yield server


def audit_settings(data_dir: Path, dsn: str | None, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "audit_dsn": dsn,
        "audit_signing_key": SIGNING_KEY,
        "nats_url": None,
        "kafka_bootstrap": None,
    }
    values.update(extra)
    return Settings(**values)


class Raw:
    """Direct SQL on the audit database with the append-only guards switched off (tampering)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pg = settings.audit_dsn is not None

    @contextlib.contextmanager
    def connect(self, *, guarded: bool = True) -> Iterator[Any]:
        if self.pg:
            assert self.settings.audit_dsn is not None
            with psycopg.connect(self.settings.audit_dsn.get_secret_value(), autocommit=True) as c:
                if not guarded:
                    c.execute("SET session_replication_role = replica")  # triggers off
                yield c
            return
        conn = sqlite3.connect(sqlite_path(self.settings), isolation_level=None)
        try:
            if not guarded:
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'"):
                    conn.execute(f"DROP TRIGGER {name}")
            yield conn
        finally:
            if not guarded:
                from connectors.audit.schema import SQLITE_DDL

                conn.executescript(SQLITE_DDL)
            conn.close()

    def q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def rows(self, tenant: str) -> list[ChainEntry]:
        if not self.pg and not sqlite_path(self.settings).exists():
            return []  # the writer has not opened its store yet
        sql = self.q(
            f"SELECT {', '.join(ENTRY_COLUMNS)} FROM audit_entry WHERE tenant_id = ? ORDER BY seq"
        )
        with self.connect() as c:
            try:
                cur = c.execute(sql, (tenant,))
            except (psycopg.errors.UndefinedTable, sqlite3.OperationalError) as exc:
                if "no such table" in str(exc) or not isinstance(exc, sqlite3.Error):
                    return []  # the writer is creating its schema right now
                raise
            return [ChainEntry(*r) for r in cur.fetchall()]

    def change_payload(self, tenant: str, seq: int, *, rehash: bool = False) -> None:
        """Edit the stored event (data field); ``rehash`` rewrites the chain from there on."""
        entries = self.rows(tenant)
        target = next(e for e in entries if e.seq == seq)
        event = orjson.loads(target.event_json)
        event["data"]["tampered"] = True
        changed = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
        with self.connect(guarded=False) as c:
            c.execute(
                self.q("UPDATE audit_entry SET event_json = ? WHERE tenant_id = ? AND seq = ?"),
                (changed, tenant, seq),
            )
        if rehash:
            self.rehash_from(tenant, seq)

    def rehash_from(self, tenant: str, seq: int) -> None:
        """Recompute every hash and link from ``seq`` on, as a thorough forger would."""
        entries = self.rows(tenant)
        before = [e for e in entries if e.seq < seq]
        head = (
            ChainHead(before[-1].seq, before[-1].hash, before[-1].recorded_at)
            if before
            else ChainHead()
        )
        tail = [e for e in entries if e.seq >= seq]
        items = [EntryFields(*(getattr(e, f) for f in EntryFields.__slots__)) for e in tail]
        resealed, _ = seal_all(items, head, tail[0].recorded_at)
        with self.connect(guarded=False) as c:
            for e in resealed:
                c.execute(
                    self.q("UPDATE audit_entry SET prev_hash = ?, hash = ?, recorded_at = ? "
                           "WHERE tenant_id = ? AND seq = ?"),
                    (e.prev_hash, e.hash, e.recorded_at, tenant, e.seq),
                )  # fmt: skip

    def delete(self, tenant: str, seq: int) -> None:
        with self.connect(guarded=False) as c:
            c.execute(
                self.q("DELETE FROM audit_entry WHERE tenant_id = ? AND seq = ?"), (tenant, seq)
            )

    def swap(self, tenant: str, a: int, b: int) -> None:
        """Exchange the positions (seq) of two entries."""
        with self.connect(guarded=False) as c:
            upd = self.q("UPDATE audit_entry SET seq = ? WHERE tenant_id = ? AND seq = ?")
            c.execute(upd, (1_000_000, tenant, a))
            c.execute(upd, (a, tenant, b))
            c.execute(upd, (b, tenant, 1_000_000))
