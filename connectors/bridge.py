"""The bridge process: ingress and egress side by side, /metrics and /healthz, clean shutdown.

``python -m connectors.bridge --nats-url URL --kafka-bootstrap HOST:PORT`` runs it (options
override WO_* settings); ``run_bridge(settings, stop=event)`` is the same for the CLI. SIGTERM
or SIGINT stops it: the batch being written finishes (or, while retrying, is abandoned unacked
and redelivered on restart), then the producer, consumer and NATS connection close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.bridge_metrics import BridgeMetrics, default_metrics
from connectors.dead_letter import RetryPolicy, Sleep, Stopping, pause
from connectors.egress import Egress
from connectors.ingress import Ingress, KafkaWriter
from connectors.jetstream import connect_nats, ensure_streams
from connectors.kafka_topics import bridge_topics, ensure_topics
from pipeline.settings import Settings, redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")
_START_BACKOFF = RetryPolicy(attempts=1_000_000, base_seconds=0.5, max_seconds=10.0)
_STOP_TIMEOUT = 30.0


class Bridge:
    """Both directions over one NATS connection; ``health()`` tells how they are doing."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: BridgeMetrics | None = None,
        ingress: bool = True,
        egress: bool = True,
        stop: asyncio.Event | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not settings.nats_url or not settings.kafka_bootstrap:
            raise ValueError("the bridge needs a NATS URL and a Kafka bootstrap address")
        self.settings = settings
        self.metrics = metrics if metrics is not None else default_metrics()
        self.stop_event = stop if stop is not None else asyncio.Event()
        self._enable_ingress = ingress
        self._enable_egress = egress
        self._sleep = sleep
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.writer: KafkaWriter | None = None
        self.ingress: Ingress | None = None
        self.egress: Egress | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: asyncio.Server | None = None
        self.started = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, provision streams and topics (waiting for the servers), start both loops."""
        s = self.settings
        assert s.nats_url and s.kafka_bootstrap
        if s.bridge_metrics_port:
            self._http = await asyncio.start_server(
                self._serve_http, s.bridge_metrics_host, s.bridge_metrics_port
            )
        # connect_nats waits for a server that is not up yet; a stop must still end that wait.
        self._nc, self._js = await self._unless_stopped(
            connect_nats(s.nats_url, name="wo-stream-bridge")
        )
        await ensure_streams(self._js, s)
        if self._enable_ingress:
            self.writer = KafkaWriter(s)
        await self._start_kafka()
        if self._enable_ingress:
            assert self.writer is not None
            self.ingress = Ingress(
                nc=self._nc, js=self._js, writer=self.writer, settings=s,
                metrics=self.metrics, stop=self.stop_event, sleep=self._sleep,
            )  # fmt: skip
            self._tasks.append(asyncio.create_task(self.ingress.run(), name="bridge-ingress"))
        if self._enable_egress:
            self.egress = Egress(
                js=self._js, settings=s, metrics=self.metrics, stop=self.stop_event,
                sleep=self._sleep,
            )  # fmt: skip
            self._tasks.append(asyncio.create_task(self.egress.run(), name="bridge-egress"))
        self.started = True
        log.info(
            "bridge running: NATS %s, Kafka %s, ingress=%s egress=%s idempotent=%s",
            redact_url(s.nats_url), s.kafka_bootstrap, self._enable_ingress, self._enable_egress,
            bool(self.writer and self.writer.idempotent),
        )  # fmt: skip

    async def _unless_stopped(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro``; cancel it and raise Stopping if the stop event comes first."""
        task = asyncio.ensure_future(coro)
        stop_wait = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise Stopping
        return task.result()

    async def _start_kafka(self) -> None:
        """Topics, then the producer; while the broker is away, wait for it (or a stop)."""
        s = self.settings
        assert s.kafka_bootstrap
        failures = 0
        while True:
            try:
                await self._unless_stopped(
                    ensure_topics(
                        s.kafka_bootstrap, bridge_topics(s), partitions=s.partitions,
                        request_timeout_ms=s.kafka_request_timeout_ms,
                    )
                )  # fmt: skip
                if self.writer is not None:
                    await self._unless_stopped(self.writer.start())
                return
            except Stopping:
                raise
            except Exception as exc:
                failures += 1
                log.warning("Kafka not ready (%s: %s); retrying", type(exc).__name__, exc)
                await pause(_START_BACKOFF.delay(failures), self.stop_event, self._sleep)

    async def wait(self) -> None:
        """Until both loops ended (after ``stop_event`` is set)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self, grace: float = _STOP_TIMEOUT) -> None:
        """Stop both loops, then close producer, NATS connection and HTTP server."""
        self.stop_event.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await self.writer.stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None
        if self._http is not None:
            self._http.close()
            with contextlib.suppress(Exception):
                await self._http.wait_closed()
            self._http = None

    async def __aenter__(self) -> Bridge:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- health --------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        parts = [p.healthy for p in (self.ingress, self.egress) if p is not None]
        tasks_alive = all(not t.done() for t in self._tasks) or self.stop_event.is_set()
        return self.started and tasks_alive and all(parts)

    def health(self) -> dict[str, Any]:
        """State for /healthz and tests: flags and counters, no payloads."""
        out: dict[str, Any] = {
            "healthy": self.healthy,
            "started": self.started,
            "stopping": self.stop_event.is_set(),
            "idempotent_producer": bool(self.writer and self.writer.idempotent),
        }
        for name, part in (("ingress", self.ingress), ("egress", self.egress)):
            if part is not None:
                out[name] = {"healthy": part.healthy, **dataclasses.asdict(part.stats)}
        return out

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Just enough HTTP/1.1 for a Prometheus scrape and a liveness probe."""
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (line := await asyncio.wait_for(reader.readline(), 5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                del line  # headers are not needed
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = (
                    "200 OK",
                    CONTENT_TYPE_LATEST,
                    generate_latest(self.metrics.registry),
                )
            elif path == "/healthz":
                healthy = self.healthy
                status = "200 OK" if healthy else "503 Service Unavailable"
                ctype, body = "application/json", orjson.dumps(self.health())
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()


def tune_gc() -> None:
    """Cheaper garbage collection for a process that is mostly the bridge.

    Every message allocates a few dozen short-lived objects; with the default thresholds the
    collector runs (and walks the long-lived heap) often enough to cost about a fifth of the
    throughput. Startup objects are frozen out of collections, young ones collected in larger
    rounds. Memory stays bounded: nothing here keeps garbage alive, it is found later.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_bridge(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    metrics: BridgeMetrics | None = None,
    ingress: bool = True,
    egress: bool = True,
    gc_tuning: bool = True,
) -> None:
    """Run the bridge until ``stop`` is set (or forever); for ``python pipeline.py bridge``.

    ``gc_tuning`` applies ``tune_gc()`` (process-wide) once the bridge has started.
    """
    bridge = Bridge(settings, metrics=metrics, ingress=ingress, egress=egress, stop=stop)
    try:
        await bridge.start()
        if gc_tuning:
            tune_gc()
        await bridge.wait()
    except Stopping:
        pass
    finally:
        await bridge.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.bridge", description="wo-stream NATS <-> Kafka bridge"
    )
    parser.add_argument("--nats-url", help="NATS server URL [env WO_NATS_URL]")
    parser.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers [WO_KAFKA_BOOTSTRAP]")
    parser.add_argument("--metrics-port", type=int, help="0 = off [WO_BRIDGE_METRICS_PORT]")
    parser.add_argument("--no-ingress", action="store_true", help="do not run NATS -> Kafka")
    parser.add_argument("--no-egress", action="store_true", help="do not run Kafka -> NATS")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def serve_bridge(settings: Settings, *, ingress: bool = True, egress: bool = True) -> int:
    """Blocking entry for a CLI command: run until SIGTERM/SIGINT, return the exit code."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_bridge(settings, stop=stop, ingress=ingress, egress=egress)

    asyncio.run(runner())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m connectors.bridge``."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {
        "nats_url": args.nats_url,
        "kafka_bootstrap": args.kafka_bootstrap,
        "bridge_metrics_port": args.metrics_port,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if not settings.nats_url or not settings.kafka_bootstrap:
        print("bridge needs --nats-url and --kafka-bootstrap (or WO_* env)", file=sys.stderr)
        return 2
    return serve_bridge(settings, ingress=not args.no_ingress, egress=not args.no_egress)


if __name__ == "__main__":
    raise SystemExit(main())
