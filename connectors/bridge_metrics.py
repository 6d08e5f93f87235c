"""Prometheus metrics of the NATS <-> Kafka bridge, on a registry the caller chooses.

Alerting hooks: ``increase(wo_bridge_dead_letters_total[5m]) > 0`` (any dead letter is a finding
in a regulated system), ``wo_bridge_healthy == 0``, a stale
``wo_bridge_last_progress_timestamp_seconds`` while ``wo_bridge_jetstream_pending_messages`` > 0,
and ``rate(wo_bridge_kafka_retries_total[5m]) > 0`` as an early warning before dead letters.

Label values are bounded: ``domain`` is one of the six catalog domains or ``_invalid``,
``reason`` a reason code, ``direction`` ``ingress`` or ``egress``.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Produce round trips on a co-located broker take milliseconds; a retrying one takes seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class BridgeMetrics:
    """Every bridge metric, registered on one registry (a fresh one per bridge in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.mirrored = Counter(
            "wo_bridge_events_mirrored_total",
            "Events written to their Kafka domain topic and acked to JetStream.",
            ["domain"],
            registry=reg,
        )
        self.dead_letters = Counter(
            "wo_bridge_dead_letters_total",
            "Messages stored in the dead-letter stream, by direction, domain and reason code.",
            ["direction", "domain", "reason"],
            registry=reg,
        )
        self.derived_published = Counter(
            "wo_bridge_derived_published_total",
            "Derived events from Kafka stored in JetStream (PubAck received).",
            ["domain"],
            registry=reg,
        )
        self.derived_duplicates = Counter(
            "wo_bridge_derived_duplicates_total",
            "Derived events JetStream dropped as duplicates of an earlier Nats-Msg-Id.",
            ["domain"],
            registry=reg,
        )
        self.produce_latency = Histogram(
            "wo_bridge_produce_latency_seconds",
            "Time from handing a record batch to the Kafka producer to the broker's ack.",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.kafka_retries = Counter(
            "wo_bridge_kafka_retries_total",
            "Kafka batch writes that failed and were retried after a backoff.",
            registry=reg,
        )
        self.nats_publish_retries = Counter(
            "wo_bridge_nats_publish_retries_total",
            "JetStream publishes (derived events, dead letters) that failed and were retried.",
            ["direction"],
            registry=reg,
        )
        self.jetstream_pending = Gauge(
            "wo_bridge_jetstream_pending_messages",
            "Messages in the stream the ingress consumer has not been delivered yet.",
            registry=reg,
        )
        self.jetstream_redeliveries = Counter(
            "wo_bridge_jetstream_redeliveries_total",
            "Messages JetStream delivered to the ingress more than once.",
            registry=reg,
        )
        self.consumer_resyncs = Counter(
            "wo_bridge_ingress_resyncs_total",
            "Times the ingress consumer was rewound to its ack floor to restore order.",
            registry=reg,
        )
        self.healthy = Gauge(
            "wo_bridge_healthy",
            "1 while the direction is making progress or idle, 0 while it is stuck retrying.",
            ["direction"],
            registry=reg,
        )
        self.last_progress = Gauge(
            "wo_bridge_last_progress_timestamp_seconds",
            "Unix time of the last batch the direction fully handled (acked or committed).",
            ["direction"],
            registry=reg,
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when it was never set); for tests and health output."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found


_default: BridgeMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> BridgeMetrics:
    """The process-wide metrics on prometheus_client's default registry, created once."""
    global _default
    with _default_lock:
        if _default is None:
            _default = BridgeMetrics(REGISTRY)
        return _default
