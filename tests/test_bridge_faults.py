"""The bridge under faults, each on a private stack: kill -9 of the bridge, a frozen broker.

"Broker unreachable" is a SIGSTOPped Tansu: it keeps its (memory-only) topics and comes back
with SIGCONT, while clients see what they would see for a hung or partitioned broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from connectors.bridge import Bridge
from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import replay_dead_letters
from connectors.embedded import EmbeddedStack
from connectors.jetstream import connect_nats
from pipeline.settings import Settings
from tests.bridge_testkit import (
    Rec,
    as_messages,
    bridge_settings,
    interleaved_events,
    provision,
    publish,
    read_dlq,
    read_topics,
    wait_for,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _ids(records: list[Rec]) -> set[str]:
    return {r.headers["wo-event-id"].decode() for r in records}


def _assert_per_key_order(records: list[Rec]) -> None:
    """Per key, the first copy of each event appears in publish (= version) order."""
    seen: set[bytes] = set()
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for rec in records:
        if rec.headers["wo-event-id"] in seen:
            continue
        seen.add(rec.headers["wo-event-id"])
        per_key[rec.key or b""].append(orjson.loads(rec.value)["data"]["version"])
    for key, versions in per_key.items():
        assert versions == list(range(1, len(versions) + 1)), key


async def _read_tenant(settings: Settings, tenant: str, until, within: float = 90) -> list[Rec]:
    assert settings.kafka_bootstrap
    return await read_topics(
        settings.kafka_bootstrap,
        ["wo.workorder"],
        where=lambda r: r.headers.get("wo-tenant") == tenant.encode(),
        until=until,
        within=within,
    )


@contextmanager
def _frozen(stack: EmbeddedStack) -> Iterator[int]:
    pid = stack.pids["tansu"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def _spawn_bridge(settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    assert settings.nats_url and settings.kafka_bootstrap
    environ = dict(os.environ, PYTHONUNBUFFERED="1")
    environ.update(
        WO_INGRESS_DURABLE=settings.ingress_durable,
        WO_INGRESS_FILTER_SUBJECT=settings.ingress_filter_subject,
        **env,
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "connectors.bridge",
                "--nats-url", settings.nats_url,
                "--kafka-bootstrap", settings.kafka_bootstrap,
                "--metrics-port", "0", "--no-egress",
            ],
            cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


async def test_kill_dash_nine_mid_stream_loses_nothing_and_acks_nothing_early(
    private_stack: EmbeddedStack, tmp_path: Path
) -> None:
    tenant = "crash_t"
    settings = bridge_settings(private_stack, ingress_filter_subject=f"wo.{tenant}.>")
    await provision(settings)
    events = interleaved_events(tenant, keys=1000, total=10_000)
    nc, js = await connect_nats(settings.nats_url)
    log = tmp_path / "bridge.log"
    bridge: subprocess.Popen[bytes] | None = None
    try:
        seqs = await publish(js, as_messages(events))
        id_of_seq = {seq: e.id for seq, e in zip(seqs, events, strict=True)}

        # Small batches: many ack points, and a wide window to kill it mid-way.
        bridge = _spawn_bridge(settings, log, WO_INGRESS_BATCH_SIZE="50")

        async def floor() -> int:
            try:
                info = await js.consumer_info(settings.stream_name, settings.ingress_durable)
            except Exception:
                return 0
            return info.ack_floor.stream_seq if info.ack_floor else 0

        async def some_acked() -> bool:
            return await floor() >= seqs[0] + 1500

        await wait_for(some_acked, within=60, interval=0.002, what="bridge to ack 1500")
        os.killpg(bridge.pid, signal.SIGKILL)
        bridge.wait(10)
        acked_up_to = await floor()  # final: nobody acks any more
        assert seqs[0] + 1500 <= acked_up_to < seqs[-1], "not killed mid-stream"

        acked = {id_of_seq[s] for s in seqs if s <= acked_up_to}
        # Nothing was acked to NATS before Kafka had it: with the bridge dead, every acked
        # event must be readable from Kafka (the read times out otherwise).
        in_kafka = _ids(
            await _read_tenant(settings, tenant, until=lambda rs: acked <= _ids(rs), within=30)
        )
        assert acked <= in_kafka

        bridge = _spawn_bridge(settings, log, WO_INGRESS_BATCH_SIZE="500")
        records = await _read_tenant(
            settings, tenant, until=lambda rs: len(_ids(rs)) >= len(events)
        )
        assert _ids(records) == {e.id for e in events}  # every event at least once
        _assert_per_key_order(records)  # and per-key order held across the crash
        duplicates = len(records) - len(events)
        print(f"\nkilled at ack floor {acked_up_to - seqs[0] + 1}/10000; {duplicates} duplicates")

        os.killpg(bridge.pid, signal.SIGTERM)  # a clean stop ends with exit code 0
        assert bridge.wait(30) == 0
        bridge = None
    finally:
        if bridge is not None and bridge.poll() is None:
            os.killpg(bridge.pid, signal.SIGKILL)
            bridge.wait()
        await nc.close()


async def test_broker_unreachable_for_ten_seconds_loses_nothing(
    private_stack: EmbeddedStack,
) -> None:
    tenant = "freeze_t"
    # Production backoff (1, 2, 4, 8 s) with 2 s request timeouts: a budget of ~25 s.
    settings = bridge_settings(
        private_stack,
        ingress_filter_subject=f"wo.{tenant}.>",
        kafka_retry_base_seconds=1.0,
        kafka_retry_max_seconds=16.0,
    )
    await provision(settings)
    events = interleaved_events(tenant, keys=50, total=1500)
    nc, js = await connect_nats(settings.nats_url)
    metrics = BridgeMetrics()
    try:
        async with Bridge(settings, metrics=metrics, egress=False) as bridge:
            assert bridge.ingress is not None
            await publish(js, as_messages(events[:500]))
            await _read_tenant(settings, tenant, until=lambda rs: len(_ids(rs)) >= 500)
            with _frozen(private_stack):
                frozen_at = time.monotonic()
                await publish(js, as_messages(events[500:]))
                await wait_for(lambda: bridge.ingress.stats.kafka_retries > 0, within=15)
                assert not bridge.healthy
                await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - frozen_at)))
            records = await _read_tenant(
                settings, tenant, until=lambda rs: len(_ids(rs)) >= len(events)
            )
            await wait_for(lambda: bridge.healthy, within=30, what="bridge healthy again")
            dead = await read_dlq(js, subject_filter=f"wo_dlq.{tenant}.>")
    finally:
        await nc.close()
    assert _ids(records) == {e.id for e in events}
    _assert_per_key_order(records)
    assert dead == []
    assert metrics.value("wo_bridge_kafka_retries_total") >= 1
    assert metrics.value("wo_bridge_events_mirrored_total", {"domain": "workorder"}) >= 1500


async def test_broker_away_past_the_budget_dead_letters_then_replay_restores(
    private_stack: EmbeddedStack,
) -> None:
    tenant = "budget_t"
    settings = bridge_settings(
        private_stack,
        ingress_filter_subject=f"wo.{tenant}.>",
        kafka_request_timeout_ms=1000,
        kafka_retry_base_seconds=0.2,
        kafka_retry_max_seconds=1.0,
    )
    await provision(settings)
    events = interleaved_events(tenant, keys=5, total=21)
    warm, lost = events[:1], events[1:]
    nc, js = await connect_nats(settings.nats_url)
    metrics = BridgeMetrics()
    dlq_filter = f"wo_dlq.{tenant}.>"
    try:
        async with Bridge(settings, metrics=metrics, egress=False):
            await publish(js, as_messages(warm))
            await _read_tenant(settings, tenant, until=lambda rs: len(rs) >= 1)
            with _frozen(private_stack):
                await publish(js, as_messages(lost))
                dead = await read_dlq(
                    js, subject_filter=dlq_filter, until=lambda ds: len(ds) >= len(lost),
                    within=90,
                )  # fmt: skip
            # The broker is back: replay puts the dead letters through ingress again.
            report = await replay_dead_letters(
                settings, subject_filter=dlq_filter, reason="KAFKA_WRITE_FAILED", purge=True
            )
            records = await _read_tenant(
                settings, tenant, until=lambda rs: len(_ids(rs)) >= len(events)
            )
            remaining = await read_dlq(js, subject_filter=dlq_filter)
    finally:
        await nc.close()
    assert len(dead) == len(lost)
    assert {d.headers["wo-dlq-event-id"] for d in dead} == {e.id for e in lost}
    for d in dead:
        assert d.reason == "KAFKA_WRITE_FAILED"
        assert d.headers["wo-dlq-attempts"] == "5"
        assert d.headers["wo-dlq-detail"]  # the last error's class name
        assert d.subject == f"wo_dlq.{tenant}.workorder.status_changed"
    labels = {"direction": "ingress", "domain": "workorder", "reason": "KAFKA_WRITE_FAILED"}
    assert metrics.value("wo_bridge_dead_letters_total", labels) == len(lost)
    assert metrics.value("wo_bridge_kafka_retries_total") >= 4
    assert (report.replayed, report.purged, report.failed) == (len(lost), len(lost), 0)
    assert _ids(records) == {e.id for e in events}
    assert remaining == []


async def test_nats_crash_and_restart_mid_stream_keeps_order_and_loses_nothing(
    private_stack: EmbeddedStack,
) -> None:
    tenant = "natscrash_t"
    settings = bridge_settings(private_stack, ingress_filter_subject=f"wo.{tenant}.>")
    await provision(settings)
    events = interleaved_events(tenant, keys=200, total=4000)
    before, after = events[:3000], events[3000:]
    nc, js = await connect_nats(settings.nats_url)
    try:
        await publish(js, as_messages(before))
        async with Bridge(settings, metrics=BridgeMetrics(), egress=False) as bridge:
            assert bridge.ingress is not None
            await wait_for(lambda: bridge.ingress.stats.mirrored >= 300, interval=0.001)
            # JetStream's file store survives a kill -9; clients reconnect on their own.
            await asyncio.to_thread(private_stack.kill_nats)
            await asyncio.to_thread(private_stack.start_nats)
            await wait_for(lambda: nc.is_connected, within=30, what="test client reconnect")
            await publish(js, as_messages(after))
            records = await _read_tenant(
                settings, tenant, until=lambda rs: len(_ids(rs)) >= len(events)
            )
            await wait_for(lambda: bridge.healthy, within=30, what="bridge healthy again")
    finally:
        await nc.close()
    assert _ids(records) == {e.id for e in events}
    _assert_per_key_order(records)
