"""Audit append rate (hash chain, idempotency check, one transaction per batch) next to the raw
INSERT rate of the same database in the same run, on SQLite and PostgreSQL.

    python bench/audit_append.py [--events 20000] [--batches 1,100,500] [--tenants 4]

PostgreSQL: a throwaway server from Debian's binaries (fsync on), or ``WO_AUDIT_DSN``.
"Raw" = the same rows (precomputed) into a plain table with the same columns and keys, no
triggers, executemany in one transaction per batch: the database's own ceiling.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.audit.base import ENTRY_COLUMNS, AuditStore
from connectors.audit.postgres import PostgresAuditStore
from connectors.audit.schema import _ENTRY_COLUMNS
from connectors.audit.sqlite import SqliteAuditStore
from pipeline.audit_writer import entry_fields
from tables.audit_chain import EntryFields
from tests.bridge_testkit import status_event


def make_fields(n: int, tenants: int) -> list[EntryFields]:
    """``n`` audit entries' fields over ``tenants`` tenants and 50 work orders each."""
    names = [f"bench_{uuid.uuid4().hex[:8]}" for _ in range(tenants)]
    wos = {t: [str(uuid.uuid4()) for _ in range(50)] for t in names}
    out = []
    for i in range(n):
        t = names[i % tenants]
        out.append(entry_fields(status_event(t, wos[t][i % 50], i // (tenants * 50) + 1)))
    return out


def rate(n: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def bench_append(store: AuditStore, items: list[EntryFields], batch: int) -> float:
    def run() -> None:
        for i in range(0, len(items), batch):
            store.append(items[i : i + batch])

    return rate(len(items), run)


def raw_rows(items: list[EntryFields]) -> list[tuple[Any, ...]]:
    run = uuid.uuid4().hex[:6]
    return [
        (f"{f.tenant_id}{run}", i + 1, f.event_id, f.event_type, f.event_version, f.actor_id,
         f.actor_type, f.actor_role, f.event_ts, f.event_ts, f.event_json, "0" * 64, "f" * 64)
        for i, f in enumerate(items)
    ]  # fmt: skip


def bench_raw_sqlite(path: Path, rows: list[tuple[Any, ...]], batch: int) -> float:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"CREATE TABLE IF NOT EXISTS audit_raw ({_ENTRY_COLUMNS})")
    sql = f"INSERT INTO audit_raw ({', '.join(ENTRY_COLUMNS)}) VALUES ({','.join('?' * 13)})"

    def run() -> None:
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[i : i + batch])
            conn.execute("COMMIT")

    try:
        return rate(len(rows), run)
    finally:
        conn.close()


def bench_raw_pg(dsn: str, rows: list[tuple[Any, ...]], batch: int) -> float:
    import psycopg

    marks = ",".join(["%s"] * 13)
    sql = f"INSERT INTO audit_raw ({', '.join(ENTRY_COLUMNS)}) VALUES ({marks})"
    with psycopg.connect(dsn) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS audit_raw ({_ENTRY_COLUMNS})")
        conn.commit()

        def run() -> None:
            for i in range(0, len(rows), batch):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(sql, rows[i : i + batch])

        return rate(len(rows), run)


def report(db: str, batch: int, n: int, append: float, raw: float) -> None:
    print(f"{db:<10} batch {batch:>4}  {n:>6} entries  append {append:>9,.0f}/s  "
          f"raw insert {raw:>9,.0f}/s  append/raw {append / raw:6.1%}")  # fmt: skip


def run_db(db: str, open_store: Callable[[], AuditStore], raw: Callable[..., float],
           args: argparse.Namespace) -> None:  # fmt: skip
    for batch in args.batches:
        n = args.events if batch > 1 else min(args.events, 2000)
        items = make_fields(n, args.tenants)
        store = open_store()
        try:
            store.head("warm-up")
            appended = bench_append(store, items, batch)
        finally:
            store.close()
        report(db, batch, n, appended, raw(raw_rows(items), batch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batches", default="1,100,500")
    parser.add_argument("--tenants", type=int, default=4)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    print(f"audit append benchmark: {os.cpu_count()} cores, {args.tenants} tenants, "
          "one transaction per batch (batch 1: at most 2000 entries)")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.sqlite3"
        run_db("sqlite", lambda: SqliteAuditStore(path),
               lambda rows, b: bench_raw_sqlite(path, rows, b), args)  # fmt: skip

    dsn = os.environ.get("WO_AUDIT_DSN")
    if dsn:
        run_db("postgres", lambda: PostgresAuditStore(dsn),
               lambda rows, b: bench_raw_pg(dsn, rows, b), args)  # fmt: skip
        return 0
    from tests.pg import PgServer, pg_bin_dir

    if pg_bin_dir() is None:
        print("postgres: skipped (no WO_AUDIT_DSN and no /usr/lib/postgresql/*/bin)")
        return 0
    with PgServer(fsync=True) as pg:
        run_db("postgres", lambda: PostgresAuditStore(pg.dsn),
               lambda rows, b: bench_raw_pg(pg.dsn, rows, b), args)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
