"""The worker's HTTP API and dashboard on Faust's web server (``register_web(app)``).

Endpoints (JSON; one tenant per bearer token, ``WO_WEB_TOKENS``): see ``pipeline.web.openapi``
and ``docs/openapi.json``. Routing of key lookups and tenant-wide reads: ``pipeline.web.cluster``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import orjson

from pipeline.settings import Settings, get_settings
from pipeline.web.api import Api
from pipeline.web.auth import CHALLENGE, Tokens
from pipeline.web.cluster import Cluster, Reply
from pipeline.web.errors import ApiError
from pipeline.web.health import health, ready
from pipeline.web.openapi import spec
from pipeline.web.store import TableReader

__all__ = ["register_web"]

log = logging.getLogger(__name__)

DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"
JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store"}
# Faust's built-in pages that must not be served: ``/table`` reads any key of any table
# without authentication (every tenant's data); ``/router`` lists the cluster's assignment and
# every worker's URL, unauthenticated (pipeline.web.cluster routes by itself); the production
# index takes ``/``.
_DROPPED_BLUEPRINTS = frozenset(
    {"faust.web.apps.tables.blueprint", "faust.web.apps.production_index:blueprint",
     "faust.web.apps.stats:blueprint", "faust.web.apps.graph:blueprint",
     "faust.web.apps.router:blueprint"}
)  # fmt: skip
_registered: weakref.WeakSet[faust.App] = weakref.WeakSet()

Handler = Callable[..., Awaitable[Reply]]


def _drop_builtin_pages(app: faust.App) -> None:
    blueprints = app.web.blueprints
    if blueprints.applied:
        raise RuntimeError("register_web(app) must run before the web server starts")
    blueprints._enabled = [(p, b) for p, b in blueprints._enabled if b not in _DROPPED_BLUEPRINTS]


def _page(app: faust.App, path: str, name: str, handler: Handler) -> None:
    async def view(self: Any, request: Any, **match: str) -> Any:
        headers = dict(NO_STORE)
        try:
            reply = await handler(request, **match)
        except ApiError as exc:
            if exc.status == 401:
                headers.update(CHALLENGE)
            reply = Reply(exc.status, orjson.dumps(exc.body()))
        except Exception:
            log.exception("web view %s failed", name)  # the view's name only: no ids, no values
            reply = Reply(500, orjson.dumps({"error": "internal", "reason": "internal error"}))
        return self.bytes(reply.body, content_type=JSON, status=reply.status, headers=headers)

    view.__name__ = name
    app.page(path, name=name)(view)


def _static(app: faust.App, path: str, name: str, body: Callable[[], bytes], ctype: str) -> None:
    async def view(self: Any, request: Any) -> Any:
        return self.bytes(body(), content_type=ctype, headers=dict(NO_STORE))

    view.__name__ = name
    app.page(path, name=name)(view)


def register_web(app: faust.App, settings: Settings | None = None) -> Api | None:
    """Serve the tenant API, ``/health``, ``/ready``, ``/openapi.json`` and the dashboard at
    ``/`` on ``app``'s web server (call after the tables are declared). Idempotent."""
    if app in _registered:
        return None
    _registered.add(app)
    settings = settings or get_settings()
    tokens = Tokens.parse(settings.web_tokens)
    if not tokens:
        log.warning("WO_WEB_TOKENS is unset: every tenant endpoint answers 401")
    from pipeline.agents import CLOCK_TABLE
    from pipeline.agents.config import WorkerSettings

    controlled = WorkerSettings().clock == "control"
    reader = TableReader(app, clock_table=CLOCK_TABLE if controlled else None)
    cluster = Cluster(app, reader)
    api = Api(tokens, reader, cluster)
    _drop_builtin_pages(app)

    async def health_view(request: Any) -> Reply:
        status, body = health(app)
        return Reply(status, orjson.dumps(body))

    async def ready_view(request: Any) -> Reply:
        status, body = ready(cluster)
        return Reply(status, orjson.dumps(body))

    openapi = orjson.dumps(spec(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    _static(app, "/", "wo_dashboard", DASHBOARD.read_bytes, "text/html")
    _static(app, "/openapi.json", "wo_openapi", lambda: openapi, JSON)
    _page(app, "/health", "wo_health", health_view)
    _page(app, "/ready", "wo_ready", ready_view)
    _page(app, "/whoami", "wo_whoami", api.whoami)
    t = "/tenants/{tenant}"
    _page(app, f"{t}/masters", "wo_masters", api.masters)
    _page(app, t + "/masters/{master_id}/progress", "wo_master_progress", api.master_progress)
    _page(app, f"{t}/sla", "wo_sla", api.sla)
    _page(app, f"{t}/compliance", "wo_compliance", api.compliance)
    _page(app, f"{t}/certifications/expiring", "wo_certifications_expiring", api.expiring)
    _page(app, t + "/work-orders/{work_order_id}/compliance-summary",
          "wo_compliance_summary", api.compliance_summary)  # fmt: skip
    _page(app, t + "/_local/{kind}", "wo_local", api.local)
    return api
