"""The embedded stack runs real servers, restarts them in place and leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import connectors.embedded as embedded
from connectors.embedded import EmbeddedStack, StackError, free_port, run_sync, tcp_open
from connectors.jetstream import connect_nats, ensure_streams
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def create_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


async def kafka_round_trip(bootstrap: str) -> str:
    """Produce one keyed record to a fresh topic and read it back; returns the topic."""
    topic = await create_topic(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        md = await producer.send_and_wait(topic, b'{"n": 1}', key=b"t1", partition=0)
    finally:
        await producer.stop()
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        record = await asyncio.wait_for(consumer.getone(tp), timeout=10)
    finally:
        await consumer.stop()
    assert (record.offset, record.key, record.value) == (md.offset, b"t1", b'{"n": 1}')
    return topic


# -- both servers answer --------------------------------------------------------------------


async def test_jetstream_publish_is_acked_by_event_stream(nats_url: str) -> None:
    nc, js = await connect_nats(nats_url, max_reconnect_attempts=1)
    try:
        ack = await js.publish("wo.t1.workorder.created", b'{"id": "x"}', timeout=5)
    finally:
        await nc.close()
    assert ack.stream == "WO_EVENTS"
    assert ack.seq >= 1
    assert not ack.duplicate


async def test_kafka_produce_consume_round_trip(kafka_bootstrap: str) -> None:
    topic = await kafka_round_trip(kafka_bootstrap)  # asserts the record came back unchanged
    assert topic


def test_children_log_under_data_dir(embedded_stack: EmbeddedStack) -> None:
    if not (embedded_stack.manages_nats and embedded_stack.manages_kafka):
        pytest.skip("session stack uses external servers")
    logs = embedded_stack.data_dir / "logs"
    assert "Server is ready" in (logs / "nats.log").read_text()
    assert "tansu broker" in (logs / "tansu.log").read_text()
    assert (embedded_stack.nats_store_dir / "jetstream").is_dir()


# -- process hygiene ------------------------------------------------------------------------


def test_stop_leaves_no_child_process(private_stack: EmbeddedStack) -> None:
    pids = private_stack.pids
    assert set(pids) == {"nats-server", "tansu"}
    nats_port = int(private_stack.nats_url.rsplit(":", 1)[1])
    kafka_port = int(private_stack.kafka_bootstrap.rsplit(":", 1)[1])

    assert private_stack.start().pids == pids  # start() is idempotent too

    private_stack.stop()
    private_stack.stop()  # idempotent

    assert private_stack.pids == {}
    for pid in pids.values():
        assert pid_gone(pid), f"pid {pid} survived stop()"
        assert group_gone(pid), f"process group {pid} survived stop()"
    assert not tcp_open("127.0.0.1", nats_port)
    assert not tcp_open("127.0.0.1", kafka_port)


def test_atexit_hook_stops_children(tmp_path: Path) -> None:
    """A program that forgets stop() still leaves nothing running when it exits."""
    script = (
        "import json, sys\n"
        "from connectors.embedded import EmbeddedStack\n"
        "stack = EmbeddedStack(sys.argv[1]).start()\n"
        "print(json.dumps(stack.pids), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WO_NATS_URL", "WO_KAFKA_BOOTSTRAP")}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "atexit")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pids = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(pids) == {"nats-server", "tansu"}
    for pid in pids.values():
        assert pid_gone(pid), f"pid {pid} outlived its parent"


@pytest.mark.parametrize("external", ["both", "nats", "kafka"])
def test_external_servers_start_nothing(
    external: str, embedded_stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WO_NATS_URL", raising=False)
    monkeypatch.delenv("WO_KAFKA_BOOTSTRAP", raising=False)
    if external in ("both", "nats"):
        monkeypatch.setenv("WO_NATS_URL", embedded_stack.nats_url)
    if external in ("both", "kafka"):
        monkeypatch.setenv("WO_KAFKA_BOOTSTRAP", embedded_stack.kafka_bootstrap)

    with EmbeddedStack(tmp_path / "ext") as stack:
        expected = {"both": set(), "nats": {"tansu"}, "kafka": {"nats-server"}}[external]
        assert set(stack.pids) == expected
        if external in ("both", "nats"):
            assert stack.nats_url == embedded_stack.nats_url
            assert not stack.nats_store_dir.exists()
            with pytest.raises(StackError, match="external"):
                stack.kill_nats()
        if external in ("both", "kafka"):
            assert stack.kafka_bootstrap == embedded_stack.kafka_bootstrap
            with pytest.raises(StackError, match="external"):
                stack.stop_kafka()
    assert stack.pids == {}


def test_external_server_that_never_answers_times_out(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    stack = EmbeddedStack(
        tmp_path, nats_url=f"nats://{dead}", kafka_bootstrap=dead, start_timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(StackError, match="did not answer within"):
        stack.start()
    assert time.monotonic() - started < 5


def test_first_start_retries_when_its_port_is_stolen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """free_port() races other processes; a lost race costs a retry, not a failed start."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        stolen = squatter.getsockname()[1]
        ports = iter([stolen])
        monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or free_port())
        monkeypatch.delenv("WO_NATS_URL", raising=False)
        with EmbeddedStack(tmp_path / "race") as stack:
            assert not stack.nats_url.endswith(f":{stolen}")
            assert "address already in use" in (stack.data_dir / "logs/nats.log").read_text()


# -- restarts -------------------------------------------------------------------------------


def test_kafka_restarts_on_same_port_empty(private_stack: EmbeddedStack) -> None:
    bootstrap = private_stack.kafka_bootstrap
    old_pid = private_stack.pids["tansu"]
    topic = run_sync(kafka_round_trip(bootstrap))

    private_stack.stop_kafka()
    assert "tansu" not in private_stack.pids
    assert pid_gone(old_pid)
    host, port = bootstrap.rsplit(":", 1)
    assert not tcp_open(host, int(port))

    private_stack.start_kafka()
    assert private_stack.kafka_bootstrap == bootstrap
    assert private_stack.pids["tansu"] != old_pid
    # Memory storage: the broker answers again, but the old topic is gone.
    assert topic not in run_sync(list_topics(bootstrap))
    run_sync(kafka_round_trip(bootstrap))


def test_restart_on_a_taken_port_fails_with_the_log_tail(private_stack: EmbeddedStack) -> None:
    port = int(private_stack.kafka_bootstrap.rsplit(":", 1)[1])
    private_stack.stop_kafka()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StackError) as err:
            private_stack.start_kafka()
    message = str(err.value)
    assert "tansu exited" in message
    assert "tansu.log" in message
    assert "in use" in message.lower()
    assert "tansu" not in private_stack.pids


async def _publish_n(url: str, n: int, subject: str) -> int:
    nc, js = await connect_nats(url, max_reconnect_attempts=1)
    try:
        await ensure_streams(js, Settings())
        for i in range(n):
            ack = await js.publish(subject, f'{{"n": {i}}}'.encode(), timeout=5)
        return ack.seq
    finally:
        await nc.close()


async def _stream_state(url: str) -> tuple[int, int, bytes]:
    nc, js = await connect_nats(url, max_reconnect_attempts=1)
    try:
        info = await js.stream_info("WO_EVENTS")
        last = await js.get_msg("WO_EVENTS", info.state.last_seq)
        return info.state.messages, info.state.last_seq, last.data or b""
    finally:
        await nc.close()


def test_nats_crash_and_restart_keeps_jetstream_messages(private_stack: EmbeddedStack) -> None:
    url = private_stack.nats_url
    last_seq = run_sync(_publish_n(url, 25, "wo.t1.workorder.status_changed"))
    assert last_seq == 25
    old_pid = private_stack.pids["nats-server"]

    private_stack.kill_nats()  # SIGKILL: no graceful flush
    assert pid_gone(old_pid)
    private_stack.start_nats()

    assert private_stack.nats_url == url
    assert private_stack.pids["nats-server"] != old_pid
    assert run_sync(_stream_state(url)) == (25, 25, b'{"n": 24}')


# -- Tansu's ListOffsets --------------------------------------------------------------------


async def _fetch_highwater(consumer: AIOKafkaConsumer, tp: TopicPartition, upto: int) -> int:
    """Read the partition from 0 up to `upto` and return the Fetch response's high watermark."""
    consumer.seek(tp, 0)
    async with asyncio.timeout(10):
        while await consumer.position(tp) < upto:
            await consumer.getmany(tp, timeout_ms=200)
    hw = consumer.highwater(tp)
    assert hw is not None
    return hw


async def test_tansu_listoffsets_quirk(kafka_bootstrap: str) -> None:
    """Tansu 0.6.0: ListOffsets(latest) = base offset of the partition's LAST BATCH + 1.

    So it is right only when the last produce request carried a single record. The Fetch
    high watermark is always the true log end; ListOffsets(earliest) is right (0).
    """
    topic = await create_topic(kafka_bootstrap)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([tp])

        async def measure(log_end: int) -> tuple[int, int, int]:
            latest = (await consumer.end_offsets([tp]))[tp]
            earliest = (await consumer.beginning_offsets([tp]))[tp]
            return earliest, latest, await _fetch_highwater(consumer, tp, log_end)

        assert (await consumer.end_offsets([tp]))[tp] == 0  # empty partition: right

        # One batch of 10 records (offsets 0..9): latest says 1, not 10.
        batch = producer.create_batch()
        for i in range(10):
            batch.append(key=None, value=b"b%d" % i, timestamp=None)
        batch.close()
        md = await (await producer.send_batch(batch, topic, partition=0))
        assert md.offset == 0
        assert await measure(10) == (0, 1, 10)

        # Three single-record produces (offsets 10, 11, 12): each leaves latest right.
        for expected_end in (11, 12, 13):
            await producer.send_and_wait(topic, b"s", partition=0)
            assert await measure(expected_end) == (0, expected_end, expected_end)

        # Five pipelined sends (not awaited one by one): aiokafka packs them into one batch
        # with base offset 13, so latest says 14 while the log ends at 18.
        futures = [await producer.send(topic, b"p%d" % i, partition=0) for i in range(5)]
        offsets = [m.offset for m in await asyncio.gather(*futures)]
        assert offsets == [13, 14, 15, 16, 17]
        assert await measure(18) == (0, 14, 18)

        # A single record after that makes latest right again.
        await producer.send_and_wait(topic, b"s", partition=0)
        assert await measure(19) == (0, 19, 19)
    finally:
        await producer.stop()
        await consumer.stop()


async def test_tansu_offsets_for_times_ignores_the_timestamp(kafka_bootstrap: str) -> None:
    """Tansu 0.6.0: ListOffsets(timestamp) answers offset 0 for any timestamp up to now.

    Record timestamps themselves are kept (CreateTime as produced), so Faust's windowing on
    record time is fine; only offset-for-time lookups are wrong.
    """
    topic = await create_topic(kafka_bootstrap)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await producer.start()
    await consumer.start()
    try:
        for ts in (1_000, 2_000, 3_000):
            await producer.send_and_wait(topic, b"x", partition=0, timestamp_ms=ts)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        records = (await consumer.getmany(tp, timeout_ms=5000))[tp]
        assert [(r.offset, r.timestamp) for r in records] == [(0, 1000), (1, 2000), (2, 3000)]

        found = await consumer.offsets_for_times({tp: 2_500})  # Kafka would answer offset 2
        assert found[tp] is not None and found[tp].offset == 0
    finally:
        await producer.stop()
        await consumer.stop()
