"""Domain metrics of the Faust worker (prometheus-client), served with Faust's own at /metrics.

Names follow the Prometheus conventions (``_total`` counters, base units). Labels are bounded:
event types come from the registry, tables from ``tables.stages``; tenants are deliberately not
a label (unbounded cardinality; per-tenant numbers are in the aggregate tables).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Record latency buckets (seconds): fine below 100 ms, where a healthy worker's records are.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    """The worker's counters, registered on one registry (one per app, so tests can build many)."""

    registry: CollectorRegistry
    events: Counter
    derived: Counter
    forwards: Counter
    duplicates: Counter
    late: Counter
    expired: Counter
    invalid: Counter
    errors: Counter
    dead_letters: Counter
    gaps: Counter
    timer_runs: Counter
    shards_deleted: Counter
    clock: Gauge
    latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=reg,
            events=Counter(
                "wo_worker_events_processed_total",
                "Input events processed, by source topic and event type.",
                ["topic", "type"],
                registry=reg,
            ),
            derived=Counter(
                "wo_worker_derived_events_total",
                "Derived events sent to wo.derived, by event type.",
                ["type"],
                registry=reg,
            ),
            forwards=Counter(
                "wo_worker_forwards_total",
                "Facts and events repartitioned to another table key, by target table.",
                ["table"],
                registry=reg,
            ),
            duplicates=Counter(
                "wo_worker_duplicates_dropped_total",
                "Items dropped because their id was already applied to the table key.",
                ["table"],
                registry=reg,
            ),
            late=Counter(
                "wo_worker_late_events_total",
                "Items older than a window's retention, not counted in that window.",
                ["table"],
                registry=reg,
            ),
            expired=Counter(
                "wo_worker_expired_waits_total",
                "Pending checks given up because their answer never came.",
                ["table"],
                registry=reg,
            ),
            invalid=Counter(
                "wo_worker_invalid_records_total",
                "Records that could not be decoded (not an event, fact or tick); dead-lettered.",
                ["topic"],
                registry=reg,
            ),
            errors=Counter(
                "wo_worker_apply_errors_total",
                "Items a reducer refused or failed on (tenant mismatch, bad state); dead-lettered.",
                ["table"],
                registry=reg,
            ),
            dead_letters=Counter(
                "wo_worker_dead_letters_total",
                "Source records written to wo.dlq.worker, by source topic and reason.",
                ["topic", "reason"],
                registry=reg,
            ),
            gaps=Counter(
                "wo_worker_offset_gaps_total",
                "Records delivered past a missing offset: the partition was sought back "
                "(action=sought) or, after repeated seeks, skipped because the broker deleted "
                "them (action=skipped).",
                ["topic", "action"],
                registry=reg,
            ),
            timer_runs=Counter(
                "wo_worker_timer_runs_total",
                "Timer reducer calls for due table keys, by table.",
                ["table"],
                registry=reg,
            ),
            shards_deleted=Counter(
                "wo_worker_window_shards_deleted_total",
                "Window shards deleted after leaving retention, by table.",
                ["table"],
                registry=reg,
            ),
            clock=Gauge(
                "wo_worker_clock_seconds",
                "The worker's clock at the latest tick (Unix seconds).",
                registry=reg,
            ),
            latency=Histogram(
                "wo_worker_record_latency_seconds",
                "Per source record: from its stream taking it out of Faust's buffer to its ack.",
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
        )
