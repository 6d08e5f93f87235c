"""Webhook Dispatcher (catalog §8): domain topics -> signed HTTP POSTs to tenants' endpoints.

Flow:

1. A Kafka consumer group reads the six domain topics. Each record whose tenant has
   subscriptions is parsed; one delivery per matching active subscription is **stored**
   (``connectors.webhook_store``, idempotent by (subscription, event id)) and only then are
   the offsets committed. A crash before the commit re-reads records; the store absorbs them.
2. A scheduler hands due deliveries to per-subscription attempt tasks, at most
   ``webhook_endpoint_concurrency`` in flight per subscription, so a slow or failing endpoint
   only ever occupies its own slots: other endpoints are dispatched independently.
3. Each attempt's result is recorded before the attempt is forgotten: delivered, retry at the
   jittered backoff time (``tables.webhooks.apply_outcome``), or dead after the 48 h budget
   (``WEBHOOK_DELIVERY_EXPIRED``) or at once when the SSRF guard refuses the target
   (``WEBHOOK_URL_FORBIDDEN``).
4. Dead deliveries are published to ``wo_dlq.{tenant}.{domain}.{type}`` (stream ``WO_DLQ``,
   header ``wo-dlq-direction: webhook``) until acked, then marked so.

Time comes from an injectable clock (tests drive 48 h in milliseconds). Logs carry subscription
ids, event ids and reason codes only: never URLs (they may hold tokens), bodies or secrets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from connectors.dead_letter import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_DETAIL,
    H_DIRECTION,
    H_EVENT_ID,
    H_EVENT_TENANT,
    H_EVENT_TYPE,
    H_FIRST_SEEN,
    H_KAFKA_OFFSET,
    H_KAFKA_PARTITION,
    H_KAFKA_TOPIC,
    H_REASON,
    H_SUBJECT,
    NATS_MSG_ID,
    DeadLetter,
    RetryPolicy,
    Stopping,
    dead_letter_subject,
    domain_label,
    pause,
    target_subject,
)
from connectors.kafka_consumer import (
    consume_batches,
    consumer_class,
    group_timeouts,
    start_subscribed,
    stop_quietly,
)
from connectors.webhook_http import AddressPolicy, HttpLimits, WebhookSender
from connectors.webhook_store import AsyncWebhookStore, Delivery, NewDelivery, WebhookStore
from events.parsing import ParseError, parse_event
from events.subjects import DOMAIN_TOPICS
from pipeline.settings import Settings
from tables.webhooks import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    TENANT_HEADER,
    TENANT_MISMATCH,
    TIMESTAMP_HEADER,
    BackoffPolicy,
    Outcome,
    Status,
    Subscription,
    SubscriptionIndex,
    apply_outcome,
    refuse,
    signature_header,
)

log = logging.getLogger(__name__)

WEBHOOK = "webhook"
H_WEBHOOK_SUBSCRIPTION = "wo-dlq-webhook-subscription"
_KAFKA_BACKOFF = RetryPolicy(attempts=1_000_000, base_seconds=0.5, max_seconds=10.0)
_IDLE_SECONDS = 30.0  # re-check even without a wake-up (wall-clock jumps, housekeeping)
_GAUGE_SECONDS = 1.0
_PRUNE_SECONDS = 3600.0
_DLQ_BATCH = 500
_STOP_GRACE_SECONDS = 10.0
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)


class Clock(Protocol):
    """Wall-clock time in unix seconds, and waiting for a moment of it."""

    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.time()))


class Sender(Protocol):
    """What attempts a delivery (``connectors.webhook_http.WebhookSender``)."""

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Outcome: ...


class DeadLetterSink(Protocol):
    """Stores dead letters, returning only once all are stored (``DeadLetterPublisher``)."""

    async def publish(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True, slots=True)
class WebhookMetrics:
    """The dispatcher's metrics on one registry (a fresh one per dispatcher in tests)."""

    registry: CollectorRegistry
    deliveries: Counter
    seconds: Histogram
    dead_letters: Counter
    pending: Gauge
    enqueued: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WebhookMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=reg,
            deliveries=Counter(
                "wo_webhook_deliveries_total",
                "Webhook delivery attempts by result (delivered, http_error, timeout, "
                "connection_error, forbidden).",
                ["result"],
                registry=reg,
            ),
            seconds=Histogram(
                "wo_webhook_delivery_seconds",
                "Duration of one webhook delivery attempt.",
                buckets=_DURATION_BUCKETS,
                registry=reg,
            ),
            dead_letters=Counter(
                "wo_webhook_dead_letters_total",
                "Webhook deliveries stored in the dead-letter stream, by reason code.",
                ["reason"],
                registry=reg,
            ),
            pending=Gauge(
                "wo_webhook_pending",
                "Webhook deliveries waiting for an attempt or a retry.",
                registry=reg,
            ),
            enqueued=Counter(
                "wo_webhook_enqueued_total",
                "Deliveries stored for matching events (re-read events not counted).",
                registry=reg,
            ),
        )


@dataclass
class DispatcherStats:
    """Counters for tests and health output."""

    enqueued: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0
    dead_lettered: int = 0
    invalid_records: int = 0
    commits: int = 0
    by_subscription: dict[str, int] = field(default_factory=dict)


def backoff_policy(settings: Settings) -> BackoffPolicy:
    return BackoffPolicy(
        base_seconds=settings.webhook_retry_base_seconds,
        max_seconds=max(settings.webhook_retry_max_seconds, settings.webhook_retry_base_seconds),
        jitter=settings.webhook_retry_jitter,
        budget_seconds=settings.webhook_retry_budget_seconds,
    )


def address_policy(settings: Settings) -> AddressPolicy:
    return AddressPolicy.build(
        settings.webhook_allow_private_networks,
        settings.webhook_allowed_networks,
        settings.webhook_allow_http,
    )


def http_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        connect_seconds=settings.webhook_connect_timeout_seconds,
        total_seconds=settings.webhook_timeout_seconds,
        max_response_bytes=settings.webhook_max_response_bytes,
    )


def store_path(settings: Settings):
    """``{data_dir}/webhooks/deliveries.sqlite3``."""
    return settings.data_dir / "webhooks" / "deliveries.sqlite3"


def _iso(ts: float | None) -> str:
    at = datetime.fromtimestamp(ts or 0.0, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_dead_letter(delivery: Delivery, body: bytes) -> DeadLetter:
    """The dead letter of a dead delivery: the event's original bytes, ``wo-dlq-*`` headers."""
    state = delivery.state
    reason = state.dead_reason or "WEBHOOK_DELIVERY_FAILED"
    original = target_subject(delivery.tenant_id, delivery.event_type)
    headers = {
        H_REASON: reason,
        H_ATTEMPTS: str(state.attempts),
        H_DIRECTION: WEBHOOK,
        H_EVENT_ID: delivery.event_id,
        H_EVENT_TYPE: delivery.event_type,
        H_EVENT_TENANT: delivery.tenant_id,
        H_WEBHOOK_SUBSCRIPTION: delivery.subscription_id,
        H_FIRST_SEEN: _iso(delivery.created_at),
        H_DEAD_LETTERED_AT: _iso(state.finished_at),
        NATS_MSG_ID: f"dlq:webhook:{delivery.subscription_id}:{delivery.event_id}",
    }
    if state.last_error:
        headers[H_DETAIL] = state.last_error
    if original is not None:
        headers[H_SUBJECT] = original
    parts = (delivery.source or "").rsplit(":", 2)
    if len(parts) == 3:
        headers[H_KAFKA_TOPIC], headers[H_KAFKA_PARTITION], headers[H_KAFKA_OFFSET] = parts
    return DeadLetter(
        dead_letter_subject(original), body, headers, WEBHOOK, domain_label(original), reason
    )


class Dispatcher:
    """Enqueues matching events durably and delivers them; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        subscriptions: Sequence[Subscription],
        *,
        store: AsyncWebhookStore,
        sender: Sender,
        dead_letters: DeadLetterSink,
        stop: asyncio.Event,
        metrics: WebhookMetrics | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self.index = SubscriptionIndex(subscriptions)
        self._store = store
        self._sender = sender
        self._sink = dead_letters
        self._stop = stop
        self.metrics = metrics or WebhookMetrics.create()
        self.clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._policy = backoff_policy(settings)
        self._concurrency = settings.webhook_endpoint_concurrency
        self._in_flight: dict[str, dict[tuple[str, str], asyncio.Task[None]]] = {}
        self._next_check: dict[str, float] = {}  # missing = check now
        self._lease_seconds = settings.webhook_timeout_seconds + 60.0
        self._wake = asyncio.Event()
        self._dlq_wake = asyncio.Event()
        self._last_gauge = 0.0
        self._last_prune = 0.0
        self._last_rescan = time.monotonic()
        self._requeue_mark: int | None = None  # the first rescan reads it (changes nothing)
        self._idle_seconds = min(_IDLE_SECONDS, self._settings.webhook_rescan_seconds)
        self.stats = DispatcherStats()

    # -- intake ------------------------------------------------------------------------------

    def plan(self, raw: bytes, source: str, tenant_hint: str | None = None) -> list[NewDelivery]:
        """The deliveries one record asks for (none when no subscription matches)."""
        if tenant_hint is not None and not self.index.has_tenant(tenant_hint):
            return []  # fast path: the ingress header says whose event it is
        parsed = parse_event(raw, max_bytes=self._settings.max_payload_bytes)
        if isinstance(parsed, ParseError):
            self.stats.invalid_records += 1
            log.warning("webhooks: unparseable record at %s (%s)", source, parsed.reason)
            return []
        subs = self.index.matching(parsed.tenantId, parsed.type)
        return [
            NewDelivery(s.id, parsed.id, parsed.tenantId, parsed.type, bytes(raw), source)
            for s in subs
        ]

    async def enqueue(self, items: Sequence[NewDelivery]) -> int:
        """Store deliveries durably (idempotent) and wake the scheduler; returns how many new."""
        if not items:
            return 0
        added = await self._store.call(self._store.store.enqueue, items, self.clock.now())
        for item in items:
            self._next_check[item.subscription_id] = 0.0
        self.stats.enqueued += added
        self.metrics.enqueued.inc(added)
        self._wake.set()
        return added

    async def accept(self, raw: bytes, source: str = "direct:0:0") -> int:
        """``plan`` + ``enqueue`` for one event (tests, tools)."""
        return await self.enqueue(self.plan(raw, source))

    # -- scheduling ------------------------------------------------------------------------

    def wake(self) -> None:
        """Re-check due deliveries now (e.g. after a test moved the clock)."""
        self._wake.set()

    def in_flight(self) -> int:
        return sum(len(v) for v in self._in_flight.values())

    async def run_scheduler(self) -> None:
        """Dispatch due deliveries until ``stop``; then let in-flight attempts finish."""
        failures = 0
        released = await self._store.call(self._store.store.release_leases)
        if released:
            log.info("webhooks: %d deliveries interrupted by the last stop are due again", released)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                now = self.clock.now()
                try:
                    await self._dispatch_due(now)
                    await self._housekeeping(now)
                    failures = 0
                except Exception as exc:  # store trouble (disk full, I/O): back off, try again
                    failures += 1
                    self._next_check.clear()  # a half-done pass: look at every subscription
                    log.error("webhook scheduler: store error %s; retrying", type(exc).__name__)
                    await _pause_quietly(_KAFKA_BACKOFF.delay(failures), self._stop)
                    continue
                later = [t for t in self._next_check.values() if t > now]
                await self._wait(self._wake, min(later) if later else None)
        finally:
            await self._drain()

    async def _dispatch_due(self, now: float) -> None:
        """Start attempts for due deliveries of subscriptions with free slots.

        ``_next_check[sub]`` is when the subscription may next have something due (0: now), so
        a pass only queries subscriptions with work: O(busy subscriptions), not O(rows).
        Deliveries of inactive or unknown subscriptions are never picked (paused).
        """
        for sub in self.index.active():
            if self._next_check.get(sub.id, 0.0) > now:
                continue
            flying = self._in_flight.setdefault(sub.id, {})
            free = self._concurrency - len(flying)
            if free <= 0:
                continue  # a finishing attempt wakes the scheduler
            # Enqueues and finished attempts during the awaits below only lower this value.
            self._next_check[sub.id] = math.inf
            # Claimed rows are leased: never returned again while their attempt runs.
            lease = now + self._lease_seconds
            rows = await self._store.call(self._store.store.claim_due, sub.id, now, free, lease)
            for delivery in rows:
                if delivery.key not in flying:  # always true with leases; a cheap guard
                    flying[delivery.key] = asyncio.create_task(self._attempt(sub, delivery))
            if len(rows) < free:  # nothing else due now: sleep until the next one
                next_at = await self._store.call(self._store.store.next_due_for, sub.id, now)
                found = math.inf if next_at is None else next_at
            else:
                found = now  # more is due: look again when a slot frees
            self._next_check[sub.id] = min(self._next_check[sub.id], found)

    def headers(self, sub: Subscription, delivery: Delivery, now: float) -> dict[str, str]:
        """The webhook request headers, signature included."""
        timestamp = int(now)
        return {
            EVENT_ID_HEADER: delivery.event_id,
            EVENT_TYPE_HEADER: delivery.event_type,
            TENANT_HEADER: delivery.tenant_id,
            DELIVERY_HEADER: f"{sub.id}:{delivery.event_id}",
            ATTEMPT_HEADER: str(delivery.state.attempts + 1),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature_header(sub.secrets, timestamp, delivery.body or b""),
        }

    async def _attempt(self, sub: Subscription, delivery: Delivery) -> None:
        try:
            if delivery.tenant_id != sub.tenant_id:
                # Queued for this id under another tenant: sending it would cross tenants.
                state = refuse(delivery.state, self.clock.now(), TENANT_MISMATCH,
                               "subscription now belongs to another tenant")  # fmt: skip
                await self._store.call(self._store.store.record, delivery.key, state)
                self.stats.dead += 1
                self._dlq_wake.set()
                log.error("webhook delivery of another tenant refused: subscription=%s event=%s",
                          sub.id, delivery.event_id)  # fmt: skip
                return
            started = self.clock.now()
            t0 = time.perf_counter()
            outcome = await self._sender.send(
                sub.url, delivery.body or b"", self.headers(sub, delivery, started)
            )
            self.metrics.seconds.observe(time.perf_counter() - t0)
            self.metrics.deliveries.labels(outcome.kind.value).inc()
            state = apply_outcome(
                delivery.state, outcome, started_at=started, now=self.clock.now(),
                policy=self._policy, rng=self._rng,
            )  # fmt: skip
            await self._store.call(self._store.store.record, delivery.key, state)
            if state.status is Status.DELIVERED:
                self.stats.delivered += 1
                counts = self.stats.by_subscription
                counts[sub.id] = counts.get(sub.id, 0) + 1
            elif state.status is Status.DEAD:
                self.stats.dead += 1
                self._dlq_wake.set()
                log.warning(
                    "webhook dead: subscription=%s event=%s reason=%s attempts=%d last=%s",
                    sub.id, delivery.event_id, state.dead_reason, state.attempts, state.last_error,
                )  # fmt: skip
            else:
                self.stats.failed_attempts += 1
                log.info(
                    "webhook attempt %d failed: subscription=%s event=%s %s; retry in %.0fs",
                    state.attempts, sub.id, delivery.event_id, outcome.summary,
                    state.next_attempt_at - self.clock.now(),
                )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception:
            # Nothing recorded: the delivery stays pending and is attempted again.
            log.exception("webhook attempt crashed: subscription=%s event=%s",
                          sub.id, delivery.event_id)  # fmt: skip
        finally:
            self._in_flight.get(sub.id, {}).pop(delivery.key, None)
            self._next_check[sub.id] = 0.0  # a slot is free: look at this subscription again
            self._wake.set()

    async def _wait(self, wake: asyncio.Event, next_at: float | None) -> None:
        waiters = {
            asyncio.ensure_future(wake.wait()),
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(asyncio.sleep(self._idle_seconds)),
        }
        if next_at is not None:
            waiters.add(asyncio.ensure_future(self.clock.sleep_until(next_at)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drain(self) -> None:
        tasks = [t for flying in self._in_flight.values() for t in flying.values()]
        if not tasks:
            return
        # Let running attempts finish and record their result; ones still running after the
        # grace period are cancelled and stay pending (sent again after the restart).
        grace = min(self._settings.webhook_timeout_seconds + 2, _STOP_GRACE_SECONDS)
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)

    async def _housekeeping(self, now: float) -> None:
        mono = time.monotonic()
        if mono - self._last_gauge >= _GAUGE_SECONDS:
            self._last_gauge = mono
            self.metrics.pending.set(await self._store.call(self._store.store.pending_count))
        if mono - self._last_rescan >= self._settings.webhook_rescan_seconds:
            # Deliveries requeued by ``webhooks requeue`` (another process) are due now but
            # not in _next_check: when the store's requeue mark moved, look at every
            # subscription once (one cheap read per rescan otherwise).
            self._last_rescan = mono
            mark = await self._store.call(self._store.store.requeue_mark)
            if mark != self._requeue_mark:
                self._requeue_mark = mark
                self._next_check.clear()
        if mono - self._last_prune >= _PRUNE_SECONDS:
            self._last_prune = mono
            horizon = now - self._settings.webhook_retention_days * 86_400
            pruned = await self._store.call(self._store.store.prune, horizon)
            if pruned:
                log.info("webhooks: pruned %d finished deliveries", pruned)

    # -- dead letters ----------------------------------------------------------------------

    async def run_dead_letters(self) -> None:
        """Publish dead deliveries to the dead-letter stream until ``stop``."""
        failures = 0
        while not self._stop.is_set():
            self._dlq_wake.clear()
            try:
                rows = await self._store.call(self._store.store.unpublished_dead, _DLQ_BATCH)
                if not rows:
                    await self._wait(self._dlq_wake, None)
                    continue
                letters = [webhook_dead_letter(d, d.body or b"") for d in rows]
                await self._sink.publish(letters)  # retries until every letter is acked
                await self._store.call(self._store.store.mark_dead_lettered, [d.key for d in rows])
                failures = 0
            except Stopping:
                return
            except Exception as exc:  # store trouble: the letters are published again later
                failures += 1
                log.error("webhook dead letters: error %s; retrying", type(exc).__name__)
                await _pause_quietly(_KAFKA_BACKOFF.delay(failures), self._stop)
                continue
            for letter in letters:
                self.metrics.dead_letters.labels(letter.reason).inc()
            self.stats.dead_lettered += len(letters)

    # -- Kafka -----------------------------------------------------------------------------

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self._settings
        return consumer_class(s)(
            *DOMAIN_TOPICS.values(),
            bootstrap_servers=s.kafka_bootstrap,
            client_id="wo-stream-webhooks",
            group_id=s.webhook_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **group_timeouts(s.webhook_session_timeout_ms),
            max_poll_interval_ms=86_400_000,  # a stalled store keeps the membership
            max_poll_records=s.webhook_batch_size,
            metadata_max_age_ms=30_000,
            isolation_level="read_committed",
        )

    async def run_consumer(self) -> None:
        """Read the domain topics into the store until ``stop``; rebuild on broker trouble."""
        if not self._settings.kafka_bootstrap:
            raise ValueError("the webhook dispatcher needs a Kafka bootstrap address")
        failures = 0
        while not self._stop.is_set():
            consumer = self._new_consumer()
            try:
                await start_subscribed(
                    consumer,
                    self._settings.kafka_bootstrap,
                    list(DOMAIN_TOPICS.values()),
                    partitions=self._settings.partitions,
                )
                await consume_batches(
                    consumer,
                    self._stop,
                    max_records=self._settings.webhook_batch_size,
                    handle=self.handle_batch,
                )
                failures = 0
            except Exception as exc:  # broker or store trouble: re-read from the last commit
                failures += 1
                log.warning("webhook consumer error %s; retrying", type(exc).__name__)
                try:
                    await pause(_KAFKA_BACKOFF.delay(failures), self._stop)
                except Stopping:
                    break
            finally:
                await stop_quietly(consumer)

    async def handle_batch(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Store the batch's deliveries, then commit its offsets."""
        items: list[NewDelivery] = []
        for tp, records in batches.items():
            for record in records:
                raw = record.value if isinstance(record.value, bytes) else b""
                hint = _header(record, "wo-tenant")
                items += self.plan(raw, f"{tp.topic}:{tp.partition}:{record.offset}", hint)
        await self.enqueue(items)
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "")
            for tp, records in batches.items()
            if records
        }
        await consumer.commit(offsets)
        self.stats.commits += 1

    # -- all together ----------------------------------------------------------------------

    async def run(self, *, consume: bool = True) -> None:
        """Scheduler, dead-letter publisher and (``consume``) the Kafka consumer until stop."""
        coros = [self.run_scheduler(), self.run_dead_letters()]
        if consume:
            coros.append(self.run_consumer())
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            self._stop.set()  # one part failed: stop the others cleanly before raising
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


async def _pause_quietly(delay: float, stop: asyncio.Event) -> None:
    """Sleep ``delay`` seconds or until ``stop`` is set."""
    try:
        await pause(delay, stop)
    except Stopping:
        pass


def _header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name and value:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


# -- process entry points ----------------------------------------------------------------------


async def run_webhooks(
    settings: Settings,
    *,
    stop: asyncio.Event,
    subscriptions: Sequence[Subscription] | None = None,
    metrics: WebhookMetrics | None = None,
    clock: Clock | None = None,
) -> Dispatcher:
    """Run the dispatcher until ``stop`` is set; returns it (stats) when stopped."""
    from connectors.bridge_metrics import BridgeMetrics
    from connectors.dead_letter import DeadLetterPublisher
    from connectors.jetstream import connect_nats
    from pipeline.webhook_config import check_urls, load_subscriptions

    if not settings.nats_url or not settings.kafka_bootstrap:
        raise ValueError("the webhook dispatcher needs WO_NATS_URL and WO_KAFKA_BOOTSTRAP")
    if subscriptions is None:
        if settings.webhook_subscriptions is None:
            raise ValueError("no webhook subscriptions: set WO_WEBHOOK_SUBSCRIPTIONS")
        subscriptions = load_subscriptions(settings.webhook_subscriptions)
    policy = address_policy(settings)
    for sub_id, reason in check_urls(list(subscriptions), policy).items():
        log.warning("webhook subscription %s: URL refused (%s); its deliveries will be "
                    "dead-lettered as WEBHOOK_URL_FORBIDDEN", sub_id, reason)  # fmt: skip
    nc, js = await connect_nats(settings.nats_url, name="wo-stream-webhooks")
    store = AsyncWebhookStore(WebhookStore(store_path(settings)))
    sender = WebhookSender(policy, http_limits(settings))
    try:
        sink = DeadLetterPublisher(js, settings, BridgeMetrics(), stop=stop)
        dispatcher = Dispatcher(
            settings, subscriptions, store=store, sender=sender, dead_letters=sink, stop=stop,
            metrics=metrics, clock=clock,
        )  # fmt: skip
        log.info("webhook dispatcher: %d subscriptions (%d active), group %s, store %s",
                 len(dispatcher.index), len(dispatcher.index.active()), settings.webhook_group,
                 store_path(settings))  # fmt: skip
        await sender.start()
        await dispatcher.run()
    finally:
        await sender.close()
        await store.close()
        await nc.drain()
    return dispatcher


def serve_webhooks(settings: Settings) -> int:
    """Blocking entry for ``python pipeline.py webhooks``: runs until SIGTERM/SIGINT."""
    from pipeline.webhook_config import ConfigError

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        metrics = WebhookMetrics.create()
        if settings.webhook_metrics_port:
            from prometheus_client import start_http_server

            start_http_server(
                settings.webhook_metrics_port, settings.bridge_metrics_host, metrics.registry
            )
        await run_webhooks(settings, stop=stop, metrics=metrics)

    try:
        asyncio.run(runner())
    except (ConfigError, ValueError) as exc:
        log.error("webhook dispatcher not started: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(serve_webhooks(Settings()))
