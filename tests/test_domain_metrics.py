"""pipeline.domain_metrics: what each observer counts, with which labels, and what it ignores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from events import DomainEvent, make_event
from pipeline.domain_metrics import (
    E2E_BUCKETS,
    DomainMetrics,
    expiry_bucket,
)

SAMPLES = Path(__file__).parent / "samples"
AT = datetime(2026, 2, 13, 9, 30, tzinfo=UTC)


def _data(event_type: str, **changes: Any) -> dict[str, Any]:
    data = orjson.loads((SAMPLES / f"{event_type}.json").read_bytes())["data"]
    return {**data, **changes}


def _event(
    event_type: str, *, tenant: str = "t1", source: str = "wo-api", **data: Any
) -> DomainEvent:
    return make_event(
        event_type, _data(event_type, **data), tenant_id=tenant, source=source, timestamp=AT
    )


@pytest.fixture
def dm() -> DomainMetrics:
    return DomainMetrics(CollectorRegistry())


def _value(dm: DomainMetrics, name: str, **labels: str) -> float:
    return dm.registry.get_sample_value(name, labels) or 0.0


def test_a_derived_violation_counts_by_tenant_regulation_severity(dm: DomainMetrics) -> None:
    event = _event(
        "compliance.violation_detected", source="wo-stream", regulation="HIPAA", severity="CRITICAL"
    )
    dm.observe_derived(event)
    dm.observe_derived(event)
    labels = {"tenant": "t1", "regulation": "HIPAA", "severity": "CRITICAL"}
    assert _value(dm, "wo_compliance_violations_total", **labels) == 2


def test_an_external_violation_is_counted_when_processed(dm: DomainMetrics) -> None:
    event = _event(
        "compliance.violation_detected", tenant="t2", source="wo-compliance",
        regulation="FDA_21_CFR_11", severity="MEDIUM",
    )  # fmt: skip
    dm.observe_processed(event, AT.timestamp() + 1)
    labels = {"tenant": "t2", "regulation": "FDA_21_CFR_11", "severity": "MEDIUM"}
    assert _value(dm, "wo_compliance_violations_total", **labels) == 1


def test_our_own_events_coming_back_are_not_counted_again(dm: DomainMetrics) -> None:
    # Derived events return through wo.derived and through NATS ingress: counted once.
    violation = _event("compliance.violation_detected", source="wo-stream", severity="HIGH")
    breach = _event("work_order.sla_breached", source="wo-stream")
    dm.observe_derived(violation)
    dm.observe_derived(breach)
    for _ in range(2):
        dm.observe_processed(violation, AT.timestamp())
        dm.observe_processed(breach, AT.timestamp())
    assert _value(dm, "wo_compliance_violations_total", tenant="t1",
                  regulation=violation.data.regulation.value, severity="HIGH") == 1  # fmt: skip
    assert _value(dm, "wo_sla_breaches_total", tenant="t1",
                  breach_type=breach.data.breachType.value) == 1  # fmt: skip
    assert _value(dm, "wo_event_end_to_end_latency_seconds_count") == 0


def test_sla_breaches_by_type_and_completions_by_tenant(dm: DomainMetrics) -> None:
    for breach_type in ("LATE_COMPLETION", "LATE_COMPLETION", "OVERDUE_OPEN"):
        dm.observe_derived(_event("work_order.sla_breached", source="wo-stream",
                                  breachType=breach_type))  # fmt: skip
    for tenant in ("t1", "t1", "t2"):
        dm.observe_processed(_event("work_order.completed", tenant=tenant), AT.timestamp())
    assert _value(dm, "wo_sla_breaches_total", tenant="t1", breach_type="LATE_COMPLETION") == 2
    assert _value(dm, "wo_sla_breaches_total", tenant="t1", breach_type="OVERDUE_OPEN") == 1
    assert _value(dm, "wo_work_orders_completed_total", tenant="t1") == 2
    assert _value(dm, "wo_work_orders_completed_total", tenant="t2") == 1


@pytest.mark.parametrize(
    ("days", "bucket"),
    [(-3, "expired"), (0, "0"), (1, "1"), (2, "7"), (7, "7"), (8, "14"), (14, "14"),
     (30, "30"), (31, "more")],
)  # fmt: skip
def test_expiry_buckets(days: int, bucket: str) -> None:
    assert expiry_bucket(days) == bucket


def test_certifications_expiring_derived_and_external(dm: DomainMetrics) -> None:
    dm.observe_derived(_event("resource.certification_expiring", source="wo-stream",
                              daysUntilExpiry=7))  # fmt: skip
    dm.observe_processed(_event("resource.certification_expiring", source="wo-scheduler",
                                daysUntilExpiry=16), AT.timestamp())  # fmt: skip
    assert _value(dm, "wo_certifications_expiring_total", tenant="t1", within_days="7") == 1
    assert _value(dm, "wo_certifications_expiring_total", tenant="t1", within_days="30") == 1


def test_end_to_end_latency_from_the_envelope_timestamp(dm: DomainMetrics) -> None:
    dm.observe_processed(_event("work_order.created"), AT.timestamp() + 0.02)
    dm.observe_processed(_event("work_order.created"), AT.timestamp() + 7200)
    # A producer clock ahead of ours counts as zero, not as a negative latency.
    dm.observe_processed(_event("work_order.created"), AT.timestamp() - 5)
    name = "wo_event_end_to_end_latency_seconds"
    assert _value(dm, f"{name}_count") == 3
    assert _value(dm, f"{name}_bucket", le="0.005") == 1
    assert _value(dm, f"{name}_bucket", le="0.025") == 2
    assert _value(dm, f"{name}_bucket", le="3600.0") == 2
    assert _value(dm, f"{name}_bucket", le="+Inf") == 3
    assert E2E_BUCKETS[0] == 0.005 and E2E_BUCKETS[-1] == 3600


def test_latency_defaults_to_the_wall_clock(dm: DomainMetrics) -> None:
    at = datetime.now(UTC) - timedelta(seconds=2)
    recent = make_event(
        "work_order.created", _data("work_order.created"), tenant_id="t1", source="wo-api",
        timestamp=at,
    )  # fmt: skip
    dm.observe_processed(recent)
    name = "wo_event_end_to_end_latency_seconds"
    assert _value(dm, f"{name}_bucket", le="1.0") == 0
    assert _value(dm, f"{name}_bucket", le="10.0") == 1


def test_a_broken_chain_check_is_counted_whatever_its_source(dm: DomainMetrics) -> None:
    # The audit writer's checker and `audit verify` publish with source wo-stream.
    broken = _event("compliance.audit_trail_integrity_check", source="wo-stream",
                    chainIntact=False)  # fmt: skip
    intact = _event("compliance.audit_trail_integrity_check", source="wo-stream",
                    chainIntact=True, brokenLinks=[])  # fmt: skip
    dm.observe_processed(broken, AT.timestamp())
    dm.observe_processed(intact, AT.timestamp())
    assert _value(dm, "wo_compliance_integrity_failures_total", tenant="t1") == 1


def test_table_sizes(dm: DomainMetrics) -> None:
    dm.set_table_size("wo_sla", 120)
    dm.set_table_size("wo_sla", 80)
    dm.set_table_size("person_certs", 5)
    assert _value(dm, "wo_table_keys", table="wo_sla") == 80
    assert _value(dm, "wo_table_keys", table="person_certs") == 5


def test_other_events_touch_only_the_latency(dm: DomainMetrics) -> None:
    dm.observe_processed(_event("approval.requested"), AT.timestamp())
    dm.observe_derived(_event("work_order.master_progress_updated", source="wo-stream"))
    samples = {
        s.name
        for m in dm.registry.collect()
        for s in m.samples
        if not s.name.startswith("wo_event_end_to_end_latency_seconds")
    }
    assert samples == set()


def test_no_id_ever_becomes_a_label(dm: DomainMetrics) -> None:
    event = _event("compliance.violation_detected", source="wo-stream")
    dm.observe_derived(event)
    text = generate_latest(dm.registry).decode()
    for value in (event.id, event.data.violationId, event.data.workOrderId):
        assert value is None or str(value) not in text


def test_the_default_registry_is_prometheus_clients() -> None:
    from prometheus_client import REGISTRY

    assert DomainMetrics.__init__.__defaults__ == (REGISTRY,)


def test_fits_on_the_registry_the_worker_serves() -> None:
    # The worker serves WorkerMetrics.registry (with Faust's sensor) at /metrics: no name clash.
    from faust.sensors.prometheus import FaustMetrics

    from pipeline.metrics import WorkerMetrics

    worker = WorkerMetrics.create()
    FaustMetrics.create(worker.registry, "faust")
    dm = DomainMetrics(worker.registry)
    dm.set_table_size("wo_sla", 3)
    text = generate_latest(worker.registry).decode()
    assert 'wo_table_keys{table="wo_sla"} 3.0' in text
    assert "wo_worker_events_processed_total" in text
