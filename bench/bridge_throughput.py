"""Bridge throughput next to raw nats-py pull+ack and raw aiokafka produce, on the same servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from rich.console import Console

from connectors.bridge import Bridge, tune_gc
from connectors.bridge_metrics import BridgeMetrics
from connectors.dead_letter import publish_pipelined
from connectors.embedded import EmbeddedStack, tansu_bin
from connectors.ingress import H_STREAM_SEQ, ingress_consumer_config
from connectors.jetstream import (
    connect_nats,
    durable_pull_consumer_config,
    ensure_stream,
    ensure_streams,
)
from connectors.kafka_topics import bridge_topics, ensure_topics
from events.envelope import DomainEvent
from events.factory import make_event
from pipeline.settings import Settings
from pipeline.simulate.generator import SimConfig, generate

TARGET = 0.70
RAW_STREAM = "BENCH_RAW"
RAW_SUBJECTS = "bench.raw.>"
RAW_TOPIC = "bench.raw"
BASE_TIME = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
STATUSES = ("DRAFT", "PLANNED", "SCHEDULED", "IN_PROGRESS", "PENDING_REVIEW", "APPROVED")
POLL_SECONDS = 0.002
# Other processes' CPU in a timed window above this (in cores) marks the figures as skewed.
BUSY_CORES = 0.20

NATS_ROW = "raw_nats_pull_ack"
KAFKA_ROW = "raw_kafka_produce"
BRIDGE_ROW = "bridge"
SIM_ROW = "bridge_sim"
PUBLISH_ROW = "nats_publish_async"

err = Console(stderr=True, highlight=False)


class BenchError(RuntimeError):
    """A path did not finish, or its output does not add up."""


@dataclass
class Repeat:
    """One repeat's figures by row name: msg/s, other processes' CPU, the bridge's startup."""

    rates: dict[str, float] = field(default_factory=dict)
    foreign: dict[str, float | None] = field(default_factory=dict)
    # CPU microseconds per message: this process (the client side) and the servers.
    client_us: dict[str, float] = field(default_factory=dict)
    server_us: dict[str, float] = field(default_factory=dict)

    def note(self, row: str, rate: float, window: Window, count: int) -> None:
        self.rates[row] = rate
        self.foreign[row] = window.foreign
        if window.client is not None and window.servers is not None:
            self.client_us[row] = window.client / count * 1e6
            self.server_us[row] = window.servers / count * 1e6

    startup: dict[str, float] = field(default_factory=dict)
    steady: dict[str, float] = field(default_factory=dict)


@dataclass
class Window:
    """CPU during a timed window (None where /proc is unreadable).

    ``foreign``: other processes, in cores; ``client`` / ``servers``: CPU seconds of this
    process and of the embedded servers.
    """

    foreign: float | None = None
    client: float | None = None
    servers: float | None = None


class CpuMeter:
    """Busy CPU of the whole host minus this process and its servers, from Linux /proc."""

    def __init__(self, server_pids: Iterable[int]) -> None:
        self.server_pids = list(server_pids)
        self.tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def _cpu(self, pid: int) -> int:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (all threads)

    def _sample(self) -> tuple[float, float, float, float] | None:
        """(monotonic s, host busy CPU s, this process's CPU s, the servers' CPU s)."""
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
            # already counted in user/nice.
            busy = sum(v[:8]) - v[3] - v[4]
            client = self._cpu(os.getpid())
            servers = sum(self._cpu(pid) for pid in self.server_pids)
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy / self.tick, client / self.tick, servers / self.tick

    @contextmanager
    def window(self) -> Iterator[Window]:
        result = Window()
        start = self._sample()
        yield result
        end = self._sample()
        if start and end and end[0] - start[0] > 0.05:
            busy, client, servers = (end[i] - start[i] for i in (1, 2, 3))
            result.foreign = max(0.0, (busy - client - servers) / (end[0] - start[0]))
            result.client, result.servers = client, servers


# ---------------------------------------------------------------------------------------------
# payloads


def raw_values(count: int, size: int) -> list[bytes]:
    """``count`` distinct values of exactly ``size`` bytes."""
    return [(b"%010d" % i).ljust(size, b"x")[:size] for i in range(count)]


def status_events(tenant: str, count: int, keys: int) -> list[DomainEvent]:
    """Minimal valid work_order.status_changed events over ``keys`` work orders."""
    work_orders = [str(uuid.uuid4()) for _ in range(keys)]
    versions = [0] * keys
    out = []
    for i in range(count):
        k = i % keys
        versions[k] += 1
        v = versions[k]
        data = {
            "workOrderId": work_orders[k],
            "previousStatus": STATUSES[(v - 1) % len(STATUSES)],
            "newStatus": STATUSES[v % len(STATUSES)],
            "reason": None,
            "guardsEvaluated": [],
            "guardsFailed": [],
            "version": v,
        }
        at = BASE_TIME + timedelta(seconds=i)  # whole seconds: no fraction in the value
        out.append(make_event("work_order.status_changed", data, tenant_id=tenant, timestamp=at))
    return out


def as_messages(events: Sequence[DomainEvent]) -> list[tuple[str, bytes, dict[str, str]]]:
    return [(e.subject, e.canonical_bytes(), {"Nats-Msg-Id": e.id}) for e in events]


def mean_size(messages: Sequence[tuple[str, bytes, dict[str, str]]]) -> float:
    return sum(len(m[1]) for m in messages) / max(len(messages), 1)


# ---------------------------------------------------------------------------------------------
# (a) raw nats-py: JetStream pull consumer, one ack per message


async def raw_nats_pull_ack(
    nc: NATS, js: JetStreamContext, values: list[bytes], tag: str, batch: int, meter: CpuMeter
) -> tuple[float, float, Window]:
    """Publish ``values`` (publish_async, pipelined), then pull and ack each one.

    Returns (publish msg/s, pull + ack msg/s, the pull window's other CPU).
    """
    subject = f"bench.raw.{tag}"
    messages = [(subject, v, {}) for v in values]
    started = time.perf_counter()
    results = await publish_pipelined(js, messages, stream=RAW_STREAM, timeout=30)
    publish_seconds = time.perf_counter() - started
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise BenchError(f"raw publish: {len(failed)} failures, first {failed[0]!r}")
    last_seq = max(r.seq for r in results if not isinstance(r, BaseException))

    durable = f"bench-raw-{tag}"
    # The same in-flight window as the bridge's consumer, so a fetch never waits on it.
    config = durable_pull_consumer_config(durable, subject, max_ack_pending=max(4 * batch, 1000))
    sub = await js.pull_subscribe(subject, durable=durable, stream=RAW_STREAM, config=config)
    received = 0
    try:
        with meter.window() as window:
            started = time.perf_counter()
            while received < len(values):
                try:
                    msgs = await sub.fetch(batch, timeout=5)
                except TimeoutError as exc:
                    raise BenchError(f"raw pull: stalled at {received}/{len(values)}") from exc
                for msg in msgs:
                    await msg.ack()
                received += len(msgs)
            await nc.flush()  # every ack is at the server
            pull_seconds = time.perf_counter() - started
        info = await js.consumer_info(RAW_STREAM, durable)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if floor < last_seq and not await _acked(js, RAW_STREAM, durable, last_seq):
            raise BenchError(f"raw pull: ack floor {floor} < last sequence {last_seq}")
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(RAW_STREAM, durable)
    return len(values) / publish_seconds, len(values) / pull_seconds, window


async def _acked(js: JetStreamContext, stream: str, durable: str, last_seq: int) -> bool:
    """Whether the consumer's ack floor reaches ``last_seq`` within a few seconds (untimed)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info = await js.consumer_info(stream, durable)
        if info.ack_floor and info.ack_floor.stream_seq >= last_seq:
            return True
        await asyncio.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------
# (b) raw aiokafka: pipelined produce, acks=all


async def raw_kafka_produce(
    bootstrap: str, values: list[bytes], keys: int, meter: CpuMeter
) -> tuple[float, Window]:
    """Send every value without waiting, then wait for all broker acks; (msg/s, other CPU)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.partitions_for(RAW_TOPIC)  # metadata outside the timed window
        key_bytes = [f"bench:{k}".encode() for k in range(keys)]
        with meter.window() as window:
            started = time.perf_counter()
            futures = [
                await producer.send(RAW_TOPIC, value, key=key_bytes[i % keys])
                for i, value in enumerate(values)
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
            seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise BenchError(f"raw produce: {len(failed)} failures, first {failed[0]!r}")
    return len(values) / seconds, window


# ---------------------------------------------------------------------------------------------
# (c) the bridge


class KafkaTally:
    """Counts the bridge's records by their wo-stream-seq header, each record read once."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.positions: dict[TopicPartition, int] = {}

    async def count(self, first: int, last: int, *, within: float = 60.0) -> tuple[int, int]:
        """(distinct stream sequences in [first, last], records carrying them)."""
        want = last - first + 1
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest",
        )  # fmt: skip
        await consumer.start()
        seen: set[int] = set()
        copies = 0
        try:
            await consumer.topics()
            tps = [
                TopicPartition(t, p)
                for t in self.topics
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            consumer.assign(tps)
            for tp in tps:
                if tp in self.positions:
                    consumer.seek(tp, self.positions[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + within
            while len(seen) < want and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
                for records in batches.values():
                    for r in records:
                        raw = dict(r.headers or ()).get(H_STREAM_SEQ)
                        seq = int(raw) if raw else 0
                        if first <= seq <= last:
                            seen.add(seq)
                            copies += 1
            for tp in tps:
                self.positions[tp] = await consumer.position(tp)
        finally:
            await consumer.stop()
        return len(seen), copies


async def bridge_run(
    base: Settings,
    js: JetStreamContext,
    messages: list[tuple[str, bytes, dict[str, str]]],
    *,
    tag: str,
    filter_subject: str,
    tally: KafkaTally,
    meter: CpuMeter,
) -> tuple[float, float, float, Window]:
    """Pre-publish, start a bridge, time until all are in Kafka and acked.

    Returns (msg/s from bridge start, startup seconds, msg/s after startup, other CPU).
    """
    results = await publish_pipelined(js, messages, stream=base.stream_name, timeout=30)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise BenchError(f"bridge pre-publish: {len(failed)} failures, first {failed[0]!r}")
    seqs = [r.seq for r in results if not isinstance(r, BaseException)]
    if any(getattr(r, "duplicate", False) for r in results):
        raise BenchError("bridge pre-publish: duplicates (event ids reused)")
    first, last = min(seqs), max(seqs)

    settings = base.model_copy(
        update={"ingress_durable": f"bench-bridge-{tag}", "ingress_filter_subject": filter_subject}
    )
    # The durable starts at this batch (prepare_consumer keeps a consumer in shape).
    await js.add_consumer(settings.stream_name, ingress_consumer_config(settings, first))
    bridge = Bridge(settings, metrics=BridgeMetrics(), egress=False)
    count = len(messages)
    try:
        with meter.window() as window:
            started = time.perf_counter()
            await bridge.start()
            running = time.perf_counter()
            ingress = bridge.ingress
            assert ingress is not None
            deadline = time.monotonic() + max(60.0, count / 500)
            while ingress.stats.acked_stream_seq < last:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"bridge: acked up to {ingress.stats.acked_stream_seq}, want {last}; "
                        f"health {bridge.health()}"
                    )
                await asyncio.sleep(POLL_SECONDS)
            done = time.perf_counter()
        stats = ingress.stats
    finally:
        await bridge.stop()
    acked = await _acked(js, settings.stream_name, settings.ingress_durable, last)
    with contextlib.suppress(Exception):
        await js.delete_consumer(settings.stream_name, settings.ingress_durable)
    if not acked:
        raise BenchError("bridge: the consumer's ack floor did not reach the last message")
    if stats.dead_lettered or stats.mirrored != count:
        raise BenchError(f"bridge: mirrored {stats.mirrored}, dead-lettered {stats.dead_lettered}")
    distinct, copies = await tally.count(first, last)
    if distinct != count:
        raise BenchError(f"bridge: {distinct}/{count} events found in Kafka")
    if copies != distinct:
        err.print(f"  note: {copies - distinct} duplicate records in Kafka (retries)")
    return count / (done - started), running - started, count / (done - running), window


# ---------------------------------------------------------------------------------------------
# report


def versions(server_version: str, stack: EmbeddedStack) -> str:
    def pkg(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    tansu = "external broker"
    if stack.manages_kafka:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [tansu_bin(), "--version"], capture_output=True, text=True, timeout=10
            )
            tansu = out.stdout.strip() or "tansu ?"
    nats_kind = "embedded" if stack.manages_nats else "external"
    return (
        f"Python {platform.python_version()}, nats-py {pkg('nats-py')}, "
        f"aiokafka {pkg('aiokafka')}, orjson {pkg('orjson')}, "
        f"nats-server {server_version} ({nats_kind}), {tansu}"
    )


def server_version(nc: NATS) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def table(
    rows: list[str], repeats: list[Repeat], medians: dict[str, float], best: dict[str, float]
) -> list[str]:
    head = f"{'msg/s':<22}" + "".join(f"{f'run {i + 1}':>10}" for i in range(len(repeats)))
    lines = [head + f"{'median':>10}{'best':>10}"]
    for row in rows:
        cells = "".join(f"{fmt_rate(r.rates.get(row)):>10}" for r in repeats)
        lines.append(f"{row:<22}{cells}{fmt_rate(medians[row]):>10}{fmt_rate(best[row]):>10}")
    return lines


def slower_raw(rates: dict[str, float]) -> tuple[str, float]:
    return min(((NATS_ROW, rates[NATS_ROW]), (KAFKA_ROW, rates[KAFKA_ROW])), key=lambda x: x[1])


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# main


async def one_repeat(
    args: argparse.Namespace,
    base: Settings,
    nc: NATS,
    js: JetStreamContext,
    values: list[bytes],
    *,
    tag: str,
    tenant: str,
    tally: KafkaTally,
    meter: CpuMeter,
    sizes: list[float],
    sim_seed: int | None,
    sim_sizes: list[float],
) -> Repeat:
    """(a), (b), (c) once each, in that order, on the same servers."""
    rep = Repeat()
    n = len(values)
    pub, pull, window = await raw_nats_pull_ack(nc, js, values, tag, base.ingress_batch_size, meter)
    rep.rates[PUBLISH_ROW] = pub
    rep.note(NATS_ROW, pull, window, n)
    rate, window = await raw_kafka_produce(base.kafka_bootstrap, values, args.keys, meter)
    rep.note(KAFKA_ROW, rate, window, n)

    messages = as_messages(status_events(tenant, len(values), args.keys))
    sizes.append(mean_size(messages))
    rate, startup, steady, window = await bridge_run(
        base, js, messages, tag=tag, filter_subject=f"wo.{tenant}.>", tally=tally, meter=meter
    )
    rep.note(BRIDGE_ROW, rate, window, n)
    rep.startup[BRIDGE_ROW], rep.steady[BRIDGE_ROW] = startup, steady

    if sim_seed is not None:
        sim = as_messages(list(generate(SimConfig(seed=sim_seed, events=len(values)))))
        sim_sizes.append(mean_size(sim))
        rate, startup, steady, window = await bridge_run(
            base, js, sim, tag=f"{tag}-sim", filter_subject="wo.>", tally=tally, meter=meter
        )
        rep.note(SIM_ROW, rate, window, n)
        rep.startup[SIM_ROW], rep.steady[SIM_ROW] = startup, steady
    return rep


async def bench(args: argparse.Namespace, stack: EmbeddedStack, out: Callable[[str], None]) -> int:
    base = Settings(
        nats_url=stack.nats_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        data_dir=stack.data_dir,
        bridge_metrics_port=0,
    )
    assert base.nats_url and base.kafka_bootstrap
    meter = CpuMeter(stack.pids.values())
    nc, js = await connect_nats(base.nats_url, name="wo-stream-bench", max_reconnect_attempts=1)
    try:
        await ensure_streams(js, base)
        raw_stream = StreamConfig(
            name=RAW_STREAM, subjects=[RAW_SUBJECTS], storage=StorageType.FILE,
            description="wo-stream bench: raw nats-py path",
        )  # fmt: skip
        await ensure_stream(js, raw_stream)
        topics = bridge_topics(base)
        await ensure_topics(base.kafka_bootstrap, [*topics, RAW_TOPIC], partitions=base.partitions)
        tally = KafkaTally(base.kafka_bootstrap, topics)

        n, size = args.messages, args.value_bytes
        run_id = uuid.uuid4().hex[:6]
        values = raw_values(n, size)
        sizes: list[float] = []
        sim_sizes: list[float] = []

        out(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
        out(f"date: {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        out(f"machine: {platform.system()} {platform.machine()}, {cores} cores ({cpu_model()}), "
            f"load {load_avg()}")  # fmt: skip
        out(f"versions: {versions(server_version(nc), stack)}")
        out(f"servers: NATS {base.nats_url}, Kafka {base.kafka_bootstrap} "
            f"(clients and servers on this host)")  # fmt: skip
        gc_note = "tune_gc() for all paths" if args.gc == "tuned" else "interpreter default"
        out(f"setup: {n} messages per path, raw values {size} B, {args.keys} keys, "
            f"{base.partitions} partitions, pull batch {base.ingress_batch_size}, "
            f"producers acks=all, gc {gc_note}")  # fmt: skip

        if args.gc == "tuned":
            tune_gc()
        if args.warmup:
            # Untimed: first stream writes, connections, imports and caches warm up here.
            err.print(f"[dim]warm-up: {args.warmup} messages through each path[/]")
            await one_repeat(
                args, base, nc, js, values[: args.warmup], tag=f"{run_id}-w",
                tenant=f"b{run_id}w", tally=tally, meter=meter, sizes=[], sim_seed=None,
                sim_sizes=[],
            )  # fmt: skip
        repeats: list[Repeat] = []
        for r in range(args.repeat):
            err.print(f"[dim]repeat {r + 1}/{args.repeat}[/]")
            rep = await one_repeat(
                args, base, nc, js, values, tag=f"{run_id}-{r}",
                tenant=f"b{run_id}{r}",  # short: the tenant id is in every value
                tally=tally, meter=meter, sizes=sizes,
                sim_seed=args.seed + r if args.sim else None, sim_sizes=sim_sizes,
            )  # fmt: skip
            slow_name, slow = slower_raw(rep.rates)
            paths = (NATS_ROW, KAFKA_ROW, BRIDGE_ROW)
            out(
                f"repeat {r + 1}/{args.repeat}: "
                + " | ".join(f"{p} {fmt_rate(rep.rates[p])}" for p in paths)
                + f" msg/s | ratio {rep.rates[BRIDGE_ROW] / slow:.2f} vs {slow_name}"
                f" | bridge startup {rep.startup[BRIDGE_ROW]:.2f} s"
                f" | other cpu " + " ".join(fmt_cores(rep.foreign.get(p)) for p in paths) + " cores"
            )
            repeats.append(rep)
    finally:
        with contextlib.suppress(Exception):  # only our own bench stream
            await js.delete_stream(RAW_STREAM)
        await nc.close()

    rows = [NATS_ROW, KAFKA_ROW, BRIDGE_ROW] + ([SIM_ROW] if args.sim else []) + [PUBLISH_ROW]
    medians = {row: statistics.median(r.rates[row] for r in repeats) for row in rows}
    best = {row: max(r.rates[row] for r in repeats) for row in rows}
    out("")
    for line in table(rows, repeats, medians, best):
        out(line)
    cpu_rows = [row for row in rows if all(row in r.client_us for r in repeats)]
    if cpu_rows:
        out("")
        out(f"{'CPU us/msg (median)':<22}{'client':>10}{'servers':>10}")
        for row in cpu_rows:
            client = statistics.median(r.client_us[row] for r in repeats)
            servers = statistics.median(r.server_us[row] for r in repeats)
            out(f"{row:<22}{client:>10.1f}{servers:>10.1f}")
    out("")
    out(f"sizes: raw values {size} B; bridge events mean {statistics.mean(sizes):.0f} B "
        f"(work_order.status_changed, the smallest valid events)"
        + (f"; simulator events mean {statistics.mean(sim_sizes):.0f} B (bridge_sim, "
           f"not in the ratio)" if args.sim else ""))  # fmt: skip
    out(f"bridge: median startup {statistics.median(r.startup[BRIDGE_ROW] for r in repeats):.2f} s"
        f" (inside the timed window); median rate after startup "
        f"{fmt_rate(statistics.median(r.steady[BRIDGE_ROW] for r in repeats))} msg/s")  # fmt: skip
    seen = [f for r in repeats for f in r.foreign.values() if f is not None]
    busiest = max(seen) if seen else None
    if busiest is None:
        out("contention: not measured (no /proc)")
    elif busiest > BUSY_CORES:
        out(f"contention: other processes used up to {busiest:.2f} cores in a timed window "
            f"(> {BUSY_CORES:.2f}): figures skewed, rerun on an idle host")  # fmt: skip
    else:
        out(f"contention: none (other processes <= {busiest:.2f} cores in timed windows)")
    out(f"load at end: {load_avg()}")
    best_name, best_slow = slower_raw(best)
    out(f"ratio (best of {len(repeats)}) bridge/slower_raw = {best[BRIDGE_ROW] / best_slow:.2f}"
        f" vs {best_name}")  # fmt: skip
    slow_name, slow = slower_raw(medians)
    ratio = medians[BRIDGE_ROW] / slow
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    out(f"slower raw path = {slow_name} ({fmt_rate(slow)} msg/s, median)")
    out(f"bridge = {fmt_rate(medians[BRIDGE_ROW])} msg/s (median of {len(repeats)})")
    out(f"ratio bridge/slower_raw = {ratio:.2f} (target >= {TARGET:.2f}) {verdict}")
    return 1 if args.strict and verdict == "FAIL" else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/bridge_throughput.py",
        description=(
            "Bridge ingress throughput next to raw nats-py pull+ack and raw aiokafka produce, "
            "in one run on the same servers (an embedded stack, or WO_NATS_URL / "
            "WO_KAFKA_BOOTSTRAP: then bench events go into WO_EVENTS and the wo.* topics, so "
            "use dedicated servers)."
        ),
    )
    parser.add_argument("--messages", type=int, default=50_000, help="per path and repeat")
    parser.add_argument("--value-bytes", type=int, default=300, help="raw paths' value size")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument("--keys", type=int, default=1000, help="distinct record keys")
    parser.add_argument(
        "--warmup", type=int, default=2000, help="untimed messages per path first (0 = none)"
    )
    parser.add_argument("--sim", action="store_true", help="also a bridge run on simulator events")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (+ repeat index)")
    parser.add_argument(
        "--gc", choices=("tuned", "default"), default="tuned",
        help="tuned: the bridge process's tune_gc() (applied to every path alike)",
    )  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when the ratio fails")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.repeat < 1 or args.keys < 1 or args.warmup < 0:
        parser.error("--messages, --repeat and --keys must be >= 1, --warmup >= 0")
    args.warmup = min(args.warmup, args.messages)
    if args.value_bytes < 16:
        parser.error("--value-bytes must be >= 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def out(line: str) -> None:
        print(line, flush=True)

    out("# wo-stream bridge throughput")
    with tempfile.TemporaryDirectory(prefix="wo-bench-") as tmp:
        err.print("[dim]starting servers[/]")
        with EmbeddedStack(tmp) as stack:
            return asyncio.run(bench(args, stack, out))


if __name__ == "__main__":
    raise SystemExit(main())
