"""The embedded broker starts empty: drop what depended on the old one and re-mirror from NATS.

NATS JetStream (file storage) is the log of record; the embedded Tansu broker keeps its topics
in memory only. When `run` starts a fresh embedded broker, the worker's local RocksDB state
still describes changelogs and offsets that no longer exist, and the bridge's durable ingress
consumer has already acked everything it mirrored into the lost topics. Keeping either would
lose events (nothing re-mirrored) or count them twice (tables incremented on top of old state).
So both are reset and every event still retained in the stream (7 days) flows again; derived
events come out with the same deterministic ids and every consumer drops them by id (§1.4).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from connectors.ingress import reset_ingress
from connectors.jetstream import connect_nats
from pipeline.settings import Settings


def drop_table_state(data_dir: Path) -> bool:
    """Delete the worker's local table state under `data_dir`; True if there was any."""
    faust_dir = Path(data_dir) / "faust"
    if not faust_dir.exists():
        return False
    shutil.rmtree(faust_dir)
    return True


async def rebuild_from_nats(settings: Settings, nats_url: str, data_dir: Path) -> list[str]:
    """Reset table state and the ingress consumer for a fresh broker; returns what was reset."""
    done: list[str] = []
    if drop_table_state(data_dir):
        done.append("table state")
    nc, js = await connect_nats(nats_url, name="wo-stream-rebuild", max_reconnect_attempts=20)
    try:
        if await reset_ingress(js, settings):
            done.append("ingress consumer")
    finally:
        await nc.close()
    return done
