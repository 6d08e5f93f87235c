"""Ingress NATS -> Kafka: a durable JetStream pull consumer mirrored into one topic per domain.

Per batch: fetch up to ``ingress_batch_size`` messages, check and parse each, write the valid
ones to Kafka and dead-letter the others, then ack the batch with **one** ack (AckPolicy ALL on
the message with the highest stream sequence). Records: value = the original bytes, key =
``events.keys.record_key`` (``{tenantId}:{entityId}``), timestamp = the envelope ``timestamp``,
headers ``wo-event-id``, ``wo-type``, ``wo-version``, ``wo-tenant``, ``wo-subject``,
``wo-stream-seq``. The next batch is fetched while the current one is written.

Nothing is acked before it is safe: the batch ack is sent only after every valid message has
its Kafka ack (acks=all) and every rejected one its dead-letter PubAck.

Per-key order (Kafka order == NATS publish order, across retries and restarts)
==============================================================================
1. One reader. The bridge handles batches strictly one after another, in stream order; run one
   active ingress per durable (a second one would interleave and break order anyway).
2. Within a batch, a key's records go to one partition (the Java-compatible murmur2
   partitioner), in stream order, as explicit record batches (``send_batch``); a Kafka record
   batch is written atomically. When one partition's records need several batches, batch n+1
   is sent only after batch n was acknowledged.
3. A failed batch is retried, from its first record, before anything later for that partition
   is sent. A write that failed but landed anyway (timeout after the broker stored it) can
   only add a duplicate of records whose first copy is still ahead of every later record.
4. The next fetched batch is written only after the current batch is fully written or
   dead-lettered and acked.
5. Restart: a consumer with unacked deliveries (a crashed bridge) is recreated to start at its
   ack floor + 1, so redeliveries come first and in order instead of after newer messages.
6. Gaps: every delivery carries a consumer sequence; a jump (a delivery lost on the wire, a
   client-side drop) ends the batch before the gap, acks what was handled and rewinds the
   consumer to the handled sequence + 1. That also protects AckPolicy ALL, which would
   otherwise ack a message that never arrived.
A message dead-lettered after the retry budget (§1.4: 5 attempts) leaves a hole in its key's
order until ``replay-dlq`` brings it back (then after its successors): the spec's trade-off.
Where the broker grants it the producer is idempotent; Tansu does not, so the argument above
does not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import nats.errors
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import (
    INGRESS,
    BridgeReason,
    DeadLetter,
    DeadLetterPublisher,
    Fault,
    RetryPolicy,
    Sleep,
    Stopping,
    ingress_dead_letter,
    now_iso,
    pause,
)
from connectors.jetstream import durable_pull_consumer_config
from events.ids import unix_ms
from events.keys import record_key
from events.parsing import ParseError, parse_event
from events.subjects import DOMAIN_TOPICS, SubjectError, parse_subject
from pipeline.settings import Settings

log = logging.getLogger(__name__)

H_EVENT_ID = "wo-event-id"
H_TYPE = "wo-type"
H_VERSION = "wo-version"
H_TENANT = "wo-tenant"
H_SUBJECT = "wo-subject"
H_STREAM_SEQ = "wo-stream-seq"
# Headroom over the payload limit for key, headers and batch framing in one produce request.
_REQUEST_HEADROOM = 64 * 1024
_PARTITION_CACHE_SIZE = 200_000
_ACK_V1_TOKENS = 9
_ACK_V2_TOKENS = 12
_ERROR_BACKOFF = RetryPolicy(attempts=1_000_000, base_seconds=0.5, max_seconds=10.0)


# ---------------------------------------------------------------------------------------------
# classification (pure)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a valid event goes in Kafka."""

    topic: str
    key: bytes
    timestamp_ms: int
    headers: list[tuple[str, bytes]]
    domain: str
    event_id: str
    event_type: str
    tenant_id: str


def classify(subject: str, data: bytes, *, stream_seq: int, max_bytes: int) -> Route | Fault:
    """Route a JetStream message to its Kafka topic, or say why it can never be mirrored."""
    try:
        parts = parse_subject(subject)
    except SubjectError as exc:
        return Fault(BridgeReason.INVALID_SUBJECT, rule="subject_format", detail=str(exc))
    parsed = parse_event(data, max_bytes=max_bytes)
    if isinstance(parsed, ParseError):
        return Fault.from_parse_error(parsed)
    ids = {"event_id": parsed.id, "event_type": parsed.type, "tenant_id": parsed.tenantId}
    if parsed.tenantId != parts.tenant_id:
        # Someone allowed to publish under one tenant's subjects claims another tenant.
        return Fault(
            BridgeReason.TENANT_MISMATCH,
            field="tenantId",
            rule="subject_tenant",
            detail="tenantId: must equal the subject's tenant token",
            **ids,
        )
    if parsed.type != parts.event_type:
        return Fault(
            BridgeReason.TYPE_MISMATCH,
            field="type",
            rule="subject_type",
            detail="type: must equal the subject's domain and event tokens",
            **ids,
        )
    headers = [
        (H_EVENT_ID, parsed.id.encode()),
        (H_TYPE, parsed.type.encode()),
        (H_VERSION, parsed.version.encode()),
        (H_TENANT, parsed.tenantId.encode()),
        (H_SUBJECT, subject.encode()),
        (H_STREAM_SEQ, str(stream_seq).encode()),
    ]
    return Route(
        topic=DOMAIN_TOPICS[parts.domain],
        key=record_key(parsed).encode(),
        timestamp_ms=unix_ms(parsed.timestamp),
        headers=headers,
        domain=parts.domain,
        event_id=parsed.id,
        event_type=parsed.type,
        tenant_id=parsed.tenantId,
    )


# ---------------------------------------------------------------------------------------------
# Kafka side


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class KafkaWriter:
    """An acks=all producer writing explicit per-partition record batches."""

    def __init__(self, settings: Settings, *, client_id: str = "wo-stream-bridge") -> None:
        if not settings.kafka_bootstrap:
            raise ValueError("the bridge needs a Kafka bootstrap address")
        self._settings = settings
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._partition_cache: dict[tuple[str, bytes], int] = {}
        self.idempotent = False
        # A send is abandoned (and retried) a little after the producer's own request timeout.
        self.send_timeout = settings.kafka_request_timeout_ms / 1000 + 5.0

    def _new_producer(self, idempotent: bool) -> AIOKafkaProducer:
        s = self._settings
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=idempotent,
            request_timeout_ms=s.kafka_request_timeout_ms,
            max_batch_size=s.kafka_max_batch_bytes,
            max_request_size=max(s.kafka_max_batch_bytes, s.max_payload_bytes) + _REQUEST_HEADROOM,
            # Batches are built by us and closed before submission; lingering adds nothing.
            linger_ms=0,
        )

    async def start(self) -> None:
        """Connect; idempotent if ``kafka_idempotence`` allows and the broker grants a pid."""
        mode = self._settings.kafka_idempotence
        if mode != "off":
            producer = self._new_producer(True)
            # aiokafka logs a refused InitProducerId as an ERROR; in "auto" that is expected.
            quiet = _quiet_logger("aiokafka.producer.sender") if mode == "auto" else nullcontext()
            try:
                with quiet:
                    await producer.start()
            except KafkaConnectionError:
                await producer.stop()
                raise
            except KafkaError as exc:
                await producer.stop()
                if mode == "on":
                    raise
                log.warning(
                    "Kafka broker refused an idempotent producer (%s); continuing with acks=all "
                    "and ordered retries only",
                    type(exc).__name__,
                )
            else:
                self._producer, self.idempotent = producer, True
                return
        producer = self._new_producer(False)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer, self.idempotent = producer, False

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaWriter is not started")
        return self._producer

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partitions, cached: keys must map the same way for the whole run."""
        known = self._partitions.get(topic)
        if known is None:
            found = await asyncio.wait_for(self.producer.partitions_for(topic), self.send_timeout)
            if not found:
                raise KafkaError(f"no partitions known for topic {topic}")
            known = self._partitions[topic] = sorted(found)
        return known

    def partition_for(self, topic: str, key: bytes, partitions: list[int]) -> int:
        """The Java client's murmur2 partition of ``key``, memoised (pure-Python murmur2 costs
        about as much as parsing the event, and entities repeat)."""
        cache = self._partition_cache
        found = cache.get((topic, key))
        if found is None:
            if len(cache) >= _PARTITION_CACHE_SIZE:
                cache.clear()
            found = cache[(topic, key)] = self._partitioner(key, partitions, partitions)
        return found

    def build(self, records: Sequence[tuple[Route, bytes]]) -> tuple[BatchBuilder, int]:
        """A closed record batch of a prefix of ``records`` (at least one) and its length."""
        batch = self.producer.create_batch()
        count = 0
        for route, value in records:
            appended = batch.append(
                timestamp=route.timestamp_ms, key=route.key, value=value, headers=route.headers
            )
            if appended is None:  # full: the rest goes in the next batch
                break
            count += 1
        batch.close()
        return batch, count

    async def send(self, topic: str, partition: int, batch: BatchBuilder) -> None:
        """Send one batch and wait for the broker's ack (raises on failure or timeout)."""

        async def go() -> None:
            future = await self.producer.send_batch(batch, topic, partition=partition)
            await future

        await asyncio.wait_for(go(), self.send_timeout)

    async def recover(self) -> None:
        """After a failure: restart a producer whose sender task died (it fails every send)."""
        producer = self._producer
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if producer is not None and task is not None and task.done():
            log.warning("Kafka producer's sender stopped; restarting the producer")
            self._producer = None
            try:
                await producer.stop()
            except Exception:  # already broken; nothing more to release
                pass
            await self.start()


# ---------------------------------------------------------------------------------------------
# JetStream side


def ingress_consumer_config(settings: Settings, start_seq: int | None = None) -> ConsumerConfig:
    """The durable pull consumer: AckPolicy ALL, from the start or from ``start_seq``."""
    base = durable_pull_consumer_config(
        settings.ingress_durable,
        settings.ingress_filter_subject,
        ack_wait=settings.ingress_ack_wait_seconds,
        # Room for the batch being written plus the one being prefetched, with margin.
        max_ack_pending=max(4 * settings.ingress_batch_size, 1000),
        description="wo-stream bridge ingress: NATS -> Kafka mirror",
    )
    if start_seq is None or start_seq <= 1:
        return dataclasses.replace(base, ack_policy=AckPolicy.ALL)
    return dataclasses.replace(
        base,
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
    )


async def rewind_consumer(js: JetStreamContext, settings: Settings, start_seq: int) -> None:
    """Recreate the durable so it delivers from ``start_seq`` on, in stream order."""
    try:
        await js.delete_consumer(settings.stream_name, settings.ingress_durable)
    except NotFoundError:
        pass
    await js.add_consumer(settings.stream_name, ingress_consumer_config(settings, start_seq))
    log.info("ingress consumer %s rewound to stream sequence %d", settings.ingress_durable,
             start_seq)  # fmt: skip


def ack_position(msg: Msg) -> tuple[int, int, int, int]:
    """(delivery count, stream seq, consumer seq, pending) from a delivery's ack subject.

    Reads the four numbers straight from ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
    <cseq>.<ts>.<pending>`` (or its 2.10+ form with domain and account hash in front), skipping
    nats-py's full ``metadata`` (which also builds a datetime) on the hot path.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == _ACK_V1_TOKENS:
        at = 4
    elif len(tokens) >= _ACK_V2_TOKENS - 1:
        at = 6
    else:
        meta = msg.metadata  # raises NotJSMessageError for a non-JetStream message
        return meta.num_delivered, meta.sequence.stream, meta.sequence.consumer, meta.num_pending
    return int(tokens[at]), int(tokens[at + 1]), int(tokens[at + 2]), int(tokens[at + 4])


class Puller:
    """JetStream pull requests with one subscription callback instead of a wait per message.

    nats-py's ``fetch`` awaits every message through ``asyncio.wait_for``, which costs more
    than parsing the event. Here deliveries land in a deque from the subscription callback and
    ``fetch`` drains up to ``batch`` of them. One pull request is outstanding at a time: a new
    one is sent when the last has delivered its ``batch`` or ended (status 404/408/409), so the
    next batch streams in while the current one is written.
    """

    def __init__(self, nc: NATS, stream: str, durable: str, batch: int) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = batch
        self._inbox = nc.new_inbox()
        self._queue: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._remaining = 0  # deliveries the outstanding request may still bring
        self._deadline = 0.0  # when it expires (monotonic), plus a grace period
        self._error: str | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply:  # deliveries carry their $JS.ACK reply subject, status messages none
            self._queue.append(msg)
            self._remaining -= 1
            self._wake.set()
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "100":  # idle heartbeat
            return
        # 404 no messages, 408 request expired, 409 limits reached or consumer gone: the
        # request is over either way.
        self._remaining = 0
        description = headers.get("Description", "").lower()
        if status == "409" and ("deleted" in description or "leadership" in description):
            self._error = f"{status} {description}"
        self._wake.set()

    async def fetch(self, timeout: float, linger: float = 0.002) -> list[Msg]:  # noqa: ASYNC109
        """Up to ``batch`` deliveries: waits ``timeout`` for the first, ``linger`` for more."""
        if self._error:
            error, self._error = self._error, None
            raise nats.errors.Error(f"pull consumer: {error}")
        now = time.monotonic()
        if not self._queue and (self._remaining <= 0 or now > self._deadline):
            self._remaining = self._batch
            self._deadline = now + timeout + 1.0
            request = orjson.dumps({"batch": self._batch, "expires": int(timeout * 1e9)})
            await self._nc.publish(self._next, request, reply=self._inbox)
        if not self._queue:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        # A request answered from a backlog streams its deliveries in quick succession: give
        # them a moment, so that a batch is a batch and not its first few messages.
        linger_until = time.monotonic() + linger
        while (
            self._queue
            and len(self._queue) < self._batch
            and self._remaining > 0
            and time.monotonic() < linger_until
        ):
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), linger)
        out: list[Msg] = []
        while self._queue and len(out) < self._batch:
            out.append(self._queue.popleft())
        return out


async def prepare_consumer(js: JetStreamContext, settings: Settings) -> int:
    """Create the durable, or rewind it to its ack floor if it has unacked deliveries.

    Returns the ack floor (the stream sequence up to which everything was handled).
    """
    try:
        info = await js.consumer_info(settings.stream_name, settings.ingress_durable)
    except NotFoundError:
        await js.add_consumer(settings.stream_name, ingress_consumer_config(settings))
        log.info("created ingress consumer %s", settings.ingress_durable)
        return 0
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    cfg, want = info.config, ingress_consumer_config(settings)
    drift = (
        cfg.ack_policy != AckPolicy.ALL
        or cfg.filter_subject != want.filter_subject
        or abs((cfg.ack_wait or 0) - (want.ack_wait or 0)) > 0.001
        or cfg.max_ack_pending != want.max_ack_pending
    )
    if drift or info.num_ack_pending or info.num_redelivered:
        # Unacked deliveries belong to a bridge that died: they must come again before
        # anything newer, which only a consumer starting at the ack floor guarantees.
        await rewind_consumer(js, settings, floor + 1)
    return floor


async def reset_ingress(js: JetStreamContext, settings: Settings) -> bool:
    """Delete the durable ingress consumer, so the next start mirrors the whole retained stream.

    For a Kafka broker that lost its topics (the memory-only embedded one after a restart)
    while JetStream kept the events. Call it while no bridge runs. Consumers dedup by event id.
    """
    try:
        return await js.delete_consumer(settings.stream_name, settings.ingress_durable)
    except NotFoundError:
        return False


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class IngressStats:
    """Counters for health output and tests (the Prometheus metrics say the same by label)."""

    batches: int = 0
    mirrored: int = 0
    dead_lettered: int = 0
    redeliveries: int = 0
    resyncs: int = 0
    kafka_retries: int = 0
    acked_stream_seq: int = 0
    errors: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Item:
    msg: Msg
    seq: int
    outcome: Route | Fault
    attempts: int = 0
    failure: str | None = None


class Ingress:
    """Runs the NATS -> Kafka direction until ``stop`` is set; never raises on bad input."""

    def __init__(
        self,
        *,
        nc: NATS,
        js: JetStreamContext,
        writer: KafkaWriter,
        settings: Settings,
        metrics: BridgeMetrics,
        stop: asyncio.Event,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._nc = nc
        self._js = js
        self._writer = writer
        self._settings = settings
        self._metrics = metrics
        self._stop = stop
        self._sleep = sleep
        self._retry = RetryPolicy.from_settings(settings)
        self._dead_letters = DeadLetterPublisher(
            js, settings, metrics, sleep=sleep, stop=stop, on_trouble=self._trouble
        )
        self._puller: Puller | None = None
        self._handled_seq = 0
        self._expect_cseq: int | None = None
        self._held: list[list[Msg]] = []
        self._troubles = 0
        self.stats = IngressStats()
        self.healthy = True
        metrics.healthy.labels(INGRESS).set(1)

    # -- health --------------------------------------------------------------------------

    def _trouble(self, on: bool) -> None:
        # Trouble ends with the next fully handled batch (_account), not with one good write.
        if on:
            self._troubles += 1
            self._set_health(False)

    def _set_health(self, healthy: bool) -> None:
        self.healthy = healthy
        self._metrics.healthy.labels(INGRESS).set(1 if healthy else 0)

    # -- run -----------------------------------------------------------------------------

    async def run(self) -> None:
        keepalive = asyncio.create_task(self._keepalive(), name="ingress-keepalive")
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    await self._open()
                    await self._loop()
                    failures = 0
                except Stopping:
                    break
                except Exception as exc:
                    # Broker or network trouble (or a bug): never die, never ack what is not
                    # handled. Reopening rewinds the consumer past what was handled.
                    failures += 1
                    self.stats.errors += 1
                    self.stats.last_error = type(exc).__name__
                    self._set_health(False)
                    log.warning("ingress error %s: %s; reopening", type(exc).__name__, exc)
                    try:
                        await pause(_ERROR_BACKOFF.delay(failures), self._stop, self._sleep)
                    except Stopping:
                        break
        finally:
            keepalive.cancel()
            await self._close_sub()

    async def _open(self) -> None:
        await self._close_sub()
        floor = await prepare_consumer(self._js, self._settings)
        if floor < self._handled_seq:
            # The server's floor lags our own acks (in flight when it failed): start after
            # what this process knows it handled, which saves re-writing it.
            await rewind_consumer(self._js, self._settings, self._handled_seq + 1)
        self._handled_seq = max(self._handled_seq, floor)
        self._expect_cseq = None
        self._held.clear()
        await self._subscribe()

    async def _subscribe(self) -> None:
        s = self._settings
        self._puller = Puller(self._nc, s.stream_name, s.ingress_durable, s.ingress_batch_size)
        await self._puller.start()

    async def _close_sub(self) -> None:
        puller, self._puller = self._puller, None
        if puller is not None:
            await puller.stop()

    async def _fetch(self) -> list[Msg]:
        assert self._puller is not None
        msgs = await self._puller.fetch(self._settings.ingress_fetch_timeout_seconds)
        if msgs:
            self._held.append(msgs)
        return msgs

    async def _loop(self) -> None:
        prefetch: asyncio.Task[list[Msg]] | None = None
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                current = prefetch or asyncio.create_task(self._fetch())
                prefetch = None
                await asyncio.wait({current, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not current.done():
                    current.cancel()
                    break
                msgs = current.result()
                if not msgs:
                    if not self._troubles:
                        self._set_health(True)
                    continue
                # Fetch the next batch while this one is written: only writing must be serial.
                prefetch = asyncio.create_task(self._fetch())
                complete = await self._handle(msgs)
                if not complete:
                    prefetch.cancel()
                    prefetch = None
                    await self._resync()
        finally:
            stop_wait.cancel()
            if prefetch is not None:
                prefetch.cancel()

    async def _resync(self) -> None:
        self.stats.resyncs += 1
        self._metrics.consumer_resyncs.inc()
        log.warning("ingress delivery gap; rewinding to stream sequence %d", self._handled_seq + 1)
        await self._close_sub()
        await rewind_consumer(self._js, self._settings, self._handled_seq + 1)
        self._expect_cseq = None
        self._held.clear()
        await self._subscribe()

    async def _keepalive(self) -> None:
        """While a batch takes long (Kafka retries), stop JetStream from redelivering it."""
        interval = max(self._settings.ingress_ack_wait_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            for batch in list(self._held):
                for msg in batch:
                    try:
                        await msg.in_progress()
                    except Exception:  # best effort: a redelivery is handled anyway
                        break

    # -- one batch -----------------------------------------------------------------------

    async def _handle(self, msgs: list[Msg]) -> bool:
        """Write, dead-letter and ack one fetched batch; False if a delivery gap cut it short."""
        items, last, last_seq, complete = self._admit(msgs)
        if last is None:
            return complete
        first_seen = now_iso()
        routes = [it for it in items if isinstance(it.outcome, Route)]
        faults = [it for it in items if isinstance(it.outcome, Fault)]
        letters = [self._letter(it, first_seen) for it in faults]

        by_topic: dict[str, list[_Item]] = {}
        for it in routes:
            assert isinstance(it.outcome, Route)
            by_topic.setdefault(it.outcome.topic, []).append(it)
        results = await asyncio.gather(
            self._dead_letters.publish(letters),
            *(self._write_topic(topic, group) for topic, group in by_topic.items()),
            return_exceptions=True,
        )
        exhausted: list[_Item] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result  # Stopping or a connection error: nothing gets acked
            if result:
                exhausted.extend(result)
        if exhausted:
            await self._dead_letters.publish([self._letter(it, first_seen) for it in exhausted])

        # AckPolicy ALL: this one ack covers every delivery up to the highest stream sequence.
        await last.ack()
        self._handled_seq = max(self._handled_seq, last_seq)
        self.stats.acked_stream_seq = self._handled_seq
        self._held = [b for b in self._held if b is not msgs]
        self._account(routes, exhausted, faults)
        return complete

    def _admit(self, msgs: list[Msg]) -> tuple[list[_Item], Msg | None, int, bool]:
        """Contiguity check, redelivery skip and classification of a fetched batch.

        Returns the items to handle, the delivery with the highest stream sequence (the one to
        ack), that sequence, and whether the whole batch was admitted (False: a gap).
        """
        items: list[_Item] = []
        last: Msg | None = None
        last_seq = 0
        redelivered = 0
        pending = -1
        max_bytes = self._settings.max_payload_bytes
        complete = True
        for msg in msgs:
            delivered, seq, cseq, pending = ack_position(msg)
            if self._expect_cseq is not None and cseq != self._expect_cseq:
                complete = False
                break
            self._expect_cseq = cseq + 1
            if delivered > 1:
                redelivered += 1
            if seq > last_seq:
                last, last_seq = msg, seq
            if seq <= self._handled_seq:
                continue  # a redelivery of something already written and acked
            outcome = classify(msg.subject, msg.data, stream_seq=seq, max_bytes=max_bytes)
            items.append(_Item(msg, seq, outcome))
        if redelivered:
            self.stats.redeliveries += redelivered
            self._metrics.jetstream_redeliveries.inc(redelivered)
        if pending >= 0:
            self._metrics.jetstream_pending.set(pending)
        return items, last, last_seq, complete

    def _letter(self, item: _Item, first_seen: str) -> DeadLetter:
        outcome = item.outcome
        if isinstance(outcome, Route):
            fault = Fault(
                BridgeReason.KAFKA_WRITE_FAILED,
                detail=item.failure,
                event_id=outcome.event_id,
                event_type=outcome.event_type,
                tenant_id=outcome.tenant_id,
            )
        else:
            fault = outcome
        meta = item.msg.metadata
        return ingress_dead_letter(
            subject=item.msg.subject,
            payload=item.msg.data,
            headers=item.msg.headers,
            stream=meta.stream,
            stream_seq=item.seq,
            published_at=meta.timestamp,
            first_seen=first_seen,
            fault=fault,
            attempts=item.attempts,
        )

    def _account(self, routes: list[_Item], exhausted: list[_Item], faults: list[_Item]) -> None:
        failed = {id(it) for it in exhausted}
        by_domain: Counter[str] = Counter(
            it.outcome.domain
            for it in routes
            if id(it) not in failed and isinstance(it.outcome, Route)
        )
        for domain, count in by_domain.items():
            self._metrics.mirrored.labels(domain).inc(count)
        self.stats.mirrored += sum(by_domain.values())
        self.stats.dead_lettered += len(faults) + len(exhausted)
        self.stats.batches += 1
        self._metrics.last_progress.labels(INGRESS).set(time.time())
        self._troubles = 0
        self._set_health(True)

    # -- Kafka writes with retries -------------------------------------------------------

    async def _write_topic(self, topic: str, items: list[_Item]) -> list[_Item]:
        """Write one topic's records; returns those whose retry budget ran out."""
        failed = 0
        while True:
            try:
                partitions = await self._writer.partitions(topic)
                break
            except (KafkaError, TimeoutError, OSError) as exc:
                failed += 1
                if self._retry.exhausted(failed):
                    for it in items:
                        it.attempts, it.failure = failed, type(exc).__name__
                    return items
                await self._backoff(failed, topic, exc)
        by_partition: dict[int, list[_Item]] = {}
        for it in items:
            assert isinstance(it.outcome, Route)
            p = self._writer.partition_for(topic, it.outcome.key, partitions)
            by_partition.setdefault(p, []).append(it)
        results = await asyncio.gather(
            *(self._write_partition(topic, p, group) for p, group in by_partition.items()),
            return_exceptions=True,
        )
        exhausted: list[_Item] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            exhausted.extend(result)
        return exhausted

    async def _write_partition(self, topic: str, partition: int, items: list[_Item]) -> list[_Item]:
        """Write in order, one record batch at a time; a failed batch is retried before the rest."""
        exhausted: list[_Item] = []
        records = [(it.outcome, it.msg.data) for it in items]
        i, failed = 0, 0
        while i < len(items):
            batch, count = self._writer.build(records[i:])  # type: ignore[arg-type]
            count = max(count, 1)
            started = time.monotonic()
            try:
                await self._writer.send(topic, partition, batch)
            except (KafkaError, TimeoutError, OSError) as exc:
                failed += 1
                chunk = items[i : i + count]
                for it in chunk:
                    it.attempts, it.failure = failed, type(exc).__name__
                if self._retry.exhausted(failed):
                    log.error(
                        "Kafka write to %s[%d] failed %d times (%s); dead-lettering %d records",
                        topic, partition, failed, type(exc).__name__, len(chunk),
                    )  # fmt: skip
                    exhausted.extend(chunk)
                    i, failed = i + count, 0
                    continue
                await self._backoff(failed, f"{topic}[{partition}]", exc)
                continue
            self._metrics.produce_latency.observe(time.monotonic() - started)
            i, failed = i + count, 0
        return exhausted

    async def _backoff(self, failed: int, where: str, exc: BaseException) -> None:
        self.stats.kafka_retries += 1
        self._metrics.kafka_retries.inc()
        self._trouble(True)
        delay = self._retry.delay(failed)
        log.warning(
            "Kafka write to %s failed (%s, attempt %d); retrying in %.1fs",
            where, type(exc).__name__, failed, delay,
        )  # fmt: skip
        await pause(delay, self._stop, self._sleep)
        await self._writer.recover()
