"""End-to-end helpers: ``python pipeline.py bridge`` as a subprocess, NATS reads, quiescence.

The worker subprocess and the Kafka-side observer are :mod:`tests.apps.worker_harness`'s
:class:`PipelineWorker` and :class:`Broker`; this module adds the bridge in front of them and
waits until the whole loop (NATS -> ingress -> domain topics -> worker -> ``wo.derived`` ->
egress -> NATS -> ingress -> domain topics -> worker) has nothing left to do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.apps.worker_harness import DERIVED, REPO_ROOT, Broker, PipelineWorker
from tests.test_worker_restart import free_port


@dataclass
class BridgeProcess:
    """One ``python pipeline.py bridge`` process (both directions); one log file per run."""

    nats_url: str
    bootstrap: str
    data_dir: Path
    log_dir: Path
    partitions: int
    ingress_durable: str
    egress_group: str
    app_id: str
    name: str = "bridge"
    runs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    port: int = 0

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.runs[-1][0]

    def start(self) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WO_")}
        env.update(
            WO_NATS_URL=self.nats_url,
            WO_KAFKA_BOOTSTRAP=self.bootstrap,
            WO_DATA_DIR=str(self.data_dir),
            WO_PARTITIONS=str(self.partitions),
            WO_APP_ID=self.app_id,
            WO_INGRESS_DURABLE=self.ingress_durable,
            WO_EGRESS_GROUP=self.egress_group,
            # the group's first join on Tansu takes half the session timeout
            WO_EGRESS_SESSION_TIMEOUT_MS="6000",
            WO_BRIDGE_METRICS_PORT=str(self.port),
            WO_KAFKA_RETRY_BASE_SECONDS="0.2",
            WO_KAFKA_RETRY_MAX_SECONDS="1.0",
            PYTHONUNBUFFERED="1",
        )
        log_path = self.log_dir / f"{self.name}-{len(self.runs) + 1}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "pipeline.py", "bridge"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.runs.append((proc, log_path))

    def log_text(self) -> str:
        return self.runs[-1][1].read_text(errors="replace")

    def describe(self) -> str:
        tail = "\n".join(self.log_text().splitlines()[-40:])
        return f"{self.name} run {len(self.runs)} (rc {self.proc.poll()}):\n{tail}"

    def check_healthy(self) -> None:
        assert self.proc.poll() is None, f"bridge died: {self.describe()}"

    async def health(self) -> dict[str, Any] | None:
        """``/healthz`` (its JSON body also comes with a 503), None while it is not up."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(url) as response,
            ):
                return orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return None

    def stop(self) -> int:
        """SIGTERM, then the exit code; a bridge that ignores it fails the test."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(f"bridge ignored SIGTERM: {self.describe()}") from None

    def cleanup(self) -> None:
        for proc, _ in self.runs:
            if proc.poll() is None:
                proc.kill()
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)


@dataclass(frozen=True)
class Stored:
    """One message of a JetStream stream as the tests see it."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


async def read_stream(js: JetStreamContext, stream: str, subject_filter: str) -> list[Stored]:
    """Every message of ``stream`` under ``subject_filter``, in stream order (an ephemeral
    pull consumer without acks: nothing of the stream's state changes)."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=subject_filter,
        inactive_threshold=10.0,
    )
    sub = await js.pull_subscribe(subject_filter, stream=stream, config=config)
    out: list[Stored] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2.0)
            except TimeoutError:
                break
            out += [
                Stored(m.subject, m.metadata.sequence.stream, m.data, dict(m.headers or {}))
                for m in msgs
            ]
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


@dataclass
class Loop:
    """The running pipeline (bridge + worker) with the means to tell when it is quiet."""

    js: JetStreamContext
    stream: str
    broker: Broker
    bridge: BridgeProcess
    worker: PipelineWorker

    def describe(self) -> str:
        return f"{self.bridge.describe()}\n\n{self.worker.describe()}"

    async def wait_ready(self, limit: float = 90.0) -> float:
        """Until the worker owns every partition and the egress consumer has its assignment."""
        started = time.monotonic()
        while True:
            self.bridge.check_healthy()
            self.worker.check_healthy()
            status = await self.worker.status()
            health = await self.bridge.health()
            worker_ready = bool(status) and sorted(status["assigned"]) == list(
                range(self.broker.partitions)
            )
            bridge_ready = bool(health) and health["started"] and health["egress"]["assigned"]
            if worker_ready and bridge_ready:
                return time.monotonic() - started
            assert time.monotonic() - started < limit, (
                f"not ready: worker {status}, bridge {health}\n{self.describe()}"
            )
            await asyncio.sleep(0.2)

    async def _quiet(self) -> tuple[bool, Any]:
        """One observation: (nothing left to do, snapshot of the positions it was judged by).

        Progress is read before the ends it is compared with, so "caught up" means caught up
        with everything that existed when the ends were read: ingress acked the stream's last
        sequence (its Kafka writes were acknowledged first), egress handled every record of
        ``wo.derived`` (each after its PubAck), and the worker processed every record of its
        source topics with no send in flight (its outputs were acknowledged first).
        """
        self.bridge.check_healthy()
        self.worker.check_healthy()
        status = await self.worker.status()
        health = await self.bridge.health()
        last_seq = (await self.js.stream_info(self.stream)).state.last_seq
        ends = await self.broker.ends()
        snapshot = (last_seq, tuple(sorted(ends.items())))
        if status is None or health is None or status["inflight"] != 0:
            return False, snapshot
        if health["ingress"]["acked_stream_seq"] < last_seq:
            return False, snapshot
        egress = health["egress"]
        handled = egress["published"] + egress["duplicates"] + egress["dead_lettered"]
        if handled < sum(end for (topic, _), end in ends.items() if topic == DERIVED):
            return False, snapshot
        positions = status["positions"]
        for (topic, p), end in ends.items():
            if end > 0 and positions.get(topic, {}).get(str(p), 0) < end:
                return False, snapshot
        return True, snapshot

    async def settle(self, limit: float = 120.0) -> float:
        """Until two observations in a row find everything done and nothing moved between."""
        started = time.monotonic()
        calm, previous = 0, None
        while calm < 2:
            assert time.monotonic() - started < limit, f"never settled\n{self.describe()}"
            quiet, snapshot = await self._quiet()
            calm = (calm + 1 if snapshot == previous else 1) if quiet else 0
            previous = snapshot
            if calm < 2:
                await asyncio.sleep(0.1)
        return time.monotonic() - started
