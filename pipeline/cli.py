"""Command line of wo-stream: run, worker, bridge, simulate, schemas and provision subcommands."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pipeline.supervisor import Child, StopFlag, spawn, stop_all, supervise

# Children are started as `python -m pipeline.cli ...`: that works from a checkout and from an
# installed wheel (where there is no top-level pipeline.py).
CHILD_ARGV = [sys.executable, "-m", "pipeline.cli"]
DEFAULT_STOP_TIMEOUT = 30.0
RUN_SIMULATE_RATE = 20.0
# Simulated seconds per wall second under `run`: one wall minute is a simulated hour, so work
# orders go from creation to closure within minutes while the traffic stays mostly work orders.
RUN_TIME_SCALE = 60.0

nats_url_option = click.option(
    "--nats-url", default=None, metavar="URL", help="NATS server URL [env WO_NATS_URL]."
)
kafka_option = click.option(
    "--kafka-bootstrap",
    default=None,
    metavar="HOST:PORT",
    help="Kafka bootstrap servers [env WO_KAFKA_BOOTSTRAP].",
)


def _redact(url: str | None) -> str:
    """A server URL without its credentials, for output (pipeline.settings.redact_url)."""
    from pipeline.settings import redact_url

    return redact_url(url)


def _settings(**overrides: Any):
    """Settings from WO_* env with the non-None CLI overrides applied."""
    from pipeline.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wo-stream", prog_name="wo-stream")
def cli() -> None:
    """wo-stream: NATS JetStream <-> Kafka stream pipeline for the work-order / QMS platform.

    Settings come from WO_* environment variables; options override them.
    """


# --------------------------------------------------------------------------------------------
# run: the whole pipeline under one supervisor


async def _provision(nats_url: str, settings: Any) -> list[str]:
    """Create or update the JetStream streams (idempotent); returns their names."""
    from connectors.jetstream import connect_nats, ensure_streams
    from pipeline.simulate.publisher import quiet_nats_error

    # A bounded number of connect attempts: a wrong URL must fail, not hang.
    nc, js = await connect_nats(
        nats_url, name="wo-stream-provision", max_reconnect_attempts=20, error_cb=quiet_nats_error
    )
    try:
        await ensure_streams(js, settings)
    finally:
        await nc.close()
    return [settings.stream_name, settings.dlq_stream_name]


def _nats_call(coro: Any, nats_url: str) -> Any:
    """Run a NATS coroutine; an unreachable server is a clear one-line error, not a traceback."""
    from nats.errors import NoServersError

    try:
        return asyncio.run(coro)
    except (NoServersError, OSError) as exc:
        raise click.ClickException(f"cannot reach NATS at {_redact(nats_url)}: {exc}") from exc


def _web_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


@cli.command()
@nats_url_option
@kafka_option
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory: JetStream store, tables, logs [env WO_DATA_DIR, default ./data].",
)
@click.option("--web-port", type=int, default=None, help="Worker web port [env WO_WEB_PORT].")
@click.option(
    "--simulate/--no-simulate",
    default=None,
    help="Publish simulated traffic [default: on for the embedded stack, off for given servers].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=RUN_SIMULATE_RATE,
    show_default=True,
    help="Simulated events per second (0 = as fast as possible).",
)
@click.option("--tenants", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", type=int, default=None, help="Simulation seed [default: random, printed].")
@click.option(
    "--bridge/--no-bridge",
    default=True,
    show_default=True,
    help="Start the NATS <-> Kafka bridge.",
)
@click.option(
    "--audit/--no-audit",
    "audit",
    default=True,
    show_default=True,
    help="Start the audit trail writer.",
)
@click.option(
    "--worker/--no-worker",
    default=True,
    show_default=True,
    help="Start the Faust worker (--no-worker: servers, streams and simulator only).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop by itself after this many seconds.",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_STOP_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Grace period between SIGTERM and SIGKILL for each child.",
)
def run(
    nats_url: str | None,
    kafka_bootstrap: str | None,
    data_dir: Path | None,
    web_port: int | None,
    simulate: bool | None,
    rate: float,
    tenants: int,
    seed: int | None,
    bridge: bool,
    audit: bool,
    worker: bool,
    duration: float | None,
    stop_timeout: float,
) -> None:
    """Run the whole pipeline: servers, streams, bridge, Faust worker and simulated traffic.

    Without --nats-url/--kafka-bootstrap (or WO_NATS_URL/WO_KAFKA_BOOTSTRAP) an embedded NATS
    JetStream and Kafka-protocol broker are started as child processes. Ctrl-C or SIGTERM stops
    everything: simulator, then worker, then bridge, then servers; each gets --stop-timeout
    seconds before it is killed.
    """
    settings = _settings(
        nats_url=nats_url, kafka_bootstrap=kafka_bootstrap, data_dir=data_dir, web_port=web_port
    )
    data_root = Path(settings.data_dir).resolve()
    embedded = settings.nats_url is None or settings.kafka_bootstrap is None
    if simulate is None:
        simulate = settings.nats_url is None and settings.kafka_bootstrap is None
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    stop = StopFlag()
    stop.install()
    rc = 0
    with ExitStack() as cleanup:
        nats_addr, kafka_addr = settings.nats_url, settings.kafka_bootstrap
        if embedded:
            from connectors.embedded import EmbeddedStack, StackError

            click.echo(f"starting embedded servers in {data_root} ...")
            stack = EmbeddedStack(
                data_root,
                nats_url=settings.nats_url,
                kafka_bootstrap=settings.kafka_bootstrap,
                settings=settings,
            )
            cleanup.callback(_stop_stack, stack)
            try:
                stack.start()
            except StackError as exc:
                raise click.ClickException(f"embedded servers did not start: {exc}") from exc
            nats_addr, kafka_addr = stack.nats_url, stack.kafka_bootstrap
        assert nats_addr and kafka_addr
        if stop.event.is_set():
            raise SystemExit(0)
        streams = _nats_call(_provision(nats_addr, settings), nats_addr)
        if embedded and settings.kafka_bootstrap is None:
            # A fresh in-memory broker: rebuild from NATS, the log of record (pipeline/rebuild.py).
            from pipeline.rebuild import rebuild_from_nats

            reset = _nats_call(rebuild_from_nats(settings, nats_addr, data_root), nats_addr)
            if reset:
                click.echo(f"fresh embedded broker: reset {', '.join(reset)}; re-mirroring")

        # Create the topics before any child subscribes: a broker auto-creates a missing topic
        # with its own partition count, and the worker's tables need them co-partitioned.
        _create_topics(kafka_addr, settings)
        env = _child_env(settings, nats_addr, kafka_addr, data_root)
        dev_tokens: dict[str, str] = {}
        if settings.web_tokens is None and simulate:
            # No configured tokens: one dev token per simulated tenant, shown once in the banner.
            dev_tokens = _dev_tokens(seed, tenants)
            env["WO_WEB_TOKENS"] = ",".join(f"{tok}={t}" for t, tok in dev_tokens.items())
        children: list[Child] = []
        # Stopped in reverse start order: simulator before worker, worker before servers.
        cleanup.callback(stop_all, children, stop_timeout, stop.hurry)
        if bridge:
            log_path = data_root / "logs" / "bridge.log"
            children.append(spawn("bridge", [*CHILD_ARGV, "bridge"], env, log_path))
        if audit:
            log_path = data_root / "logs" / "audit-writer.log"
            children.append(spawn("audit-writer", [*CHILD_ARGV, "audit", "writer"], env, log_path))
        if settings.webhook_subscriptions is not None:
            log_path = data_root / "logs" / "webhooks.log"
            children.append(spawn("webhooks", [*CHILD_ARGV, "webhooks"], env, log_path))
        if worker:
            log_path = data_root / "logs" / "worker.log"
            children.append(spawn("worker", [*CHILD_ARGV, "worker"], env, log_path))
        if simulate:
            children.append(
                spawn("simulate", _simulate_argv(nats_addr, rate, tenants, seed), env, None)
            )
        _print_banner(
            nats_addr, kafka_addr, settings, data_root, streams, children,
            embedded=embedded, simulate=simulate, rate=rate, tenants=tenants, seed=seed,
            dev_tokens=dev_tokens,
        )  # fmt: skip
        rc = supervise(children, stop, duration)
    click.echo("stopped cleanly" if rc == 0 else f"stopped (exit {rc})")
    raise SystemExit(rc)


def _create_topics(kafka_addr: str, settings: Any) -> None:
    from connectors.embedded import run_sync
    from connectors.kafka_topics import bridge_topics, ensure_topics

    try:
        run_sync(ensure_topics(kafka_addr, bridge_topics(settings), partitions=settings.partitions))
    except Exception as exc:
        raise click.ClickException(f"cannot create Kafka topics on {kafka_addr}: {exc}") from exc


def _simulate_argv(nats_addr: str, rate: float, tenants: int, seed: int) -> list[str]:
    """The simulator child: endless traffic starting now, simulated time RUN_TIME_SCALE x wall."""
    gap = RUN_TIME_SCALE / rate if rate > 0 else RUN_TIME_SCALE
    return [
        *CHILD_ARGV, "simulate", "--events", "0", "--rate", f"{rate:g}",
        "--tenants", str(tenants), "--seed", str(seed), "--speed", f"{gap:g}",
        "--start", datetime.now(UTC).isoformat(timespec="seconds"),
        "--nats-url", nats_addr, "--no-progress", "--report-every", "10",
    ]  # fmt: skip


def _dev_tokens(seed: int, tenants: int) -> dict[str, str]:
    import secrets

    from pipeline.simulate.generator import simulated_tenant_ids

    return {t: secrets.token_urlsafe(24) for t in simulated_tenant_ids(seed, tenants)}


def _child_env(settings: Any, nats_addr: str, kafka_addr: str, data_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WO_NATS_URL=nats_addr,
        WO_KAFKA_BOOTSTRAP=kafka_addr,
        WO_DATA_DIR=str(data_root),
        WO_WEB_PORT=str(settings.web_port),
        PYTHONUNBUFFERED="1",
    )
    if settings.kafka_bootstrap is None and "WO_KAFKA_TRANSPORT" not in os.environ:
        # The embedded broker is Tansu, which needs the Tansu-aware Faust transport; the
        # worker sees WO_KAFKA_BOOTSTRAP set and would otherwise pick plain kafka://.
        env["WO_KAFKA_TRANSPORT"] = "tansu"
    return env


def _stop_stack(stack: Any) -> None:
    click.echo("stopping embedded servers ...")
    stack.stop()


def _print_banner(
    nats_addr: str,
    kafka_addr: str,
    settings: Any,
    data_root: Path,
    streams: list[str],
    children: list[Child],
    *,
    embedded: bool,
    simulate: bool,
    rate: float,
    tenants: int,
    seed: int,
    dev_tokens: dict[str, str],
) -> None:
    by_name = {c.name: c for c in children}
    nats_note = "  (embedded)" if embedded and not settings.nats_url else ""
    kafka_note = "  (embedded)" if embedded and not settings.kafka_bootstrap else ""
    rows = [
        ("NATS", _redact(nats_addr) + nats_note),
        ("Kafka", kafka_addr + kafka_note),
        ("streams", ", ".join(streams)),
        ("data dir", str(data_root)),
    ]
    if "bridge" in by_name:
        b = by_name["bridge"]
        metrics = f"http://{settings.bridge_metrics_host}:{settings.bridge_metrics_port}/metrics"
        rows.append(("bridge", f"pid {b.proc.pid}, log {b.log_path}, {metrics}"))
    else:
        rows.append(("bridge", "not started (--no-bridge)"))
    if "audit-writer" in by_name:
        a = by_name["audit-writer"]
        rows.append(("audit", f"pid {a.proc.pid}, log {a.log_path}"))
    if "worker" in by_name:
        w = by_name["worker"]
        rows += [
            ("web", _web_url(settings.web_port)),
            (
                "metrics",
                f"http://{settings.bridge_metrics_host}:{settings.worker_metrics_port}/metrics",
            ),
            ("worker", f"pid {w.proc.pid}, log {w.log_path}"),
        ]
    else:
        rows.append(("worker", "not started (--no-worker)"))
    if simulate:
        rate_text = "as fast as possible" if rate == 0 else f"{rate:g} events/s"
        rows.append(("simulate", f"{tenants} tenants, {rate_text}, seed {seed}"))
    if "worker" in by_name:
        # Dev tokens only (generated for this run); configured WO_WEB_TOKENS are never printed.
        for tenant, token in dev_tokens.items():
            rows.append(("dashboard", f"{_web_url(settings.web_port)}#token={token}  ({tenant})"))
    click.echo("wo-stream is running")
    for key, value in rows:
        click.echo(f"  {key:<9} {value}")
    click.echo("Press Ctrl-C to stop.")


# --------------------------------------------------------------------------------------------
# worker, bridge, provision


@cli.command()
@nats_url_option
@kafka_option
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--web-port", type=int, default=None, help="Web server port [env WO_WEB_PORT].")
@click.option("--loglevel", default="info", show_default=True)
def worker(
    nats_url: str | None,
    kafka_bootstrap: str | None,
    data_dir: Path | None,
    web_port: int | None,
    loglevel: str,
) -> None:
    """Run the Faust worker (agents, tables, web views) against the given servers.

    Faust handles SIGTERM/SIGINT itself: it stops cleanly, committing offsets.
    """
    overrides = {
        "WO_NATS_URL": nats_url,
        "WO_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "WO_DATA_DIR": str(data_dir) if data_dir is not None else None,
        "WO_WEB_PORT": str(web_port) if web_port is not None else None,
    }
    # Options go through the environment so that the process-wide app (get_app(), on which
    # agent modules register) sees the same settings as this command.
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    from pipeline.app import get_app, run_worker
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    if not get_settings().kafka_bootstrap:
        raise click.UsageError("worker needs --kafka-bootstrap or WO_KAFKA_BOOTSTRAP")
    run_worker(get_app(), loglevel=loglevel)


@cli.command()
@nats_url_option
@kafka_option
@click.option("--ingress/--no-ingress", default=True, show_default=True, help="NATS -> Kafka.")
@click.option("--egress/--no-egress", default=True, show_default=True, help="wo.derived -> NATS.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="/metrics and /healthz port, 0 = none [env WO_BRIDGE_METRICS_PORT, default 9108].",
)
def bridge(
    nats_url: str | None,
    kafka_bootstrap: str | None,
    ingress: bool,
    egress: bool,
    metrics_port: int | None,
) -> None:
    """Mirror NATS JetStream subjects into Kafka and derived events from wo.derived back.

    Ingress acks a NATS message only after Kafka acknowledged it; bad input and writes that
    fail 5 times go to the dead-letter stream (wo_dlq.>). SIGTERM/SIGINT stop it cleanly.
    """
    import logging

    from connectors.bridge import serve_bridge

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _settings(
        nats_url=nats_url, kafka_bootstrap=kafka_bootstrap, bridge_metrics_port=metrics_port
    )
    if not settings.nats_url or not settings.kafka_bootstrap:
        raise click.UsageError("bridge needs --nats-url and --kafka-bootstrap (or WO_* env)")
    raise SystemExit(serve_bridge(settings, ingress=ingress, egress=egress))


@cli.command("replay-dlq")
@nats_url_option
@click.option("--reason", default=None, help="Only dead letters with this reason code.")
@click.option("--subject", "subject_filter", default=None, help="Only this wo_dlq.> subject.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option(
    "--purge/--keep",
    default=False,
    show_default=True,
    help="Delete each dead letter once it was re-published.",
)
def replay_dlq(
    nats_url: str | None,
    reason: str | None,
    subject_filter: str | None,
    limit: int | None,
    purge: bool,
) -> None:
    """Re-inject dead letters (original bytes, original subject) after a fix.

    Replayed events go through ingress again; one that still fails is dead-lettered again.
    """
    import orjson

    from connectors.dead_letter import replay_dead_letters

    settings = _settings(nats_url=nats_url)
    if not settings.nats_url:
        raise click.UsageError("replay-dlq needs --nats-url or WO_NATS_URL")
    report = _nats_call(
        replay_dead_letters(
            settings, reason=reason, subject_filter=subject_filter, limit=limit, purge=purge
        ),
        settings.nats_url,
    )
    click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())


@cli.command("replay-worker-dlq")
@kafka_option
@click.option("--reason", default=None, help="Only dead letters with this wo-dlq-reason.")
@click.option("--source-topic", default=None, help="Only dead letters from this topic.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option(
    "--from-start", is_flag=True, help="Scan the whole topic, not only what came since the last."
)
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; change nothing.")
@click.option("--force", is_flag=True, help="Also replay partly applied letters older than 7 days.")
def replay_worker_dlq(
    kafka_bootstrap: str | None,
    reason: str | None,
    source_topic: str | None,
    limit: int | None,
    from_start: bool,
    dry_run: bool,
    force: bool,
) -> None:
    """Write the worker's dead letters (wo.dlq.worker) back to their source topics after a fix.

    Each goes to the topic and partition in its wo-dlq-source header, bytes unchanged. A run
    without filters moves the replay group past what it scanned; a filtered run commits
    nothing. Tables drop events they already applied by id (for 7 days: older letters that
    some tables applied are skipped as expired unless --force); a record that still fails is
    dead-lettered again. Details: connectors/worker_dlq.py.
    """
    import orjson
    from aiokafka.errors import KafkaConnectionError

    from connectors.worker_dlq import replay_worker_dead_letters

    settings = _settings(kafka_bootstrap=kafka_bootstrap)
    if not settings.kafka_bootstrap:
        raise click.UsageError("replay-worker-dlq needs --kafka-bootstrap or WO_KAFKA_BOOTSTRAP")
    try:
        report = asyncio.run(replay_worker_dead_letters(
            settings, reason=reason, source_topic=source_topic, limit=limit,
            from_start=from_start, dry_run=dry_run, force=force,
        ))  # fmt: skip
    except (OSError, KafkaConnectionError) as exc:
        where = settings.kafka_bootstrap
        raise click.ClickException(f"cannot reach Kafka at {where}: {exc}") from exc
    click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())


@cli.group()
def audit() -> None:
    """The hash-chained audit trail: the writer and its integrity check."""


@audit.command("writer")
@nats_url_option
@kafka_option
def audit_writer(nats_url: str | None, kafka_bootstrap: str | None) -> None:
    """Append every auditRequired event to its tenant's hash chain (SQLite, or WO_AUDIT_DSN).

    Never skips: offsets advance only after the database commit; while the database is away
    it pauses and retries; an entry it can never write is dead-lettered (P0 metric).
    """
    import logging

    from pipeline.audit_writer import serve_audit_writer

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _settings(nats_url=nats_url, kafka_bootstrap=kafka_bootstrap)
    if not settings.nats_url or not settings.kafka_bootstrap:
        raise click.UsageError("audit writer needs --nats-url and --kafka-bootstrap (or WO_*)")
    raise SystemExit(serve_audit_writer(settings))


@audit.command("verify")
@nats_url_option
@click.option("--tenant", default=None, help="Only this tenant's chain [default: every chain].")
def audit_verify(nats_url: str | None, tenant: str | None) -> None:
    """Recompute every link of the audit chains; exit 1 and print the broken links if any.

    Also checks contiguous sequences, non-decreasing recorded time, the genesis value and the
    signed checkpoints, and emits compliance.audit_trail_integrity_check when NATS is given.
    """
    from pipeline.audit_verify import audit_verify_command

    raise SystemExit(audit_verify_command(_settings(nats_url=nats_url), tenant))


@cli.group(invoke_without_command=True)
@nats_url_option
@kafka_option
@click.pass_context
def webhooks(ctx: click.Context, nats_url: str | None, kafka_bootstrap: str | None) -> None:
    """Deliver matching events to the tenants' webhook subscriptions (HMAC-signed POSTs).

    Subscriptions come from the file WO_WEBHOOK_SUBSCRIPTIONS; retries back off up to 48 h,
    then the delivery is dead-lettered. See docs/webhooks.md for the signature scheme.
    Without a subcommand: run the dispatcher.
    """
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from pipeline.webhooks import serve_webhooks

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _settings(nats_url=nats_url, kafka_bootstrap=kafka_bootstrap)
    if not settings.nats_url or not settings.kafka_bootstrap:
        raise click.UsageError("webhooks needs --nats-url and --kafka-bootstrap (or WO_*)")
    raise SystemExit(serve_webhooks(settings))


@webhooks.command("requeue")
@click.option("--subscription", default=None, help="Only this subscription id.")
@click.option("--event-id", "event_ids", multiple=True, help="Only these event ids (repeatable).")
@click.option("--reason", default=None, help="Only deliveries dead for this reason code.")
@click.option("--dry-run", is_flag=True, help="List what would be requeued; change nothing.")
def webhooks_requeue(
    subscription: str | None, event_ids: tuple[str, ...], reason: str | None, dry_run: bool
) -> None:
    """Send dead webhook deliveries again, after their endpoint was fixed.

    Works on the dispatcher's delivery store (WO_DATA_DIR) while the dispatcher runs; it picks
    them up within WO_WEBHOOK_RESCAN_SECONDS, with a fresh attempt count and 48 h budget.
    """
    import time

    import orjson

    from connectors.webhook_store import WebhookStore
    from pipeline.webhooks import store_path

    path = store_path(_settings())
    if not path.exists():
        raise click.ClickException(f"no webhook delivery store at {path}")
    store = WebhookStore(path)
    try:
        done = store.requeue(time.time(), subscription_id=subscription, event_ids=event_ids,
                             reason=reason, dry_run=dry_run)  # fmt: skip
    finally:
        store.close()
    click.echo(orjson.dumps(done.to_dict(), option=orjson.OPT_INDENT_2).decode())


@cli.command()
@nats_url_option
def provision(nats_url: str | None) -> None:
    """Create or update the JetStream streams (idempotent), then exit."""
    settings = _settings(nats_url=nats_url)
    if not settings.nats_url:
        raise click.UsageError("provision needs --nats-url or WO_NATS_URL")
    streams = _nats_call(_provision(settings.nats_url, settings), settings.nats_url)
    click.echo(f"streams ready on {_redact(settings.nats_url)}: {', '.join(streams)}")


# --------------------------------------------------------------------------------------------
# simulate


def _parse_start(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime:
    from pipeline.simulate.generator import DEFAULT_START

    if value is None:
        return DEFAULT_START
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 timestamp: {value}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@cli.command()
@click.option("--tenants", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Number of events; 0 = endless.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=100.0,
    show_default=True,
    help="Target events per second; 0 = as fast as possible.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--start",
    callback=_parse_start,
    default=None,
    metavar="ISO",
    help="Event time of the first event [default: 2026-03-02T08:00:00Z, fixed for replay].",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Mean simulated seconds between consecutive events (event-time speed).",
)
@nats_url_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the events as JSON lines to stdout instead of publishing (unpaced).",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option(
    "--report-every",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="Also print a status line this often (0 = never); for logs without a terminal.",
)
def simulate(
    tenants: int,
    events: int,
    rate: float,
    seed: int,
    start: datetime,
    speed: float,
    nats_url: str | None,
    dry_run: bool,
    progress: bool,
    report_every: float,
) -> None:
    """Publish seeded, reproducible work-order traffic to NATS JetStream.

    The same --seed (with the same other options) yields a byte-identical event stream, event
    ids included; republishing it adds nothing to the stream thanks to Nats-Msg-Id dedup.
    """
    from pipeline.simulate.generator import SimConfig, generate

    config = SimConfig(
        seed=seed, tenants=tenants, events=events or None, start=start, mean_gap_seconds=speed
    )
    if dry_run:
        from pipeline.simulate.publisher import write_json_lines

        try:
            write_json_lines(generate(config), sys.stdout.buffer)
        except BrokenPipeError:
            # `simulate --dry-run --events 0 | head`: the reader is done, so are we. Point
            # stdout at /dev/null so the interpreter's final flush does not complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    settings = _settings(nats_url=nats_url)
    if not settings.nats_url:
        raise click.UsageError("simulate needs --nats-url or WO_NATS_URL (or --dry-run)")
    stats = _nats_call(
        _publish_until_stopped(
            generate(config),
            settings,
            total=config.events,
            rate=rate,
            progress=progress,
            report_every=report_every,
        ),
        settings.nats_url,
    )
    click.echo(
        f"published {stats.published} events ({stats.duplicates} duplicates dropped by "
        f"JetStream) in {stats.seconds:.1f} s, {stats.rate:.0f} ev/s"
    )


async def _publish_until_stopped(events: Any, settings: Any, **kwargs: Any) -> Any:
    """Publish, turning SIGINT/SIGTERM into a clean stop that still awaits in-flight acks."""
    from pipeline.simulate.publisher import publish_events

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    return await publish_events(
        events,
        settings.nats_url,
        stop=stopping,
        max_payload_bytes=settings.max_payload_bytes,
        stream=settings.stream_name,
        report=click.echo,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# schemas


@cli.command()
@click.option("--check", "do_check", is_flag=True, help="Fail if committed schemas differ.")
@click.option("--write", "do_write", is_flag=True, help="Regenerate the committed schemas.")
@click.option(
    "--compat", "do_compat", is_flag=True, help="Check compatibility rules (catalog section 9)."
)
@click.option(
    "--dir",
    "schema_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Schema directory [default: events/schemas].",
)
def schemas(do_check: bool, do_write: bool, do_compat: bool, schema_dir: Path | None) -> None:
    """Check, regenerate or compatibility-check the event JSON Schemas (default: --check)."""
    from events import versioning

    if do_write and do_check:
        raise click.UsageError("--write and --check are mutually exclusive")
    if not (do_check or do_write or do_compat):
        do_check = True
    failed = False
    if do_write:
        written = versioning.write_schemas(schema_dir)
        click.echo(f"wrote {len(written)} schema files")
    if do_check:
        problems = versioning.check_schemas(schema_dir)
        for problem in problems:
            click.echo(f"schema differs: {problem}", err=True)
        if problems:
            _echo_schema_diffs(versioning, schema_dir)
        if problems:
            click.echo(
                f"{len(problems)} schema differences; run `wo-stream schemas --write` and "
                "review the diff",
                err=True,
            )
            failed = True
        else:
            click.echo("schemas match the models")
    if do_compat:
        violations = versioning.check_compatibility(schema_dir)
        for violation in violations:
            click.echo(f"incompatible: {violation}", err=True)
        if violations:
            failed = True
        else:
            click.echo("schema versions are compatible")
    if failed:
        raise SystemExit(1)


def _echo_schema_diffs(versioning: Any, schema_dir: Path | None, max_lines: int = 60) -> None:
    """Unified diffs, committed -> models, of the schema files whose text differs."""
    import difflib

    root = Path(schema_dir) if schema_dir is not None else versioning.SCHEMAS_DIR
    for relative, text in versioning.generate_schemas().items():
        path = root / relative
        if not path.is_file():
            continue
        committed = path.read_text(encoding="utf-8")
        if committed == text:
            continue
        diff = list(
            difflib.unified_diff(
                committed.splitlines(),
                text.splitlines(),
                f"committed/{relative}",
                f"models/{relative}",
                lineterm="",
            )
        )
        for line in diff[:max_lines]:
            click.echo(line, err=True)
        if len(diff) > max_lines:
            click.echo(f"... {len(diff) - max_lines} more diff lines", err=True)


def main() -> None:
    """Console-script entry point (`wo-stream`, `python pipeline.py`)."""
    cli(prog_name="wo-stream")


if __name__ == "__main__":
    main()
