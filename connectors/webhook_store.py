"""Durable webhook delivery state: SQLite (WAL, synchronous=FULL) under the data dir.

One row per (subscription, event id), so enqueueing is idempotent: a Kafka record read again
after a crash or a rebalance inserts nothing. A row is ``pending`` (with its next attempt time),
``delivered`` or ``dead``; the event body is dropped once delivered and kept for a dead row (its
dead letter, then a possible :meth:`WebhookStore.requeue`). Finished rows are kept for the
retention period so that a redelivered event is still recognised, then pruned. A delivery
handed to an attempt is leased (``claim_due``), so it is never claimed twice while its attempt
runs; leases are dropped when the (single) dispatcher starts.

The dispatcher commits its Kafka offsets only after ``enqueue`` returned, and records each
attempt's result before it forgets the attempt: a restart loses nothing and resends nothing
that was recorded as delivered (a crash between a receiver's 2xx and that record resends one
delivery, which receivers deduplicate by ``Wo-Event-Id``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tables.webhooks import DeliveryState, Status

P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    subscription_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body BLOB,
    source TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    first_attempt_at REAL,
    last_attempt_at REAL,
    last_error TEXT,
    finished_at REAL,
    dead_reason TEXT,
    dlq_published INTEGER NOT NULL DEFAULT 0,
    leased_until REAL,
    PRIMARY KEY (subscription_id, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due
    ON deliveries (status, subscription_id, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (status, finished_at);
-- the dead-letter publisher's scan: dead rows not yet in the DLQ, without walking the others
CREATE INDEX IF NOT EXISTS deliveries_dead_unpublished
    ON deliveries (status, dlq_published, finished_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_STATE_COLUMNS = (
    "status, attempts, next_attempt_at, first_attempt_at, last_attempt_at, last_error, "
    "finished_at, dead_reason"
)
_COLUMNS = f"subscription_id, event_id, tenant_id, event_type, created_at, source, {_STATE_COLUMNS}"


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to enqueue: one matching subscription for one event."""

    subscription_id: str
    event_id: str
    tenant_id: str
    event_type: str
    body: bytes
    source: str  # "topic:partition:offset" of the Kafka record


@dataclass(frozen=True, slots=True)
class Delivery:
    """A stored delivery; ``body`` is None once it is no longer kept."""

    subscription_id: str
    event_id: str
    tenant_id: str
    event_type: str
    created_at: float
    source: str | None
    state: DeliveryState
    body: bytes | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.subscription_id, self.event_id


def _delivery(row: Sequence[Any], body: bytes | None = None) -> Delivery:
    sub, event, tenant, etype, created, source, *state = row
    status, attempts, next_at, first, last, error, finished, reason = state
    return Delivery(
        sub, event, tenant, etype, created, source,
        DeliveryState(Status(status), attempts, next_at, first, last, error, finished, reason),
        body,
    )  # fmt: skip


@dataclass(frozen=True)
class Requeued:
    """What :meth:`WebhookStore.requeue` did (or would do, ``dry_run``)."""

    keys: list[tuple[str, str]]  # (subscription id, event id), oldest death first
    without_body: int
    not_yet_dead_lettered: int  # run again in a moment
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "requeued": 0 if self.dry_run else len(self.keys),
            "matched": len(self.keys),
            "without_body": self.without_body,
            "not_yet_dead_lettered": self.not_yet_dead_lettered,
            "dry_run": self.dry_run,
            "deliveries": [f"{sub}:{event}" for sub, event in self.keys],
        }


class WebhookStore:
    """Synchronous SQLite store; use it from one thread (see AsyncWebhookStore)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed enqueue survives power loss
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def enqueue(self, items: Sequence[NewDelivery], now: float) -> int:
        """Insert the new deliveries (due at ``now``) in one transaction; returns how many."""
        if not items:
            return 0
        rows = [
            (i.subscription_id, i.event_id, i.tenant_id, i.event_type, i.body, i.source, now, now)
            for i in items
        ]
        with self._tx():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO deliveries (subscription_id, event_id, tenant_id, "
                "event_type, body, source, status, attempts, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def due(self, subscription_id: str, now: float, limit: int) -> list[Delivery]:
        """The earliest-due pending, unleased deliveries of one subscription, with bodies."""
        cur = self._db.execute(
            f"SELECT {_COLUMNS}, body FROM deliveries WHERE status = 'pending' "
            "AND subscription_id = ? AND next_attempt_at <= ? "
            "AND (leased_until IS NULL OR leased_until <= ?) "
            "ORDER BY next_attempt_at, created_at LIMIT ?",
            (subscription_id, now, now, limit),
        )
        return [_delivery(row[:-1], row[-1]) for row in cur.fetchall()]

    def claim_due(
        self, subscription_id: str, now: float, limit: int, lease_until: float
    ) -> list[Delivery]:
        """``due`` and lease them in one transaction: a claimed delivery is not due again until
        its attempt is recorded (or the lease runs out), whatever order the calls finish in."""
        with self._tx():
            rows = self.due(subscription_id, now, limit)
            self._db.executemany(
                "UPDATE deliveries SET leased_until = ? WHERE subscription_id = ? AND event_id = ?",
                [(lease_until, *d.key) for d in rows],
            )
        return rows

    def release_leases(self) -> int:
        """Forget every lease: at start no attempt of this (single) dispatcher is running."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE deliveries SET leased_until = NULL WHERE leased_until IS NOT NULL"
            )
            return cur.rowcount

    def next_due_for(self, subscription_id: str, now: float) -> float | None:
        """The earliest time after ``now`` a pending delivery of the subscription can be
        claimed: its next attempt, or the end of its lease (an attempt that crashed before
        recording its result leaves the row leased, due again when the lease runs out)."""
        cur = self._db.execute(
            "SELECT MIN(MAX(next_attempt_at, COALESCE(leased_until, 0))) FROM deliveries "
            "WHERE status = 'pending' AND subscription_id = ? "
            "AND MAX(next_attempt_at, COALESCE(leased_until, 0)) > ?",
            (subscription_id, now),
        )
        return cur.fetchone()[0]

    def pending_count(self) -> int:
        cur = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
        return cur.fetchone()[0]

    def record(self, key: tuple[str, str], state: DeliveryState) -> None:
        """Persist the state after an attempt; a delivered row drops its body."""
        with self._tx():
            self._db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, "
                "first_attempt_at = ?, last_attempt_at = ?, last_error = ?, finished_at = ?, "
                "dead_reason = ?, leased_until = NULL, "
                "body = CASE WHEN ? = 'delivered' THEN NULL ELSE body END "
                "WHERE subscription_id = ? AND event_id = ?",
                (
                    state.status.value, state.attempts, state.next_attempt_at,
                    state.first_attempt_at, state.last_attempt_at, state.last_error,
                    state.finished_at, state.dead_reason, state.status.value, *key,
                ),
            )  # fmt: skip

    def get(self, subscription_id: str, event_id: str) -> Delivery | None:
        cur = self._db.execute(
            f"SELECT {_COLUMNS}, body FROM deliveries WHERE subscription_id = ? AND event_id = ?",
            (subscription_id, event_id),
        )
        row = cur.fetchone()
        return None if row is None else _delivery(row[:-1], row[-1])

    def unpublished_dead(self, limit: int = 500) -> list[Delivery]:
        """Dead deliveries whose dead letter is not yet published, with their bodies."""
        cur = self._db.execute(
            f"SELECT {_COLUMNS}, body FROM deliveries WHERE status = 'dead' "
            "AND dlq_published = 0 ORDER BY finished_at LIMIT ?",
            (limit,),
        )
        return [_delivery(row[:-1], row[-1]) for row in cur.fetchall()]

    def mark_dead_lettered(self, keys: Iterable[tuple[str, str]]) -> None:
        """The dead letters are stored in the DLQ. The bodies stay until the rows are pruned,
        so that a dead delivery can be requeued (:meth:`requeue`) after its endpoint is fixed."""
        with self._tx():
            self._db.executemany(
                "UPDATE deliveries SET dlq_published = 1 "
                "WHERE subscription_id = ? AND event_id = ? AND status = 'dead'",
                list(keys),
            )

    def requeue(
        self,
        now: float,
        *,
        subscription_id: str | None = None,
        event_ids: Sequence[str] = (),
        reason: str | None = None,
        dry_run: bool = False,
    ) -> Requeued:
        """Dead deliveries matching the filters become pending again, due ``now``, with a fresh
        attempt count and retry budget; if they die again they are dead-lettered again. Rows
        whose body is gone (dead-lettered by a version that dropped it) cannot be sent again:
        they are counted in ``without_body`` and left dead."""
        # Not yet in the DLQ: the dead-letter publisher may be publishing it right now, and its
        # mark would then miss a row turned pending; such rows are counted, not requeued.
        where, args = ["status = 'dead'"], []
        if subscription_id is not None:
            where.append("subscription_id = ?")
            args.append(subscription_id)
        if event_ids:
            where.append(f"event_id IN ({','.join('?' * len(event_ids))})")
            args.extend(event_ids)
        if reason is not None:
            where.append("dead_reason = ?")
            args.append(reason)
        cond = " AND ".join(where)
        with self._tx():
            keys = self._db.execute(
                f"SELECT subscription_id, event_id FROM deliveries WHERE {cond} "
                "AND body IS NOT NULL AND dlq_published = 1 ORDER BY finished_at",
                args,
            ).fetchall()
            bodiless = self._db.execute(
                f"SELECT COUNT(*) FROM deliveries WHERE {cond} AND body IS NULL", args
            ).fetchone()[0]
            publishing = self._db.execute(
                f"SELECT COUNT(*) FROM deliveries WHERE {cond} AND body IS NOT NULL "
                "AND dlq_published = 0",
                args,
            ).fetchone()[0]
            if not dry_run and keys:
                # the running dispatcher's cue to look at every subscription again
                self._db.execute(
                    "INSERT INTO meta VALUES ('requeues', 1) "
                    "ON CONFLICT (key) DO UPDATE SET value = value + 1"
                )
                self._db.executemany(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, "
                    "first_attempt_at = NULL, last_attempt_at = NULL, last_error = NULL, "
                    "finished_at = NULL, dead_reason = NULL, dlq_published = 0, "
                    "leased_until = NULL WHERE subscription_id = ? AND event_id = ? "
                    "AND status = 'dead'",
                    [(now, *key) for key in keys],
                )
        return Requeued([(k[0], k[1]) for k in keys], bodiless, publishing, dry_run)

    def requeue_mark(self) -> int:
        """How many requeues changed rows so far (a cheap read: the dispatcher polls it)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'requeues'").fetchone()
        return 0 if row is None else row[0]

    def counts(self) -> dict[str, int]:
        """Rows by status (all three keys present)."""
        out = {s.value: 0 for s in Status}
        out.update(self._db.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))
        return out

    def prune(self, finished_before: float) -> int:
        """Forget finished deliveries (dead ones only once dead-lettered); returns how many."""
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM deliveries WHERE finished_at < ? AND (status = 'delivered' "
                "OR (status = 'dead' AND dlq_published = 1))",
                (finished_before,),
            )
            return cur.rowcount

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class AsyncWebhookStore:
    """Runs every store call on one dedicated thread, off the event loop."""

    def __init__(self, store: WebhookStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wo-webhook-store")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        await self.call(self.store.close)
        self._pool.shutdown(wait=True)
