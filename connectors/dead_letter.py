"""Dead letters: the retry budget, building and publishing dead letters, and replaying them.

A dead letter is the original message, byte for byte, published to
``wo_dlq.{tenant}.{domain}.{event}`` in the dead-letter stream (``WO_DLQ``, outside ``wo.>`` so
it never flows back into the event stream). Its headers are the original headers plus
``wo-dlq-*`` headers saying why and where from:

===========================  ======================================================================
``wo-dlq-reason``            reason code (``events.parsing.ParseReason`` or ``BridgeReason``)
``wo-dlq-field``             dotted field path the parser blamed, when it named one
``wo-dlq-rule``              machine-readable rule of a SCHEMA_VIOLATION (``uuid7_required`` ...)
``wo-dlq-detail``            parser message (never contains input values) or an error class name
``wo-dlq-attempts``          failed write attempts (0: the message could never succeed)
``wo-dlq-direction``         ``ingress`` (NATS -> Kafka) or ``egress`` (Kafka -> NATS)
``wo-dlq-subject``           original subject (ingress) or target subject (egress, when known)
``wo-dlq-stream``            original stream, and ``wo-dlq-stream-seq`` its sequence (ingress)
``wo-dlq-kafka-topic``       original topic, ``-partition`` and ``-offset`` (egress)
``wo-dlq-published-at``      when the original was stored (JetStream time / Kafka timestamp)
``wo-dlq-first-seen``        when the bridge first handled it; ``wo-dlq-dead-lettered-at``: now
``wo-dlq-event-id``          envelope id/type/tenant, only when the parser found them valid
===========================  ======================================================================

Original headers named ``Nats-*`` (JetStream controls such as ``Nats-Msg-Id`` or
``Nats-Expected-*``) or ``wo-dlq-*``/``wo-orig-*`` are kept under a ``wo-orig-`` prefix, so they
neither steer the dead-letter publish nor pass for the bridge's own headers. The dead letter's
``Nats-Msg-Id`` is derived from the original position (stream + sequence, or topic + partition +
offset), so a retried publish of the same dead letter is stored once.

Subjects and tenant ids from the input are untrusted: a dead-letter subject is built only from
tokens that ``events.subjects`` validated, else it is ``wo_dlq._invalid._invalid._invalid``
(``_invalid`` is no catalog domain, so it can never be mistaken for a tenant's dead letter).
Nothing here logs payload values (PHI); logs carry reason codes, ids and positions only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.errors import NotFoundError

from connectors.bridge_metrics import BridgeMetrics
from connectors.jetstream import DLQ_PREFIX, DLQ_SUBJECTS, connect_nats, dlq_subject
from events.parsing import ParseError
from events.subjects import SubjectError, domain_for, is_valid_tenant_id, parse_subject
from pipeline.settings import Settings

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

INVALID_TOKEN = "_invalid"
INVALID_DLQ_SUBJECT = f"{DLQ_PREFIX}.{INVALID_TOKEN}.{INVALID_TOKEN}.{INVALID_TOKEN}"
INGRESS = "ingress"
EGRESS = "egress"

H_REASON = "wo-dlq-reason"
H_FIELD = "wo-dlq-field"
H_RULE = "wo-dlq-rule"
H_DETAIL = "wo-dlq-detail"
H_ATTEMPTS = "wo-dlq-attempts"
H_DIRECTION = "wo-dlq-direction"
H_SUBJECT = "wo-dlq-subject"
H_STREAM = "wo-dlq-stream"
H_STREAM_SEQ = "wo-dlq-stream-seq"
H_KAFKA_TOPIC = "wo-dlq-kafka-topic"
H_KAFKA_PARTITION = "wo-dlq-kafka-partition"
H_KAFKA_OFFSET = "wo-dlq-kafka-offset"
H_PUBLISHED_AT = "wo-dlq-published-at"
H_FIRST_SEEN = "wo-dlq-first-seen"
H_DEAD_LETTERED_AT = "wo-dlq-dead-lettered-at"
H_EVENT_ID = "wo-dlq-event-id"
H_EVENT_TYPE = "wo-dlq-event-type"
H_EVENT_TENANT = "wo-dlq-event-tenant"
H_PAYLOAD_OMITTED = "wo-dlq-payload-omitted"
H_PAYLOAD_SHA256 = "wo-dlq-payload-sha256"
H_REPLAYED_FROM = "wo-replayed-from"
ORIG_PREFIX = "wo-orig-"
NATS_MSG_ID = "Nats-Msg-Id"
_RESERVED_PREFIXES = ("nats-", "wo-dlq-", ORIG_PREFIX)
# nats-py blocks publish_async beyond 4000 pending acks by default; stay well below.
_PUBLISH_WINDOW = 1000
# RFC 7230 token: what nats-py accepts as a header name.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Stopping(Exception):
    """The bridge is stopping: the batch at hand is abandoned unacked and redelivered later."""


async def pause(delay: float, stop: asyncio.Event | None, sleep: Sleep = asyncio.sleep) -> None:
    """Sleep ``delay`` seconds with ``sleep``; raise Stopping as soon as ``stop`` is set."""
    if stop is None:
        await sleep(delay)
        return
    if stop.is_set():
        raise Stopping
    sleeper = asyncio.ensure_future(sleep(delay))
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()
    if stop.is_set():
        raise Stopping


class BridgeReason(StrEnum):
    """Dead-letter reasons the bridge adds to the parser's ``ParseReason`` codes."""

    INVALID_SUBJECT = "INVALID_SUBJECT"  # not wo.{tenant}.{domain}.{event} with valid tokens
    TENANT_MISMATCH = "TENANT_MISMATCH"  # subject tenant != envelope tenantId (spoofing)
    TYPE_MISMATCH = "TYPE_MISMATCH"  # subject event type != envelope type
    KAFKA_WRITE_FAILED = "KAFKA_WRITE_FAILED"  # retry budget spent (ingress)
    NATS_PUBLISH_FAILED = "NATS_PUBLISH_FAILED"  # retry budget spent (egress)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """§1.4: ``attempts`` tries in all, with exponential backoff between them (1, 2, 4, 8 s)."""

    attempts: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 16.0

    def delay(self, failed_attempts: int) -> float:
        """Backoff after the n-th failed attempt (n >= 1)."""
        exponent = min(max(failed_attempts - 1, 0), 32)  # retry-forever callers count high
        return min(self.base_seconds * 2**exponent, self.max_seconds)

    def exhausted(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.attempts

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.kafka_retry_attempts,
            settings.kafka_retry_base_seconds,
            settings.kafka_retry_max_seconds,
        )


@dataclass(slots=True)
class DeadLetter:
    """One dead letter ready to publish; ``domain``/``reason``/``direction`` label the metric."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    direction: str
    domain: str
    reason: str


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: object) -> str:
    # Header values cannot carry CR/LF; ours never should, this keeps a bug from breaking framing.
    return str(value).replace("\r", " ").replace("\n", " ")


def dead_letter_subject(subject: str | None) -> str:
    """``wo.t.d.e`` -> ``wo_dlq.t.d.e`` for a valid event subject, else the invalid bucket."""
    if subject is None:
        return INVALID_DLQ_SUBJECT
    try:
        parse_subject(subject)
    except SubjectError:
        return INVALID_DLQ_SUBJECT
    return dlq_subject(subject)


def domain_label(subject: str | None) -> str:
    """Metric label: the subject's domain if the subject is valid, else ``_invalid``."""
    if subject is None:
        return INVALID_TOKEN
    try:
        return parse_subject(subject).domain
    except SubjectError:
        return INVALID_TOKEN


def target_subject(tenant_id: str | None, event_type: str | None) -> str | None:
    """``wo.{tenant}.{domain}.{event}`` when both parts are valid tokens, else None."""
    if not is_valid_tenant_id(tenant_id) or not isinstance(event_type, str):
        return None
    try:
        domain = domain_for(event_type)
    except SubjectError:
        return None
    return f"wo.{tenant_id}.{domain}.{event_type.partition('.')[2]}"


def _kept_headers(headers: dict[str, str] | None) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if name.lower().startswith(_RESERVED_PREFIXES):
            kept[ORIG_PREFIX + name] = value
        else:
            kept[name] = value
    return kept


@dataclass(frozen=True, slots=True)
class Fault:
    """Why a message is dead-lettered, in the words the dead-letter headers use (no values)."""

    reason: str
    field: str | None = None
    rule: str | None = None
    detail: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    tenant_id: str | None = None

    @classmethod
    def from_parse_error(cls, error: ParseError) -> Fault:
        return cls(
            str(error.reason),
            error.field,
            error.rule,
            error.message,
            error.event_id,
            error.event_type,
            error.tenant_id,
        )


def _fault_headers(fault: Fault, attempts: int, direction: str) -> dict[str, str]:
    out = {H_REASON: fault.reason, H_ATTEMPTS: str(attempts), H_DIRECTION: direction}
    optional = (
        (H_FIELD, fault.field),
        (H_RULE, fault.rule),
        (H_DETAIL, fault.detail),
        (H_EVENT_ID, fault.event_id),
        (H_EVENT_TYPE, fault.event_type),
        (H_EVENT_TENANT, fault.tenant_id),
    )
    for name, value in optional:
        if value:
            out[name] = _clean(value)
    return out


def ingress_dead_letter(
    *,
    subject: str,
    payload: bytes,
    headers: dict[str, str] | None,
    stream: str,
    stream_seq: int,
    published_at: datetime | None,
    first_seen: str,
    fault: Fault,
    attempts: int = 0,
) -> DeadLetter:
    """The dead letter of a message from the event stream."""
    out = _kept_headers(headers)
    out.update(_fault_headers(fault, attempts, INGRESS))
    out[H_SUBJECT] = _clean(subject)
    out[H_STREAM] = stream
    out[H_STREAM_SEQ] = str(stream_seq)
    if (published := _iso(published_at)) is not None:
        out[H_PUBLISHED_AT] = published
    out[H_FIRST_SEEN] = first_seen
    out[H_DEAD_LETTERED_AT] = now_iso()
    out[NATS_MSG_ID] = f"dlq:{stream}:{stream_seq}"
    return DeadLetter(
        dead_letter_subject(subject), payload, out, INGRESS, domain_label(subject), fault.reason
    )


def egress_dead_letter(
    *,
    payload: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    first_seen: str,
    fault: Fault,
    attempts: int = 0,
) -> DeadLetter:
    """The dead letter of a Kafka record from the derived-events topic."""
    kafka_headers: dict[str, str] = {}
    for index, (name, value) in enumerate(headers or ()):
        # Kafka allows any header name and binary values, NATS only tokens and text: what does
        # not fit is kept hex-encoded under a safe name rather than lost (or refused).
        try:
            text = (value or b"").decode("utf-8")
            if text != text.strip() or "\r" in text or "\n" in text:
                raise ValueError
        except ValueError:
            name, text = f"{name}-hex", (value or b"").hex()
        if not _HEADER_NAME.fullmatch(name):
            name, text = f"wo-kafka-header-{index}", f"{name.encode().hex()}={text}"
        kafka_headers[name] = text
    out = _kept_headers(kafka_headers)
    out.update(_fault_headers(fault, attempts, EGRESS))
    subject = target_subject(fault.tenant_id, fault.event_type)
    if subject is not None:
        out[H_SUBJECT] = subject
    out[H_KAFKA_TOPIC] = _clean(topic)
    out[H_KAFKA_PARTITION] = str(partition)
    out[H_KAFKA_OFFSET] = str(offset)
    if timestamp_ms is not None and timestamp_ms >= 0:
        out[H_PUBLISHED_AT] = _iso(datetime.fromtimestamp(timestamp_ms / 1000, UTC)) or ""
    out[H_FIRST_SEEN] = first_seen
    out[H_DEAD_LETTERED_AT] = now_iso()
    out[NATS_MSG_ID] = f"dlq:kafka:{topic}:{partition}:{offset}"
    domain = domain_label(subject)
    return DeadLetter(
        dead_letter_subject(subject), payload or b"", out, EGRESS, domain, fault.reason
    )


async def publish_pipelined(
    js: JetStreamContext,
    messages: Sequence[tuple[str, bytes, dict[str, str]]],
    *,
    stream: str,
    timeout: float,  # noqa: ASYNC109 - a per-message PubAck deadline, not the call's
) -> list[PubAck | BaseException]:
    """Publish in order without waiting per message; one PubAck or error per message.

    ``stream`` becomes ``Nats-Expected-Stream``: a subject that some other stream captures is
    refused rather than silently stored in the wrong place. Messages go out in windows below
    nats-py's limit of pending async publishes, which would otherwise block the caller.
    """

    async def settle(item: asyncio.Future[PubAck] | BaseException) -> PubAck | BaseException:
        if isinstance(item, BaseException):
            return item
        try:
            # wait_for cancels the future on timeout, which frees its publish_async slot.
            return await asyncio.wait_for(item, timeout)
        except Exception as exc:
            return exc

    results: list[PubAck | BaseException] = []
    for start in range(0, len(messages), _PUBLISH_WINDOW):
        futures: list[asyncio.Future[PubAck] | BaseException] = []
        for subject, payload, headers in messages[start : start + _PUBLISH_WINDOW]:
            try:
                futures.append(
                    await js.publish_async(subject, payload, headers=dict(headers), stream=stream)
                )
            except Exception as exc:  # e.g. payload over the server's max_payload
                futures.append(exc)
        results += await asyncio.gather(*(settle(f) for f in futures))
    return results


class DeadLetterPublisher:
    """Publishes dead letters and keeps retrying until every one has its PubAck.

    The original message is acked (or its offset committed) only after this returns, so a dead
    letter is never lost; while the dead-letter stream is unreachable the caller stalls, which
    is what "never ack before stored" requires. A set ``stop`` ends the retrying with Stopping.
    """

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        metrics: BridgeMetrics,
        *,
        sleep: Sleep = asyncio.sleep,
        stop: asyncio.Event | None = None,
        on_trouble: Callable[[bool], None] | None = None,
    ) -> None:
        self._js = js
        self._stop = stop
        self._stream = settings.dlq_stream_name
        self._timeout = settings.nats_publish_timeout_seconds
        self._metrics = metrics
        self._sleep = sleep
        self._retry = RetryPolicy(attempts=1_000_000, base_seconds=0.5, max_seconds=10.0)
        self._on_trouble = on_trouble or (lambda _bad: None)

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        pending = list(letters)
        failures = 0
        while pending:
            results = await publish_pipelined(
                self._js,
                [(d.subject, d.payload, d.headers) for d in pending],
                stream=self._stream,
                timeout=self._timeout,
            )
            retry: list[DeadLetter] = []
            for letter, result in zip(pending, results, strict=True):
                if isinstance(result, PubAck):
                    self._metrics.dead_letters.labels(
                        letter.direction, letter.domain, letter.reason
                    ).inc()
                    log.warning(
                        "dead-lettered %s message: reason=%s subject=%s id=%s",
                        letter.direction, letter.reason, letter.subject,
                        letter.headers.get(H_EVENT_ID, "-"),
                    )  # fmt: skip
                    continue
                if _too_large(result) and not letter.headers.get(H_PAYLOAD_OMITTED):
                    # The original plus our headers exceeds the server's max_payload: keep the
                    # evidence (size, hash, headers) rather than stall the bridge forever.
                    letter = _without_payload(letter)
                retry.append(letter)
                log.error(
                    "dead-letter publish failed (%s); retrying: subject=%s",
                    type(result).__name__, letter.subject,
                )  # fmt: skip
            pending = retry
            if pending:
                failures += 1
                self._metrics.nats_publish_retries.labels(pending[0].direction).inc()
                self._on_trouble(True)
                await pause(self._retry.delay(failures), self._stop, self._sleep)
        if failures:
            self._on_trouble(False)


def _too_large(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "MaxPayloadError" or "maximum payload" in str(exc).lower()


def _without_payload(letter: DeadLetter) -> DeadLetter:
    headers = dict(letter.headers)
    headers[H_PAYLOAD_OMITTED] = str(len(letter.payload))
    headers[H_PAYLOAD_SHA256] = hashlib.sha256(letter.payload).hexdigest()
    return DeadLetter(letter.subject, b"", headers, letter.direction, letter.domain, letter.reason)


# ---------------------------------------------------------------------------------------------
# replay


@dataclass
class ReplayReport:
    """What ``replay_dead_letters`` did; ``by_reason`` counts the replayed dead letters."""

    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    duplicates: int = 0  # already replayed within the duplicate window: stored once
    unroutable: int = 0  # no valid original subject (e.g. INVALID_SUBJECT): left in place
    failed: int = 0
    purged: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "matched": self.matched,
            "replayed": self.replayed,
            "duplicates": self.duplicates,
            "unroutable": self.unroutable,
            "failed": self.failed,
            "purged": self.purged,
            "by_reason": dict(self.by_reason),
        }


def replay_headers(headers: dict[str, str] | None, dlq_stream: str, dlq_seq: int) -> dict[str, str]:
    """Original headers back (minus ``Nats-*`` controls), a replay-specific ``Nats-Msg-Id``.

    The id is not the original one: within the duplicate window JetStream would drop a replay
    carrying the original id as a duplicate, silently. ``replay:{stream}:{seq}`` makes a repeated
    replay of the same dead letter idempotent instead; the event keeps its own ``id``, by which
    consumers deduplicate (§1.4).
    """
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if name.lower().startswith("wo-dlq-") or name == NATS_MSG_ID:
            continue
        if name.startswith(ORIG_PREFIX):
            original = name[len(ORIG_PREFIX) :]
            if original.lower().startswith("nats-"):
                continue
            out[original] = value
        elif not name.lower().startswith("nats-"):
            out[name] = value
    out[NATS_MSG_ID] = f"replay:{dlq_stream}:{dlq_seq}"
    out[H_REPLAYED_FROM] = f"{dlq_stream}:{dlq_seq}"
    return out


async def replay_dead_letters(
    settings: Settings,
    *,
    reason: str | None = None,
    subject_filter: str | None = None,
    limit: int | None = None,
    purge: bool = False,
    batch: int = 256,
) -> ReplayReport:
    """Re-publish dead letters (original bytes, original subject) into the event stream.

    ``reason`` selects one reason code, ``subject_filter`` a dead-letter subject filter (e.g.
    ``wo_dlq.tenant_abc.>``), ``limit`` caps how many are replayed. Only dead letters that
    existed when the call started are considered, so ones that fail again (ingress dead-letters
    them anew) are not replayed in a loop. With ``purge`` a dead letter is deleted once its
    replay has a PubAck. Dead letters without a valid original subject are left in place.
    """
    if not settings.nats_url:
        raise ValueError("replay-dlq needs a NATS URL (WO_NATS_URL)")
    # An operator command: fail fast when the server is not there instead of waiting for it.
    nc, js = await connect_nats(
        settings.nats_url, name="wo-stream-replay-dlq", max_reconnect_attempts=3
    )
    try:
        return await _replay(
            js, settings, reason=reason, subject_filter=subject_filter, limit=limit,
            purge=purge, batch=batch,
        )  # fmt: skip
    finally:
        await nc.drain()


async def _replay(
    js: JetStreamContext,
    settings: Settings,
    *,
    reason: str | None,
    subject_filter: str | None,
    limit: int | None,
    purge: bool,
    batch: int,
) -> ReplayReport:
    report = ReplayReport()
    by_reason: Counter[str] = Counter()
    dlq = settings.dlq_stream_name
    info = await js.stream_info(dlq)
    last_seq = info.state.last_seq
    if info.state.messages == 0:
        return report
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=subject_filter or DLQ_SUBJECTS,
        inactive_threshold=60.0,
    )
    sub = await js.pull_subscribe(config.filter_subject or DLQ_SUBJECTS, stream=dlq, config=config)
    try:
        done = False
        while not done:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except TimeoutError:
                break
            todo: list[tuple[int, str, bytes, dict[str, str], str]] = []
            for msg in msgs:
                meta = msg.metadata
                seq = meta.sequence.stream
                if seq > last_seq:
                    done = True
                    break
                report.scanned += 1
                headers = msg.headers or {}
                code = headers.get(H_REASON, "")
                if reason is not None and code != reason:
                    continue
                if limit is not None and report.replayed + report.failed + len(todo) >= limit:
                    done = True
                    break
                report.matched += 1
                original = headers.get(H_SUBJECT)
                try:
                    parse_subject(original or "")
                except SubjectError:
                    report.unroutable += 1
                    continue
                hdrs = replay_headers(headers, dlq, seq)
                todo.append((seq, original or "", msg.data, hdrs, code))
            if _snapshot_done(msgs, last_seq):
                done = True
            results = await publish_pipelined(
                js,
                [(subject, data, hdrs) for _, subject, data, hdrs, _ in todo],
                stream=settings.stream_name,
                timeout=settings.nats_publish_timeout_seconds,
            )
            for (seq, subject, _, _, code), result in zip(todo, results, strict=True):
                if not isinstance(result, PubAck):
                    report.failed += 1
                    log.error("replay of %s:%d to %s failed: %s", dlq, seq, subject,
                              type(result).__name__)  # fmt: skip
                    continue
                report.replayed += 1
                by_reason[code] += 1
                if result.duplicate:
                    report.duplicates += 1
                if purge:
                    try:
                        await js.delete_msg(dlq, seq)
                        report.purged += 1
                    except NotFoundError:
                        pass
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # the ephemeral consumer expires by itself
            pass
    report.by_reason = dict(by_reason)
    log.info("replay-dlq: %s", report.to_dict())
    return report


def _snapshot_done(msgs: Sequence[Any], last_seq: int) -> bool:
    """True once the fetched batch reached the end of the snapshot (nothing pending, or past it)."""
    if not msgs:
        return True
    meta = msgs[-1].metadata
    return meta.num_pending == 0 or meta.sequence.stream >= last_seq
