"""The web API in process (no broker): tokens, tenant checks, parameters, routing, spec.

Two Faust apps with in-memory tables stand in for two workers: each holds only the scenario
keys of the partitions it "owns", and the group assignment is patched in, so key lookups must
be routed and tenant-wide reads gathered to answer right from either app.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from events.ids import unix_ms
from pipeline.agents import CLOCK_TABLE
from pipeline.app import create_app
from pipeline.settings import Settings
from pipeline.topics import partition_of
from pipeline.web import projections, register_web
from pipeline.web.auth import TokenConfigError, Tokens, authorize, bearer
from pipeline.web.errors import ApiError
from pipeline.web.openapi import dumps, spec
from pipeline.web.params import COMPLIANCE_SPECS, SLA_SPECS
from tables.compliance import RECENT_MAX
from tables.stages import STAGES
from tests.apps.worker_scenario import ACME, GLOBEX, Scenario, build

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 4
TOK_A, TOK_G, TOK_I = "tokA-acme-0123456789", "tokG-globex-0123456789", "tokI-initech-012345678"
TOKENS = f"{TOK_A}={ACME},{TOK_G}={GLOBEX},{TOK_I}=initech"
OWNED = {"a": {0, 1}, "b": {2, 3}}


def hdr(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- tokens ----------------------------------------------------------------------------------


def test_tokens_map_to_one_tenant_each() -> None:
    tokens = Tokens.parse(SecretStr(TOKENS))
    assert len(tokens) == 3
    assert tokens.tenant_for(TOK_A) == ACME
    assert tokens.tenant_for(TOK_G) == GLOBEX
    assert tokens.tenant_for(TOK_A + "x") is None
    assert tokens.tenant_for("") is None
    assert TOK_A not in repr(tokens)
    assert Tokens.parse(None).tenant_for(TOK_A) is None


@pytest.mark.parametrize(
    "raw",
    ["secret-token-1", "secret-token-1=", "=acme", "secret-token-1=ac:me",
     "secret-token-1=acme,secret-token-1=globex", "secret token=acme"],
)  # fmt: skip
def test_malformed_tokens_are_refused_without_naming_them(raw: str) -> None:
    with pytest.raises(TokenConfigError) as info:
        Tokens.parse(raw)
    assert "secret" not in str(info.value)


def test_bearer_header_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer") is None
    assert bearer(None) is None


def test_authorize_401_then_403() -> None:
    tokens = Tokens.parse(TOKENS)
    assert authorize(tokens, f"Bearer {TOK_A}", ACME) == ACME
    for header, status in [(None, 401), ("Bearer nope-nope-nope", 401),
                           (f"Bearer {TOK_A}", 403)]:  # fmt: skip
        with pytest.raises(ApiError) as info:
            authorize(tokens, header, GLOBEX)
        assert info.value.status == status


# -- two in-process "workers" ----------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build(PARTITIONS)


def _app(name: str, tmp: Path, scenario: Scenario) -> Any:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", partitions=PARTITIONS,
                        web_tokens=SecretStr(TOKENS))  # fmt: skip
    app = create_app(settings, data_dir=tmp / name, app_id=f"web-unit-{name}", store="memory://")
    for stage in STAGES:  # the worker's tables (pipeline.agents declares the same)
        app.Table(stage.name, partitions=PARTITIONS)
    app.Table(CLOCK_TABLE, partitions=PARTITIONS)
    api = register_web(app, settings)
    assert api is not None and register_web(app, settings) is None  # idempotent
    for table, values in scenario.reference.tables.items():
        for key, value in values.items():
            if partition_of(key, PARTITIONS) in OWNED[name]:
                app.tables[table].data[key] = value
    app.web.init_server()
    return app, api


@pytest.fixture
async def clients(
    tmp_path: Path, scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, TestClient]]:
    built = {name: _app(name, tmp_path, scenario) for name in OWNED}
    clients: dict[str, TestClient] = {}
    for name, (app, _) in built.items():
        clients[name] = TestClient(TestServer(app.web.web_app))
        await clients[name].start_server()
    urls = {name: str(c.make_url("")).rstrip("/") for name, c in clients.items()}
    clock_ms = unix_ms(scenario.phases[-1].now)
    for name, (_, api) in built.items():
        owned = OWNED[name]
        monkeypatch.setattr(api.cluster, "me", lambda url=urls[name]: url)
        monkeypatch.setattr(api.cluster, "busy", lambda: None)
        monkeypatch.setattr(
            api.cluster, "members", lambda table: {urls[n]: set(p) for n, p in OWNED.items()}
        )
        monkeypatch.setattr(api.reader, "active_partitions", lambda table, o=owned: set(o))
        monkeypatch.setattr(api.reader, "now_ms", lambda: clock_ms)  # fmt: skip
        clients[name].wo_api = api  # type: ignore[attr-defined]  # for tests that bend it
    try:
        yield clients
    finally:
        for name, c in clients.items():
            await c.close()
            await built[name][0].http_client.close()


async def get(client: TestClient, path: str, token: str | None = TOK_A) -> tuple[int, Any]:
    response = await client.get(path, headers=hdr(token) if token else {})
    body = await response.read()
    assert response.headers["Cache-Control"] == "no-store"
    return response.status, orjson.loads(body)


def expected(scenario: Scenario, tenant: str) -> dict[str, Any]:
    """What every endpoint must answer for ``tenant``, from the reference's tables."""
    tables = scenario.reference.tables
    now = unix_ms(scenario.phases[-1].now)

    def rows(table: str, project: Any) -> list[dict[str, Any]]:
        return [r for k, v in tables[table].items() if k.startswith(f"{tenant}:")
                for r in project(v)]  # fmt: skip

    certs = rows("person_certs", projections.certification_rows)
    return {
        "sla1d": projections.sla_windows(rows("sla_windows", projections.sla_rows),
                                         SLA_SPECS[1], 7, now),
        "sla1h": projections.sla_windows(rows("sla_windows", projections.sla_rows),
                                         SLA_SPECS[0], 168, now),
        "compliance": projections.compliance_windows(
            rows("compliance_windows", projections.compliance_rows), COMPLIANCE_SPECS[0], 30, now),
        "certs": projections.expiring(certs, projections.from_ms(now), 30),
    }  # fmt: skip


def violations_seen(scenario: Scenario, tenant: str, windows: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:  # fmt: skip
    """The tenant's violation events (published and derived) in the windows' span, newest
    first, at most RECENT_MAX: built from the events, not from the tables."""
    events = [e for phase in scenario.phases for e in phase.events] + scenario.reference.derived
    since, until = windows[0]["start"], windows[-1]["end"]
    seen = {
        e.id: {"violationId": str(e.data.violationId),
               "workOrderId": None if e.data.workOrderId is None else str(e.data.workOrderId),
               "regulation": str(e.data.regulation), "requirement": e.data.requirement,
               "severity": str(e.data.severity), "at": projections.iso(unix_ms(e.timestamp))}
        for e in events
        if e.type == "compliance.violation_detected" and e.tenantId == tenant
    }  # fmt: skip
    found = [v for v in seen.values() if since <= v["at"] < until]
    found.sort(key=lambda v: (v["at"], v["violationId"]), reverse=True)
    return found[:RECENT_MAX]


async def test_every_endpoint_answers_the_reference_from_either_worker(
    clients: dict[str, TestClient], scenario: Scenario
) -> None:
    for name, client in clients.items():
        for tenant, token in ((ACME, TOK_A), (GLOBEX, TOK_G)):
            ids, want = scenario.ids[tenant], expected(scenario, tenant)
            t = f"/tenants/{tenant}"
            status, body = await get(client, f"{t}/masters/{ids['master']}/progress", token)
            assert status == 200, (name, body)
            assert body == projections.master_progress(
                scenario.reference.tables["wo_masters"][f"{tenant}:{ids['master']}"]
            )
            assert (body["totalChildren"], body["completedChildren"], body["progressPercent"]) \
                == (3, 2, 66.67)  # fmt: skip
            for role in ("master", "c1", "c2", "c3", "w"):
                status, body = await get(
                    client, f"{t}/work-orders/{ids[role]}/compliance-summary", token
                )
                key = f"{tenant}:{ids[role]}"
                assert status == 200, (name, role, body)
                assert body == projections.compliance_summary(
                    scenario.reference.tables["wo_compliance"][key]
                )
            status, body = await get(client, f"{t}/sla?window=1d&last=7", token)
            assert (status, body["windows"]) == (200, want["sla1d"])
            busy = [w for w in body["windows"] if w["count"]]
            assert busy == [{"start": "2026-03-03T00:00:00.000Z",
                             "end": "2026-03-04T00:00:00.000Z", "count": 2, "onTime": 1,
                             "breached": 1, "meanVariancePercent": 20.0,
                             "maxVariancePercent": 35.0}]  # fmt: skip
            status, body = await get(client, f"{t}/sla?window=1h&last=168", token)
            assert (status, body["windows"]) == (200, want["sla1h"])
            assert len(body["windows"]) == 168
            status, body = await get(client, f"{t}/compliance?window=1d&last=30", token)
            assert (status, body["windows"]) == (200, want["compliance"])
            assert body["recentViolations"] == violations_seen(scenario, tenant, body["windows"])
            assert len(body["recentViolations"]) == {ACME: 5, GLOBEX: 1}[tenant]
            status, body = await get(client, f"{t}/certifications/expiring?within_days=30", token)
            assert (status, body["certifications"]) == (200, want["certs"])
            assert len(body["certifications"]) == 1
            status, body = await get(client, f"{t}/masters", token)
            assert status == 200 and [m["masterId"] for m in body["masters"]] == [ids["master"]]


async def test_a_partition_answered_twice_during_a_rebalance_is_a_503_not_a_double_count(
    clients: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await get(clients["a"], f"/tenants/{ACME}/masters"))[0] == 200
    # b still answers for partition 1, which a now owns (b's view from before a rebalance)
    stale = clients["b"].wo_api  # type: ignore[attr-defined]
    monkeypatch.setattr(stale.reader, "active_partitions", lambda table: {1, 2, 3})
    paths = ("masters", "sla?window=1d&last=3", "compliance?window=1d&last=3",
             "certifications/expiring?within_days=30")  # fmt: skip
    for path in paths:
        status, body = await get(clients["a"], f"/tenants/{ACME}/{path}")
        assert status == 503 and "moved" in body["reason"], (path, body)


async def test_tenant_isolation_and_error_codes(
    clients: dict[str, TestClient], scenario: Scenario
) -> None:
    client = clients["a"]
    g = scenario.ids[GLOBEX]
    a = scenario.ids[ACME]
    master_path = f"/tenants/{GLOBEX}/masters/{g['master']}/progress"
    assert (await get(client, master_path, None))[0] == 401
    response = await client.get(master_path)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await get(client, master_path, "unknown-token-123456"))[0] == 401
    assert (await get(client, master_path, TOK_A))[0] == 403  # acme's token, globex's path
    for path in (f"/tenants/{GLOBEX}/sla?window=1d&last=7", f"/tenants/{GLOBEX}/masters",
                 f"/tenants/{GLOBEX}/compliance?window=1d&last=3",
                 f"/tenants/{GLOBEX}/certifications/expiring?within_days=9",
                 f"/tenants/{GLOBEX}/_local/masters",
                 f"/tenants/{GLOBEX}/work-orders/{g['c1']}/compliance-summary"):  # fmt: skip
        assert (await get(client, path, TOK_A))[0] == 403, path
    # globex's master under acme's path: not acme's key, so not found (never globex's data)
    status, body = await get(client, f"/tenants/{ACME}/masters/{g['master']}/progress")
    assert status == 404 and GLOBEX not in orjson.dumps(body).decode()
    crafted = [f"{a['master']}:x", f"{GLOBEX}:{g['master']}", "..", "..%2F..%2Fglobex",
               "%2e%2e", a["master"] + "%3A" + g["master"], "not-a-uuid"]  # fmt: skip
    for bad in crafted:  # ".." may be resolved by the client: then no route matches (404)
        response = await client.get(f"/tenants/{ACME}/masters/{bad}/progress", headers=hdr(TOK_A))
        text = await response.text()
        assert response.status in (400, 404), (bad, response.status)
        assert g["master"] not in text and GLOBEX not in text.replace(bad, "")
    status, body = await get(client, f"/tenants/{ACME}/masters/{a['master'].upper()}/progress")
    assert status == 200 and body["masterId"] == a["master"]
    status, body = await get(client, f"/tenants/{ACME}/masters/{a['c2']}/progress")
    assert status == 404 and body["error"] == "not_found"
    bad_queries = [
        "sla",
        "sla?window=1w&last=3",
        "sla?window=1d",
        "sla?window=1d&last=0",
        "sla?window=1d&last=31",
        "sla?window=1h&last=721",
        "sla?window=1d&last=x",
        "compliance?window=1h&last=3",
        "certifications/expiring",
        "certifications/expiring?within_days=-1",
        "masters?limit=0",
        "_local/nope",
    ]
    for query in bad_queries:
        status, body = await get(client, f"/tenants/{ACME}/{query}")
        assert status == 400 and body["reason"], (query, body)
    assert (await get(client, "/whoami", TOK_G)) == (200, {"tenant": GLOBEX})
    assert (await get(client, "/whoami", None))[0] == 401
    # Faust's /table pages would read any key of any tenant: not served
    assert (await client.get("/table/")).status == 404
    key = f"{GLOBEX}:{g['master']}"
    assert (await client.get(f"/table/wo_masters/{key}/")).status == 404
    # nor Faust's /router pages (the cluster's assignment and every worker's URL)
    for path in ("/router/", f"/router/wo_masters/{key}/"):
        assert (await client.get(path)).status == 404, path


async def test_routed_request_is_answered_locally_or_503(
    clients: dict[str, TestClient], scenario: Scenario
) -> None:
    a = scenario.ids[ACME]
    key = f"{ACME}:{a['master']}"
    here = "a" if partition_of(key, PARTITIONS) in OWNED["a"] else "b"
    there = "b" if here == "a" else "a"
    path = f"/tenants/{ACME}/masters/{a['master']}/progress"
    headers = {**hdr(TOK_A), "X-WO-Routed": "1"}
    assert (await clients[here].get(path, headers=headers)).status == 200
    assert (await clients[there].get(path, headers=headers)).status == 503  # no second hop


async def test_health_ready_spec_and_dashboard(tmp_path: Path, scenario: Scenario) -> None:
    app, _ = _app("a", tmp_path, scenario)
    async with TestClient(TestServer(app.web.web_app)) as client:
        assert (await client.get("/health")).status == 200
        response = await client.get("/ready")  # never started: no recovery yet
        assert response.status == 503 and (await response.json())["ready"] is False
        response = await client.get("/tenants/acme/sla?window=1d&last=3", headers=hdr(TOK_A))
        assert response.status == 503
        served = await (await client.get("/openapi.json")).json()
        page = await client.get("/")
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        assert "<script>" in html and "http://" not in html.replace("http://www.w3.org", "")
    assert served == spec() == orjson.loads((REPO / "docs" / "openapi.json").read_bytes())


def test_committed_openapi_is_current() -> None:
    path = REPO / "docs" / "openapi.json"
    if os.environ.get("WO_UPDATE_DOCS") == "1":
        path.write_bytes(dumps())
    assert path.read_bytes() == dumps(), "run WO_UPDATE_DOCS=1 pytest tests/test_web_unit.py"
    paths = spec()["paths"]
    for path_ in ("/tenants/{tenant}/masters/{masterId}/progress", "/tenants/{tenant}/sla",
                  "/tenants/{tenant}/compliance", "/tenants/{tenant}/certifications/expiring",
                  "/tenants/{tenant}/work-orders/{workOrderId}/compliance-summary", "/health",
                  "/ready"):  # fmt: skip
        assert path_ in paths
    # Prometheus metrics are served on their own port (tenant labels), not next to the API
    assert "/metrics" not in paths


def test_every_compliance_row_names_a_window(scenario: Scenario) -> None:
    """Nodes gather each other's rows; one still on older code looks up r["window"] on each,
    so the recent-violation rows carry one that is never a window name."""
    rows = [r for v in scenario.reference.tables["compliance_windows"].values()
            for r in projections.compliance_rows(v)]  # fmt: skip
    recent = [r for r in rows if "violation" in r]
    assert recent and all(r["window"] == "recent" for r in recent)
    assert all("window" in r for r in rows)
    assert {s.name for s in COMPLIANCE_SPECS}.isdisjoint({"recent"})


def test_one_event_stamped_far_ahead_does_not_blank_the_current_windows() -> None:
    from tables.config import DEFAULT_CONFIG

    day = DEFAULT_CONFIG.compliance_windows[0]
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    today = day.start_of(int(now.timestamp() * 1000))
    rows = [
        {"window": "1d", "startMs": today, "count": 5, "violationsBySeverity": {"HIGH": 5}},
        {"window": "1d", "startMs": today + 365 * day.size_ms,  # a producer clock a year off
         "count": 1, "violationsBySeverity": {"LOW": 1}},
    ]  # fmt: skip
    out = projections.compliance_windows(rows, day, 3, int(now.timestamp() * 1000))
    assert [w["violations"] for w in out] == [0, 0, 5]  # today is still the newest window
    tomorrow = [{**rows[1], "startMs": today + day.size_ms}]  # slightly ahead: shown
    ahead = projections.compliance_windows(rows[:1] + tomorrow, day, 3, int(now.timestamp() * 1000))
    assert [w["violations"] for w in ahead] == [0, 5, 1]


def test_days_until_expiry_is_floored_like_the_event() -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    row = {"personId": "p", "experienceId": "x", "certification": "c"}
    expired_12h = {**row, "expirationDate": "2026-03-10T00:00:00Z"}
    in_36h = {**row, "experienceId": "y", "expirationDate": "2026-03-12T00:00:00Z"}
    out = projections.expiring([expired_12h, in_36h], now, 7)
    assert [(r["daysUntilExpiry"], r["expired"]) for r in out] == [(-1, True), (1, False)]
