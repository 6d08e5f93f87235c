"""The command line: help everywhere, schema checks, usage errors, and `run` end to end."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from aiokafka import TopicPartition
from click.testing import CliRunner

from connectors.embedded import free_port, run_sync
from connectors.jetstream import connect_nats
from connectors.tansu_transport import TansuAIOKafkaConsumer
from events.subjects import DOMAIN_TOPICS
from events.versioning import SCHEMAS_DIR
from pipeline.cli import cli
from pipeline.supervisor import Child, spawn, stop_child

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-token-never-printed"


def subcommands() -> list[str]:
    assert isinstance(cli, click.Group)
    return sorted(cli.commands)


# -- help and static behaviour -----------------------------------------------------------------


def test_the_expected_subcommands_exist() -> None:
    assert {"run", "worker", "bridge", "simulate", "schemas"} <= set(subcommands())


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ") and f" {name} [OPTIONS]" in result.output
    assert "--help" in result.output


def test_pipeline_py_help_in_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "pipeline.py", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Usage: wo-stream" in proc.stdout
    for name in subcommands():
        assert re.search(rf"^\s+{name}\s", proc.stdout, re.MULTILINE), name


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "wo-stream"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "wo-stream" in proc.stdout


def test_bridge_needs_both_servers() -> None:
    result = CliRunner(env={"WO_NATS_URL": None, "WO_KAFKA_BOOTSTRAP": None}).invoke(
        cli, ["bridge"]
    )
    assert result.exit_code == 2
    assert "bridge needs --nats-url and --kafka-bootstrap" in result.output


def test_replay_dlq_needs_a_server() -> None:
    result = CliRunner(env={"WO_NATS_URL": None}).invoke(cli, ["replay-dlq"])
    assert result.exit_code == 2
    assert "needs --nats-url" in result.output


def test_simulate_needs_a_server_unless_dry_run() -> None:
    result = CliRunner(env={"WO_NATS_URL": None}).invoke(cli, ["simulate", "--events", "1"])
    assert result.exit_code == 2
    assert "needs --nats-url" in result.output


def test_worker_needs_a_broker() -> None:
    result = CliRunner(env={"WO_KAFKA_BOOTSTRAP": None}).invoke(cli, ["worker"])
    assert result.exit_code == 2
    assert "needs --kafka-bootstrap" in result.output


def test_unreachable_nats_is_a_one_line_error() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "pipeline.py", "simulate", "--events", "5", "--nats-url", url],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"Error: cannot reach NATS at {url}: nats: no servers available for connection"
    )


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2


# -- schemas -----------------------------------------------------------------------------------


def test_schemas_check_passes_on_the_committed_tree() -> None:
    result = CliRunner().invoke(cli, ["schemas", "--check"])
    assert result.exit_code == 0, result.output
    default = CliRunner().invoke(cli, ["schemas"])  # --check is the default
    assert default.exit_code == 0, default.output


def test_schemas_compat_passes_on_the_committed_tree() -> None:
    result = CliRunner().invoke(cli, ["schemas", "--compat"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, copy)
    return copy


def test_schemas_check_fails_on_a_tampered_copy_and_write_repairs_it(schema_copy: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["schemas", "--check", "--dir", str(schema_copy)]).exit_code == 0
    target = schema_copy / "work_order.created" / "1.0.json"
    target.write_text(
        target.read_text().replace('"title"', '"description": "tampered", "title"', 1)
    )

    result = runner.invoke(cli, ["schemas", "--check", "--dir", str(schema_copy)])
    assert result.exit_code == 1
    assert "work_order.created/1.0.json" in result.output
    # The unified diff (committed -> models) shows the tampered line going away.
    assert re.search(r"^-.*\"description\": \"tampered\"", result.output, re.MULTILINE)

    fixed = runner.invoke(cli, ["schemas", "--write", "--dir", str(schema_copy)])
    assert fixed.exit_code == 0 and "wrote 1 schema files" in fixed.output
    assert runner.invoke(cli, ["schemas", "--check", "--dir", str(schema_copy)]).exit_code == 0


def test_schemas_check_fails_on_a_missing_file(schema_copy: Path) -> None:
    (schema_copy / "approval.requested" / "1.0.json").unlink()
    result = CliRunner().invoke(cli, ["schemas", "--check", "--dir", str(schema_copy)])
    assert result.exit_code == 1
    assert "approval.requested/1.0.json: missing" in result.output


def test_schemas_compat_fails_on_a_breaking_change(schema_copy: Path) -> None:
    # Commit a "1.1" of work_order.created that drops a field the 1.0 required: a major change
    # published as a minor one.
    import json

    old = json.loads((schema_copy / "work_order.created" / "1.0.json").read_text())
    new = json.loads(json.dumps(old))
    payload = new["$defs"]["WorkOrderCreated"]
    del payload["properties"]["title"]
    payload["required"].remove("title")
    (schema_copy / "work_order.created" / "1.1.json").write_text(json.dumps(new))

    result = CliRunner().invoke(cli, ["schemas", "--compat", "--dir", str(schema_copy)])
    assert result.exit_code == 1
    assert "work_order.created 1.0 -> 1.1" in result.output


def test_schemas_write_and_check_are_exclusive() -> None:
    result = CliRunner().invoke(cli, ["schemas", "--write", "--check"])
    assert result.exit_code == 2


# -- child supervision ---------------------------------------------------------------------------

STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN if "ignore" in sys.argv else signal.SIG_DFL)
code = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('grandchild-ready', flush=True); time.sleep(120)"
)
if "stubborn-grandchild" not in sys.argv:
    code = "import time; time.sleep(120)"
grandchild = subprocess.Popen([sys.executable, "-c", code])
print("ready", grandchild.pid, flush=True)
time.sleep(120)
"""


def _spawn_stub(tmp_path: Path, *args: str) -> tuple[Child, int]:
    log = tmp_path / f"stub-{uuid.uuid4().hex[:6]}.log"
    child = spawn("stub", [sys.executable, "-c", STUBBORN, *args], dict(os.environ), log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text.startswith("ready"):
            return child, int(text.split()[1])
        time.sleep(0.05)
    pytest.fail("stub did not start")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_child_terminates_the_whole_process_group(tmp_path: Path) -> None:
    child, grandchild = _spawn_stub(tmp_path)
    assert os.getpgid(grandchild) == child.proc.pid  # the child leads its own group
    assert stop_child(child, timeout=10) == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_stop_child_sweeps_a_lingering_grandchild(tmp_path: Path) -> None:
    child, grandchild = _spawn_stub(tmp_path, "stubborn-grandchild")
    assert child.log_path is not None
    deadline = time.monotonic() + 30
    while "grandchild-ready" not in child.log_path.read_text():  # its SIGTERM handler is set
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    assert stop_child(child, timeout=1) == -signal.SIGTERM  # the leader went on SIGTERM
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert not _alive(grandchild)  # ... and the grandchild that ignored it was killed


def test_stop_child_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    child, grandchild = _spawn_stub(tmp_path, "ignore")
    started = time.monotonic()
    assert stop_child(child, timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert not _alive(grandchild)


def test_stop_child_stops_waiting_when_hurried(tmp_path: Path) -> None:
    import threading

    child, _ = _spawn_stub(tmp_path, "ignore")
    hurry = threading.Event()
    threading.Timer(0.3, hurry.set).start()
    started = time.monotonic()
    assert stop_child(child, timeout=60, hurry=hurry) == -signal.SIGKILL
    assert time.monotonic() - started < 5


# -- run, end to end ------------------------------------------------------------------------------


def _marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries `marker` (all of run's descendants)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue  # gone, or not ours to read
    return found


def _run_env(marker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WO_")}
    env.update(
        WO_TEST_RUN_MARKER=marker,
        WO_WEB_TOKENS=f"{SECRET}=tenant_ci",
        WO_BRIDGE_METRICS_PORT=str(free_port()),  # never collide with another bridge
        WO_AUDIT_METRICS_PORT=str(free_port()),
        WO_WORKER_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def marker() -> Iterator[str]:
    value = uuid.uuid4().hex
    yield value
    leftovers = _marked_processes(value)
    for pid in leftovers:  # never leave strays behind for the next test, even on failure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_run(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "pipeline.py", "run", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # so the test can also check the run's own process group
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"run did not stop in {timeout} s:\n{out}")
    return out


def _assert_nothing_left(marker: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 5
    while _marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes(marker) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    pytest.fail(f"{text!r} not printed within {timeout} s:\n{''.join(lines)}")


@pytest.mark.integration
def test_run_embedded_default_stack_only(tmp_path: Path, marker: str) -> None:
    data = tmp_path / "data"
    started = time.monotonic()
    proc = _start_run(["--no-worker", "--duration", "3", "--data-dir", str(data)], _run_env(marker))
    out = _finish(proc, timeout=90)
    assert proc.returncode == 0, out
    assert re.search(r"NATS\s+nats://127\.0\.0\.1:\d+\s+\(embedded\)", out), out
    assert re.search(r"Kafka\s+127\.0\.0\.1:\d+\s+\(embedded\)", out), out
    assert f"data dir  {data.resolve()}" in out
    assert "simulate  3 tenants, 20 events/s" in out  # on by default for the embedded stack
    assert re.search(r"published [1-9]\d* events", out), out
    assert "stopped cleanly" in out and "bridge stopped (exit 0)" in out
    assert "audit-writer stopped (exit 0)" in out
    assert SECRET not in out
    assert (data / "nats").is_dir()  # JetStream's file store lives in the data dir
    _assert_nothing_left(marker, proc)
    assert time.monotonic() - started < 60


def _stream_messages(nats_url: str) -> int:
    async def count() -> int:
        nc, js = await connect_nats(nats_url, max_reconnect_attempts=1)
        try:
            return (await js.stream_info("WO_EVENTS")).state.messages
        finally:
            await nc.close()

    return run_sync(count())


def _kafka_records(bootstrap: str, topics: list[str]) -> int:
    """Records in `topics` by the Fetch high watermark (Tansu's ListOffsets is short)."""

    async def count() -> int:
        consumer = TansuAIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            await consumer.topics()  # loads metadata for every topic
            parts = [
                TopicPartition(t, p)
                for t in topics
                for p in (consumer.partitions_for_topic(t) or set())
            ]
            ends = await consumer.end_offsets(parts) if parts else {}
            return sum(ends.values())
        finally:
            await consumer.stop()

    return run_sync(count())


@pytest.mark.integration
def test_run_again_rebuilds_from_nats_after_the_broker_lost_its_topics(
    tmp_path: Path, marker: str
) -> None:
    """README: a restarted embedded broker is empty; run re-mirrors every retained event."""
    data = tmp_path / "data"
    args = ["--no-worker", "--duration", "4", "--data-dir", str(data)]
    first = _start_run(args, _run_env(marker))
    out = _finish(first, timeout=90)
    assert first.returncode == 0, out
    stale = data / "faust" / "wo-stream" / "stale-table-state"
    stale.parent.mkdir(parents=True)
    stale.write_text("offsets of a broker that is gone")

    second = _start_run(["--no-worker", "--no-simulate", "--data-dir", str(data)], _run_env(marker))
    banner = "".join(_wait_for_line(second, "Press Ctrl-C to stop.", timeout=60))
    try:
        assert "fresh embedded broker: reset table state, ingress consumer" in banner, banner
        assert not stale.exists()
        nats = re.search(r"NATS\s+(\S+)", banner)
        kafka = re.search(r"Kafka\s+(\S+)", banner)
        assert nats and kafka, banner
        published = _stream_messages(nats.group(1))
        assert published > 0
        topics = sorted(DOMAIN_TOPICS.values())
        deadline, mirrored = time.monotonic() + 60, 0
        while time.monotonic() < deadline:
            mirrored = _kafka_records(kafka.group(1), topics)
            if mirrored >= published:
                break
            time.sleep(0.5)
        # Everything the first run published is in the new broker again, nothing more.
        assert mirrored == published
    finally:
        second.send_signal(signal.SIGTERM)
        out = banner + _finish(second, timeout=60)
    assert second.returncode == 0, out
    _assert_nothing_left(marker, second)


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_a_signal(tmp_path: Path, marker: str, sig: signal.Signals) -> None:
    proc = _start_run(["--no-worker", "--data-dir", str(tmp_path / "d")], _run_env(marker))
    _wait_for_line(proc, "Press Ctrl-C to stop.", timeout=60)
    assert _marked_processes(marker)  # servers and simulator are up and marked
    proc.send_signal(sig)
    out = _finish(proc, timeout=60)
    assert proc.returncode == 0, out
    assert f"{sig.name}: stopping" in out and "stopped cleanly" in out
    _assert_nothing_left(marker, proc)


@pytest.mark.integration
def test_run_against_given_servers_starts_none(
    tmp_path: Path, marker: str, nats_url: str, kafka_bootstrap: str
) -> None:
    env = _run_env(marker, WO_NATS_URL=nats_url, WO_KAFKA_BOOTSTRAP=kafka_bootstrap)
    args = ["--no-worker", "--no-bridge", "--duration", "1", "--data-dir", str(tmp_path)]
    proc = _start_run(args, env)
    out = _finish(proc, timeout=60)
    assert proc.returncode == 0, out
    assert f"NATS      {nats_url}\n" in out and "(embedded)" not in out
    assert "simulate" not in out  # off by default for given servers
    assert "starting embedded servers" not in out
    _assert_nothing_left(marker, proc)


@pytest.mark.integration
@pytest.mark.slow
def test_run_full_pipeline_with_worker(tmp_path: Path, marker: str) -> None:
    """The README's command: embedded servers, streams, Faust worker, simulated traffic."""
    port = free_port()
    data = tmp_path / "data"
    env = _run_env(marker)
    proc = _start_run(["--web-port", str(port), "--data-dir", str(data)], env)
    banner = "".join(_wait_for_line(proc, "Press Ctrl-C to stop.", timeout=60))
    assert f"web       http://127.0.0.1:{port}/" in banner
    metrics_url = f"http://127.0.0.1:{env['WO_WORKER_METRICS_PORT']}/metrics"
    assert f"metrics   {metrics_url}" in banner, banner
    assert re.search(r"worker    pid \d+, log .*worker\.log", banner), banner

    # Faust is up once its web server answers and it reports ready (after the group join).
    log = data / "logs" / "worker.log"
    deadline, status = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                status = resp.status
        except OSError:
            status = None
        if status == 200 and "Worker ready" in log.read_text():
            break
        assert proc.poll() is None, "run exited early"
        time.sleep(0.5)
    assert status == 200, log.read_text()[-3000:]
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:  # the URL the banner printed
        assert b"wo_worker_events_processed_total" in resp.read()

    proc.send_signal(signal.SIGTERM)
    out = banner + _finish(proc, timeout=120)
    assert proc.returncode == 0, out
    assert "simulate stopped (exit 0)" in out and "worker stopped (exit 0)" in out
    assert "bridge stopped (exit 0)" in out and "audit-writer stopped (exit 0)" in out
    assert "stopped cleanly" in out and SECRET not in out
    assert "Closing event loop" in log.read_text()  # Faust shut down on its own, not killed
    _assert_nothing_left(marker, proc)


def test_server_urls_are_printed_without_credentials() -> None:
    from pipeline.settings import redact_url

    cases = {
        "nats://wo:s3cret@nats:4222": "nats://***@nats:4222",
        "nats://tok3n@nats:4222": "nats://***@nats:4222",
        "tls://a:p%40ss@n1:4222, nats://n2:4222": "tls://***@n1:4222,nats://n2:4222",
        "nats://127.0.0.1:4222": "nats://127.0.0.1:4222",
        "user:pw@host:4222": "***@host:4222",
    }
    for url, shown in cases.items():
        assert redact_url(url) == shown
        assert "s3cret" not in redact_url(url) and "tok3n" not in redact_url(url)
    assert redact_url(None) == "None"
