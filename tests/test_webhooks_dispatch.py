"""The dispatcher against a real HTTP receiver on 127.0.0.1 (Kafka and NATS from the stack)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import DeadLetterPublisher
from connectors.jetstream import connect_nats
from pipeline.settings import Settings
from pipeline.webhooks import backoff_policy
from tables.webhooks import EXPIRED, FORBIDDEN, TENANT_MISMATCH, Status, verify_signature
from tests.bridge_testkit import provision, read_dlq, status_event
from tests.webhooks_testkit import (
    SECRET,
    FakeClock,
    ListSink,
    Receiver,
    connects_fixture,  # noqa: F401 (fixture)
    fail_first_call,
    produce,
    start_dispatcher,
    subscription,
    tenant,
    verify_like_a_receiver,
    wait_for,
    webhook_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def receiver() -> Any:
    rec = await Receiver().start()
    yield rec
    await rec.stop()


def _events(tenant_id: str, n: int) -> list[Any]:
    work_order = str(uuid.uuid4())
    return [status_event(tenant_id, work_order, v) for v in range(1, n + 1)]


async def test_kafka_to_receiver_signature_verifies(
    stack_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    await provision(stack_settings)
    mine, other = tenant(), tenant()
    settings = webhook_settings(
        tmp_path,
        kafka_bootstrap=stack_settings.kafka_bootstrap,
        kafka_transport=stack_settings.kafka_transport,
        webhook_group=f"wh-test-{uuid.uuid4().hex[:8]}",
        webhook_session_timeout_ms=6000,
    )
    subs = [
        subscription("erp", mine, receiver.url("/ok"), "work_order.*"),
        subscription("compliance-only", mine, receiver.url("/ok"), "compliance.*"),
    ]
    events = _events(mine, 3)
    await produce(stack_settings.kafka_bootstrap or "", [*events, *_events(other, 2)])
    running = await start_dispatcher(settings, subs, consume=True)
    try:
        await wait_for(lambda: receiver.count("/ok") >= 3, 60, "3 webhooks")
        await wait_for(lambda: running.dispatcher.stats.commits >= 1, 10, "an offset commit")
        await asyncio.sleep(0.3)  # nothing more may arrive (other tenant, unmatched type)
        assert receiver.count("/ok") == 3
        by_id = {h.headers["Wo-Event-Id"]: h for h in receiver.hits}
        assert set(by_id) == {e.id for e in events}
        for event in events:
            hit = by_id[event.id]
            assert hit.body == event.canonical_bytes()  # the original JSON bytes
            assert hit.headers["Wo-Event-Type"] == "work_order.status_changed"
            assert hit.headers["Wo-Tenant"] == mine
            assert hit.headers["Wo-Delivery-Id"] == f"erp:{event.id}"
            assert hit.headers["Wo-Attempt"] == "1"
            assert hit.headers["Content-Type"] == "application/json"
            assert verify_like_a_receiver(SECRET, hit.headers, hit.body)
            assert verify_signature(
                hit.headers["Wo-Signature"], hit.body, [SECRET], now=time.time()
            )
            assert not verify_like_a_receiver(b"wrong-secret-0000", hit.headers, hit.body)
        metrics = running.dispatcher.metrics.registry
        assert metrics.get_sample_value("wo_webhook_deliveries_total", {"result": "delivered"}) == 3
    finally:
        await running.close()


async def test_failing_receiver_backs_off_then_dead_letters(
    stack_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    """48 h of retries on a fake clock: every attempt at the scheduled time, then the DLQ."""
    settings = webhook_settings(tmp_path, nats_url=stack_settings.nats_url)
    clock = FakeClock()
    t0 = clock.now()
    mine = tenant()
    nc, js = await connect_nats(stack_settings.nats_url or "", max_reconnect_attempts=1)
    stop = asyncio.Event()
    sink = DeadLetterPublisher(js, settings, BridgeMetrics(), stop=stop)
    running = await start_dispatcher(
        settings, [subscription("flaky", mine, receiver.url("/fail"))], sink=sink,
        clock=clock, rng=random.Random(42), stop=stop,
    )  # fmt: skip
    expected = backoff_policy(settings).schedule(random.Random(42), start=t0)
    event = _events(mine, 1)[0]
    store = running.store
    try:
        assert await running.dispatcher.accept(event.canonical_bytes()) == 1
        for attempt, due_at in enumerate(expected, start=1):
            clock.advance_to(due_at)
            await wait_for(lambda n=attempt: receiver.count("/fail") == n, 10, f"attempt {attempt}")
            row: Any = None

            async def recorded(n: int = attempt) -> bool:
                nonlocal row
                row = await store.call(store.store.get, "flaky", event.id)
                return row.state.attempts == n and running.dispatcher.in_flight() == 0

            deadline = time.monotonic() + 10
            while not await recorded():
                assert time.monotonic() < deadline, f"attempt {attempt} not recorded"
                await asyncio.sleep(0.01)
            if attempt < len(expected):
                assert row.state.status is Status.PENDING
                assert row.state.next_attempt_at == pytest.approx(expected[attempt])
        assert row.state.status is Status.DEAD and row.state.dead_reason == EXPIRED
        # the receiver saw each attempt at its scheduled time (the signed timestamp)
        stamps = [int(h.headers["Wo-Timestamp"]) for h in receiver.hits]
        assert stamps == [int(t) for t in expected]
        assert [h.headers["Wo-Attempt"] for h in receiver.hits] == [
            str(n) for n in range(1, len(expected) + 1)
        ]
        assert expected[-1] - expected[0] == pytest.approx(48 * 3600)
        gaps = [b - a for a, b in itertools.pairwise(expected)]
        assert gaps[0] == pytest.approx(30, rel=0.21) and gaps[1] == pytest.approx(60, rel=0.21)

        letters = await read_dlq(
            js, subject_filter=f"wo_dlq.{mine}.>", until=lambda d: len(d) >= 1, within=20
        )
        [letter] = letters
        assert letter.subject == f"wo_dlq.{mine}.workorder.status_changed"
        assert letter.data == event.canonical_bytes()
        assert letter.reason == EXPIRED
        assert letter.headers["wo-dlq-direction"] == "webhook"
        assert letter.headers["wo-dlq-attempts"] == str(len(expected))
        assert letter.headers["wo-dlq-event-id"] == event.id
        assert letter.headers["wo-dlq-webhook-subscription"] == "flaky"
        assert letter.headers["wo-dlq-detail"] == "HTTP 500"
        assert str(SECRET.decode()) not in str(letter.headers)
        await wait_for(lambda: running.dispatcher.stats.dead_lettered == 1, 10, "marked")
        metrics = running.dispatcher.metrics.registry
        assert metrics.get_sample_value("wo_webhook_dead_letters_total", {"reason": EXPIRED}) == 1
        # nothing more is attempted, however far the clock moves
        clock.advance_to(t0 + 10 * 86_400)
        running.dispatcher.wake()
        await asyncio.sleep(0.2)
        assert receiver.count("/fail") == len(expected)
    finally:
        await running.close()
        await nc.close()


async def test_slow_and_failing_endpoints_do_not_delay_a_healthy_one(
    receiver: Receiver, tmp_path: Path
) -> None:
    settings = webhook_settings(tmp_path, webhook_endpoint_concurrency=2)
    mine = tenant()
    subs = [
        subscription("stuck", mine, receiver.url("/hold")),
        subscription("broken", mine, receiver.url("/fail")),
        subscription("healthy", mine, receiver.url("/ok")),
    ]
    running = await start_dispatcher(settings, subs)
    events = _events(mine, 30)
    try:
        # the stuck endpoint gets its two slots filled first
        await running.dispatcher.accept(events[0].canonical_bytes())
        await wait_for(lambda: receiver.count("/hold") == 1, 5, "first held request")
        started = time.monotonic()
        for event in events[1:]:
            await running.dispatcher.accept(event.canonical_bytes())
        await wait_for(lambda: receiver.count("/ok") == 30, 5, "healthy deliveries")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"healthy endpoint took {elapsed:.2f}s"
        assert receiver.count("/hold") == 2  # its concurrency, still waiting
        await wait_for(lambda: receiver.count("/fail") == 30, 5, "first attempts at the broken one")
        # release the stuck endpoint: it catches up on its own
        receiver.release.set()
        await wait_for(lambda: receiver.count("/hold") == 30, 10, "stuck endpoint catching up")
        await wait_for(
            lambda: running.dispatcher.stats.by_subscription.get("stuck") == 30, 5, "recorded"
        )
    finally:
        await running.close()
    assert running.dispatcher.stats.by_subscription == {"healthy": 30, "stuck": 30}
    assert running.dispatcher.stats.failed_attempts == 30


async def test_forbidden_urls_are_refused_recorded_and_dead_lettered(
    receiver: Receiver, tmp_path: Path, connects: list[Any]
) -> None:
    # No allow flag and no CIDR: loopback is forbidden too.
    settings = webhook_settings(tmp_path, webhook_allowed_networks=[])
    clock = FakeClock()
    mine = tenant()
    urls = {
        "loopback": receiver.url("/ok"),
        "localhost": f"http://localhost:{receiver.port}/ok",
        "mapped": f"http://[::ffff:127.0.0.1]:{receiver.port}/ok",
        "decimal": f"http://2130706433:{receiver.port}/ok",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/",
        "private": "http://10.0.0.1/hook",
        "file": "file:///etc/passwd",
        "gopher": "gopher://127.0.0.1:70/_x",
    }
    sink = ListSink()
    running = await start_dispatcher(
        settings, [subscription(k, mine, u) for k, u in urls.items()], sink=sink, clock=clock
    )
    event = _events(mine, 1)[0]
    try:
        assert await running.dispatcher.accept(event.canonical_bytes()) == len(urls)
        await wait_for(lambda: len(sink.letters) == len(urls), 10, "dead letters")
        store = running.store
        for sub_id in urls:
            row = await store.call(store.store.get, sub_id, event.id)
            assert row.state.status is Status.DEAD and row.state.attempts == 1
            assert row.state.dead_reason == FORBIDDEN
        assert {letter.reason for letter in sink.letters} == {FORBIDDEN}
        details = {
            letter.headers["wo-dlq-webhook-subscription"]: letter.headers["wo-dlq-detail"]
            for letter in sink.letters
        }
        assert details == {
            "loopback": "forbidden:loopback",
            "localhost": "forbidden:loopback",
            "mapped": "forbidden:loopback",
            "decimal": "forbidden:non_canonical_ip",
            "metadata": "forbidden:metadata",
            "private": "forbidden:private",
            "file": "forbidden:scheme",
            "gopher": "forbidden:scheme",
        }
        # not retried, however long we wait
        clock.advance_to(clock.now() + 49 * 3600)
        running.dispatcher.wake()
        await asyncio.sleep(0.2)
        metrics = running.dispatcher.metrics.registry
        refused = metrics.get_sample_value("wo_webhook_deliveries_total", {"result": "forbidden"})
        assert refused == len(urls)
        assert receiver.hits == [] and connects == []  # no connection was ever attempted
    finally:
        await running.close()


async def test_scheduler_survives_a_store_error(receiver: Receiver, tmp_path: Path) -> None:
    settings = webhook_settings(tmp_path)
    mine = tenant()
    running = await start_dispatcher(settings, [subscription("erp", mine, receiver.url("/ok"))])
    calls = fail_first_call(running.store.store, "due", OSError("disk I/O error"))
    try:
        await running.dispatcher.accept(_events(mine, 1)[0].canonical_bytes())
        await wait_for(lambda: receiver.count("/ok") == 1, 10, "delivery after the store error")
        assert calls["n"] >= 2
    finally:
        await running.close()


async def test_requeue_command_sends_a_dead_delivery_again_through_the_running_dispatcher(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``webhooks requeue`` changes the store from another process's connection; the running
    dispatcher notices within ``webhook_rescan_seconds`` and delivers with a fresh budget."""
    from click.testing import CliRunner

    from connectors.webhook_store import NewDelivery, WebhookStore
    from pipeline.cli import cli
    from pipeline.webhooks import store_path
    from tables.webhooks import DeliveryState

    settings = webhook_settings(tmp_path, webhook_rescan_seconds=0.2)
    mine = tenant()
    event = _events(mine, 1)[0]
    store_path(settings).parent.mkdir(parents=True, exist_ok=True)
    offline = WebhookStore(store_path(settings))
    body = event.canonical_bytes()
    died = time.time() - 3600  # within the retention period: not pruned
    new = NewDelivery("erp", event.id, mine, event.type, body, "wo.workorder:0:1")
    offline.enqueue([new], died - 48 * 3600)
    offline.record(("erp", event.id), DeliveryState(Status.DEAD, 12, died, died - 48 * 3600,
                                                     died, "HTTP 500", died, EXPIRED))  # fmt: skip
    offline.mark_dead_lettered([("erp", event.id)])
    offline.close()
    running = await start_dispatcher(settings, [subscription("erp", mine, receiver.url("/ok"))])
    try:
        # its first pass found nothing due: only the rescan can find the requeued delivery
        await wait_for(lambda: running.dispatcher._next_check.get("erp") == math.inf, 10, "idle")
        monkeypatch.setenv("WO_DATA_DIR", str(tmp_path))
        result = CliRunner().invoke(cli, ["webhooks", "requeue", "--subscription", "erp"])
        assert result.exit_code == 0, result.output
        assert '"requeued": 1' in result.output and f"erp:{event.id}" in result.output
        await wait_for(lambda: receiver.count("/ok") == 1, 20, "the requeued delivery")
        [hit] = receiver.hits
        assert hit.body == body and hit.headers["Wo-Attempt"] == "1"
        assert verify_like_a_receiver(SECRET, hit.headers, hit.body)
        store = running.store

        async def delivered() -> bool:
            row = await store.call(store.store.get, "erp", event.id)
            return row.state.status is Status.DELIVERED

        deadline = time.monotonic() + 10
        while not await delivered():
            assert time.monotonic() < deadline, "delivery not recorded"
            await asyncio.sleep(0.02)
    finally:
        await running.close()


async def test_a_reused_subscription_id_never_sends_another_tenants_queued_deliveries(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Tenant A's ``erp`` is down; the operator gives the id ``erp`` to tenant B. A's queued
    delivery must not go to B's endpoint (signed with B's secret): it is dead-lettered."""
    settings = webhook_settings(tmp_path)
    clock = FakeClock()
    a, b = tenant(), tenant()
    running = await start_dispatcher(
        settings, [subscription("erp", a, receiver.url("/fail"))], clock=clock
    )
    event = _events(a, 1)[0]
    try:
        await running.dispatcher.accept(event.canonical_bytes())
        await wait_for(lambda: receiver.count("/fail") == 1, 10, "A's first attempt")
        await wait_for(lambda: running.dispatcher.in_flight() == 0, 10, "recorded")
    finally:
        await running.close()
    sink = ListSink()
    running = await start_dispatcher(
        settings, [subscription("erp", b, receiver.url("/ok"))], sink=sink, clock=clock
    )
    try:
        clock.advance_to(clock.now() + 3600)
        running.dispatcher.wake()
        await wait_for(lambda: len(sink.letters) == 1, 10, "dead letter")
        assert sink.letters[0].reason == TENANT_MISMATCH
        row = await running.store.call(running.store.store.get, "erp", event.id)
        assert row.state.status is Status.DEAD and row.state.attempts == 1  # none for B
        assert receiver.count("/ok") == 0
    finally:
        await running.close()


async def test_an_attempt_that_crashed_before_recording_is_retried_after_its_lease(
    receiver: Receiver, tmp_path: Path
) -> None:
    # no requeue rescan during the test: it would look at every subscription once by chance
    settings = webhook_settings(tmp_path, webhook_rescan_seconds=3600)
    clock = FakeClock()
    mine = tenant()
    running = await start_dispatcher(
        settings, [subscription("erp", mine, receiver.url("/ok"))], clock=clock
    )
    calls = fail_first_call(running.store.store, "record", OSError("disk full"))
    event = _events(mine, 1)[0]
    try:
        await running.dispatcher.accept(event.canonical_bytes())
        await wait_for(lambda: calls["n"] == 1, 10, "the crashed record")
        await wait_for(lambda: running.dispatcher.in_flight() == 0, 10, "attempt over")
        row = await running.store.call(running.store.store.get, "erp", event.id)
        assert row.state.status is Status.PENDING  # sent, but nothing recorded
        # the scheduler's pass after the crash has planned its next look at "erp"
        checks = running.dispatcher._next_check
        await wait_for(lambda: checks.get("erp", 0.0) > clock.now(), 10, "next check planned")
        clock.advance_to(clock.now() + settings.webhook_timeout_seconds + 61)  # lease over
        running.dispatcher.wake()
        await wait_for(lambda: receiver.count("/ok") == 2, 10, "the retry")
        await wait_for(lambda: running.dispatcher.stats.delivered == 1, 10, "recorded")
    finally:
        await running.close()
