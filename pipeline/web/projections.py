"""Pure projections from table values (JSON dicts) to API answers; no Faust, no I/O.

Values are read back with the tables' own models (``tables/*``), so the numbers are computed
exactly as the reducers define them. Every item carries only its own tenant's data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from tables.certifications import PersonCertifications
from tables.compliance import (
    RECENT_MAX,
    ComplianceAggregate,
    ComplianceWindows,
    WorkOrderCompliance,
)
from tables.config import DEFAULT_CONFIG, TenantConfig
from tables.master_progress import MasterProgress
from tables.sla import SlaAggregate, SlaWindows
from tables.windows import WindowSpec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = timedelta(days=1)


def from_ms(ms: int) -> datetime:
    """Epoch ms as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def iso(ms: int) -> str:
    """Epoch ms as ISO-8601 UTC with a ``Z``."""
    at = _EPOCH + timedelta(milliseconds=ms)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_at(at: datetime) -> str:
    """A datetime as ISO-8601 UTC with a ``Z``."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def master_progress(value: dict[str, Any]) -> dict[str, Any]:
    """``GET .../masters/{id}/progress``: counts and the linked children's statuses."""
    st = MasterProgress.from_dict(value)
    children = sorted(
        ({"workOrderId": cid, "status": c.status} for cid, c in st.children.items() if c.linked),
        key=lambda c: c["workOrderId"],
    )
    return {"tenant": st.tenant, "masterId": st.masterId, **st.counts(), "children": children}


def master_row(value: dict[str, Any]) -> dict[str, Any]:
    """One master in the tenant's list (counts only)."""
    st = MasterProgress.from_dict(value)
    return {"masterId": st.masterId, **st.counts()}


def compliance_summary(value: dict[str, Any]) -> dict[str, Any]:
    """``GET .../work-orders/{id}/compliance-summary``: what the pipeline observed."""
    st = WorkOrderCompliance.from_dict(value)
    summary = st.summary().model_dump(mode="json")
    return {"tenant": st.tenant, "workOrderId": st.workOrderId, **summary}


def _sla_row(name: str, start: int, agg: SlaAggregate) -> dict[str, Any]:
    return {
        "window": name,
        "startMs": start,
        "count": agg.count,
        "onTime": agg.onTime,
        "breached": agg.breached,
        "varianceSum": agg.varianceSum,
        "maxVariancePercent": agg.varianceMax,
    }


def sla_rows(value: dict[str, Any]) -> list[dict[str, Any]]:
    """Every window of one SLA shard (a tenant's day), for the gather step."""
    st = SlaWindows.from_dict(value)
    return [
        _sla_row(name, start, agg)
        for name, windows in st.windows.items()
        for start, agg in windows.items()
    ]


def compliance_rows(value: dict[str, Any]) -> list[dict[str, Any]]:
    """Every window of one compliance shard (a tenant's day) and its recent violations (rows
    with a ``violation``), for the gather step."""
    st = ComplianceWindows.from_dict(value)
    return [
        *(
            {"window": name, "startMs": start, **agg.model_dump(mode="json")}
            for name, windows in st.windows.items()
            for start, agg in windows.items()
        ),
        # "window": "recent" (never a window name) keeps these rows out of a window lookup on
        # a node still running the code from before they existed (rolling upgrade).
        *({"window": "recent", "violation": v.model_dump(mode="json")} for v in st.recent),
    ]


def certification_rows(value: dict[str, Any], config: TenantConfig = DEFAULT_CONFIG
                       ) -> list[dict[str, Any]]:  # fmt: skip
    """One person's certifications with the open work orders an expiry would affect."""
    st = PersonCertifications.from_dict(value)
    rows = []
    for experience, cert in sorted(st.certs.items()):
        floor = cert.expirationDate - config.certification_horizon
        affected = sorted(
            wo for wo, a in st.assignments.items() if a.open and a.scheduledEnd > floor
        )
        rows.append(
            {
                "personId": st.personId,
                "experienceId": experience,
                "certification": cert.certification,
                "expirationDate": iso_at(cert.expirationDate),
                "affectedWorkOrders": affected,
            }
        )
    return rows


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def expiring(rows: Iterable[dict[str, Any]], now: datetime, within_days: int
             ) -> list[dict[str, Any]]:  # fmt: skip
    """Certifications expiring by ``now + within_days`` (already expired ones included, flagged),
    soonest first, with whole days until expiry (negative once expired)."""
    limit = now + timedelta(days=within_days)
    out = []
    for row in rows:
        expiry = _parse(row["expirationDate"])
        if expiry <= limit:
            # whole days, floored like the certification_expiring event's daysUntilExpiry:
            # expired 12 h ago is -1, not 0
            days = math.floor((expiry - now) / _DAY)
            out.append({**row, "daysUntilExpiry": days, "expired": expiry <= now})
    return sorted(out, key=lambda r: (r["expirationDate"], r["personId"], r["experienceId"]))


def _windows_of(rows: Iterable[dict[str, Any]], spec: WindowSpec) -> dict[int, dict[str, Any]]:
    return {r["startMs"]: r for r in rows if r.get("window") == spec.name}


def _anchor(spec: WindowSpec, starts: Iterable[int], now_ms: int) -> int:
    """Start of the newest window: the one holding ``now``, or the next one if it already
    holds data (producer clocks run a little ahead). Data further ahead does not move it: one
    event stamped a year ahead would otherwise blank the current windows."""
    current = spec.start_of(now_ms)
    ahead = current + spec.size_ms
    return max([current, *(s for s in starts if s <= ahead)])


def sla_windows(rows: Iterable[dict[str, Any]], spec: WindowSpec, last: int, now_ms: int
                ) -> list[dict[str, Any]]:  # fmt: skip
    """The ``last`` consecutive ``spec`` windows ending with the newest, oldest first; empty
    windows included (count 0, variance null). Mean variance = sum / count."""
    by_start = _windows_of(rows, spec)
    newest = _anchor(spec, by_start, now_ms)
    out = []
    for n in range(last - 1, -1, -1):
        start = newest - n * spec.size_ms
        agg = by_start.get(start, {})
        count = agg.get("count", 0)
        out.append(
            {
                "start": iso(start),
                "end": iso(start + spec.size_ms),
                "count": count,
                "onTime": agg.get("onTime", 0),
                "breached": agg.get("breached", 0),
                "meanVariancePercent": agg["varianceSum"] / count if count else None,
                "maxVariancePercent": agg.get("maxVariancePercent"),
            }
        )
    return out


def compliance_windows(rows: Iterable[dict[str, Any]], spec: WindowSpec, last: int,
                       now_ms: int) -> list[dict[str, Any]]:  # fmt: skip
    """The ``last`` consecutive compliance windows ending with the newest, oldest first."""
    by_start = _windows_of(rows, spec)
    newest = _anchor(spec, by_start, now_ms)
    empty = ComplianceAggregate().model_dump(mode="json")
    out = []
    for n in range(last - 1, -1, -1):
        start = newest - n * spec.size_ms
        agg = {k: v for k, v in by_start.get(start, empty).items() if k in empty}
        violations = sum(agg["violationsBySeverity"].values())
        out.append(
            {"start": iso(start), "end": iso(start + spec.size_ms), **agg,
             "violations": violations}
        )  # fmt: skip
    return out


def recent_violations(rows: list[dict[str, Any]], spec: WindowSpec, last: int, now_ms: int,
                      limit: int = RECENT_MAX) -> list[dict[str, Any]]:  # fmt: skip
    """The newest ``limit`` violations in the windows :func:`compliance_windows` shows for the
    same arguments, newest first (event time, then id).

    Each shard keeps its own newest ``RECENT_MAX``, so the newest ``limit`` of the period are
    always among them."""
    newest = _anchor(spec, _windows_of(rows, spec), now_ms)
    since_ms, until_ms = newest - (last - 1) * spec.size_ms, newest + spec.size_ms
    found = [
        r["violation"] for r in rows
        if "violation" in r and since_ms <= r["violation"]["at"] < until_ms
    ]  # fmt: skip
    found.sort(key=lambda v: (v["at"], v["violationId"]), reverse=True)
    return [{**v, "at": iso(v["at"])} for v in found[:limit]]
