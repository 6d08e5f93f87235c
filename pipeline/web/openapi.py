"""The OpenAPI 3.1 description of the worker's HTTP API (served at ``/openapi.json``).

``docs/openapi.json`` is this spec, committed;
``WO_UPDATE_DOCS=1 pytest tests/test_web_unit.py`` rewrites it; tests check that the served
and the generated spec equal the committed one.
"""

from __future__ import annotations

from typing import Any

import orjson

from events.ids import UUID_PATTERN
from events.subjects import TENANT_ID_PATTERN
from pipeline.web.params import MAX_EXPIRY_DAYS, MAX_MASTERS

J = dict[str, Any]


def _ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: J, description: str) -> J:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> J:
    texts = {
        400: "Bad parameter (the reason says which).",
        401: "Missing or unknown bearer token.",
        403: "The token grants another tenant.",
        404: "No such key for this tenant.",
        503: "Rebalancing, recovering or a worker unreachable: retry.",
    }
    return {str(c): _json(_ref("Error"), texts[c]) for c in codes}


def _path_param(name: str, pattern: str, description: str) -> J:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}  # fmt: skip


def _query_int(name: str, low: int, high: int, description: str, required: bool = True) -> J:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": "integer", "minimum": low, "maximum": high}}  # fmt: skip


def _window_param(names: list[str]) -> J:
    return {"name": "window", "in": "query", "required": True,
            "schema": {"type": "string", "enum": names}}  # fmt: skip


TENANT = _path_param("tenant", TENANT_ID_PATTERN, "Tenant id; must be the token's tenant.")
SECURED = [{"bearer": []}]
INT, NUM, STR = {"type": "integer"}, {"type": "number"}, {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
COUNTS = {"type": "object", "additionalProperties": INT}


def _obj(required: list[str], **props: J) -> J:
    return {"type": "object", "required": required, "properties": props}


def _nullable(schema: J) -> J:
    return {"anyOf": [schema, {"type": "null"}]}


def _schemas() -> J:
    counts = {
        "totalChildren": INT,
        "completedChildren": INT,
        "blockedChildren": INT,
        "inProgressChildren": INT,
        "progressPercent": NUM,
    }
    child = _obj(["workOrderId", "status"], workOrderId=STR, status=_nullable(STR))
    sla_window = _obj(
        [
            "start",
            "end",
            "count",
            "onTime",
            "breached",
            "meanVariancePercent",
            "maxVariancePercent",
        ],
        start=TIME,
        end=TIME,
        count=INT,
        onTime=INT,
        breached=INT,
        meanVariancePercent=_nullable(NUM),
        maxVariancePercent=_nullable(NUM),
    )
    compliance_window = _obj(
        [
            "start",
            "end",
            "count",
            "violations",
            "violationsByRegulation",
            "violationsBySeverity",
            "signaturesByResult",
            "phiByAction",
            "escalationsByReason",
        ],
        start=TIME,
        end=TIME,
        count=INT,
        violations=INT,
        violationsByRegulation=COUNTS,
        violationsBySeverity=COUNTS,
        signaturesByResult=COUNTS,
        phiByAction=COUNTS,
        escalationsByReason=COUNTS,
    )
    recent_violation = _obj(
        ["violationId", "workOrderId", "regulation", "requirement", "severity", "at"],
        violationId=STR,
        workOrderId=_nullable(STR),
        regulation=STR,
        requirement=STR,
        severity=STR,
        at=TIME,
    )
    window_answer = {"tenant": STR, "window": STR, "last": INT, "now": TIME}
    return {
        "Error": _obj(["error", "reason"], error=STR, reason=STR),
        "WhoAmI": _obj(["tenant"], tenant=STR),
        "MasterProgress": _obj(
            ["tenant", "masterId", *counts, "children"],
            tenant=STR,
            masterId=STR,
            **counts,
            children={"type": "array", "items": child},
        ),
        "MasterList": _obj(
            ["tenant", "total", "masters"],
            tenant=STR,
            total=INT,
            masters={"type": "array", "items": _obj(["masterId", *counts], masterId=STR, **counts)},
        ),
        "SlaWindows": _obj(
            [*window_answer, "windows"],
            **window_answer,
            windows={"type": "array", "items": sla_window},
        ),
        "ComplianceWindows": _obj(
            [*window_answer, "windows", "recentViolations"],
            **window_answer,
            windows={"type": "array", "items": compliance_window},
            recentViolations={"type": "array", "items": recent_violation},
        ),
        "ExpiringCertifications": _obj(
            ["tenant", "withinDays", "now", "certifications"],
            tenant=STR,
            withinDays=INT,
            now=TIME,
            certifications={
                "type": "array",
                "items": _obj(
                    [
                        "personId",
                        "experienceId",
                        "certification",
                        "expirationDate",
                        "daysUntilExpiry",
                        "expired",
                        "affectedWorkOrders",
                    ],
                    personId=STR,
                    experienceId=STR,
                    certification=STR,
                    expirationDate=TIME,
                    daysUntilExpiry=INT,
                    expired={"type": "boolean"},
                    affectedWorkOrders={"type": "array", "items": STR},
                ),
            },
        ),
        "ComplianceSummary": _obj(
            ["tenant", "workOrderId", "auditEntries", "signatures", "deviations", "capaRequired"],
            tenant=STR,
            workOrderId=STR,
            auditEntries=INT,
            signatures=INT,
            deviations=INT,
            capaRequired={"type": "boolean"},
        ),
    }


def _get(summary: str, description: str, parameters: list[J], schema: str,
         errors: tuple[int, ...], *, secured: bool = True) -> J:  # fmt: skip
    op: J = {"summary": summary, "description": description, "parameters": parameters,
             "responses": {"200": _json(_ref(schema), "OK"), **_errors(*errors)}}  # fmt: skip
    if secured:
        op["security"] = SECURED
    return {"get": op}


def _paths() -> J:
    uuid = "must be a UUID in 8-4-4-4-12 hex form"
    window = ("The N consecutive windows ending with the newest: the window holding the "
              "worker's clock, or a later one already holding data; oldest first, empty ones "
              "included.")  # fmt: skip
    plain = {"type": "object"}
    return {
        "/tenants/{tenant}/masters/{masterId}/progress": _get(
            "Progress of one master work order", "Routed to the worker owning the key.",
            [TENANT, _path_param("masterId", UUID_PATTERN, f"Master id; {uuid}.")],
            "MasterProgress", (400, 401, 403, 404, 503)),
        "/tenants/{tenant}/masters": _get(
            "The tenant's masters with their progress", "Gathered from every worker.",
            [TENANT, _query_int("limit", 1, MAX_MASTERS, "At most this many (default 100).",
                                required=False)], "MasterList", (400, 401, 403, 503)),
        "/tenants/{tenant}/sla": _get(
            "SLA windows: completions, on time, breached, variance", window,
            [TENANT, _window_param(["1h", "1d"]),
             _query_int("last", 1, 720, "Number of windows (at most the 30-day retention).")],
            "SlaWindows", (400, 401, 403, 503)),
        "/tenants/{tenant}/compliance": _get(
            "Compliance windows: violations, signatures, PHI, escalations", window,
            [TENANT, _window_param(["1d"]), _query_int("last", 1, 30, "Number of windows.")],
            "ComplianceWindows", (400, 401, 403, 503)),
        "/tenants/{tenant}/certifications/expiring": _get(
            "Certifications expiring within D days",
            "Expiry at most D days after the worker's clock; already expired ones included "
            "(expired=true). Gathered from every worker.",
            [TENANT, _query_int("within_days", 0, MAX_EXPIRY_DAYS, "D, in days.")],
            "ExpiringCertifications", (400, 401, 403, 503)),
        "/tenants/{tenant}/work-orders/{workOrderId}/compliance-summary": _get(
            "What the pipeline observed for one work order", "Routed to the key's owner.",
            [TENANT, _path_param("workOrderId", UUID_PATTERN, f"Work order id; {uuid}.")],
            "ComplianceSummary", (400, 401, 403, 404, 503)),
        "/whoami": _get("The tenant of the bearer token", "For the dashboard.", [],
                        "WhoAmI", (401,)),
        "/health": {"get": {"summary": "Liveness", "responses": {
            "200": _json(plain, "Running"), "503": _json(plain, "Crashed")}}},
        "/ready": {"get": {"summary": "Readiness: table recovery finished, no rebalance",
                           "responses": {"200": _json(plain, "Ready"),
                                         "503": _json(plain, "Not ready (reason)")}}},
        "/openapi.json": {"get": {"summary": "This description",
                                  "responses": {"200": _json(plain, "OpenAPI 3.1")}}},
        "/": {"get": {"summary": "Dashboard (HTML; the token is entered in the page)",
                      "responses": {"200": {"description": "HTML",
                                            "content": {"text/html": {"schema": STR}}}}}},
    }  # fmt: skip


def spec() -> J:
    """The OpenAPI document."""
    paths = _paths()
    return {
        "openapi": "3.1.0",
        "info": {"title": "wo-stream worker API", "version": "1.0.0",
                 "description": "Per-tenant views of the worker's tables. Every /tenants path "
                                "needs a bearer token granting that tenant (WO_WEB_TOKENS)."},
        "paths": paths,
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }  # fmt: skip


def dumps() -> bytes:
    """The spec as committed in ``docs/openapi.json`` (indented, sorted keys, final newline)."""
    return orjson.dumps(spec(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
