"""kill -9 of the dispatcher process mid-stream: nothing delivered is resent, nothing is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from pipeline.settings import Settings
from tests.bridge_testkit import provision, status_event
from tests.webhooks_testkit import SECRET, Receiver, produce, tenant, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 40
ANSWERED_BEFORE_KILL = 10
CONCURRENCY = 4


def _delivered(db: Path) -> set[str]:
    if not db.exists():
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT event_id FROM deliveries WHERE status = 'delivered'")
        return {r[0] for r in rows}
    except sqlite3.OperationalError:  # not created yet
        return set()
    finally:
        conn.close()


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.webhooks"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


async def test_kill_9_neither_loses_nor_resends(stack_settings: Settings, tmp_path: Path) -> None:
    await provision(stack_settings)
    mine = tenant()
    receiver = await Receiver(gate_limit=ANSWERED_BEFORE_KILL).start()
    subs = tmp_path / "subs.json"
    subs.write_text(
        json.dumps(
            [{"id": "erp", "tenant_id": mine, "url": receiver.url("/gate"),
              "events": ["work_order.*"], "secret_env": "WH_TEST_SECRET"}]
        )
    )  # fmt: skip
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "WO_NATS_URL": stack_settings.nats_url or "",
        "WO_KAFKA_BOOTSTRAP": stack_settings.kafka_bootstrap or "",
        "WO_KAFKA_TRANSPORT": stack_settings.kafka_transport,
        "WO_DATA_DIR": str(data_dir),
        "WO_WEBHOOK_SUBSCRIPTIONS": str(subs),
        "WO_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "WO_WEBHOOK_ALLOW_HTTP": "true",  # the receiver is a plain-HTTP test server
        "WO_WEBHOOK_GROUP": f"wh-restart-{uuid.uuid4().hex[:8]}",
        "WO_WEBHOOK_METRICS_PORT": "0",
        "WO_WEBHOOK_SESSION_TIMEOUT_MS": "6000",
        "WO_WEBHOOK_ENDPOINT_CONCURRENCY": str(CONCURRENCY),
        "WH_TEST_SECRET": SECRET.decode(),
    }
    db = data_dir / "webhooks" / "deliveries.sqlite3"
    log = tmp_path / "webhooks.log"
    work_order = str(uuid.uuid4())
    events = [status_event(mine, work_order, v) for v in range(1, EVENTS + 1)]
    await produce(stack_settings.kafka_bootstrap or "", events)

    proc = _spawn(env, log)
    try:
        # Ten answered and recorded, four more in flight and held by the receiver: kill -9 now.
        async def mid_stream() -> bool:
            assert proc.poll() is None, log.read_text()
            answered = len(_delivered(db)) == ANSWERED_BEFORE_KILL
            return answered and receiver.gate_seen == ANSWERED_BEFORE_KILL + CONCURRENCY

        await wait_for_async(mid_stream, 90, "mid-stream state")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        before = _delivered(db)
        assert len(before) == ANSWERED_BEFORE_KILL

        receiver.gate_limit = None
        receiver.release.set()
        proc = _spawn(env, log)

        async def all_delivered() -> bool:
            assert proc.poll() is None, log.read_text()
            return len(_delivered(db)) == EVENTS

        await wait_for_async(all_delivered, 120, "all deliveries after the restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # SIGTERM-clean
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        await receiver.stop()

    hits = Counter(h.headers["Wo-Event-Id"] for h in receiver.hits)
    assert set(hits) == {e.id for e in events}  # nothing lost
    assert all(hits[event_id] == 1 for event_id in before)  # nothing delivered was resent
    resent = {event_id for event_id, n in hits.items() if n > 1}
    assert len(resent) <= CONCURRENCY  # only the held, never-answered ones came again
    assert _delivered(db) == {e.id for e in events}
    text = log.read_text()
    assert SECRET.decode() not in text and "127.0.0.1:" + str(receiver.port) not in text
    await asyncio.sleep(0)
