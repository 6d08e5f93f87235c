"""Alert rules: promtool/amtool accept them, every alert is tested, every metric really exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
PROM_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERT_TESTS = PROM_DIR / "alerts.test.yml"
PROMETHEUS = PROM_DIR / "prometheus.yml"
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
COMPOSE = REPO / "docker-compose.yml"
DOCS = REPO / "docs" / "alerts.md"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")
needs_amtool = pytest.mark.skipif(shutil.which("amtool") is None, reason="no amtool")


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


# -- the tools ---------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    proc = run("promtool", "check", "rules", ALERTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    proc = run("promtool", "test", "rules", ALERT_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # Guards against a runner that passes anything: a CRITICAL alert that never fires must fail.
    text = ALERTS.read_text().replace('severity="CRITICAL"', 'severity="NEVER"')
    (tmp_path / "alerts.yml").write_text(text)
    suite = load(ALERT_TESTS)
    suite["tests"] = [  # the CRITICAL cases only (the full suite takes ~10 s)
        test
        for test in suite["tests"]
        if any(c["alertname"] == "ComplianceViolationCritical" for c in test["alert_rule_test"])
    ]
    with (tmp_path / "alerts.test.yml").open("w") as out:
        YAML(typ="safe").dump(suite, out)
    proc = run("promtool", "test", "rules", tmp_path / "alerts.test.yml")
    assert proc.returncode != 0
    assert "alertname: ComplianceViolationCritical" in proc.stdout + proc.stderr


@needs_promtool
def test_promtool_checks_the_prometheus_config() -> None:
    # rule_files are relative to the config file, as in the container (both in /etc/prometheus).
    proc = run("promtool", "check", "config", PROMETHEUS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout


@needs_amtool
def test_amtool_checks_the_alertmanager_config() -> None:
    proc = run("amtool", "check-config", ALERTMANAGER)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_amtool
@pytest.mark.parametrize("severity", ["page", "ticket"])
def test_alertmanager_routes_by_severity(severity: str) -> None:
    proc = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}",
               f"severity={severity}", "alertname=Any", "tenant=t1")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [severity]


# -- the rules and their tests -------------------------------------------------------------------


def test_every_alert_is_labelled_annotated_and_documented() -> None:
    docs = DOCS.read_text()
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        assert rule["annotations"]["runbook"] == f"docs/alerts.md#{name.lower()}", name
        assert re.search(rf"^### {name}$", docs, re.MULTILINE), f"{name} not in docs/alerts.md"


def test_annotations_name_no_ids_but_tenants() -> None:
    allowed = {"tenant", "regulation", "reason", "direction", "domain", "topic", "instance"}
    for rule in rules():
        for text in rule["annotations"].values():
            used = set(re.findall(r"\$labels\.(\w+)", text))
            assert used <= allowed, (rule["alert"], used - allowed)


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = [case for test in load(ALERT_TESTS)["tests"] for case in test["alert_rule_test"]]
    for name in (rule["alert"] for rule in rules()):
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no firing test"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no must-not-fire test"


# -- the metrics the rules read ------------------------------------------------------------------


def _exposed(registry: CollectorRegistry) -> set[str]:
    """Sample names a registry exposes, labelled children or not."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }


def defined_metrics() -> set[str]:
    """Every metric name our processes serve (the worker's Faust sensor included)."""
    from faust.sensors.prometheus import FaustMetrics

    from connectors.audit.metrics import AuditMetrics
    from connectors.bridge_metrics import BridgeMetrics
    from pipeline.domain_metrics import DomainMetrics
    from pipeline.metrics import WorkerMetrics
    from pipeline.webhooks import WebhookMetrics

    names = {"up"}  # Prometheus's own, per scrape target
    builders = [
        BridgeMetrics,
        WorkerMetrics.create,
        AuditMetrics,
        WebhookMetrics.create,
        DomainMetrics,
        lambda registry: FaustMetrics.create(registry, "faust"),
    ]
    for build in builders:
        registry = CollectorRegistry()
        build(registry)
        names |= _exposed(registry)
    return names


def referenced_metrics() -> set[str]:
    names: set[str] = set()
    for rule in rules():
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])  # label values are no metric names
        names |= set(re.findall(r"\b(?:wo|faust)_[a-z0-9_]+\b", expr))
        names |= set(re.findall(r"\bup\b(?=\s*[{)])", expr))
    return names


def test_the_worker_exports_faust_metrics_with_the_prefix_the_rules_use() -> None:
    from pipeline.agents import FAUST_METRICS_PREFIX

    faust_metrics = {m for m in referenced_metrics() if m.startswith("faust_")}
    assert faust_metrics and FAUST_METRICS_PREFIX == "faust"


def test_every_metric_the_rules_read_is_defined_in_our_code() -> None:
    referenced = referenced_metrics()
    expected = {"up", "wo_compliance_violations_total", "faust_topic_partition_end_offset"}
    assert expected <= referenced
    missing = referenced - defined_metrics()
    assert not missing, f"alerts.yml reads metrics nothing exports: {sorted(missing)}"


def test_the_rules_match_on_scraped_job_names() -> None:
    jobs = {job["job_name"] for job in load(PROMETHEUS)["scrape_configs"]}
    used = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert used and used <= jobs


# -- the wiring ----------------------------------------------------------------------------------


def test_prometheus_loads_the_rules_and_sends_to_alertmanager() -> None:
    config = load(PROMETHEUS)
    assert config["rule_files"] == ["alerts.yml"]
    targets = [
        target
        for am in config["alerting"]["alertmanagers"]
        for static in am["static_configs"]
        for target in static["targets"]
    ]
    assert targets == ["alertmanager:9093"]


def test_compose_mounts_rules_and_runs_alertmanager() -> None:
    services = load(COMPOSE)["services"]
    prometheus, alertmanager = services["prometheus"], services["alertmanager"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]
    assert prometheus["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    assert alertmanager["image"].startswith("prom/alertmanager:")
    mount = "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
    assert mount in alertmanager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]


def test_every_scraped_service_of_ours_exists_in_compose() -> None:
    services = load(COMPOSE)["services"]
    for job in load(PROMETHEUS)["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                if host == "localhost":
                    continue
                assert host in services, f"{job['job_name']}: no service {host}"
                env = services[host].get("environment") or {}
                port_vars = [v for k, v in env.items() if k.endswith("_PORT")]
                assert not port_vars or port in port_vars, f"{host}: port {port} not configured"
