"""JetStream provisioning matches catalog §1.4, is idempotent, and repairs drift."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType

from connectors.embedded import EmbeddedStack
from connectors.jetstream import (
    DAY,
    MAX_RETRIES,
    connect_nats,
    dlq_stream_config,
    dlq_subject,
    durable_pull_consumer_config,
    ensure_stream,
    ensure_streams,
    event_stream_config,
    retry_delay,
)
from pipeline.settings import Settings


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc, js = await connect_nats(nats_url, max_reconnect_attempts=1)
    yield js
    await nc.close()


@pytest.fixture
def scratch_nats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str
) -> Iterator[EmbeddedStack]:
    """A private nats-server only (Kafka is the session's), for tests that mangle streams."""
    monkeypatch.delenv("WO_NATS_URL", raising=False)
    with EmbeddedStack(tmp_path / "scratch", kafka_bootstrap=kafka_bootstrap) as stack:
        yield stack


def subject(domain: str = "workorder", event: str = "created") -> str:
    return f"wo.t_{uuid.uuid4().hex[:8]}.{domain}.{event}"


# -- unit -----------------------------------------------------------------------------------


def test_dlq_subject_maps_the_event_subject() -> None:
    assert dlq_subject("wo.t1.workorder.created") == "wo_dlq.t1.workorder.created"
    with pytest.raises(ValueError):
        dlq_subject("other.t1.workorder.created")


def test_retry_delay_is_exponential_and_capped() -> None:
    assert MAX_RETRIES == 5
    assert [retry_delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert retry_delay(30) == 60.0


def test_durable_pull_consumer_config() -> None:
    cfg = durable_pull_consumer_config("bridge")
    assert cfg.durable_name == "bridge"
    assert cfg.filter_subject == "wo.>"
    assert cfg.ack_policy == AckPolicy.EXPLICIT
    assert cfg.deliver_policy == DeliverPolicy.ALL
    assert cfg.deliver_subject is None  # pull, not push
    assert cfg.ack_wait == 30.0
    assert cfg.max_ack_pending == 1000


# -- against the session's nats-server ------------------------------------------------------


@pytest.mark.integration
async def test_event_stream_matches_catalog(js: JetStreamContext) -> None:
    cfg = (await js.stream_info("WO_EVENTS")).config
    assert cfg.subjects == ["wo.>"]
    assert cfg.storage == StorageType.FILE
    assert cfg.retention == RetentionPolicy.LIMITS
    assert cfg.discard == DiscardPolicy.OLD
    assert cfg.max_age == 7 * DAY
    assert cfg.duplicate_window == 120.0


@pytest.mark.integration
async def test_dlq_stream_exists_and_does_not_capture_events(js: JetStreamContext) -> None:
    cfg = (await js.stream_info("WO_DLQ")).config
    assert cfg.subjects == ["wo_dlq.>"]
    assert cfg.storage == StorageType.FILE
    assert cfg.max_age == 30 * DAY

    event = subject()
    assert (await js.publish(event, b"{}", timeout=5)).stream == "WO_EVENTS"
    assert (await js.publish(dlq_subject(event), b"{}", timeout=5)).stream == "WO_DLQ"
    in_dlq = await js.stream_info("WO_DLQ", subjects_filter="wo.>")
    assert not in_dlq.state.subjects
    in_events = await js.stream_info("WO_EVENTS", subjects_filter="wo_dlq.>")
    assert not in_events.state.subjects


@pytest.mark.integration
async def test_provisioning_twice_changes_nothing(js: JetStreamContext) -> None:
    settings = Settings()
    before = {n: await js.stream_info(n) for n in ("WO_EVENTS", "WO_DLQ")}
    await ensure_streams(js, settings)
    assert await ensure_stream(js, event_stream_config(settings)) == "unchanged"
    assert await ensure_stream(js, dlq_stream_config(settings)) == "unchanged"
    for name, old in before.items():
        new = await js.stream_info(name)
        assert new.created == old.created
        assert new.config == old.config


@pytest.mark.integration
async def test_duplicate_msg_id_is_stored_once(js: JetStreamContext) -> None:
    subj = subject()
    headers = {"Nats-Msg-Id": "0190f3a0-0000-7000-8000-000000000001"}
    first = await js.publish(subj, b'{"v": 1}', headers=headers, timeout=5)
    again = await js.publish(subj, b'{"v": 1}', headers=headers, timeout=5)
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    state = (await js.stream_info("WO_EVENTS", subjects_filter=subj)).state
    assert state.subjects == {subj: 1}


@pytest.mark.integration
async def test_durable_pull_consumer_delivers_and_acks(js: JetStreamContext) -> None:
    subj = subject("approval", "decision_submitted")
    durable = f"test_{uuid.uuid4().hex[:8]}"
    ack = await js.publish(subj, b'{"ok": true}', timeout=5)
    info = await js.add_consumer("WO_EVENTS", durable_pull_consumer_config(durable, subj))
    try:
        assert info.config.ack_policy == AckPolicy.EXPLICIT
        assert info.config.max_ack_pending == 1000
        sub = await js.pull_subscribe_bind(durable, stream="WO_EVENTS")
        [msg] = await sub.fetch(1, timeout=5)
        assert (msg.subject, msg.data, msg.metadata.sequence.stream) == (
            subj,
            b'{"ok": true}',
            ack.seq,
        )
        await msg.ack_sync(timeout=5)
        after = await js.consumer_info("WO_EVENTS", durable)
        assert after.num_ack_pending == 0
        assert after.ack_floor.stream_seq == ack.seq
    finally:
        await js.delete_consumer("WO_EVENTS", durable)


# -- against a private nats-server ----------------------------------------------------------


@pytest.mark.integration
async def test_provisioning_creates_then_repairs_drift(scratch_nats: EmbeddedStack) -> None:
    settings = Settings()
    nc, js = await connect_nats(scratch_nats.nats_url, max_reconnect_attempts=1)
    try:
        desired = event_stream_config(settings)
        assert await ensure_stream(js, desired) == "created"
        created = (await js.stream_info(desired.name)).created

        # Someone shortened retention and the dedup window, and set a limit of their own.
        live = (await js.stream_info(desired.name)).config
        await js.update_stream(live.evolve(max_age=DAY, duplicate_window=10.0, max_msgs=1000))

        assert await ensure_stream(js, desired) == "updated"
        repaired = await js.stream_info(desired.name)
        assert repaired.created == created  # updated in place, not recreated
        assert (repaired.config.max_age, repaired.config.duplicate_window) == (7 * DAY, 120.0)
        assert repaired.config.max_msgs == 1000  # not a managed field: left alone
        assert await ensure_stream(js, desired) == "unchanged"
    finally:
        await nc.close()


@pytest.mark.integration
async def test_connection_rides_out_a_nats_restart(scratch_nats: EmbeddedStack) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc, js = await connect_nats(
        scratch_nats.nats_url, reconnect_time_wait=0.1, reconnected_cb=on_reconnect
    )
    try:
        await ensure_streams(js, Settings())
        before = await js.publish("wo.t1.system.ping", b"1", timeout=5)

        await asyncio.to_thread(scratch_nats.kill_nats)
        await asyncio.to_thread(scratch_nats.start_nats)
        await asyncio.wait_for(reconnected.wait(), timeout=10)

        after = await js.publish("wo.t1.system.ping", b"2", timeout=5)
        assert (after.stream, after.seq) == ("WO_EVENTS", before.seq + 1)
    finally:
        await nc.close()
