"""Audit stores on SQLite and a real PostgreSQL: idempotent appends, refused UPDATE/DELETE,
tampering detected by ``audit verify`` (changed payload, deleted row, swapped rows, rewritten
chain, truncation, forged checkpoint)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.audit import AuditStore, StoreUnavailable, open_store
from pipeline.audit_verify import audit_verify_command, load_signer, sign_head, verify_all
from pipeline.audit_writer import entry_fields
from pipeline.settings import Settings
from tables.audit_chain import (
    CHECKPOINT_HASH,
    CHECKPOINT_MISSING,
    CHECKPOINT_SIGNATURE,
    GENESIS_HASH,
    HASH_MISMATCH,
    PREV_LINK,
    SEQUENCE_GAP,
)
from tests.audit_testkit import Raw, audit_settings, pg_server
from tests.bridge_testkit import status_event
from tests.pg import PgServer

pg = pytest.fixture(scope="module")(pg_server)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Settings, AuditStore]]:
    dsn = request.getfixturevalue("pg").dsn if request.param == "postgres" else None
    settings = audit_settings(tmp_path, dsn)
    store = open_store(settings)
    try:
        yield settings, store
    finally:
        store.close()


def fill(store: AuditStore, tenant: str, n: int) -> list[str]:
    wo = str(uuid.uuid4())
    events = [status_event(tenant, wo, i) for i in range(1, n + 1)]
    store.append([entry_fields(e) for e in events])
    return [e.id for e in events]


def tenant() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def test_append_is_idempotent_in_order_and_per_tenant(backend: tuple[Settings, AuditStore]) -> None:
    _, store = backend
    a, b = tenant(), tenant()
    wo = str(uuid.uuid4())
    events = [status_event(t, wo, i) for i in range(1, 7) for t in (a, b)]
    first = store.append([entry_fields(e) for e in events[:8]])
    again = store.append([entry_fields(e) for e in [*events, events[0]]])  # redelivery + new ones
    assert (first.appended, first.duplicates) == (8, 0)
    assert (again.appended, again.duplicates) == (4, 9)
    for t in (a, b):
        rows = Raw(backend[0]).rows(t)
        assert [r.seq for r in rows] == list(range(1, 7))
        assert [r.event_id for r in rows] == [e.id for e in events if e.tenantId == t]
        assert rows[0].prev_hash == GENESIS_HASH
    assert all(r.intact for r in verify_all(store, load_signer(backend[0])))


def test_concurrent_writers_keep_one_contiguous_chain(backend: tuple[Settings, AuditStore]) -> None:
    settings, _ = backend
    t = tenant()
    wo = [str(uuid.uuid4()) for _ in range(4)]

    errors: list[str] = []

    def work(k: int) -> None:
        store = open_store(settings)
        try:
            for i in range(1, 26):
                while True:  # as the writer does: an unavailable store is retried, not skipped
                    try:
                        store.append([entry_fields(status_event(t, wo[k], i))])
                        break
                    except StoreUnavailable as exc:
                        errors.append(str(exc))
                        time.sleep(0.01)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rows = Raw(settings).rows(t)
    assert [r.seq for r in rows] == list(range(1, 101)), errors
    assert all(r.intact for r in verify_all(backend[1], load_signer(settings), t))


def test_the_database_refuses_update_and_delete(backend: tuple[Settings, AuditStore]) -> None:
    settings, store = backend
    t = tenant()
    fill(store, t, 3)
    sign_head(store, load_signer(settings), t, store.head(t))
    raw = Raw(settings)
    statements = [
        "UPDATE audit_entry SET event_json = '{}' WHERE seq = 2",
        "UPDATE audit_entry SET hash = hash",
        "DELETE FROM audit_entry WHERE seq = 3",
        "DELETE FROM audit_entry",
        "UPDATE audit_checkpoint SET signature = 'x'",
        "DELETE FROM audit_checkpoint",
    ]
    statements += (
        ["TRUNCATE audit_entry", "TRUNCATE audit_checkpoint",
         "INSERT INTO audit_entry SELECT * FROM audit_entry ON CONFLICT (tenant_id, seq) "
         "DO UPDATE SET hash = 'x'"]
        if raw.pg
        else ["INSERT OR REPLACE INTO audit_entry SELECT * FROM audit_entry WHERE seq = 1",
              "REPLACE INTO audit_checkpoint SELECT * FROM audit_checkpoint"]
    )  # fmt: skip
    error = psycopg.Error if raw.pg else sqlite3.Error
    for sql in statements:
        with raw.connect() as c, pytest.raises(error, match="append-only"):
            c.execute(sql)
    assert [r.seq for r in raw.rows(t)] == [1, 2, 3]
    assert len(store.checkpoints(t)) == 1


TAMPERING = {
    "changed_payload": (lambda raw, t: raw.change_payload(t, 4), {(4, HASH_MISMATCH)}),
    "deleted_row": (lambda raw, t: raw.delete(t, 6), {(7, SEQUENCE_GAP), (7, PREV_LINK)}),
    "swapped_rows": (lambda raw, t: raw.swap(t, 3, 4), {(3, HASH_MISMATCH), (4, PREV_LINK)}),
    "rewritten_chain": (
        lambda raw, t: raw.change_payload(t, 5, rehash=True),
        {(8, CHECKPOINT_HASH)},
    ),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_detected_by_audit_verify(
    kind: str, backend: tuple[Settings, AuditStore], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, store = backend
    t = tenant()
    fill(store, t, 8)
    sign_head(store, load_signer(settings), t, store.head(t))  # checkpoint at seq 8
    fill(store, t, 2)
    assert audit_verify_command(settings, t) == 0
    capsys.readouterr()
    tamper, expected = TAMPERING[kind]
    tamper(Raw(settings), t)
    report = verify_all(store, load_signer(settings), t)[0]
    found = {(b.seq, b.kind) for b in report.breaks}
    assert expected <= found, found
    assert audit_verify_command(settings, t) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and all(k in out for _, k in expected)


def test_truncation_below_a_checkpoint_and_forged_checkpoints(
    backend: tuple[Settings, AuditStore],
) -> None:
    settings, store = backend
    t = tenant()
    fill(store, t, 6)
    signer = load_signer(settings)
    cp = sign_head(store, signer, t, store.head(t))
    raw = Raw(settings)
    raw.delete(t, 6)
    raw.delete(t, 5)
    found = {(b.seq, b.kind) for b in verify_all(store, signer, t)[0].breaks}
    assert found == {(6, CHECKPOINT_MISSING)}
    # A checkpoint not signed by the configured key (a forger re-signing a rewritten chain).
    forged = type(cp)(t, 4, "f" * 64, cp.event_id, cp.signed_at, cp.key_id, "00" * 64)
    store.add_checkpoint(forged)
    kinds = {b.kind for b in verify_all(store, signer, t)[0].breaks}
    assert CHECKPOINT_SIGNATURE in kinds


def test_verify_command_on_an_empty_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit_verify_command(audit_settings(tmp_path, None), None) == 0
    assert "no audit chains" in capsys.readouterr().out


def test_dev_key_is_created_once_and_reused(tmp_path: Path) -> None:
    settings = audit_settings(tmp_path, None, audit_signing_key=None)
    first, second = load_signer(settings), load_signer(settings)
    assert first.dev and first.key_id == second.key_id
    assert (tmp_path / "audit" / "dev-signing-key").stat().st_mode & 0o777 == 0o600


def test_pg_fixture_is_real(pg: PgServer) -> None:
    with psycopg.connect(pg.dsn) as c:
        assert c.execute("SHOW server_version").fetchone()[0].startswith(str(pg.bindir.parts[-2]))


def test_an_unusable_dsn_never_puts_its_password_in_the_error() -> None:
    # libpq's DSN parser quotes the offending token: a password with a stray "%" would go into
    # the writer's retry log lines through StoreUnavailable.
    from pydantic import SecretStr

    secret = "Xy7%zz9Secret"
    for dsn, kept in ((f"postgresql://wo:{secret}@127.0.0.1:1/audit", "ProgrammingError"),
                      ("postgresql://wo:pw@127.0.0.1:1/audit", "Connection refused")):  # fmt: skip
        store = open_store(Settings(audit_dsn=SecretStr(dsn)))
        try:
            with pytest.raises(StoreUnavailable) as caught:
                store.append([])
        finally:
            store.close()
        assert secret not in str(caught.value) and ":pw@" not in str(caught.value)
        assert kept in str(caught.value)  # a connection error still says what failed


# -- the writer's periodic checker ----------------------------------------------------------------


def _checker(settings: Settings, store: AuditStore) -> Any:
    import asyncio

    from connectors.audit import AsyncStore
    from connectors.audit.metrics import AuditMetrics
    from pipeline.audit_verify import IntegrityChecker

    # js None: the integrity events are kept for a later round (logged), not published here
    return IntegrityChecker(settings, store=AsyncStore(store), signer=load_signer(settings),
                            js=None, metrics=AuditMetrics(), stop=asyncio.Event())  # type: ignore[arg-type]  # fmt: skip


def _by_tenant(reports: list[Any]) -> dict[str, Any]:
    return {r.tenant_id: r for r in reports}


async def test_an_unreadable_entry_is_a_break_and_the_other_tenants_are_still_checked(
    backend: tuple[Settings, AuditStore],
) -> None:
    settings, store = backend
    first, second = sorted([tenant(), tenant()])
    fill(store, first, 4)
    fill(store, second, 4)
    raw = Raw(settings)
    with raw.connect(guarded=False) as c:  # a non-ASCII prev_hash: the hash cannot be computed
        c.execute(raw.q("UPDATE audit_entry SET prev_hash = ? WHERE tenant_id = ? AND seq = ?"),
                  ("\u00e9" * 64, first, 2))  # fmt: skip
    checker = _checker(settings, store)
    reports = _by_tenant(await checker.check_once())
    assert not reports[first].intact and reports[second].intact  # the round went on
    assert "entry_unreadable" in {b.kind for b in reports[first].breaks}
    assert first in checker.broken and second not in checker.broken
    assert verify_all(store, load_signer(settings), first)[0].intact is False  # `audit verify`


async def test_deletions_below_the_verified_head_are_found_by_the_periodic_full_round(
    backend: tuple[Settings, AuditStore],
) -> None:
    settings, store = backend
    settings = settings.model_copy(update={"audit_full_check_every": 2})
    t, u = tenant(), tenant()
    fill(store, t, 6)
    fill(store, u, 6)
    checker = _checker(settings, store)
    first = _by_tenant(await checker.check_once())  # round 0: FULL
    assert first[t].intact and first[u].intact
    raw = Raw(settings)
    raw.delete(t, 3)
    incremental = _by_tenant(await checker.check_once())  # round 1: after the heads only
    assert incremental[t].scope == "INCREMENTAL" and incremental[t].intact
    full = _by_tenant(await checker.check_once())  # round 2: FULL again
    assert full[t].scope == "FULL" and "sequence_gap" in {b.kind for b in full[t].breaks}
    # a changed head is found by the very next incremental round
    with raw.connect(guarded=False) as c:
        c.execute(raw.q("UPDATE audit_entry SET hash = ? WHERE tenant_id = ? AND seq = ?"),
                  ("0" * 64, u, 6))  # fmt: skip
    changed = _by_tenant(await checker.check_once())  # round 3
    assert changed[u].scope == "INCREMENTAL"
    assert "verified_head_changed" in {b.kind for b in changed[u].breaks}


async def test_a_head_another_replica_signed_first_does_not_stop_the_round(
    backend: tuple[Settings, AuditStore],
) -> None:
    settings, store = backend
    t, u = sorted([tenant(), tenant()])
    fill(store, t, 3)
    fill(store, u, 3)
    other_store = open_store(settings)
    try:
        slow, fast = _checker(settings, store), _checker(settings, other_store)
        await slow.check_once()  # signs both heads at seq 3; remembers 3
        fill(store, t, 2)  # seq 4, 5
        await fast.check_once()  # reads what is signed (3) and signs t's new head, 5
        reports = _by_tenant(await slow.check_once())  # still thinks 3: its insert conflicts
        assert reports[t].intact and reports[u].intact  # (other tests' tenants share a pg)
        assert slow.signed[t] == 5
    finally:
        other_store.close()
