"""Faust agents and RocksDB tables for every stage of ``tables.stages`` (the Faust layer).

``register(app)`` declares on a ``faust.App``:

* one table per stage (``wo_children``, ``wo_masters``, ``wo_sla``, ``sla_windows``,
  ``wo_assignees``, ``person_certs``, ``wo_policy``, ``compliance_windows``, ``wo_compliance``;
  JSON keys and values, RocksDB + changelog), plus ``wo_clock`` (control clock per partition);
* one agent per source topic, all calling one :class:`~pipeline.agents.runner.Runner`: the six
  domain topics (every stage that routes the event), ``wo.derived`` (only the counting stages,
  ``derived_inputs``: nothing derives from its own output), the repartition topic (facts and
  re-keyed events) and the control topic (clock ticks, timers);
* the wall-clock tick timer (group leader only) and ``/wo/status/`` on the web port;
* Prometheus metrics on their own port (``WO_WORKER_METRICS_PORT``), not the web port.

The stages are generic descriptors, so there is no module per family: routing, repartitioning,
dedup write-back, timers and output are the same for all of them (``steps``, ``runner``).
Topics, keys and partitioning: :mod:`pipeline.topics`; clock: :mod:`pipeline.timers`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import faust

from pipeline.agents.config import WorkerSettings
from pipeline.agents.runner import CLOCK, Runner
from pipeline.agents.web import register_views
from pipeline.metrics import WorkerMetrics
from pipeline.settings import Settings, get_settings
from pipeline.timers import Clock
from pipeline.topics import declare
from tables.stages import STAGES

__all__ = ["CLOCK_TABLE", "register"]

CLOCK_TABLE = CLOCK
#: Name prefix of Faust's sensor metrics (``faust_*``); deploy/prometheus/alerts.yml uses it.
FAUST_METRICS_PREFIX = "faust"


def register(
    app: faust.App,
    settings: Settings | None = None,
    worker: WorkerSettings | None = None,
    *,
    clock: Clock | None = None,
) -> Runner:
    """Declare the worker's topics, tables, agents, timer and views on ``app``."""
    settings = settings or get_settings()
    worker = worker or WorkerSettings()
    n = settings.partitions
    topics = declare(app, partitions=n, derived=settings.egress_topic, control=worker.control_topic)
    tables = {
        stage.name: app.Table(
            stage.name,
            partitions=n,
            help=f"{stage.name}: {stage.key} -> {stage.state.__name__}",
        )
        for stage in STAGES
    }
    clock_table = app.Table(
        CLOCK_TABLE,
        partitions=n,
        help="control clock: partition -> latest tick (epoch ms)",
    )
    metrics = WorkerMetrics.create()
    runner = Runner(
        app,
        topics=topics,
        tables=tables,
        clock_table=clock_table,
        clock=clock or Clock(worker.clock),
        metrics=metrics,
        partitions=n,
        retry_max_seconds=worker.send_retry_max_seconds,
        batch_max=worker.batch_max,
        copy_per_update=worker.copy_per_update,
    )

    # The consumer commits what the runner processed in order (pipeline.agents.consumer).
    app.wo_processed = runner.processed  # type: ignore[attr-defined]

    def agent(topic: Any, handler: str, name: str) -> None:
        async def process(stream: faust.StreamT) -> None:
            await runner.consume(stream, handler)

        app.agent(topic, name=name)(process)

    for topic_name, topic in topics.domain.items():
        agent(topic, "on_event", f"wo-events-{topic_name}")
    agent(topics.derived, "on_event", "wo-events-derived")
    agent(topics.forwards, "on_forward", "wo-forwards")
    agent(topics.control, "on_tick", "wo-clock")

    if not runner.clock.controlled:

        @app.timer(interval=worker.timer_interval_seconds, on_leader=True)
        async def tick() -> None:
            await runner.send_ticks(datetime.now(UTC))

    @app.timer(interval=worker.table_size_interval_seconds)
    async def table_sizes() -> None:
        # len() iterates this worker's keys in RocksDB, hence a slow interval.
        for name, table in tables.items():
            runner.domain.set_table_size(name, len(table))

    async def rebalanced(sender: Any, *args: Any, **kwargs: Any) -> None:
        runner.on_rebalance()

    app.on_partitions_revoked.connect(rebalanced)
    app.on_partitions_assigned.connect(rebalanced)

    if worker.faust_sensors:
        # Faust's sensor without its /metrics page (setup_prometheus_sensors adds one on the web
        # port): every metric is served apart, see below.
        from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

        faust_metrics = FaustMetrics.create(metrics.registry, FAUST_METRICS_PREFIX)
        app.monitor = PrometheusMonitor(metrics=faust_metrics)

    if settings.worker_metrics_port:

        @app.task
        async def serve_metrics() -> None:
            # Not on the web port: the domain metrics are labelled by tenant, and every tenant's
            # token holder reaches that port (tenant isolation). A taken port fails the start.
            from prometheus_client import start_http_server

            start_http_server(
                settings.worker_metrics_port, settings.bridge_metrics_host, metrics.registry
            )

    register_views(app, runner)
    return runner
