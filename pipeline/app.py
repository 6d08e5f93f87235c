"""The wo-stream Faust app: factory, broker URL selection and a programmatic worker.

``create_app()`` builds a ``faust.App`` from :class:`pipeline.settings.Settings`;
later modules register their agents and tables on the app it returns. For
``faust -A pipeline.app:app worker`` the module also exposes a lazily created,
process-wide ``app`` (``get_app()``), built from the environment on first use.

Broker URL and transport
------------------------
The broker comes from ``broker=`` (``host:port[,host:port]`` or a full URL) or
``settings.kafka_bootstrap``. The URL scheme picks the Faust transport:

* ``kafka://``: Faust's stock aiokafka transport, for a real Kafka cluster.
* ``tansu://``: :mod:`connectors.tansu_transport`, the same transport with a
  fix for the embedded Tansu broker, whose ``ListOffsets(latest)`` answer is
  short and breaks table recovery (see that module).

``settings.kafka_transport`` chooses: ``"kafka"``, ``"tansu"``, or ``"auto"``
(the default), which means ``tansu`` when ``WO_KAFKA_BOOTSTRAP`` is unset (the
embedded stack starts the broker and its address is passed as ``broker=``) and
``kafka`` when a broker is configured. A ``broker=`` that already has a scheme
is used as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

import faust

from pipeline.settings import Settings, get_settings

__all__ = [
    "EMBEDDED_BROKER_SESSION_TIMEOUT",
    "broker_url",
    "create_app",
    "get_app",
    "run_worker",
    "table_dir",
]

#: Tansu holds a consumer group's join for half the session timeout, so Faust's
#: 60 s default makes every worker start wait ~30 s there. 10 s (join ~5 s)
#: still leaves 3 heartbeats (Faust's 3 s interval) per session. Applied only
#: with the tansu transport.
EMBEDDED_BROKER_SESSION_TIMEOUT = 10.0


def broker_url(settings: Settings, broker: str | None = None) -> str:
    """Faust broker URL(s) for ``broker`` or ``settings.kafka_bootstrap``.

    ``"h1:9092,h2:9092"`` becomes ``"kafka://h1:9092,h2:9092"`` (Faust applies
    the first scheme to every host), with ``tansu://`` instead when the
    transport is tansu (see the module docstring).
    """
    address = broker if broker is not None else settings.kafka_bootstrap
    if not address:
        raise ValueError(
            "No Kafka broker: set WO_KAFKA_BOOTSTRAP, or start the embedded stack "
            "and pass its address as create_app(broker=...)"
        )
    if "://" in address:
        return address
    return f"{'tansu' if settings.tansu else 'kafka'}://{address}"


def table_dir(data_dir: Path, app_id: str) -> Path:
    """Faust's ``datadir`` for ``app_id``: RocksDB table state lives below it."""
    return Path(data_dir) / "faust" / app_id


def create_app(
    settings: Settings | None = None,
    *,
    broker: str | None = None,
    data_dir: Path | None = None,
    app_id: str | None = None,
    **faust_overrides: Any,
) -> faust.App:
    """A ``faust.App`` configured from ``settings`` (default: :func:`get_settings`).

    ``broker``, ``data_dir`` and ``app_id`` override the settings of the same
    name; ``faust_overrides`` are passed to ``faust.App`` last, so they win.
    Creates the app's data directory (:func:`table_dir`) if needed.

    Faust settings that differ from Faust's defaults, and why:

    * ``broker``: see :func:`broker_url` (``tansu://`` for the embedded broker).
    * ``store="rocksdb://"``: tables live on local disk and survive restarts,
      so a restart reads only the changelog tail instead of the whole changelog
      (Faust's default ``memory://`` rebuilds everything at every start).
    * ``datadir=<data_dir>/faust/<app_id>``: RocksDB state under the
      configured data dir, apart from other apps and other components' files.
    * ``topic_partitions=settings.partitions``: partitions of the topics Faust
      creates (tables' changelogs, repartition topics); source topics must
      match for co-partitioned tables.
    * ``web_port=settings.web_port``: the worker's HTTP server (table views,
      health).
    * ``broker_session_timeout=10`` with the tansu transport only: see
      :data:`EMBEDDED_BROKER_SESSION_TIMEOUT`.
    * ``WO_FAUST_FAST_DRAIN`` (on by default) makes the consumer hand records to the
      streams without Faust's per-record ``wait_first`` (:mod:`pipeline.agents.consumer`).

    Pinned although Faust 0.15 has the same default, because losing it would
    lose data: ``consumer_auto_offset_reset="earliest"`` (a new consumer
    group starts at the beginning of its topics; ``latest`` would silently
    skip the backlog).

    Kept at Faust's defaults on purpose: ``processing_guarantee`` (at least
    once, so agents must be idempotent), ``producer_acks=-1`` (all in-sync
    replicas), ``recovery_consistency_check=True``, ``table_standby_replicas=1``
    and ``topic_replication_factor=1`` (pass ``topic_replication_factor=3`` for
    a production cluster).
    """
    settings = settings if settings is not None else get_settings()
    app_id = app_id or settings.app_id
    data_dir = Path(data_dir) if data_dir is not None else settings.data_dir
    url = broker_url(settings, broker)

    datadir = table_dir(data_dir, app_id)
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    conf: dict[str, Any] = {
        "broker": url,
        "store": "rocksdb://",
        "datadir": str(datadir),
        "topic_partitions": settings.partitions,
        "web_port": settings.web_port,
        "consumer_auto_offset_reset": "earliest",
    }
    if url.startswith("tansu://"):
        conf["broker_session_timeout"] = EMBEDDED_BROKER_SESSION_TIMEOUT
    conf.update(faust_overrides)
    app = faust.App(app_id, **conf)
    from pipeline.agents.consumer import commit_guard, fast_drain, seek_first
    from pipeline.agents.producer import draining_producer

    transport = app.transport
    # Faust resumes stream partitions before seeking them, losing records at restarts and
    # rebalances, and can commit past records no agent processed (pipeline.agents.consumer);
    # its commit does not wait for the table changelog records still in its producer buffer
    # (pipeline.agents.producer).
    transport.Consumer = commit_guard(seek_first(transport.Consumer))  # type: ignore[misc]
    transport.Producer = draining_producer(transport.Producer)  # type: ignore[misc]
    if settings.faust_fast_drain:
        # Faust's consumer starts four tasks per record it hands to the streams; this one does
        # not while the flow runs (see pipeline.agents.consumer).
        transport.Consumer = fast_drain(transport.Consumer)  # type: ignore[misc]
    return app


@lru_cache(maxsize=1)
def get_app() -> faust.App:
    """The process-wide app, from the environment's settings, with every agent and table
    of :mod:`pipeline.agents` registered (``python pipeline.py worker``, ``faust -A``)."""
    from pipeline.agents import register  # imported late: agents pull in tables and events
    from pipeline.web import register_web

    app = create_app()
    register(app)
    register_web(app)
    return app


def __getattr__(name: str) -> Any:
    # ``faust -A pipeline.app:app``: create the app on first access, not at import.
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Worker(faust.Worker):
    """SIGUSR2 dumps threads and tasks (:mod:`pipeline.diagnostics`) instead of starting pdb."""

    def _on_sigusr2(self) -> None:
        from pipeline.diagnostics import dump

        dump(self.app)


def run_worker(
    app: faust.App,
    *,
    loglevel: str | int = "info",
    worker_options: Mapping[str, Any] | None = None,
) -> NoReturn:
    """Run a Faust worker for ``app`` in this process until it is stopped.

    Blocks; installs Faust's signal handlers (SIGTERM/SIGINT stop the worker
    cleanly, committing offsets; SIGUSR2 dumps stacks, :mod:`pipeline.diagnostics`) and
    exits the process when the worker stops.
    ``worker_options`` go to ``faust.Worker`` (e.g. ``logfile``).
    """
    worker = _Worker(app, loglevel=loglevel, **dict(worker_options or {}))
    worker.execute_from_commandline()
