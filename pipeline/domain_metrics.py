"""Domain metrics of the worker (violations, SLA, certifications, latency, table sizes).

The counters the worker already keeps (events processed and derived by type, duplicates, late
events) are in :mod:`pipeline.metrics`; this module adds what compliance alerts need. Register
it on the registry the worker serves at ``/metrics`` (``WorkerMetrics.registry``).

Counting rule, so nothing is counted twice: an event wo-stream derived itself (source
``wo-stream``) is counted once by :meth:`DomainMetrics.observe_derived` when its batch's outputs
were acknowledged; it comes back through ``wo.derived`` and through NATS ingress, and
:meth:`DomainMetrics.observe_processed` ignores it then. Events of other producers (e.g. a
``wo-compliance`` violation) are counted when processed. Counters are at-least-once: a batch
reprocessed after a crash, or a rebuild from NATS, counts its events again.

Labels are bounded: ``tenant`` (tens to hundreds), catalog enums, the expiry buckets, table
names. Never a work-order, person or event id (PHI-adjacent and unbounded).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from events.envelope import DomainEvent
from tables.base import is_own

VIOLATION = "compliance.violation_detected"
SLA_BREACHED = "work_order.sla_breached"
CERT_EXPIRING = "resource.certification_expiring"
COMPLETED = "work_order.completed"
INTEGRITY = "compliance.audit_trail_integrity_check"

# Envelope timestamp -> processed: milliseconds when healthy, up to an hour in a backlog.
E2E_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

# ``within_days`` values of wo_certifications_expiring_total: the smallest bound >= the days
# left (the default thresholds are 30/14/7/1/0); "expired" below 0, "more" above 30.
EXPIRY_BOUNDS = (0, 1, 7, 14, 30)


def expiry_bucket(days: int) -> str:
    """The ``within_days`` label for ``daysUntilExpiry``."""
    if days < 0:
        return "expired"
    return next((str(b) for b in EXPIRY_BOUNDS if days <= b), "more")


def _label(value: Any) -> str:
    return str(getattr(value, "value", value))


class DomainMetrics:
    """Domain counters, histogram and gauge on one registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = reg = registry if registry is not None else CollectorRegistry()
        self.violations = Counter(
            "wo_compliance_violations_total",
            "compliance.violation_detected events (derived or external), by tenant, "
            "regulation and severity.",
            ["tenant", "regulation", "severity"],
            registry=reg,
        )
        self.sla_breaches = Counter(
            "wo_sla_breaches_total",
            "work_order.sla_breached events derived, by tenant and breach type.",
            ["tenant", "breach_type"],
            registry=reg,
        )
        self.completed = Counter(
            "wo_work_orders_completed_total",
            "work_order.completed events processed, by tenant (denominator of the breach rate).",
            ["tenant"],
            registry=reg,
        )
        self.certs_expiring = Counter(
            "wo_certifications_expiring_total",
            "resource.certification_expiring events, by tenant and days left bucket "
            "(expired, 0, 1, 7, 14, 30, more).",
            ["tenant", "within_days"],
            registry=reg,
        )
        self.integrity_failures = Counter(
            "wo_compliance_integrity_failures_total",
            "P0: compliance.audit_trail_integrity_check events with chainIntact false, by tenant.",
            ["tenant"],
            registry=reg,
        )
        self.latency = Histogram(
            "wo_event_end_to_end_latency_seconds",
            "From an input event's envelope timestamp to the worker having processed it.",
            buckets=E2E_BUCKETS,
            registry=reg,
        )
        self.table_keys = Gauge(
            "wo_table_keys",
            "Keys in a worker table, in the partitions this worker holds.",
            ["table"],
            registry=reg,
        )

    def observe_derived(self, event: DomainEvent) -> None:
        """A derived event whose send was acknowledged: count violations, breaches, expiries."""
        self._count(event)

    def observe_processed(self, event: DomainEvent, now: float | None = None) -> None:
        """An input event processed at ``now`` (Unix seconds; default: the wall clock)."""
        if event.type == INTEGRITY and not event.data.chainIntact:
            self.integrity_failures.labels(event.tenantId).inc()
        if is_own(event):
            return  # counted by observe_derived; its timestamp is its cause's
        at = time.time() if now is None else now
        self.latency.observe(max(0.0, at - event.timestamp.timestamp()))
        if event.type == COMPLETED:
            self.completed.labels(event.tenantId).inc()
        else:
            self._count(event)

    def set_table_size(self, table: str, n: int) -> None:
        """Record how many keys ``table`` holds (called periodically)."""
        self.table_keys.labels(table).set(n)

    def _count(self, event: DomainEvent) -> None:
        data = event.data
        if event.type == VIOLATION:
            labels = (event.tenantId, _label(data.regulation), _label(data.severity))
            self.violations.labels(*labels).inc()
        elif event.type == SLA_BREACHED:
            self.sla_breaches.labels(event.tenantId, _label(data.breachType)).inc()
        elif event.type == CERT_EXPIRING:
            bucket = expiry_bucket(data.daysUntilExpiry)
            self.certs_expiring.labels(event.tenantId, bucket).inc()
