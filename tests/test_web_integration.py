"""The web API and dashboard on the real embedded stack, served by two Faust workers.

Both workers (``python -m pipeline.web``, a private Tansu broker, control clock) process the
worker scenario (tests/apps/worker_scenario.py); then every endpoint is asked on *both*
workers' ports and must answer the reference driver's numbers: key lookups are routed to the
key's owner, tenant-wide reads gathered from both. Headless Chromium loads the dashboard with
a token, compares what it shows with the JSON endpoints, is refused another tenant's data,
and saves a screenshot (``artifacts/dashboard.png``; also ``docs/dashboard.png`` with
``WO_UPDATE_DOCS=1``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.embedded import EmbeddedStack
from pipeline.settings import Settings
from pipeline.topics import partition_of
from pipeline.web import projections
from tests.apps.worker_harness import REPO_ROOT, Broker, PipelineWorker
from tests.apps.worker_scenario import ACME, GLOBEX, INITECH, Scenario, build
from tests.test_web_unit import TOK_A, TOK_G, TOK_I, TOKENS, expected
from tests.test_worker_pipeline import run_phases, wait_assigned

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PARTITIONS = 4
TOKEN = {ACME: TOK_A, GLOBEX: TOK_G, INITECH: TOK_I}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip


class WebWorker(PipelineWorker):
    """A worker with the web API (``python -m pipeline.web``) and the scenario's tokens."""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "pipeline.web"]

    def env(self) -> dict[str, str]:
        return {**super().env(), "WO_WEB_TOKENS": TOKENS}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def call(worker: WebWorker, path: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
        http.get(worker.url + path, headers=headers) as response,
    ):
        body = await response.read()
        try:
            return response.status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return response.status, body.decode(errors="replace")


async def wait_ready(*workers: WebWorker, limit: float = 60.0) -> None:
    """Until every worker's /ready says 200."""
    started = time.monotonic()
    while not all([(await call(w, "/ready", None))[0] == 200 for w in workers]):
        for w in workers:
            w.check_healthy()
        assert time.monotonic() - started < limit, "\n".join(
            w.describe(stuck=True) for w in workers
        )
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build(PARTITIONS)


@pytest.fixture(scope="module")
async def workers(
    tmp_path_factory: pytest.TempPathFactory, scenario: Scenario
) -> AsyncIterator[tuple[WebWorker, WebWorker]]:
    """Two web workers that processed the whole scenario (timings printed)."""
    tmp = tmp_path_factory.mktemp("web")
    timings: dict[str, float] = {}
    with EmbeddedStack(tmp / "stack", settings=Settings(nats_url=None, kafka_bootstrap=None)) as st:
        app_id = f"wo-web-{uuid.uuid4().hex[:8]}"
        made = [
            WebWorker(bootstrap=st.kafka_bootstrap, app_id=app_id, data_dir=tmp / f"data-{n}",
                      log_dir=tmp, partitions=PARTITIONS, name=n)
            for n in ("a", "b")
        ]  # fmt: skip
        a, b = made
        try:
            async with Broker(st.kafka_bootstrap, app_id, PARTITIONS) as broker:
                started = time.monotonic()
                a.start()
                await wait_assigned(broker, a)
                b.start()
                await wait_assigned(broker, a, b)
                await wait_ready(a, b)
                timings["two workers up"] = time.monotonic() - started
                started = time.monotonic()
                await run_phases(broker, scenario, [a, b], range(len(scenario.phases)))
                timings["scenario"] = time.monotonic() - started
                print("\n" + "; ".join(f"{k}: {v:.1f}s" for k, v in timings.items()))
                yield a, b
                for w in made:
                    w.stop()
        finally:
            for w in made:
                w.cleanup()


def owned(worker_status: dict[str, Any]) -> set[int]:
    return set(worker_status["assigned"])


async def test_every_endpoint_answers_the_scenario_on_both_workers(
    workers: tuple[WebWorker, WebWorker], scenario: Scenario
) -> None:
    tables = scenario.reference.tables
    routed = 0
    started = time.monotonic()
    for worker in workers:
        mine = owned(await worker.status() or {})
        assert mine and mine != set(range(PARTITIONS)), mine  # both own a share
        for tenant in (ACME, GLOBEX, INITECH):
            token, want, t = TOKEN[tenant], expected(scenario, tenant), f"/tenants/{tenant}"
            status, body = await call(worker, f"{t}/sla?window=1d&last=7", token)
            assert (status, body["windows"]) == (200, want["sla1d"]), body
            assert body["now"] == projections.iso_at(scenario.phases[-1].now)
            status, body = await call(worker, f"{t}/sla?window=1h&last=168", token)
            assert (status, body["windows"]) == (200, want["sla1h"]), body
            status, body = await call(worker, f"{t}/compliance?window=1d&last=30", token)
            assert (status, body["windows"]) == (200, want["compliance"]), body
            status, body = await call(worker, f"{t}/certifications/expiring?within_days=30", token)
            assert (status, body["certifications"]) == (200, want["certs"]), body
            status, body = await call(worker, f"{t}/masters?limit=1000", token)
            masters = sorted(k.split(":", 1)[1] for k in tables["wo_masters"]
                             if k.startswith(f"{tenant}:"))  # fmt: skip
            assert [m["masterId"] for m in body["masters"]] == masters
        # every key-routed answer, of every tenant, from this worker's port
        for table, path, render in (
            ("wo_masters", "masters/{}/progress", projections.master_progress),
            ("wo_compliance", "work-orders/{}/compliance-summary", projections.compliance_summary),
        ):
            for key, value in tables[table].items():
                tenant, entity = key.split(":", 1)
                status, body = await call(
                    worker, f"/tenants/{tenant}/" + path.format(entity), TOKEN[tenant]
                )
                assert (status, body) == (200, render(value)), (worker.name, key)
                routed += partition_of(key, PARTITIONS) not in mine
    # the scenario's hand-checked numbers, once more on the wire
    a = workers[0]
    status, body = await call(a, f"/tenants/{INITECH}/sla?window=1d&last=7", TOK_I)
    day = [w for w in body["windows"] if w["count"]]
    assert [(w["count"], w["onTime"], w["breached"], w["meanVariancePercent"],
             w["maxVariancePercent"]) for w in day] == [(150, 150, 75, 15.0, 30.0)]  # fmt: skip
    ids = scenario.ids[ACME]
    status, body = await call(a, f"/tenants/{ACME}/masters/{ids['master']}/progress", TOK_A)
    assert (body["completedChildren"], body["totalChildren"], body["progressPercent"]) == (
        2, 3, 66.67)  # fmt: skip
    assert routed > 0
    print(f"\n{routed} key lookups routed to the other worker; "
          f"all endpoints x 2 workers in {time.monotonic() - started:.1f}s")  # fmt: skip


async def test_401_403_400_404_on_the_real_stack(
    workers: tuple[WebWorker, WebWorker], scenario: Scenario
) -> None:
    g, ac = scenario.ids[GLOBEX], scenario.ids[ACME]
    master_g = f"/tenants/{GLOBEX}/masters/{g['master']}/progress"
    for worker in workers:
        assert (await call(worker, master_g, None))[0] == 401
        assert (await call(worker, master_g, "not-a-known-token-000"))[0] == 401
        status, body = await call(worker, master_g, TOK_A)  # acme's token, globex's master
        assert status == 403 and g["master"] not in orjson.dumps(body).decode()
        status, body = await call(worker, f"/tenants/{ACME}/masters/{g['master']}/progress",
                                  TOK_A)  # fmt: skip
        assert status == 404 and body["error"] == "not_found"  # not acme's key: not found
        for crafted in (f"{GLOBEX}:{g['master']}", f"{ac['master']}%3A..", "..%2F" + g["master"]):
            status, body = await call(worker, f"/tenants/{ACME}/masters/{crafted}/progress",
                                      TOK_A)  # fmt: skip
            assert status in (400, 404) and g["master"] not in str(body), crafted
        status, body = await call(worker, f"/tenants/{ACME}/sla?window=2d&last=3", TOK_A)
        assert status == 400 and "window" in body["reason"]
        status, body = await call(worker, f"/tenants/{ACME}/compliance?window=1d&last=99", TOK_A)
        assert status == 400 and "last" in body["reason"]
        status, _ = await call(worker, f"/tenants/{ACME}/work-orders/{uuid.uuid4()}"
                                       "/compliance-summary", TOK_A)  # fmt: skip
        assert status == 404


async def test_health_ready_metrics_and_spec(workers: tuple[WebWorker, WebWorker]) -> None:
    committed = orjson.loads((REPO_ROOT / "docs" / "openapi.json").read_bytes())
    for worker in workers:
        assert await call(worker, "/health", None) == (200, {"status": "ok"})
        assert await call(worker, "/ready", None) == (200, {"ready": True})
        # tenant-labelled metrics are not on the tenant API's port, with or without a token
        assert (await call(worker, "/metrics", None))[0] == 404
        assert (await call(worker, "/metrics", TOK_A))[0] == 404
        text = await worker.metrics()
        assert text is not None and "wo_worker_events_processed_total" in text
        assert "faust_messages_received" in text  # Faust's sensor, on the same registry
        assert await call(worker, "/openapi.json", None) == (200, committed)
        assert (await call(worker, "/table/", None))[0] == 404
        assert (await call(worker, "/router/", None))[0] == 404


async def test_dashboard_in_headless_chromium(
    workers: tuple[WebWorker, WebWorker], scenario: Scenario
) -> None:
    playwright = pytest.importorskip("playwright.async_api")
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    a, b = workers
    t = f"/tenants/{ACME}"
    ids = scenario.ids[ACME]
    want_master = (await call(b, f"{t}/masters/{ids['master']}/progress", TOK_A))[1]
    want_sla = (await call(b, f"{t}/sla?window=1d&last=14", TOK_A))[1]["windows"]
    comp_answer = (await call(b, f"{t}/compliance?window=1d&last=14", TOK_A))[1]
    want_comp, want_recent = comp_answer["windows"], comp_answer["recentViolations"]
    want_certs = (await call(b, f"{t}/certifications/expiring?within_days=30", TOK_A))[1]
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{a.url}/#token={TOK_A}&refresh=2")
            await page.wait_for_selector("body[data-loaded]", timeout=30_000)
            assert "token" not in await page.evaluate("location.href")  # moved out of the URL
            assert await page.inner_text("#tenant") == ACME
            shown = await page.eval_on_selector_all(
                "#master-detail [data-field]", "ns => ns.map(n => [n.dataset.field, n.textContent])"
            )
            assert {k: v for k, v in shown} == {k: str(want_master[k]) for k, _ in shown}
            rows = await table(page, "#sla-table")
            busy = [w for w in reversed(want_sla) if w["count"]]
            assert rows == [[w["start"][:10], str(w["count"]), str(w["onTime"]), str(w["breached"]),
                             f"{w['meanVariancePercent']:.2f}", f"{w['maxVariancePercent']:.2f}"]
                            for w in busy]  # fmt: skip
            bars = await page.eval_on_selector_all("#sla-chart rect", "rs => rs.length")
            assert bars == sum(1 for w in busy for v in (w["count"], w["onTime"], w["breached"])
                               if v > 0)  # fmt: skip
            comp = [w for w in reversed(want_comp) if w["count"]]
            assert await table(page, "#compliance-table") == [
                [w["start"][:10], str(w["count"]), str(w["violations"]),
                 str(sum(w["signaturesByResult"].values())), str(sum(w["phiByAction"].values())),
                 str(sum(w["escalationsByReason"].values()))] for w in comp]  # fmt: skip
            assert len(want_recent) == 5  # the scenario's acme violations
            assert await table(page, "#violations-table") == [
                [v["at"][:16].replace("T", " "), v["severity"], v["regulation"], v["requirement"],
                 v["workOrderId"] or "-"] for v in want_recent]  # fmt: skip
            certs = await table(page, "#certs-table")
            assert [[r[0], r[3]] for r in certs] == [
                [c["personId"], str(c["daysUntilExpiry"])] for c in want_certs["certifications"]
            ]
            await page.wait_for_function("Number(document.body.dataset.loaded) >= 2",
                                         timeout=30_000)  # fmt: skip
            artifacts = REPO_ROOT / "artifacts"
            artifacts.mkdir(exist_ok=True)
            await page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
            if os.environ.get("WO_UPDATE_DOCS") == "1":
                shutil.copyfile(artifacts / "dashboard.png", REPO_ROOT / "docs" / "dashboard.png")
            # another tenant's data: refused, in the page and by a crafted fetch
            token = "'Bearer ' + sessionStorage.getItem('wo-stream-token')"
            status = await page.evaluate(
                f"fetch('/tenants/{GLOBEX}/sla?window=1d&last=3', "
                f"{{headers: {{Authorization: {token}}}}}).then(r => r.status)")  # fmt: skip
            assert status == 403
            other = await browser.new_page()
            await other.goto(f"{a.url}/#token={TOK_A}&tenant={GLOBEX}")
            await other.wait_for_selector("body[data-error='403']", timeout=30_000)
            assert "403" in await other.inner_text("#status")
            assert await other.is_hidden("#panels")
            html = await other.content()
            assert scenario.ids[GLOBEX]["master"] not in html
        finally:
            await browser.close()


async def table(page: Any, selector: str) -> list[list[str]]:
    """The text of each body row's cells (rows saying "nothing yet" left out)."""
    rows = await page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rs => rs.map(r => [...r.cells].map(c => c.textContent.trim()))")  # fmt: skip
    return [r for r in rows if r != ["nothing yet"]]
