"""JetStream provisioning (event and dead-letter streams) and the bridge's consumer config."""

from __future__ import annotations

import logging
from typing import Any, Literal

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from pipeline.settings import Settings

log = logging.getLogger(__name__)

DAY = 86_400.0
EVENT_SUBJECTS = "wo.>"
DLQ_PREFIX = "wo_dlq"
DLQ_SUBJECTS = f"{DLQ_PREFIX}.>"
# §1.4: dead-letter after 5 retries with exponential backoff (the 6th failed delivery).
MAX_RETRIES = 5
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0

# The fields provisioning owns; anything else on a live stream (server metadata, limits an
# operator set by hand) is left alone, so it neither counts as drift nor gets reset.
_MANAGED_FIELDS = (
    "description",
    "subjects",
    "storage",
    "retention",
    "discard",
    "max_age",
    "duplicate_window",
    "num_replicas",
)

EnsureResult = Literal["created", "updated", "unchanged"]


def event_stream_config(settings: Settings) -> StreamConfig:
    """§1.3/§1.4: every `wo.{tenant}.{domain}.{event_type}` subject, file-backed, 7 days."""
    return StreamConfig(
        name=settings.stream_name,
        description="wo-stream domain events, wo.{tenant}.{domain}.{event_type}",
        subjects=[EVENT_SUBJECTS],
        # File storage is what makes events survive a NATS restart (§1.4 durability).
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        # At the age limit the oldest events go; producers are never refused for space.
        discard=DiscardPolicy.OLD,
        max_age=settings.stream_max_age_days * DAY,
        # Publishers set Nats-Msg-Id = event.id, so a retried publish is stored once.
        duplicate_window=float(settings.duplicate_window_seconds),
        num_replicas=settings.stream_replicas,
    )


def dlq_stream_config(settings: Settings) -> StreamConfig:
    """Dead letters under `wo_dlq.>`, kept longer than events (default 30 d) for triage.

    A separate prefix rather than `wo.dlq.>`: JetStream forbids overlapping stream subjects,
    and dead letters must not flow back into the event stream and its consumers.
    """
    return StreamConfig(
        name=settings.dlq_stream_name,
        description="wo-stream dead letters, wo_dlq.{tenant}.{domain}.{event_type}",
        subjects=[DLQ_SUBJECTS],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=settings.dlq_max_age_days * DAY,
        duplicate_window=float(settings.duplicate_window_seconds),
        num_replicas=settings.stream_replicas,
    )


def _same(field: str, current: Any, desired: Any) -> bool:
    if field == "subjects":
        return sorted(current or []) == sorted(desired or [])
    return current == desired


async def ensure_stream(js: JetStreamContext, desired: StreamConfig) -> EnsureResult:
    """Create the stream, or update the managed fields that drifted; no-op when in shape."""
    assert desired.name, "a stream needs a name"
    try:
        info = await js.stream_info(desired.name)
    except NotFoundError:
        await js.add_stream(desired)
        log.info("created stream %s", desired.name)
        return "created"
    current = info.config
    drift = {
        f: getattr(desired, f)
        for f in _MANAGED_FIELDS
        if not _same(f, getattr(current, f), getattr(desired, f))
    }
    if not drift:
        return "unchanged"
    # The server refuses some changes (e.g. storage type); let its error say which.
    await js.update_stream(current.evolve(**drift))
    log.info("updated stream %s: %s", desired.name, sorted(drift))
    return "updated"


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Idempotently provision the event stream and the dead-letter stream."""
    await ensure_stream(js, event_stream_config(settings))
    await ensure_stream(js, dlq_stream_config(settings))


def durable_pull_consumer_config(
    durable: str,
    filter_subject: str = EVENT_SUBJECTS,
    *,
    ack_wait: float = 30.0,
    max_ack_pending: int = 1000,
    max_deliver: int = -1,
    description: str | None = None,
) -> ConsumerConfig:
    """A durable pull consumer from the stream's start with explicit per-message acks.

    ack_wait bounds how long one un-acked message blocks before redelivery; 30 s covers a
    Kafka produce round trip under load with a wide margin. max_ack_pending caps the bridge's
    in-flight window. max_deliver stays unlimited: dead-lettering is an explicit decision by
    the consumer (see MAX_RETRIES, retry_delay, dlq_subject), because JetStream's own limit
    would merely stop redelivering, and would also count redeliveries caused by a Kafka outage.
    """
    return ConsumerConfig(
        durable_name=durable,
        description=description,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        max_deliver=max_deliver,
        filter_subject=filter_subject,
        replay_policy=ReplayPolicy.INSTANT,
    )


def retry_delay(num_delivered: int) -> float:
    """Exponential NAK delay after the num_delivered-th failed delivery (1 s, 2 s, 4 s ...)."""
    exponent = max(num_delivered - 1, 0)
    return min(RETRY_BASE_SECONDS * 2**exponent, RETRY_CAP_SECONDS)


def dlq_subject(subject: str) -> str:
    """`wo.t1.workorder.created` -> `wo_dlq.t1.workorder.created`."""
    head, _, rest = subject.partition(".")
    if head != "wo" or not rest:
        raise ValueError(f"not a wo.> event subject: {subject!r}")
    return f"{DLQ_PREFIX}.{rest}"


async def connect_nats(
    url: str, *, name: str = "wo-stream", **options: Any
) -> tuple[NATS, JetStreamContext]:
    """Connect with reconnects that ride out a NATS restart; returns (client, JetStream).

    nats-py applies max_reconnect_attempts to the *initial* connect too (allow_reconnect=False
    does not change that), so by default this waits for a server that is not up yet. To fail
    fast, pass max_reconnect_attempts=1 (0 means unlimited as well) or wrap in asyncio.timeout.
    """
    options.setdefault("max_reconnect_attempts", -1)
    options.setdefault("reconnect_time_wait", 0.5)
    nc = await nats.connect(url, name=name, **options)
    return nc, nc.jetstream()
