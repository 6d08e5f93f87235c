"""The tenant endpoints: authorize first, then validate, then read (routed or gathered).

Every handler checks that the bearer token grants the path's tenant *before* anything else,
builds table keys only as ``{path tenant}:{validated id}`` and serves only values whose
``tenant`` is that tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.web import params, projections
from pipeline.web.auth import Tokens, authorize, caller_tenant
from pipeline.web.cluster import ROUTED, Cluster, Reply
from pipeline.web.errors import bad_request, not_found, unavailable
from pipeline.web.store import Row, TableReader
from tables import certifications, compliance, master_progress, sla


@dataclass(frozen=True, slots=True)
class Kind:
    """A tenant-wide read: the table and the projection of one value into rows."""

    table: str
    project: Callable[[Row], list[Row]]


KINDS: dict[str, Kind] = {
    "sla": Kind(sla.WINDOWS_STAGE, projections.sla_rows),
    "compliance": Kind(compliance.AGGREGATE_STAGE, projections.compliance_rows),
    "certifications": Kind(certifications.PERSON_STAGE, projections.certification_rows),
    "masters": Kind(master_progress.MASTER_STAGE, lambda v: [projections.master_row(v)]),
}


def ok(body: Any) -> Reply:
    """200 with ``body`` as JSON."""
    return Reply(200, orjson.dumps(body))


class Api:
    """Handlers of the tenant endpoints; each returns a :class:`Reply` or raises ApiError."""

    def __init__(self, tokens: Tokens, reader: TableReader, cluster: Cluster) -> None:
        self.tokens = tokens
        self.reader = reader
        self.cluster = cluster

    # -- routing -----------------------------------------------------------------------------

    async def _keyed(self, request: Any, table: str, key: str,
                     render: Callable[[Row], Row], what: str) -> Reply:  # fmt: skip
        """The value under ``key``, from this worker if it owns the key, else from the owner."""
        self.cluster.check_ready()
        owner = self.cluster.owner(table, key)
        if owner is not None:
            if request.headers.get(ROUTED):
                raise unavailable("the key's owner moved; retry")
            auth = request.headers.get("Authorization", "")
            return await self.cluster.get(owner, str(request.rel_url), auth)
        value = self.reader.get(table, key)
        if value is None:
            raise not_found(f"no {what} with this id")
        return ok(render(value))

    async def _gather(self, request: Any, tenant: str, kind: str) -> list[Row]:
        """Rows of ``kind`` for ``tenant`` from every worker; 503 unless all partitions answered."""
        self.cluster.check_ready()
        spec = KINDS[kind]
        members = self.cluster.members(spec.table)
        me = self.cluster.me()
        auth = request.headers.get("Authorization", "")
        path = f"/tenants/{tenant}/_local/{kind}"

        async def one(url: str) -> Any:
            if url == me:
                parts, rows = self.reader.scan(spec.table, tenant, spec.project)
                return {"partitions": parts, "rows": rows}
            return await self.cluster.get_json(url, path, auth)

        answers = await asyncio.gather(*(one(url) for url in members))
        covered: set[int] = set()
        rows: list[Row] = []
        for answer in answers:
            parts = set(answer["partitions"])
            if parts & covered:
                # Two workers answered for one partition (one of them from before a
                # rebalance): its rows would be counted twice.
                raise unavailable("partitions moved during the request; retry")
            covered |= parts
            rows += answer["rows"]
        if self.cluster.missing(spec.table, covered):
            raise unavailable("not every partition answered; retry")
        self.cluster.check_ready()  # no rebalance began while the answers came in
        if self.cluster.members(spec.table) != members:
            raise unavailable("partitions moved during the request; retry")
        return rows

    # -- endpoints ---------------------------------------------------------------------------

    async def whoami(self, request: Any) -> Reply:
        """``GET /whoami``: the tenant the token grants."""
        return ok({"tenant": caller_tenant(self.tokens, request.headers.get("Authorization"))})

    async def master_progress(self, request: Any, tenant: str, master_id: str) -> Reply:
        """``GET /tenants/{tenant}/masters/{masterId}/progress``."""
        authorize(self.tokens, request.headers.get("Authorization"), tenant)
        key = f"{tenant}:{params.entity_id(master_id, 'masterId')}"
        return await self._keyed(request, master_progress.MASTER_STAGE, key,
                                 projections.master_progress, "master")  # fmt: skip

    async def compliance_summary(self, request: Any, tenant: str, work_order_id: str) -> Reply:
        """``GET /tenants/{tenant}/work-orders/{workOrderId}/compliance-summary``."""
        authorize(self.tokens, request.headers.get("Authorization"), tenant)
        key = f"{tenant}:{params.entity_id(work_order_id, 'workOrderId')}"
        return await self._keyed(request, compliance.SUMMARY_STAGE, key,
                                 projections.compliance_summary, "work order")  # fmt: skip

    async def masters(self, request: Any, tenant: str) -> Reply:
        """``GET /tenants/{tenant}/masters?limit=N``: masters by id, counts only."""
        authorize(self.tokens, request.headers.get("Authorization"), tenant)
        limit = params.integer(request.query, "limit", 1, params.MAX_MASTERS, default=100)
        rows = sorted(await self._gather(request, tenant, "masters"), key=lambda r: r["masterId"])
        return ok({"tenant": tenant, "total": len(rows), "masters": rows[:limit]})

    async def sla(self, request: Any, tenant: str) -> Reply:
        """``GET /tenants/{tenant}/sla?window=1h|1d&last=N``."""
        authorize(self.tokens, request.headers.get("Authorization"), tenant)
        q = params.window_query(request.query, params.SLA_SPECS)
        rows = await self._gather(request, tenant, "sla")
        now = self.reader.now_ms()
        windows = projections.sla_windows(rows, q.spec, q.last, now)
        return ok({"tenant": tenant, "window": q.spec.name, "last": q.last,
                   "now": projections.iso(now), "windows": windows})  # fmt: skip

    async def compliance(self, request: Any, tenant: str) -> Reply:
        """``GET /tenants/{tenant}/compliance?window=1d&last=N``."""
        authorize(self.tokens, request.headers.get("Authorization"), tenant)
        q = params.window_query(request.query, params.COMPLIANCE_SPECS)
        rows = await self._gather(request, tenant, "compliance")
        now = self.reader.now_ms()
        windows = projections.compliance_windows(rows, q.spec, q.last, now)
        recent = projections.recent_violations(rows, q.spec, q.last, now)
        return ok({"tenant": tenant, "window": q.spec.name, "last": q.last,
                   "now": projections.iso(now), "windows": windows,
                   "recentViolations": recent})  # fmt: skip

    async def expiring(self, request: Any, tenant: str) -> Reply:
        """``GET /tenants/{tenant}/certifications/expiring?within_days=D``."""
        authorize(self.tokens, request.headers.get("Authorization"), tenant)
        within = params.integer(request.query, "within_days", 0, params.MAX_EXPIRY_DAYS)
        rows = await self._gather(request, tenant, "certifications")
        now_ms = self.reader.now_ms()
        now = projections.from_ms(now_ms)
        found = projections.expiring(rows, now, within)
        return ok({"tenant": tenant, "withinDays": within, "now": projections.iso(now_ms),
                   "certifications": found})  # fmt: skip

    async def local(self, request: Any, tenant: str, kind: str) -> Reply:
        """``GET /tenants/{tenant}/_local/{kind}``: this worker's share of a gather (internal)."""
        authorize(self.tokens, request.headers.get("Authorization"), tenant)
        spec = KINDS.get(kind)
        if spec is None:
            raise bad_request(f"kind must be one of {'|'.join(KINDS)}")
        self.cluster.check_ready()
        parts, rows = self.reader.scan(spec.table, tenant, spec.project)
        return ok({"partitions": parts, "rows": rows})
