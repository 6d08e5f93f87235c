"""The deployment files: compose validates against the Compose spec and agrees with the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from ruamel.yaml import YAML

from pipeline.cli import cli
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parent.parent
WEBHOOKS_FILE = REPO / "deploy" / "webhooks" / "subscriptions.json"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from our Dockerfile."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_compose_file_matches_the_compose_spec() -> None:
    proc = validate(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


def test_the_validator_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    # Guards against a validator that passes anything (wrong schema name, crash ignored...).
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("condition: service_healthy", "condition: service_happy", 1)
    )
    proc = validate(broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "service_happy" in proc.stdout + proc.stderr


def test_the_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"nats", "kafka", "postgres", "bridge", "worker", "prometheus"} <= set(services)
    nats_cmd = services["nats"]["command"]
    assert "-js" in nats_cmd and nats_cmd[nats_cmd.index("-sd") + 1] == "/data"
    assert any(v.startswith("nats-data:/data") for v in services["nats"]["volumes"])
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "ZOOKEEPER" not in json.dumps(kafka)
    assert set(compose["volumes"]) >= {"nats-data", "kafka-data", "postgres-data"}


def test_our_services_run_real_subcommands(compose: dict[str, Any]) -> None:
    assert isinstance(cli, click.Group)
    built = ours(compose)
    assert {"bridge", "worker"} <= set(built)
    for name, service in built.items():
        assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        command = service["command"]
        assert isinstance(command, list) and command, name
        assert command[0] in cli.commands, f"{name}: {command[0]} is not a wo-stream subcommand"
    assert built["bridge"]["command"] == ["bridge"]
    assert built["worker"]["command"] == ["worker"]


def test_our_services_get_the_production_servers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in ours(compose).items():
        env = service["environment"]
        assert env["WO_NATS_URL"] == "nats://nats:4222", name
        assert env["WO_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["WO_KAFKA_TRANSPORT"] == "kafka", name
        assert "WO_AUDIT_DSN" in env, name
        for dependency in service["depends_on"]:
            assert dependency in services


def test_our_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    # A typo in a WO_* name would be silently ignored (settings use extra="ignore").
    fields = {f"WO_{name.upper()}" for name in Settings.model_fields}
    # Webhook secrets are read from the variables the subscription file names (secret_env).
    secret_refs = set(re.findall(r'"secret_env": "(WO_[A-Z0-9_]+)"', WEBHOOKS_FILE.read_text()))
    for name, service in ours(compose).items():
        unknown = {k for k in service["environment"] if k.startswith("WO_")} - fields - secret_refs
        assert not unknown, f"{name}: {sorted(unknown)}"


def test_every_dependency_waits_on_a_condition(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            assert condition in {
                "service_healthy",
                "service_started",
                "service_completed_successfully",
            }, name
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    long_running = [n for n, s in services.items() if s.get("restart") != "no"]
    for name in long_running:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_no_secret_in_plain_sight(compose: dict[str, Any]) -> None:
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|DSN|KEY", re.IGNORECASE)
    checked = 0
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if not secretish.search(key):
                continue
            checked += 1
            # Required interpolation: compose refuses to start when the variable is unset.
            assert re.search(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), f"{name}.{key}"
    assert checked >= 4


def test_dockerfile_runs_the_console_script_as_non_root() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    entrypoints = [line for line in lines if line.upper().startswith("ENTRYPOINT ")]
    entrypoint = json.loads(entrypoints[-1].split(None, 1)[1])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["wo-stream"] and scripts["wo-stream"] == "pipeline.cli:main"
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_dockerignore_keeps_state_and_venv_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored)


def test_prometheus_scrapes_worker_and_bridge(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS)
    targets = {
        job["job_name"]: (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    services = compose["services"]
    worker = services["worker"]
    metrics_port = worker["environment"]["WO_WORKER_METRICS_PORT"]
    bridge_port = services["bridge"]["environment"]["WO_BRIDGE_METRICS_PORT"]
    assert ("/metrics", f"worker:{metrics_port}") in targets.values()
    assert worker["environment"]["WO_BRIDGE_METRICS_HOST"] == "0.0.0.0"  # scraped over the net
    # The tenant API's port is published; the tenant-labelled metrics' port is not.
    assert worker["environment"]["WO_WEB_PORT"] == "6066" and worker["ports"] == ["6066:6066"]
    assert metrics_port != "6066" and not any(metrics_port in p for p in worker["ports"])
    assert ("/metrics", f"bridge:{bridge_port}") in targets.values()
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_the_webhook_subscription_file_compose_mounts_is_valid(compose: dict[str, Any]) -> None:
    from pipeline.webhook_config import load_subscriptions

    service = compose["services"]["webhooks"]
    source = next(v.split(":")[0] for v in service["volumes"] if v.endswith("webhooks.json:ro"))
    secret_vars = [k for k in service["environment"] if k.startswith("WO_WEBHOOK_SECRET_")]
    env = {name: "a-secret-of-at-least-16-bytes" for name in secret_vars}
    subscriptions = load_subscriptions(REPO / source, env=env)
    assert subscriptions and all(not s.active for s in subscriptions)  # an inactive example
