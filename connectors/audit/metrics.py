"""Prometheus metrics of the audit trail writer, on a registry the caller chooses.

Alert rules (P0 per catalog §8 "MUST NOT FAIL — DLQ + P0 alert" and §4.2):

* ``increase(wo_audit_dead_letters_total[5m]) > 0``: an audit-required event was not written.
* ``wo_audit_chains_broken > 0``: an integrity check found broken links.
* ``wo_audit_writer_up == 0`` for 2m: the database is unavailable, consumption is paused.
* ``rate(wo_audit_write_failures_total[5m]) > 0``: early warning (retries in progress).

Labels are bounded: ``reason`` is a reason code, ``kind`` ``unavailable``/``rejected``,
``scope`` ``FULL``/``INCREMENTAL``. No tenant label (unbounded); the logs name tenants.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AuditMetrics:
    """Every audit metric, registered on one registry (a fresh one per writer in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = reg = registry if registry is not None else CollectorRegistry()
        self.up = Gauge(
            "wo_audit_writer_up",
            "1 while the audit database accepts writes, 0 while appends are being retried.",
            registry=reg,
        )
        self.appended = Counter(
            "wo_audit_entries_appended_total", "Entries appended to audit chains.", registry=reg
        )
        self.duplicates = Counter(
            "wo_audit_duplicates_total",
            "Audit-required events already in their chain (redeliveries), appended nothing.",
            registry=reg,
        )
        self.write_failures = Counter(
            "wo_audit_write_failures_total",
            "Failed append transactions (retried), by kind: unavailable or rejected.",
            ["kind"],
            registry=reg,
        )
        self.dead_letters = Counter(
            "wo_audit_dead_letters_total",
            "P0: audit-required messages that could never be written, sent to the DLQ.",
            ["reason"],
            registry=reg,
        )
        self.last_commit = Gauge(
            "wo_audit_last_commit_timestamp_seconds",
            "When the writer last committed a batch (database and Kafka offsets).",
            registry=reg,
        )
        self.checks = Counter(
            "wo_audit_integrity_checks_total",
            "Integrity checks of one tenant chain, by scope and result (intact/broken).",
            ["scope", "result"],
            registry=reg,
        )
        self.broken_links = Counter(
            "wo_audit_broken_links_total", "Broken links found by integrity checks.", registry=reg
        )
        self.chains_broken = Gauge(
            "wo_audit_chains_broken",
            "P0: tenant chains with broken links found since the writer started.",
            registry=reg,
        )
        self.checkpoints = Counter(
            "wo_audit_checkpoints_signed_total", "Signed chain-head checkpoints.", registry=reg
        )
        self.up.set(1)
