"""Faust worker throughput next to a bare Faust agent, on the same prefilled topics and broker.

One run: start the embedded Tansu broker (or use ``--kafka-bootstrap`` / WO_KAFKA_BOOTSTRAP),
prefill the six domain topics with N simulated events written as the bridge's ingress writes
them (key ``{tenant}:{entity}``, timestamp = event time, the ``wo-*`` headers), then measure
in turn, each as a subprocess with a fresh consumer group and data dir:

(a) ``bare``: a Faust agent (same app settings and ``tansu://`` transport, memory store) that
    only decodes each value's JSON (orjson); with ``--fast-drain on|both`` also ``bare+fd``, the
    same agent on the worker's fast-drain consumer (:mod:`pipeline.agents.consumer`): the
    per-record ceiling of Faust's stream path as the worker uses it;
(b) ``worker``: ``python pipeline.py worker`` (every table family, dedup, derived events,
    repartitioning, RocksDB, changelogs; control clock without ticks, so ``now`` is each
    event's own time, a replay of the prefilled backlog).

Throughput is N input events over the processing time: from the first record completed to the
last one (the group join and table recovery before it are reported apart, as ``join``). The
worker is done when every domain, repartition and ``wo.derived`` partition is processed to its
end and no send is in flight. See bench/README.md for the figures and how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repo's packages
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from connectors.tansu_transport import TansuAIOKafkaConsumer  # noqa: E402
from events.envelope import DomainEvent  # noqa: E402
from events.ids import unix_ms  # noqa: E402
from events.keys import record_key  # noqa: E402
from events.subjects import subject_for, topic_for  # noqa: E402
from pipeline.topics import CONTROL_CLOCK, DOMAIN, forwards_topic  # noqa: E402

DERIVED = "wo.derived"
TARGET_RATE = 10_000.0
LATENCY_METRIC = "wo_worker_record_latency_seconds"
LATENCY_DEFINITION = (
    "per source record, from its Faust stream taking it out of the topic buffer "
    "(Faust's message.time_in) to its ack"
)
POLL_SECONDS = 0.2


class BenchError(RuntimeError):
    """A run did not finish or its output does not add up."""


@dataclass
class Result:
    """One measured run."""

    name: str
    events: int
    seconds: float
    join: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    records: int  # source records processed (the worker's include repartition and derived)
    cpu: float = float("nan")  # CPU seconds of the process while processing (worker only)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# input


def ingress_record(event: DomainEvent, seq: int) -> tuple[str, bytes, bytes, int, list]:
    """(topic, key, value, timestamp ms, headers) exactly as connectors.ingress writes them."""
    subject = subject_for(event.tenantId, event.type)
    headers = [
        ("wo-event-id", event.id.encode()),
        ("wo-type", event.type.encode()),
        ("wo-version", event.version.encode()),
        ("wo-tenant", event.tenantId.encode()),
        ("wo-subject", subject.encode()),
        ("wo-stream-seq", str(seq).encode()),
    ]
    value = event.canonical_bytes()
    return (
        topic_for(event.type),
        record_key(event).encode(),
        value,
        unix_ms(event.timestamp),
        headers,
    )


def simulated(events: int, tenants: int, seed: int) -> list[DomainEvent]:
    from pipeline.simulate.generator import SimConfig, generate

    return list(generate(SimConfig(seed=seed, tenants=tenants, events=events)))


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def prefill(bootstrap: str, events: list[DomainEvent]) -> tuple[float, float]:
    """Produce ``events`` pipelined; (seconds, mean value bytes)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024)  # fmt: skip
    await producer.start()
    size = 0
    try:
        started = time.perf_counter()
        futures = []
        for seq, event in enumerate(events, 1):
            topic, key, value, ts, headers = ingress_record(event, seq)
            size += len(value)
            futures.append(
                await producer.send(topic, value, key=key, timestamp_ms=ts, headers=headers)
            )
        await asyncio.gather(*futures)
        return time.perf_counter() - started, size / max(len(events), 1)
    finally:
        await producer.stop()


class EndOffsets:
    """Records per topic (true end offsets on Tansu, via the Fetch high watermark)."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int) -> None:
        self.consumer = TansuAIOKafkaConsumer(bootstrap_servers=bootstrap)
        self.tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        self.topics = topics

    async def __aenter__(self) -> EndOffsets:
        await self.consumer.start()
        for t in self.topics:
            self.consumer._client.add_topic(t)
        await self.consumer._client.force_metadata_update()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def get(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(self.topics, 0)
        for tp, offset in (await self.consumer.end_offsets(self.tps)).items():
            out[tp.topic] += offset
        return out


# ---------------------------------------------------------------------------------------------
# processes


def peak_rss_mb(pid: int) -> float:
    """VmHWM of ``pid`` (peak resident set) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    from connectors.embedded import free_port as port

    return port()


def child_env(
    bootstrap: str,
    data_dir: Path,
    app_id: str,
    port: int,
    partitions: int,
    extra: dict[str, str] | None = None,
) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WO_")}
    env.update(
        WO_KAFKA_BOOTSTRAP=bootstrap,
        WO_KAFKA_TRANSPORT="tansu",
        WO_DATA_DIR=str(data_dir),
        WO_APP_ID=app_id,
        WO_WEB_PORT=str(port),
        WO_PARTITIONS=str(partitions),
        WO_CLOCK="control",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def spawn(argv: list[str], env: dict, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def http_get(port: int, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read()
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# (a) the bare Faust agent (runs in a child process: ``--bare-agent``)


def write_result(path: Path, state: dict[str, Any], latencies: list[float]) -> None:
    latencies.sort()
    n = len(latencies)
    out = {
        "first": state["first"],
        "last": state["last"],
        "count": state["count"],
        "p50": latencies[n // 2] if n else float("nan"),
        "p99": latencies[min(n - 1, (n * 99) // 100)] if n else float("nan"),
    }
    path.write_text(json.dumps(out))


def bare_agent_main(args: argparse.Namespace) -> None:
    """Child: one Faust agent over the domain topics, decoding JSON; writes a result file."""
    import faust
    import orjson

    from pipeline.agents.consumer import fast_drain
    from pipeline.app import create_app, run_worker
    from pipeline.settings import Settings

    settings = Settings()
    app = create_app(settings, store="memory://")
    # Stock Faust as the reference: undo create_app's consumer (pipeline.agents.consumer);
    # --fd: stock plus only the fast-drain loop (the worker's path minus its restart guards).
    stock = type(app.transport).Consumer
    app.transport.Consumer = fast_drain(stock) if args.fd else stock
    topic = app.topic(*DOMAIN, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")  # fmt: skip
    latencies: list[float] = []
    state: dict[str, Any] = {"count": 0, "first": None, "last": None, "bytes": 0}
    result_path = Path(args.result)

    @app.agent(topic, name="bench-bare")
    async def bare(stream: faust.StreamT) -> None:
        async for event in stream.events():
            state["bytes"] += len(orjson.loads(event.message.value))
            now = time.time()
            if state["first"] is None:
                state["first"] = now
            state["last"] = now
            state["count"] += 1
            time_in = event.message.time_in
            if time_in is not None:
                latencies.append(time.monotonic() - time_in)
            if state["count"] == args.events:
                write_result(result_path, state, latencies)

    run_worker(app, loglevel="warning")


async def run_bare(
    args: argparse.Namespace, bootstrap: str, work: Path, *, fast_drain: bool = False
) -> Result:
    app_id = f"bench-bare-{uuid.uuid4().hex[:8]}"
    port = free_port()
    result_path = work / f"{app_id}.json"
    env = child_env(bootstrap, work / app_id, app_id, port, args.partitions)
    argv = [sys.executable, str(SCRIPT), "--bare-agent", "--events",
            str(args.events), "--result", str(result_path)]  # fmt: skip
    if fast_drain:
        argv.append("--fd")
    log_path = work / f"{app_id}.log"
    started = time.time()
    proc = spawn(argv, env, log_path)
    try:
        deadline = time.monotonic() + args.timeout
        while not result_path.exists():
            if proc.poll() is not None:
                raise BenchError(f"bare agent died:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"bare agent did not finish:\n{tail(log_path)}")
            await asyncio.sleep(POLL_SECONDS)
        await asyncio.sleep(0.05)  # the file is written in one call; let it land
        out = json.loads(result_path.read_text())
        rss = peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    name = "bare+fd" if fast_drain else "bare"
    return Result(name, args.events, out["last"] - out["first"], out["first"] - started,
                  out["p50"] * 1000, out["p99"] * 1000, rss, out["count"])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# (b) the full worker


def histogram_quantiles(text: str, name: str, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of a Prometheus histogram (linear inside the bucket, as histogram_quantile)."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out = []
    for q in qs:
        if total == 0:
            out.append(float("nan"))
            continue
        rank = q * total
        lower, below = 0.0, 0.0
        for upper, count in buckets:
            if count >= rank:
                if upper == float("inf"):
                    out.append(lower)
                else:
                    inside = count - below
                    out.append(lower + (upper - lower) * ((rank - below) / inside if inside else 1))
                break
            lower, below = upper, count
    return out


async def run_worker(
    args: argparse.Namespace,
    bootstrap: str,
    work: Path,
    *,
    fast_drain: bool = False,
    variant: tuple[str, dict[str, str]] | None = None,
) -> Result:
    app_id = f"bench-worker-{uuid.uuid4().hex[:8]}"
    port, metrics_port = free_port(), free_port()
    # Each worker run derives into its own topic: a second run must not read the first's output.
    derived = f"{DERIVED}.{app_id}"
    extra = {"WO_FAUST_FAST_DRAIN": "true" if fast_drain else "false", "WO_EGRESS_TOPIC": derived,
             "WO_WORKER_METRICS_PORT": str(metrics_port)}  # fmt: skip
    if args.batch_max:
        extra["WO_BATCH_MAX"] = str(args.batch_max)
    if variant is not None:
        extra.update(variant[1])
    env = child_env(bootstrap, work / app_id, app_id, port, args.partitions, extra)
    argv = [sys.executable, "pipeline.py", "worker", "--loglevel", args.loglevel]
    log_path = Path(args.log_dir or work) / f"{app_id}.log"
    # The worker's own topics exist before it starts (as in the tests): Faust would create
    # them too, but then its first subscription misses them for a resubscribe cycle.
    forwards = forwards_topic(app_id)
    await create_topics(bootstrap, [forwards, CONTROL_CLOCK, derived], args.partitions)
    sources = [*DOMAIN, derived, forwards]
    stack = contextlib.AsyncExitStack()
    started = time.time()
    proc = spawn(argv, env, log_path)
    print(f"worker pid {proc.pid}, log {log_path}", file=sys.stderr, flush=True)
    cpu_start: float | None = None
    try:
        offsets = await stack.enter_async_context(EndOffsets(bootstrap, sources, args.partitions))
        deadline = time.monotonic() + args.timeout
        calm = 0
        status: dict[str, Any] = {}
        while calm < 2:
            if proc.poll() is not None:
                raise BenchError(f"worker died:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"worker did not finish ({status}):\n{tail(log_path)}")
            await asyncio.sleep(POLL_SECONDS)
            raw = http_get(port, "/wo/status/")
            if raw is None:
                continue
            status = json.loads(raw)
            positions = status.get("positions", {})
            done = {t: sum(positions.get(t, {}).values()) for t in sources}
            if sum(done.values()) == 0:
                continue
            if cpu_start is None:
                cpu_start = cpu_seconds(proc.pid)
            if args.log_dir:  # progress timeline next to the log: where a run stalled
                with log_path.with_suffix(".progress").open("a") as progress:
                    progress.write(f"{time.time() - started:.2f} {json.dumps(done)}\n")
            ends = await offsets.get()
            finished = (
                sum(done[t] for t in DOMAIN) == args.events
                and all(done[t] >= ends[t] for t in sources)
                and status.get("inflight") == 0
            )
            calm = calm + 1 if finished else 0
        cpu = cpu_seconds(proc.pid) - (cpu_start or 0.0)
        metrics = (http_get(metrics_port, "/metrics") or b"").decode()
        rss = peak_rss_mb(proc.pid)
    finally:
        await stack.aclose()
        stop(proc)
    p50, p99 = histogram_quantiles(metrics, LATENCY_METRIC, (0.5, 0.99))
    records = sum(done.values())
    first, last = status["first_done"], status["last_done"]
    name = "worker+fd" if fast_drain else "worker"
    if variant is not None:
        name = f"{name}+{variant[0]}"
    return Result(name, args.events, last - first, first - started, p50 * 1000, p99 * 1000,
                  rss, records, cpu)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# main


def versions() -> str:
    names = ("faust-streaming", "aiokafka", "rocksdict", "orjson", "pydantic")
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return f"python {platform.python_version()}, " + ", ".join(found)


async def bench(args: argparse.Namespace) -> int:
    from connectors.embedded import EmbeddedStack

    with tempfile.TemporaryDirectory(prefix="wo-bench-worker-") as tmp:
        work = Path(tmp)
        stack = None
        bootstrap = args.kafka_bootstrap or os.environ.get("WO_KAFKA_BOOTSTRAP")
        if not bootstrap:
            stack = EmbeddedStack(work / "stack", kafka_bootstrap=None)
            stack.start_kafka()
            bootstrap = stack.kafka_bootstrap
        try:
            started = time.perf_counter()
            events = simulated(args.events, args.tenants, args.seed)
            generated = time.perf_counter() - started
            await create_topics(bootstrap, [*DOMAIN, DERIVED], args.partitions)
            produced, mean_bytes = await prefill(bootstrap, events)
            keys = len({record_key(e) for e in events})
            print(f"command: {shlex.join([sys.executable, *sys.argv])}")
            print(f"versions: {versions()}; cpus {os.cpu_count()}")
            print(f"input: {args.events} simulated events ({args.tenants} tenants, seed "
                  f"{args.seed}), {keys} keys, mean value {mean_bytes:.0f} bytes, "
                  f"{args.partitions} partitions; generated in {generated:.1f}s, "
                  f"prefilled in {produced:.1f}s")  # fmt: skip
            print(f"latency: {LATENCY_DEFINITION}")
            results = []
            if not args.skip_bare:
                results.append(await run_bare(args, bootstrap, work))
                if args.fast_drain != "off":
                    results.append(await run_bare(args, bootstrap, work, fast_drain=True))
            for fast in {"off": [False], "on": [True], "both": [False, True]}[args.fast_drain]:
                results.append(await run_worker(args, bootstrap, work, fast_drain=fast))
            last_fast = args.fast_drain != "off"
            for variant in args.variant:
                results.append(
                    await run_worker(args, bootstrap, work, fast_drain=last_fast, variant=variant)
                )
        finally:
            if stack is not None:
                stack.stop()
    print(f"{'run':<8}{'events/s':>10}{'seconds':>9}{'join s':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'peak RSS MiB':>14}{'records':>9}{'CPU ms/event':>14}")  # fmt: skip
    for r in results:
        print(f"{r.name:<8}{r.rate:>10,.0f}{r.seconds:>9.2f}{r.join:>8.1f}{r.p50_ms:>9.2f}"
              f"{r.p99_ms:>9.2f}{r.peak_rss_mb:>14.0f}{r.records:>9}"
              f"{1000 * r.cpu / r.events:>14.2f}")  # fmt: skip
    for r in results:
        print(f"{r.name}_events_per_s = {r.rate:.0f}")
    workers = [r for r in results if r.name.startswith("worker")]
    bare_fd = next((r for r in results if r.name == "bare+fd"), None)
    for worker in workers:
        print(f"{worker.name}_p50_ms = {worker.p50_ms:.2f}")
        print(f"{worker.name}_p99_ms = {worker.p99_ms:.2f}")
        print(f"{worker.name}_peak_rss_mib = {worker.peak_rss_mb:.0f}")
        print(f"{worker.name}_cpu_ms_per_event = {1000 * worker.cpu / worker.events:.2f}")
        if not args.skip_bare:
            print(f"ratio {worker.name}/bare = {worker.rate / results[0].rate:.2f}")
        if bare_fd is not None:
            # The worker's stream path carries its own repartition and wo.derived records too:
            # at bare+fd's per-record rate and with no table work at all it could not go faster.
            per_event = worker.records / worker.events
            print(f"ratio {worker.name}/bare+fd = {worker.rate / bare_fd.rate:.2f}")
            print(f"ceiling {worker.name} = {bare_fd.rate / per_event:.0f} events/s "
                  f"({per_event:.2f} records/event at bare+fd's "
                  f"{bare_fd.rate:,.0f} records/s)")  # fmt: skip
    if args.fast_drain == "both":
        print(f"ratio worker+fd/worker = {workers[1].rate / workers[0].rate:.2f}")
    base = workers[len(workers) - len(args.variant) - 1]
    for other in workers[len(workers) - len(args.variant) :]:
        print(f"ratio {other.name}/{base.name} = {other.rate / base.rate:.2f} (events/s), "
              f"{other.cpu / base.cpu:.2f} (CPU)")  # fmt: skip
    best = max(workers, key=lambda r: r.rate)
    verdict = "PASS" if best.rate >= TARGET_RATE else "FAIL"
    print(f"worker target >= {TARGET_RATE:,.0f} events/s: {verdict} (best: {best.name})")
    return 0


def _variant(text: str) -> tuple[str, dict[str, str]]:
    name, sep, pairs = text.partition(":")
    env = dict(p.split("=", 1) for p in pairs.split(",") if "=" in p)
    if not sep or not name or not env or not all(k.startswith("WO_") for k in env):
        raise argparse.ArgumentTypeError("expected NAME:WO_X=V[,WO_Y=W]")
    return name, env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="input events to prefill")
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--kafka-bootstrap",
        default=None,
        help="use this broker (default: WO_KAFKA_BOOTSTRAP or embedded Tansu)",
    )
    parser.add_argument("--loglevel", default="info", help="the worker's log level")
    parser.add_argument(
        "--batch-max",
        type=int,
        default=None,
        help="the worker's WO_BATCH_MAX (default: its own default)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    parser.add_argument("--skip-bare", action="store_true", help="measure the worker only")
    parser.add_argument(
        "--fast-drain",
        choices=("off", "on", "both"),
        default="off",
        help="the worker's WO_FAUST_FAST_DRAIN; both: one run each, side by side (default off)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        type=_variant,
        default=[],
        metavar="NAME:K=V[,K=V]",
        help="one more worker run with these WO_* settings, compared with the last plain "
        "worker run (repeatable; e.g. nosensors:WO_FAUST_SENSORS=false)",
    )
    parser.add_argument("--log-dir", default=None, help="keep the workers' logs here")
    parser.add_argument("--bare-agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fd", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.bare_agent:
        sys.argv = [sys.argv[0], "worker"]  # Faust's command line: run the worker
        bare_agent_main(args)
        return
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
