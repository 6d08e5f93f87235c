"""The audit trail's hash chain, pure: canonical entry bytes, link hashes, sealing, verification.

One chain per tenant. Entry ``n`` (``seq`` 1, 2, ...) stores the hash of entry ``n-1`` (for
``seq`` 1 the genesis value ``GENESIS_HASH``, 64 zeros) and its own hash::

    hash = SHA-256( prev_hash (64 lower-case hex chars, ASCII) || canonical entry bytes )

The canonical entry is canonical JSON (``events.canonical``: sorted keys, no whitespace) of
``{actor: {id, role, type}, event, eventId, eventTimestamp, recordedAt, seq, tenantId, type,
version}`` where ``event`` is the event's canonical JSON embedded verbatim. Every stored column
is covered, so changing any of them (payload, order, sequence, time) breaks the entry's hash;
deleting or swapping entries breaks the next link or the sequence. Rewriting the chain from some
point on with recomputed hashes is consistent in itself; signed checkpoints of the head hash
(``checkpoint_message``; signed elsewhere) catch that.

Timestamps are stored as fixed-width strings (``format_ts``: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``),
so they sort as text and hash identically in every database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import orjson

from events.canonical import canonical_json

GENESIS_HASH: Final = "0" * 64
_HEX = frozenset("0123456789abcdef")

# Kinds of broken links, in the order they are checked for one entry.
GENESIS = "genesis"
SEQUENCE_GAP = "sequence_gap"
PREV_LINK = "prev_link"
HASH_MISMATCH = "hash_mismatch"
TENANT_MISMATCH = "tenant_mismatch"
EVENT_MISMATCH = "event_mismatch"
RECORDED_TIME = "recorded_time_regressed"
CHECKPOINT_HASH = "checkpoint_hash_mismatch"
CHECKPOINT_MISSING = "checkpoint_entry_missing"
CHECKPOINT_SIGNATURE = "checkpoint_signature_invalid"
UNREADABLE = "entry_unreadable"  # a stored value the hash cannot even be computed over
HEAD_CHANGED = "verified_head_changed"  # the entry a previous round verified is not there


def format_ts(at: datetime) -> str:
    """Fixed-width UTC text of an aware datetime, e.g. ``2026-03-02T08:00:00.000000Z``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class EntryFields:
    """What an entry records about one event, before it is placed in a chain."""

    tenant_id: str
    event_id: str
    event_type: str
    event_version: str
    actor_id: str
    actor_type: str
    actor_role: str
    event_ts: str
    event_json: str  # the event's canonical JSON


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One stored entry of a tenant's chain."""

    tenant_id: str
    seq: int
    event_id: str
    event_type: str
    event_version: str
    actor_id: str
    actor_type: str
    actor_role: str
    event_ts: str
    recorded_at: str
    event_json: str
    prev_hash: str
    hash: str


def entry_bytes(entry: ChainEntry | EntryFields, seq: int, recorded_at: str) -> bytes:
    """The canonical bytes of an entry (everything but the hashes)."""
    return canonical_json(
        {
            "actor": {"id": entry.actor_id, "role": entry.actor_role, "type": entry.actor_type},
            "event": orjson.Fragment(entry.event_json.encode()),
            "eventId": entry.event_id,
            "eventTimestamp": entry.event_ts,
            "recordedAt": recorded_at,
            "seq": seq,
            "tenantId": entry.tenant_id,
            "type": entry.event_type,
            "version": entry.event_version,
        }
    )


def link_hash(prev_hash: str, canonical_entry: bytes) -> str:
    """SHA-256(prev_hash || canonical entry) as lower-case hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_entry).hexdigest()


def recompute(entry: ChainEntry) -> str:
    """The hash an entry must have, from its own stored fields and stored prev_hash."""
    return link_hash(entry.prev_hash, entry_bytes(entry, entry.seq, entry.recorded_at))


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a chain ends: the last entry's seq, hash, recorded time and event id."""

    seq: int = 0
    hash: str = GENESIS_HASH
    recorded_at: str = ""
    event_id: str | None = None


GENESIS_HEAD: Final = ChainHead()


def seal(fields: EntryFields, head: ChainHead, recorded_at: str) -> ChainEntry:
    """The next entry after ``head``; recorded time never goes back (clamped to the head's)."""
    recorded = max(recorded_at, head.recorded_at)
    seq = head.seq + 1
    digest = link_hash(head.hash, entry_bytes(fields, seq, recorded))
    return ChainEntry(
        fields.tenant_id, seq, fields.event_id, fields.event_type, fields.event_version,
        fields.actor_id, fields.actor_type, fields.actor_role, fields.event_ts, recorded,
        fields.event_json, head.hash, digest,
    )  # fmt: skip


def seal_all(
    items: Iterable[EntryFields], head: ChainHead, recorded_at: str
) -> tuple[list[ChainEntry], ChainHead]:
    """Seal several entries of one tenant after ``head``; returns them and the new head."""
    out: list[ChainEntry] = []
    for fields in items:
        entry = seal(fields, head, recorded_at)
        out.append(entry)
        head = ChainHead(entry.seq, entry.hash, entry.recorded_at, entry.event_id)
    return out, head


@dataclass(frozen=True, slots=True)
class Break:
    """One broken link: which entry, what kind, what was expected and what is stored."""

    tenant_id: str
    seq: int
    event_id: str
    kind: str
    expected: str
    actual: str

    def describe(self) -> str:
        """One line for the operator (ids and hashes only, never payload values)."""
        return (
            f"tenant={self.tenant_id} seq={self.seq} entry={self.event_id} {self.kind}: "
            f"expected {self.expected} actual {self.actual}"
        )


@dataclass
class ChainVerifier:
    """Feeds entries of one tenant in seq order; collects broken links, keeps the head.

    After a break the stored values are taken as the new head, so one tampered entry yields
    its own break(s) and not a cascade over every later entry.
    """

    tenant_id: str
    head: ChainHead = GENESIS_HEAD
    verified: int = 0
    breaks: list[Break] = field(default_factory=list)
    # seq -> (hash, event id) the stream must show there (signed checkpoints)
    expected_at: dict[int, tuple[str, str]] = field(default_factory=dict)

    def feed(self, entry: ChainEntry) -> None:
        """Check one entry against the running head and its own hash."""
        self.verified += 1
        try:
            found = self._findings(entry)
        except Exception as exc:  # a stored value of the wrong type or encoding (tampering)
            found = [(UNREADABLE, "readable entry", type(exc).__name__)]
        for kind, exp, act in found:
            self.breaks.append(Break(self.tenant_id, entry.seq, entry.event_id, kind, exp, act))
        self.head = ChainHead(entry.seq, entry.hash, entry.recorded_at, entry.event_id)

    def _findings(self, entry: ChainEntry) -> list[tuple[str, str, str]]:
        head = self.head
        found: list[tuple[str, str, str]] = []
        if head.seq == 0 and entry.seq != 1 and head.event_id is None:
            found.append((GENESIS, "seq:1", f"seq:{entry.seq}"))
        elif entry.seq != head.seq + 1:
            found.append((SEQUENCE_GAP, f"seq:{head.seq + 1}", f"seq:{entry.seq}"))
        if entry.prev_hash != head.hash:
            kind = GENESIS if head.seq == 0 and head.event_id is None else PREV_LINK
            found.append((kind, head.hash, entry.prev_hash))
        actual = entry.hash
        expected = recompute(entry)
        if expected != actual or not _is_hex64(actual):
            found.append((HASH_MISMATCH, expected, actual))
        if entry.tenant_id != self.tenant_id:
            found.append((TENANT_MISMATCH, self.tenant_id, entry.tenant_id))
        else:
            found.extend(_event_mismatches(entry))
        if entry.recorded_at < head.recorded_at:
            found.append((RECORDED_TIME, f">={head.recorded_at}", entry.recorded_at))
        pinned = self.expected_at.get(entry.seq)
        if pinned is not None and (pinned[0] != entry.hash or pinned[1] != entry.event_id):
            found.append((CHECKPOINT_HASH, pinned[0], entry.hash))
        return found

    def feed_all(self, entries: Iterable[ChainEntry]) -> ChainVerifier:
        for entry in entries:
            self.feed(entry)
        return self

    def finish(self) -> list[Break]:
        """Breaks for checkpoints past the end of the chain (a truncated chain); all breaks."""
        for seq in sorted(s for s in self.expected_at if s > self.head.seq):
            digest, event_id = self.expected_at[seq]
            self.breaks.append(
                Break(self.tenant_id, seq, event_id, CHECKPOINT_MISSING, digest, "missing")
            )
        return self.breaks

    @property
    def intact(self) -> bool:
        return not self.breaks


def _is_hex64(value: str) -> bool:
    return len(value) == 64 and _HEX.issuperset(value)


def _event_mismatches(entry: ChainEntry) -> Iterator[tuple[str, str, str]]:
    """The columns must say what the stored event says (hash covers both; this names it)."""
    try:
        event = orjson.loads(entry.event_json)
    except orjson.JSONDecodeError:
        yield EVENT_MISMATCH, "valid canonical JSON", "invalid JSON"
        return
    if not isinstance(event, dict):
        yield EVENT_MISMATCH, "a JSON object", "not an object"
        return
    for name, column in (("id", entry.event_id), ("tenantId", entry.tenant_id)):
        if event.get(name) != column:
            yield EVENT_MISMATCH, f"event.{name} == column", f"event.{name} differs"


def verify_chain(
    tenant_id: str, entries: Iterable[ChainEntry], start: ChainHead = GENESIS_HEAD
) -> ChainVerifier:
    """Verify entries of one tenant (seq order) from ``start``; see ``ChainVerifier``."""
    verifier = ChainVerifier(tenant_id, start)
    verifier.feed_all(entries)
    verifier.finish()
    return verifier


def checkpoint_message(
    tenant_id: str, seq: int, head_hash: str, event_id: str, signed_at: str, key_id: str
) -> bytes:
    """The bytes a checkpoint signature covers (canonical JSON, domain-separated)."""
    return canonical_json(
        {
            "kind": "wo-stream/audit-checkpoint/v1",
            "tenantId": tenant_id,
            "seq": seq,
            "hash": head_hash,
            "eventId": event_id,
            "signedAt": signed_at,
            "keyId": key_id,
        }
    )
