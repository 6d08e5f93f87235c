"""Test worker: per-key ledger of keyed events in a RocksDB table, idempotent by event id.

Run from the repo root as ``python -m tests.apps.ledger_worker``; configured through the usual
``WO_*`` settings (``WO_KAFKA_BOOTSTRAP``, ``WO_KAFKA_TRANSPORT``, ``WO_DATA_DIR``,
``WO_APP_ID``, ``WO_WEB_PORT``, ``WO_PARTITIONS``) plus ``LEDGER_TOPIC``, the source topic.

Source events are JSON ``{"key": str, "id": int}``; ids of one key grow in produce order
and one key lives in one partition, so a key's events arrive in id order, and at-least-once
redelivery after a crash replays a suffix of them. Per key the table holds::

    {"count": <ids applied>, "checksum": <order-sensitive hash of the ids>, "last_id": <id>}

An event whose id is not above ``last_id`` was applied already and is skipped, so
redelivery never counts twice, and a lost table update shows as a wrong count/checksum.

``GET /ledger/`` returns, read from the worker's table::

    {"state": {key: entry}, "recovered": {key: entry} | null, "applied": n, "skipped": n}

``recovered`` is the table as the first event found it, i.e. the state table recovery
restored before the streams resumed (null until an event arrives); ``applied`` and
``skipped`` count this process's events.

Offsets are committed only at shutdown (huge commit interval), so a ``kill -9`` makes the
restarted worker re-read everything it processed: the idempotency path always runs.
"""

from __future__ import annotations

import os
from typing import Any

import faust

from pipeline.app import create_app, run_worker
from pipeline.settings import Settings

CHECKSUM_MODULUS = (1 << 61) - 1


def checksum_step(checksum: int, event_id: int) -> int:
    """Fold one applied id into a key's checksum (the tests compute the same)."""
    return (checksum * 1_000_003 + event_id + 1) % CHECKSUM_MODULUS


def build_app(settings: Settings) -> faust.App:
    """The ledger app on ``settings``; module-level state is avoided so tests can import."""
    app = create_app(
        settings,
        # commit offsets only on clean shutdown (see module docstring)
        broker_commit_interval=3600.0,
        broker_commit_every=10_000_000,
    )
    source = app.topic(
        os.environ["LEDGER_TOPIC"],
        key_type=bytes,
        value_serializer="json",
        partitions=settings.partitions,
    )
    ledger = app.Table("ledger", default=None, partitions=settings.partitions)
    status: dict[str, Any] = {"recovered": None, "applied": 0, "skipped": 0}

    @app.agent(source)
    async def apply_events(stream: Any) -> None:
        async for event in stream:
            if status["recovered"] is None:
                # Faust resumes streams only after active table recovery is complete.
                status["recovered"] = dict(ledger.items())
            key = event["key"]
            event_id = int(event["id"])
            entry = ledger.get(key) or {"count": 0, "checksum": 0, "last_id": -1}
            if event_id <= entry["last_id"]:
                status["skipped"] += 1
                continue
            ledger[key] = {
                "count": entry["count"] + 1,
                "checksum": checksum_step(entry["checksum"], event_id),
                "last_id": event_id,
            }
            status["applied"] += 1

    @app.page("/ledger/")
    async def ledger_view(web: Any, request: Any) -> Any:
        return web.json({"state": dict(ledger.items()), **status})

    return app


if __name__ == "__main__":
    run_worker(build_app(Settings()), loglevel=os.environ.get("LEDGER_LOGLEVEL", "info"))
