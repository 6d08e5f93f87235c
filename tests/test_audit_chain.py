"""The pure hash chain: sealing, canonical bytes, verification and what each tampering shows."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from dataclasses import replace

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.audit_chain import (
    CHECKPOINT_HASH,
    CHECKPOINT_MISSING,
    EVENT_MISMATCH,
    GENESIS,
    GENESIS_HASH,
    GENESIS_HEAD,
    HASH_MISMATCH,
    PREV_LINK,
    RECORDED_TIME,
    SEQUENCE_GAP,
    ChainEntry,
    ChainHead,
    ChainVerifier,
    EntryFields,
    entry_bytes,
    link_hash,
    recompute,
    seal_all,
    verify_chain,
)

TENANT = "tenant_a"


def fields(n: int, tenant: str = TENANT) -> EntryFields:
    event_id = str(uuid.UUID(int=n, version=4))
    event = {"id": event_id, "tenantId": tenant, "data": {"n": n, "note": "é\u2028"}}
    body = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
    return EntryFields(
        tenant, event_id, "work_order.updated", "1.0", "user-1", "HUMAN", "technician",
        f"2026-03-02T08:00:{n % 60:02d}.000000Z", body,
    )  # fmt: skip


def chain(n: int) -> list[ChainEntry]:
    entries, _ = seal_all(
        [fields(i) for i in range(1, n + 1)], GENESIS_HEAD, "2026-03-02T09:00:00.000000Z"
    )
    return entries


def kinds(entries: list[ChainEntry], **kw: object) -> list[tuple[int, str]]:
    v = verify_chain(TENANT, entries, **kw)  # type: ignore[arg-type]
    return [(b.seq, b.kind) for b in v.breaks]


def test_hash_is_sha256_of_prev_hex_and_canonical_entry() -> None:
    first = chain(1)[0]
    body = entry_bytes(first, 1, first.recorded_at)
    assert first.prev_hash == GENESIS_HASH == "0" * 64
    assert first.hash == hashlib.sha256(GENESIS_HASH.encode() + body).hexdigest()
    assert link_hash(first.prev_hash, body) == first.hash == recompute(first)
    parsed = orjson.loads(body)
    assert list(parsed) == sorted(parsed)  # canonical: sorted keys
    assert parsed["event"] == orjson.loads(first.event_json)  # the event, embedded verbatim
    assert first.event_json.encode() in body


def test_intact_chain_verifies_and_links() -> None:
    entries = chain(20)
    assert [e.seq for e in entries] == list(range(1, 21))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    v = verify_chain(TENANT, entries)
    assert v.intact and v.verified == 20 and v.head.seq == 20 and v.head.hash == entries[-1].hash


def test_incremental_verification_continues_from_a_head() -> None:
    entries = chain(10)
    head = verify_chain(TENANT, entries[:6]).head
    v = verify_chain(TENANT, entries[6:], head)
    assert v.intact and v.verified == 4 and v.head.seq == 10


def test_changed_payload_is_one_broken_link() -> None:
    entries = chain(8)
    entries[3] = replace(entries[3], event_json=entries[3].event_json.replace('"n":4', '"n":5'))
    assert kinds(entries) == [(4, HASH_MISMATCH)]


def test_changed_payload_with_recomputed_hash_breaks_the_next_link() -> None:
    entries = chain(8)
    bad = replace(entries[3], event_json=entries[3].event_json.replace('"n":4', '"n":5'))
    entries[3] = replace(bad, hash=recompute(bad))
    assert kinds(entries) == [(5, PREV_LINK)]


def test_deleted_row_is_a_gap_and_a_broken_link() -> None:
    entries = chain(8)
    del entries[4]
    assert kinds(entries) == [(6, SEQUENCE_GAP), (6, PREV_LINK)]


def test_deleted_first_row_breaks_genesis() -> None:
    assert kinds(chain(3)[1:]) == [(2, GENESIS), (2, GENESIS)]


def test_swapped_rows_are_detected() -> None:
    entries = chain(6)
    a, b = entries[1], entries[2]
    entries[1] = replace(b, seq=2)
    entries[2] = replace(a, seq=3)
    found = kinds(entries)
    assert (2, HASH_MISMATCH) in found and (2, PREV_LINK) in found and (3, PREV_LINK) in found


def test_columns_must_match_the_stored_event() -> None:
    entries = chain(3)
    entries[1] = replace(entries[1], event_id=str(uuid.uuid4()))
    assert (2, EVENT_MISMATCH) in kinds(entries)


def test_recorded_time_must_not_go_back() -> None:
    entries, _ = seal_all([fields(1)], GENESIS_HEAD, "2026-03-02T09:00:00.000000Z")
    later, _ = seal_all(
        [fields(2)],
        ChainHead(1, entries[0].hash, "2026-03-02T08:00:00.000000Z"),
        "2026-03-02T08:00:00.000000Z",
    )
    assert kinds(entries + later) == [(2, RECORDED_TIME)]


def test_sealing_clamps_recorded_time_to_the_head() -> None:
    head = ChainHead(3, "a" * 64, "2026-03-02T10:00:00.000000Z", str(uuid.uuid4()))
    entries, new_head = seal_all([fields(4)], head, "2026-03-02T09:00:00.000000Z")
    assert entries[0].recorded_at == head.recorded_at and new_head.seq == 4


def test_rewritten_chain_is_consistent_but_a_checkpoint_catches_it() -> None:
    entries = chain(10)
    pinned = {10: (entries[9].hash, entries[9].event_id)}
    tampered = [
        *entries[:4],
        replace(entries[4], event_json=entries[4].event_json.replace('"n":5', '"n":6')),
    ]
    rewritten, _ = seal_all(
        [
            EntryFields(*(getattr(e, f) for f in EntryFields.__slots__))
            for e in [tampered[4], *entries[5:]]
        ],
        ChainHead(4, entries[3].hash, entries[3].recorded_at, entries[3].event_id),
        entries[4].recorded_at,
    )
    forged = tampered[:4] + rewritten
    assert verify_chain(TENANT, forged).intact  # a full rewrite is self-consistent ...
    v = ChainVerifier(TENANT, expected_at=pinned)
    v.feed_all(forged)
    assert [(b.seq, b.kind) for b in v.finish()] == [(10, CHECKPOINT_HASH)]  # ... but not signed


def test_truncated_chain_below_a_checkpoint_is_reported() -> None:
    entries = chain(10)
    v = ChainVerifier(TENANT, expected_at={10: (entries[9].hash, entries[9].event_id)})
    v.feed_all(entries[:8])
    assert [(b.seq, b.kind) for b in v.finish()] == [(10, CHECKPOINT_MISSING)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 25), data=st.data())
def test_any_single_field_change_is_detected(n: int, data: st.DataObject) -> None:
    entries = chain(n)
    i = data.draw(st.integers(0, n - 1))
    name = data.draw(
        st.sampled_from(
            ["event_type", "event_version", "actor_id", "actor_role", "event_ts", "recorded_at"]
        )
    )
    entries[i] = replace(entries[i], **{name: getattr(entries[i], name) + "x"})
    assert not verify_chain(TENANT, entries).intact
