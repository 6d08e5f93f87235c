"""Audit trail verification (every link, no sampling), Ed25519-signed checkpoints, §4.2 events.

``verify_tenant`` reads a tenant's chain in seq order and checks, per entry: the genesis value
(seq 1, prev hash ``GENESIS_HASH``), contiguous sequence numbers, the link to the previous hash,
the entry's own hash, non-decreasing recorded time, and that the columns match the stored event.
Signed checkpoints pin (seq, head hash): a valid signature is required (by the configured key)
and the entry at that seq must still carry that hash, so a chain rewritten with recomputed
hashes, or truncated below a checkpoint, is reported too.

``sign_heads`` signs each verified head that moved since its last checkpoint: only what was
verified is ever signed. Both the writer's periodic check and ``audit_verify_command`` emit
``compliance.audit_trail_integrity_check`` per tenant (Nats-Msg-Id = event id).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connectors.audit import AsyncStore, AuditStore, Checkpoint, StoreUnavailable, open_store
from connectors.audit.metrics import AuditMetrics
from events.envelope import DomainEvent
from events.factory import make_event
from events.ids import is_uuid
from pipeline.settings import Settings
from tables.audit_chain import (
    CHECKPOINT_SIGNATURE,
    GENESIS_HEAD,
    HEAD_CHANGED,
    UNREADABLE,
    Break,
    ChainHead,
    ChainVerifier,
    checkpoint_message,
    format_ts,
)

if TYPE_CHECKING:
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

INTEGRITY_TYPE = "compliance.audit_trail_integrity_check"
DEV_KEY_FILE = Path("audit") / "dev-signing-key"
NIL_UUID = "00000000-0000-0000-0000-000000000000"
# Keeps one integrity event well under the JetStream payload limit; the log has every break.
MAX_LINKS_PER_EVENT = 1000


class SigningKeyError(ValueError):
    """WO_AUDIT_SIGNING_KEY is not base64 of a 32-byte Ed25519 seed."""


class Signer:
    """Signs and verifies checkpoint messages with one Ed25519 key; ``key_id`` names it."""

    def __init__(self, seed: bytes, *, dev: bool = False) -> None:
        if len(seed) != 32:
            raise SigningKeyError("the audit signing key must be 32 raw bytes (base64-encoded)")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self._key.public_key()
        raw = self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]
        self.dev = dev

    def sign(self, message: bytes) -> str:
        return self._key.sign(message).hex()

    def verify(self, message: bytes, signature_hex: str) -> bool:
        try:
            self.public.verify(bytes.fromhex(signature_hex), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def load_signer(settings: Settings) -> Signer:
    """The configured key, else a dev key created once in the data dir (with a warning)."""
    if settings.audit_signing_key is not None:
        try:
            seed = base64.b64decode(settings.audit_signing_key.get_secret_value(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SigningKeyError("WO_AUDIT_SIGNING_KEY is not valid base64") from exc
        return Signer(seed)
    path = Path(settings.data_dir) / DEV_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        seed = base64.b64decode(path.read_bytes().strip())
    else:
        seed = os.urandom(32)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64encode(seed) + b"\n")
    signer = Signer(seed, dev=True)
    log.warning(
        "audit checkpoints are signed with a DEV key generated in %s (key id %s); "
        "set WO_AUDIT_SIGNING_KEY outside development", path, signer.key_id,
    )  # fmt: skip
    return signer


@dataclass
class TenantReport:
    """The outcome of verifying one tenant's chain (or the part after ``start``)."""

    tenant_id: str
    scope: str
    verified: int
    head: ChainHead
    breaks: list[Break] = field(default_factory=list)
    # entries verified that are not themselves integrity-check events
    substantive: int = 0

    @property
    def intact(self) -> bool:
        return not self.breaks


def verify_tenant(
    store: AuditStore, signer: Signer, tenant_id: str, start: ChainHead | None = None
) -> TenantReport:
    """Verify a tenant's chain from genesis (``start`` None: FULL) or after ``start``."""
    begin = start or GENESIS_HEAD
    verifier = ChainVerifier(tenant_id, begin)
    if start is not None and start.seq > 0:
        # The head a previous round verified must still be there, unchanged: entries at or
        # below it are not re-read incrementally (the periodic FULL check re-reads them all).
        here = next(iter(store.entries(tenant_id, after_seq=start.seq - 1, limit=1)), None)
        if here is None or here.seq != start.seq:
            actual = "missing"
        elif (here.hash, here.event_id) != (start.hash, start.event_id):
            actual = here.hash
        else:
            actual = None
        if actual is not None:
            brk = Break(
                tenant_id, start.seq, start.event_id or "", HEAD_CHANGED, start.hash, actual
            )
            verifier.breaks.append(brk)
    for cp in store.checkpoints(tenant_id):
        if cp.seq <= begin.seq:
            continue
        if cp.key_id != signer.key_id or not signer.verify(_message(cp), cp.signature):
            expected = f"signature by key {signer.key_id}"
            actual = f"key {cp.key_id}, signature invalid"
            brk = Break(tenant_id, cp.seq, cp.event_id, CHECKPOINT_SIGNATURE, expected, actual)
            verifier.breaks.append(brk)
            continue
        verifier.expected_at[cp.seq] = (cp.head_hash, cp.event_id)
    substantive = 0
    for entry in store.iter_entries(tenant_id, after_seq=begin.seq):
        verifier.feed(entry)
        if entry.event_type != INTEGRITY_TYPE:
            substantive += 1
    verifier.finish()
    scope = "FULL" if start is None else "INCREMENTAL"
    report = TenantReport(
        tenant_id, scope, verifier.verified, verifier.head, verifier.breaks, substantive
    )
    for brk in report.breaks:
        log.error("audit chain broken: %s", brk.describe())
    return report


def verify_all(
    store: AuditStore, signer: Signer, tenant_id: str | None = None
) -> list[TenantReport]:
    """FULL verification of one tenant or of every tenant in the store."""
    tenants = [tenant_id] if tenant_id is not None else store.tenants()
    return [verify_tenant(store, signer, t) for t in tenants]


def _message(cp: Checkpoint) -> bytes:
    return checkpoint_message(
        cp.tenant_id, cp.seq, cp.head_hash, cp.event_id, cp.signed_at, cp.key_id
    )


def sign_head(store: AuditStore, signer: Signer, tenant_id: str, head: ChainHead) -> Checkpoint:
    """Sign and store a checkpoint of ``head`` (which the caller has just verified)."""
    if head.event_id is None or head.seq < 1:
        raise ValueError("an empty chain has no head to sign")
    signed_at = format_ts(datetime.now(UTC))
    cp = Checkpoint(tenant_id, head.seq, head.hash, head.event_id, signed_at, signer.key_id, "")
    cp = replace(cp, signature=signer.sign(_message(cp)))
    store.add_checkpoint(cp)
    return cp


def last_checkpoint_seq(store: AuditStore, tenant_id: str, key_id: str) -> int:
    """The highest seq signed by ``key_id`` for a tenant (0 if none)."""
    seqs = [cp.seq for cp in store.checkpoints(tenant_id) if cp.key_id == key_id]
    return max(seqs, default=0)


def integrity_event(report: TenantReport, verified_at: datetime | None = None) -> DomainEvent:
    """The §4.2 event for one tenant's check (broken links capped at MAX_LINKS_PER_EVENT)."""
    links = [
        {
            "entryId": b.event_id if is_uuid(b.event_id) else NIL_UUID,
            "expectedHash": b.expected or "-",
            "actualHash": b.actual or "-",
        }
        for b in report.breaks[:MAX_LINKS_PER_EVENT]
    ]
    return make_event(
        INTEGRITY_TYPE,
        {
            "checkId": str(uuid.uuid4()),
            "scope": report.scope,
            "entriesVerified": report.verified,
            "chainIntact": report.intact,
            "brokenLinks": links,
            "verifiedAt": verified_at or datetime.now(UTC),
        },
        tenant_id=report.tenant_id,
    )


async def publish_events(settings: Settings, events: list[DomainEvent]) -> None:
    """Publish events to their subjects (Nats-Msg-Id = event id); raise if one is not stored."""
    from connectors.jetstream import connect_nats

    if not events:
        return
    if not settings.nats_url:
        raise ValueError("publishing integrity events needs a NATS URL (WO_NATS_URL)")
    nc, js = await connect_nats(settings.nats_url, name="wo-stream-audit-verify",
                                max_reconnect_attempts=3)  # fmt: skip
    try:
        await publish_to(js, settings, events)
    finally:
        await nc.drain()


async def publish_to(js: JetStreamContext, settings: Settings, events: list[DomainEvent]) -> None:
    """Publish on an open JetStream context; raise the first failure."""
    from connectors.dead_letter import publish_pipelined

    results = await publish_pipelined(
        js,
        [(e.subject, e.canonical_bytes(), {"Nats-Msg-Id": e.id}) for e in events],
        stream=settings.stream_name,
        timeout=settings.nats_publish_timeout_seconds,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


def audit_verify_command(settings: Settings, tenant: str | None) -> int:
    """``python pipeline.py audit verify [--tenant T]``: 0 intact, 1 broken; prints the breaks.

    Emits one integrity-check event per tenant when a NATS URL is configured.
    """
    from connectors.embedded import run_sync

    signer = load_signer(settings)
    store = open_store(settings)
    try:
        reports = verify_all(store, signer, tenant)
    finally:
        store.close()
    broken = 0
    for report in reports:
        state = "intact" if report.intact else f"BROKEN ({len(report.breaks)} links)"
        print(f"tenant {report.tenant_id}: {report.verified} entries, head seq "
              f"{report.head.seq}: {state}")  # fmt: skip
        for brk in report.breaks:
            print(f"  {brk.describe()}")
        broken += 0 if report.intact else 1
    if not reports:
        print("no audit chains found" + (f" for tenant {tenant}" if tenant else ""))
    if settings.nats_url and reports:
        run_sync(publish_events(settings, [integrity_event(r) for r in reports]))
    return 1 if broken else 0


class IntegrityChecker:
    """The writer's periodic check: FULL once at start, then INCREMENTAL from the last head.

    Per tenant it emits an integrity-check event when the chain is broken or has new entries
    other than integrity checks (so its own events, audited in turn, do not keep it talking),
    and signs the verified head when it moved. A broken chain is never signed again in this
    process. Events that could not be published are retried at the next round.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: AsyncStore,
        signer: Signer,
        js: JetStreamContext,
        metrics: AuditMetrics,
        stop: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._store = store
        self._signer = signer
        self._js = js
        self._metrics = metrics
        self._stop = stop
        self.heads: dict[str, ChainHead] = {}
        self.signed: dict[str, int] = {}
        self.broken: set[str] = set()
        self.rounds = 0
        self._unpublished: list[DomainEvent] = []

    async def run(self) -> None:
        from connectors.dead_letter import Stopping, pause

        while not self._stop.is_set():
            try:
                await self.check_once()
            except StoreUnavailable as exc:
                log.warning("audit integrity check postponed: store unavailable (%s)", exc)
            except Exception as exc:  # never take the writer down with the checker
                log.error("audit integrity check failed: %s", type(exc).__name__, exc_info=True)
            try:
                await pause(self._settings.audit_check_interval_seconds, self._stop)
            except Stopping:
                return

    async def check_once(self) -> list[TenantReport]:
        """One round over every tenant; returns the reports.

        Every ``audit_full_check_every`` rounds the round is FULL again (entries below the last
        verified head are not re-read incrementally). A tenant whose chain cannot even be read
        (a value of the wrong type or encoding) is reported broken; the others are checked.
        """
        store = self._store.store
        reports: list[TenantReport] = []
        events: list[DomainEvent] = []
        full = self.rounds % self._settings.audit_full_check_every == 0
        for tenant_id in await self._store.call(store.tenants):
            start = None if full else self.heads.get(tenant_id)
            try:
                report = await self._store.call(
                    verify_tenant, store, self._signer, tenant_id, start
                )
            except StoreUnavailable:
                raise  # the database is down: the whole round is postponed
            except Exception as exc:
                log.error("audit chain of tenant %s unreadable: %s", tenant_id,
                          type(exc).__name__)  # fmt: skip
                head = start or GENESIS_HEAD
                brk = Break(tenant_id, head.seq, head.event_id or "", UNREADABLE,
                            "verifiable chain", type(exc).__name__)  # fmt: skip
                report = TenantReport(tenant_id, "FULL" if start is None else "INCREMENTAL",
                                      0, head, [brk])  # fmt: skip
            reports.append(report)
            self.heads[tenant_id] = report.head
            result = "intact" if report.intact else "broken"
            self._metrics.checks.labels(report.scope, result).inc()
            if not report.intact:
                self.broken.add(tenant_id)
                self._metrics.broken_links.inc(len(report.breaks))
                self._metrics.chains_broken.set(len(self.broken))
            if not report.intact or report.substantive:
                events.append(integrity_event(report))
            if tenant_id not in self.broken:
                await self._sign(tenant_id, report.head)
        self.rounds += 1
        await self._publish(events)
        return reports

    async def _sign(self, tenant_id: str, head: ChainHead) -> None:
        store = self._store.store
        if tenant_id not in self.signed:
            self.signed[tenant_id] = await self._store.call(
                last_checkpoint_seq, store, tenant_id, self._signer.key_id
            )
        if head.seq > self.signed[tenant_id]:
            try:
                await self._store.call(sign_head, store, self._signer, tenant_id, head)
            except StoreUnavailable:
                # Another writer replica may have signed this head first (the checkpoint's key
                # is taken): read what is signed now rather than abort every later round here.
                self.signed[tenant_id] = await self._store.call(
                    last_checkpoint_seq, store, tenant_id, self._signer.key_id
                )
                if self.signed[tenant_id] < head.seq:
                    raise
                return
            self.signed[tenant_id] = head.seq
            self._metrics.checkpoints.inc()

    async def _publish(self, events: list[DomainEvent]) -> None:
        pending = self._unpublished + events
        if not pending:
            return
        try:
            await publish_to(self._js, self._settings, pending)
            self._unpublished = []
        except Exception as exc:
            self._unpublished = pending
            log.warning("integrity-check events not published yet (%s); retrying next round",
                        type(exc).__name__)  # fmt: skip
