"""The audit writer on a real embedded stack (NATS JetStream + Tansu) with SQLite and a real
PostgreSQL: exactly once per chain (also across kill -9), database outage without loss or
reorder, dead letters + P0 metric, integrity events read back from the NATS stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.audit import AsyncStore, EntryRejected, open_store
from connectors.audit.metrics import AuditMetrics
from connectors.embedded import EmbeddedStack
from connectors.jetstream import connect_nats
from pipeline.audit_verify import audit_verify_command
from pipeline.audit_writer import AuditWriter, run_audit_writer
from pipeline.settings import Settings
from tests.audit_stream import (
    assert_exactly_once_in_order,
    audited,
    integrity_events,
    produce,
    scenario,
)
from tests.audit_testkit import SIGNING_KEY, Raw, audit_settings, pg_server
from tests.bridge_testkit import provision, read_dlq, wait_for
from tests.pg import PgServer

pytestmark = pytest.mark.integration

pg = pytest.fixture(scope="module")(pg_server)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """A stack of this module's own: its domain topics see only audit-test traffic."""
    with EmbeddedStack(tmp_path_factory.mktemp("audit-stack")) as s:
        yield s


@pytest.fixture(scope="module")
async def provisioned(stack: EmbeddedStack) -> EmbeddedStack:
    await provision(Settings(nats_url=stack.nats_url, kafka_bootstrap=stack.kafka_bootstrap))
    return stack


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg").dsn if request.param == "postgres" else None


def writer_settings(
    stack: EmbeddedStack, data_dir: Path, dsn: str | None, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "nats_url": stack.nats_url,
        "kafka_bootstrap": stack.kafka_bootstrap,
        "kafka_transport": "tansu",
        "audit_group": f"audit-{uuid.uuid4().hex[:8]}",
        "audit_batch_size": 100,
        "audit_check_interval_seconds": 0.5,
        "audit_session_timeout_ms": 10_000,
        "audit_metrics_port": 0,
        "nats_publish_timeout_seconds": 2.0,
    }
    values.update(extra)
    return audit_settings(data_dir, dsn, **values)


def tenant() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


async def wait_rows(raw: Raw, t: str, n: int, within: float) -> None:
    """Until tenant ``t``'s chain has at least ``n`` entries."""
    await wait_for(lambda: len(raw.rows(t)) >= n, within=within, interval=0.1, what=f"{n} rows")


class Running:
    """An in-process writer (with its integrity checker) as a task."""

    def __init__(self, settings: Settings) -> None:
        self.stop = asyncio.Event()
        self.metrics = AuditMetrics()
        self.task = asyncio.create_task(
            run_audit_writer(settings, stop=self.stop, metrics=self.metrics)
        )

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        await r.close()


async def test_scenario_every_audit_event_once_per_tenant_chain(
    provisioned: EmbeddedStack, db: str | None, tmp_path: Path, running: list[Running]
) -> None:
    settings = writer_settings(provisioned, tmp_path, db)
    a, b = tenant(), tenant()
    events = {t: scenario(t, work_orders=6, versions=15) for t in (a, b)}
    mixed = [e for pair in zip(events[a], events[b], strict=True) for e in pair]
    # Redeliveries (ingress retries, replays): the second copies must append nothing.
    await produce(provisioned.kafka_bootstrap, mixed + mixed[:40])
    writer = Running(settings)
    running.append(writer)
    raw = Raw(settings)
    for t in (a, b):
        want = audited(events[t])
        assert len(want) < len(events[t])  # some events are not audit-required
        await wait_rows(raw, t, len(want), within=60)
    await wait_for(lambda: writer.value("wo_audit_checkpoints_signed_total") >= 2, within=30)
    for t in (a, b):
        assert_exactly_once_in_order(raw, t, audited(events[t]))
    assert writer.value("wo_audit_duplicates_total") >= 1
    assert writer.value("wo_audit_writer_up") == 1
    nc, js = await connect_nats(provisioned.nats_url, max_reconnect_attempts=1)
    try:
        for t in (a, b):
            checks = await _wait_events(js, t, lambda ev: ev and ev[0]["data"]["chainIntact"])
            data = checks[0]["data"]
            assert data["scope"] == "FULL" or data["entriesVerified"] > 0
            assert data["brokenLinks"] == []
    finally:
        await nc.close()


async def _wait_events(js: Any, t: str, ok: Any, within: float = 30) -> list[dict]:
    found: list[dict] = []

    async def check() -> bool:
        found[:] = await integrity_events(js, t)
        return bool(ok(found))

    await wait_for(check, within=within, interval=0.3, what="integrity events")
    return found


async def test_undecodable_audit_messages_are_dead_lettered_with_p0_metric(
    provisioned: EmbeddedStack, tmp_path: Path, running: list[Running]
) -> None:
    settings = writer_settings(provisioned, tmp_path, None)
    t = tenant()
    good = scenario(t, work_orders=2, versions=3)
    bad_version = good[0].canonical_bytes().replace(b'"version":"1.0"', b'"version":"9.0"')
    not_audited = b'{"metadata":{"auditRequired":false},"type":"bogus"}'
    await produce(
        provisioned.kafka_bootstrap,
        good,
        raw=[("wo.workorder", b"\xff not json"), ("wo.workorder", bad_version),
             ("wo.workorder", not_audited)],
    )  # fmt: skip
    writer = Running(settings)
    running.append(writer)
    raw = Raw(settings)
    await wait_for(lambda: len(raw.rows(t)) >= len(audited(good)), within=60)
    await wait_for(lambda: writer.value("wo_audit_dead_letters_total", reason="INVALID_UTF8") == 1)
    assert writer.value("wo_audit_dead_letters_total", reason="UNSUPPORTED_VERSION") == 1
    nc, js = await connect_nats(provisioned.nats_url, max_reconnect_attempts=1)
    try:
        letters = await read_dlq(
            js, until=lambda d: sum(x.headers.get("wo-dlq-direction") == "audit" for x in d) >= 2
        )
    finally:
        await nc.close()
    mine = [d for d in letters if d.headers.get("wo-dlq-direction") == "audit"]
    assert {d.reason for d in mine} == {"INVALID_UTF8", "UNSUPPORTED_VERSION"}
    assert any(d.subject == f"wo_dlq.{t}.workorder.status_changed" for d in mine)
    assert_exactly_once_in_order(raw, t, audited(good))


async def test_refused_entry_is_dead_lettered_and_the_rest_written(
    provisioned: EmbeddedStack, tmp_path: Path
) -> None:
    settings = writer_settings(provisioned, tmp_path, None)
    t = tenant()
    events = audited(scenario(t, work_orders=2, versions=4))
    poison = events[3].id
    await produce(provisioned.kafka_bootstrap, events)
    store = open_store(settings)
    real_append = store.append

    def append(items: Any, now: Any = None) -> Any:
        if any(i.event_id == poison for i in items):
            raise EntryRejected("DataError")
        return real_append(items, now)

    store.append = append  # type: ignore[method-assign]
    stop, metrics = asyncio.Event(), AuditMetrics()
    nc, js = await connect_nats(provisioned.nats_url, max_reconnect_attempts=1)
    writer = AuditWriter(settings, store=AsyncStore(store), js=js, metrics=metrics, stop=stop)
    task = asyncio.create_task(writer.run())
    try:
        rejected = "AUDIT_WRITE_REJECTED"
        await wait_for(lambda: metrics.registry.get_sample_value(
            "wo_audit_dead_letters_total", {"reason": rejected}) == 1, within=60)  # fmt: skip
        rest = [e for e in events if e.id != poison]
        await wait_rows(Raw(settings), t, len(rest), within=60)  # later batches, too
        assert_exactly_once_in_order(Raw(settings), t, rest)
        letters = await read_dlq(js, until=lambda d: any(x.reason == rejected for x in d))
        letter = next(x for x in letters if x.reason == rejected)
        assert (
            letter.headers["wo-dlq-event-id"] == poison and letter.headers["wo-dlq-attempts"] == "5"
        )
    finally:
        stop.set()
        await task
        await nc.close()
        store.close()


def _spawn(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WO_")}
    env.update({
        "WO_NATS_URL": settings.nats_url or "",
        "WO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "WO_KAFKA_TRANSPORT": "tansu", "WO_DATA_DIR": str(settings.data_dir),
        "WO_AUDIT_SIGNING_KEY": SIGNING_KEY, "WO_AUDIT_GROUP": settings.audit_group,
        "WO_AUDIT_BATCH_SIZE": "50", "WO_AUDIT_METRICS_PORT": "0",
        "WO_AUDIT_CHECK_INTERVAL_SECONDS": "1", "WO_AUDIT_SESSION_TIMEOUT_MS": "10000",
    })  # fmt: skip
    if settings.audit_dsn is not None:
        env["WO_AUDIT_DSN"] = settings.audit_dsn.get_secret_value()
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.audit_writer"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )


async def test_kill_9_mid_stream_then_restart_exactly_once(
    provisioned: EmbeddedStack, db: str | None, tmp_path: Path
) -> None:
    settings = writer_settings(provisioned, tmp_path, db)
    a, b = tenant(), tenant()
    first = {t: scenario(t, work_orders=8, versions=60) for t in (a, b)}
    second = {t: scenario(t, work_orders=8, versions=10, start=61) for t in (a, b)}
    await produce(provisioned.kafka_bootstrap, first[a] + first[b])
    raw = Raw(settings)
    log = tmp_path / "writer.log"
    proc = _spawn(settings, log)
    try:
        await wait_for(lambda: len(raw.rows(a)) + len(raw.rows(b)) >= 200, within=90, interval=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        written_at_kill = len(raw.rows(a)) + len(raw.rows(b))
        await produce(provisioned.kafka_bootstrap, second[a] + second[b])  # the stream goes on
        proc = _spawn(settings, log)
        for t in (a, b):
            want = audited(first[t] + second[t])
            await wait_rows(raw, t, len(want), within=120)
        await asyncio.sleep(1.0)  # a late duplicate would show up now (it must not)
        for t in (a, b):
            assert_exactly_once_in_order(raw, t, audited(first[t] + second[t]))
        assert written_at_kill < sum(len(audited(first[t])) for t in (a, b))  # mid-stream
        assert audit_verify_command(settings.model_copy(update={"nats_url": None}), None) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]


async def test_postgres_outage_mid_stream_no_loss_no_reorder(
    provisioned: EmbeddedStack, pg: PgServer, tmp_path: Path, running: list[Running]
) -> None:
    settings = writer_settings(provisioned, tmp_path, pg.dsn, audit_batch_size=50)
    t = tenant()
    first = scenario(t, work_orders=5, versions=20)
    second = scenario(t, work_orders=5, versions=20, start=21)
    await produce(provisioned.kafka_bootstrap, first)
    writer = Running(settings)
    running.append(writer)
    raw = Raw(settings)
    await wait_for(lambda: len(raw.rows(t)) >= 20, within=60, interval=0.01)
    pg.stop("fast")
    try:
        await produce(provisioned.kafka_bootstrap, second)
        await wait_for(
            lambda: writer.value("wo_audit_writer_up") == 0, within=30, what="writer down"
        )
        failures = writer.value("wo_audit_write_failures_total", kind="unavailable")
        await wait_for(
            lambda: (
                writer.value("wo_audit_write_failures_total", kind="unavailable") >= failures + 2
            ),
            within=30,
        )
    finally:
        pg.start()
    want = audited(first + second)
    await wait_for(lambda: len(raw.rows(t)) >= len(want), within=90, interval=0.1)
    await wait_for(lambda: writer.value("wo_audit_writer_up") == 1, within=10)
    assert_exactly_once_in_order(raw, t, want)
    assert audit_verify_command(settings.model_copy(update={"nats_url": None}), t) == 0


async def test_tampering_is_reported_in_an_integrity_event_on_nats(
    provisioned: EmbeddedStack, db: str | None, tmp_path: Path, running: list[Running]
) -> None:
    settings = writer_settings(provisioned, tmp_path, db)
    t = tenant()
    events = audited(scenario(t, work_orders=3, versions=4))
    await produce(provisioned.kafka_bootstrap, events)
    writer = Running(settings)
    running.append(writer)
    raw = Raw(settings)
    await wait_for(lambda: len(raw.rows(t)) >= len(events), within=60)
    await wait_for(lambda: writer.value("wo_audit_checkpoints_signed_total") >= 1, within=30)
    await writer.close()
    running.clear()
    raw.change_payload(t, 3)
    raw.delete(t, 6)
    tampered = {r.seq: r.event_id for r in raw.rows(t)}
    assert audit_verify_command(settings, t) == 1
    nc, js = await connect_nats(provisioned.nats_url, max_reconnect_attempts=1)
    try:
        found = await _wait_events(js, t, lambda ev: any(not e["data"]["chainIntact"] for e in ev))
    finally:
        await nc.close()
    broken = next(e["data"] for e in found if not e["data"]["chainIntact"])
    assert broken["scope"] == "FULL"
    entry_ids = {link["entryId"] for link in broken["brokenLinks"]}
    assert {tampered[3], tampered[7]} <= entry_ids
    assert all(link["expectedHash"] != link["actualHash"] for link in broken["brokenLinks"])


# -- what the writer audits (pure; no servers) ---------------------------------------------------


def _classifier() -> AuditWriter:
    # _classify reads nothing but the settings; the other parts are never touched here
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    return AuditWriter(settings, store=None, js=None, metrics=None, stop=asyncio.Event())  # type: ignore[arg-type]


def _record(value: bytes) -> Any:
    from aiokafka import ConsumerRecord

    return ConsumerRecord("wo.workorder", 0, 7, 0, 0, b"k", value, None, len(b"k"), len(value), ())


def test_a_false_flag_does_not_keep_a_catalog_audited_type_out_of_the_trail() -> None:
    from events.factory import make_event
    from pipeline.audit_writer import plainly_not_audited
    from tables.audit_chain import EntryFields
    from tests.bridge_testkit import status_event

    writer = _classifier()
    event = status_event("tenant_x", str(uuid.uuid4()), 1)
    flagged_off = event.model_copy(
        update={"metadata": event.metadata.model_copy(update={"auditRequired": False})}
    )
    raw = flagged_off.canonical_bytes()
    assert b'"auditRequired":false' in raw
    # catalog 2.2: "Audit Required: Yes" -> audited whatever the flag says
    assert isinstance(writer._classify(_record(raw)), EntryFields)
    # a type the catalog does not audit, flagged false: skipped
    progress = make_event(
        "work_order.master_progress_updated",
        {"masterId": str(uuid.uuid4()), "totalChildren": 1, "completedChildren": 0,
         "blockedChildren": 0, "inProgressChildren": 1, "progressPercent": 0.0,
         "lastChangedChildId": str(uuid.uuid4())},
        tenant_id="tenant_x", audit_required=False,
    )  # fmt: skip
    assert writer._classify(_record(progress.canonical_bytes())) is None
    # unparseable bytes: skipped only when neither the flag nor the type asks for an entry
    broken = raw.replace(b'"version":"1.0"', b'"version":"9.0"')
    assert not plainly_not_audited(broken)
    assert writer._classify(_record(broken)).reason == "UNSUPPORTED_VERSION"
    assert plainly_not_audited(b'{"metadata":{"auditRequired":false},"type":"bogus"}')


def test_an_event_that_cannot_be_written_canonically_is_a_fault_not_a_retry_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A raise in handle_batch re-reads the same batch forever; a Fault is dead-lettered (P0).
    import pipeline.audit_writer as module
    from tests.bridge_testkit import status_event

    def unwritable(event: Any) -> Any:
        raise TypeError("Recursion limit reached")

    monkeypatch.setattr(module, "entry_fields", unwritable)
    event = status_event("tenant_x", str(uuid.uuid4()), 1)
    fault = _classifier()._classify(_record(event.canonical_bytes()))
    assert fault.reason == "UNSERIALIZABLE" and fault.event_id == event.id
    assert fault.tenant_id == "tenant_x" and "Recursion" not in (fault.detail or "")
