"""Run ``python pipeline.py worker`` as a subprocess and observe it and its topics from outside."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.tansu_transport import TansuAIOKafkaConsumer
from events.envelope import DomainEvent
from pipeline.timers import tick_records
from pipeline.topics import CONTROL_CLOCK, DOMAIN, changelog_topic, forwards_topic
from tests.apps.worker_scenario import topic_record
from tests.test_worker_restart import free_port, read_changelog

REPO_ROOT = Path(__file__).resolve().parents[2]
DERIVED = "wo.derived"
DUMP_START, DUMP_END = "=== wo diagnostics: threads ===", "=== wo diagnostics: end ==="


@dataclass
class PipelineWorker:
    """One ``python pipeline.py worker`` process (control clock); a log file per run."""

    bootstrap: str
    app_id: str
    data_dir: Path
    log_dir: Path
    partitions: int
    name: str = "worker"
    runs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.runs[-1][0]

    def start(self) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        log_path = self.log_dir / f"{self.name}-{len(self.runs) + 1}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                self.argv(),
                cwd=REPO_ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.runs.append((proc, log_path))

    def argv(self) -> list[str]:
        return [sys.executable, "pipeline.py", "worker", "--loglevel", "info"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WO_")}
        env.update(
            WO_KAFKA_BOOTSTRAP=self.bootstrap,
            WO_KAFKA_TRANSPORT="tansu",
            WO_DATA_DIR=str(self.data_dir),
            WO_APP_ID=self.app_id,
            WO_WEB_PORT=str(self.port),
            WO_WORKER_METRICS_PORT=str(self.metrics_port),
            WO_PARTITIONS=str(self.partitions),
            WO_CLOCK="control",
            PYTHONUNBUFFERED="1",
        )
        return env

    def log_text(self) -> str:
        return self.runs[-1][1].read_text(errors="replace")

    def describe(self, *, stuck: bool = False) -> str:
        """The log's tail; ``stuck``: first ask a live worker for its task dump (SIGUSR2,
        :mod:`pipeline.diagnostics`) and append it, for a worker that stopped progressing."""
        dump = self.task_dump() if stuck else ""
        tail = "\n".join(self.log_text().split(DUMP_START)[0].splitlines()[-40:])
        return f"{self.name} run {len(self.runs)} (rc {self.proc.poll()}):\n{tail}{dump}"

    def task_dump(self, wait: float = 10.0) -> str:
        if self.proc.poll() is not None:
            return ""
        self.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + wait
        while DUMP_END not in self.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # a dump is written synchronously in one go; no event to wait on
        text = self.log_text()
        if DUMP_START not in text:
            return "\n(no task dump)"
        return "\n" + DUMP_START + text.split(DUMP_START, 1)[1].split(DUMP_END, 1)[0] + DUMP_END

    def check_healthy(self) -> None:
        assert self.proc.poll() is None, f"worker died: {self.describe()}"

    async def get(self, path: str, *, port: int | None = None) -> Any:
        """GET ``path`` from the web port (or ``port``): its JSON or text; None unless 200."""
        url = f"http://127.0.0.1:{port or self.port}{path}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(url) as response,
            ):
                if response.status != 200:
                    return None
                if "json" in response.content_type:
                    return await response.json()
                return await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def metrics(self) -> str | None:
        """The Prometheus text of the worker's metrics port (not the web port)."""
        return await self.get("/metrics", port=self.metrics_port)

    async def status(self) -> dict[str, Any] | None:
        return await self.get("/wo/status/")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(f"worker ignored SIGTERM: {self.describe()}") from None

    def cleanup(self) -> None:
        for proc, _ in self.runs:
            if proc.poll() is None:
                proc.kill()
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)


class Broker:
    """Writes the scenario like the bridge would and reads the worker's progress from Kafka."""

    def __init__(self, bootstrap: str, app_id: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.partitions = partitions
        self.sources = [*DOMAIN, DERIVED, forwards_topic(app_id), CONTROL_CLOCK]

    async def __aenter__(self) -> Broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:  # the bridge creates its topics; the worker's own ones are created here early too
            await admin.create_topics([NewTopic(t, self.partitions, 1) for t in self.sources])
        finally:
            await admin.close()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                         linger_ms=5)  # fmt: skip
        await self.producer.start()
        self.consumer = TansuAIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await self.consumer.start()
        for topic in self.sources:
            self.consumer._client.add_topic(topic)
        await self.consumer._client.force_metadata_update()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.consumer.stop()

    async def produce(self, events: list[DomainEvent]) -> None:
        futures = []
        for event in events:
            topic, key, value, ts, headers = topic_record(event)
            futures.append(
                await self.producer.send(topic, value, key=key, timestamp_ms=ts, headers=headers)
            )
        await asyncio.gather(*futures)

    async def tick(self, now: datetime) -> None:
        futures = [
            await self.producer.send(CONTROL_CLOCK, value, partition=p)
            for p, value in tick_records(now, self.partitions)
        ]
        await asyncio.gather(*futures)

    async def ends(self) -> dict[tuple[str, int], int]:
        tps = [TopicPartition(t, p) for t in self.sources for p in range(self.partitions)]
        ends = await self.consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def wait_idle(self, *workers: PipelineWorker, limit: float = 120.0) -> float:
        """Until every record of every source topic was processed and nothing is in flight,
        twice in a row (a step's output lands before its offset counts as processed)."""
        started = time.monotonic()
        calm = 0
        while calm < 2:
            assert time.monotonic() - started < limit, "\n".join(
                w.describe(stuck=True) for w in workers
            )
            for w in workers:
                w.check_healthy()
            statuses = [await w.status() for w in workers]
            ends = await self.ends()
            done = all(s is not None and s["inflight"] == 0 for s in statuses)
            if done:
                for (topic, p), end in ends.items():
                    seen = max(
                        (s or {}).get("positions", {}).get(topic, {}).get(str(p), 0)
                        for s in statuses
                    )
                    if end > 0 and seen < end:
                        done = False
                        break
            calm = calm + 1 if done else 0
            await asyncio.sleep(0.15)
        return time.monotonic() - started

    async def read_derived(self) -> list[tuple[bytes, bytes, dict[str, bytes], int, int]]:
        """Every record of wo.derived: (key, value, headers, timestamp ms, partition)."""
        return await read_topic(self.bootstrap, DERIVED)

    async def read_tables(self, names: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in names:
            out[name], _ = await read_changelog(self.bootstrap, changelog_topic(self.app_id, name))
        return out


async def read_topic(
    bootstrap: str, topic: str
) -> list[tuple[bytes, bytes, dict[str, bytes], int, int]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer._client.add_topic(topic)
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out = []
        pending = set(tps)
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, f"{topic} not read to its end"
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    out.append((r.key, r.value, dict(r.headers), r.timestamp, tp.partition))
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()
