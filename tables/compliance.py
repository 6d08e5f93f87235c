"""Compliance aggregates per tenant (1 d event-time windows) and compliance summary per work order.

Table ``compliance_windows``, key ``{tenant}:{UTC day start ms}`` (one shard per tenant and
day, ``tables.windows``; inputs repartitioned to it): ``apply_aggregate`` counts, per tumbling
window (default 1 d, retained 30 d):
violations by regulation and by severity, signature verifications by result, PHI detections by
action and approval escalations by reason; and the shard's newest violations (ids, codes and
event time; ``RECENT_MAX``). Event time is the envelope timestamp. Violations are
counted whatever their source, so the Faust layer feeds this table from ``wo.derived`` as well:
counting derives nothing, so that is no feedback loop, and dedup by id absorbs a violation that
also comes back through the NATS mirror. Late events are reported, not counted.

Table ``wo_compliance``, key ``{tenant}:{workOrderId}`` (approvals repartitioned from their
approvalId key): ``apply_summary`` keeps what the pipeline observed for the work order, in the
shape of ``work_order.closed.complianceSummary``: auditEntries = distinct events about the
order the audit trail holds (``events.registry.requires_audit``: the flag, or the catalog's
"Audit Required" for the type; the closed event itself excluded), signatures = distinct
signatureIds (decisions and verifications), deviations = distinct violationIds, capaRequired =
any violation of severity >= HIGH. ``work_order.closed``'s reported summary is compared, by
``tick`` once ``close_grace`` (1 h) of event time has passed after the close, with what was
observed *before the close in event time* (``Observed``: each counted item keeps its event
time): events of the order travel on several topics, and an approval stamped before the close
can be delivered after it. A difference derives a MEDIUM §11.10(e) violation
(``policy.summary_mismatch``) caused by the closed event, so its id is the same in every
arrival order. This table is fed from ``wo.derived`` too (the pipeline's own violations are
deviations it observed).
"""

from __future__ import annotations

import bisect
from datetime import datetime
from functools import partial
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from events.envelope import DomainEvent
from events.ids import unix_ms
from events.payloads.workorder import ComplianceSummary
from events.registry import requires_audit
from tables import policy
from tables.base import Result, TableState, admit, clone, is_own, make_key, split_key
from tables.config import DEFAULT_CONFIG, TenantConfig
from tables.derive import Cause
from tables.windows import WindowSpec, shard_key, shard_spec

AGGREGATE_STAGE = "compliance_windows"
SUMMARY_STAGE = "wo_compliance"
AGGREGATE_INPUTS: Final = frozenset(
    {
        "compliance.violation_detected",
        "compliance.signature_verified",
        "compliance.phi_detected",
        "approval.escalated",
    }
)
CLOSED = "work_order.closed"
RECENT_MAX: Final = 20  # violations kept per shard for the recent-violations view


class ComplianceAggregate(BaseModel):
    """Counts of one window; ``count`` is the number of events counted in it."""

    model_config = ConfigDict(extra="ignore")

    count: int = 0
    violationsByRegulation: dict[str, int] = Field(default_factory=dict)
    violationsBySeverity: dict[str, int] = Field(default_factory=dict)
    signaturesByResult: dict[str, int] = Field(default_factory=dict)
    phiByAction: dict[str, int] = Field(default_factory=dict)
    escalationsByReason: dict[str, int] = Field(default_factory=dict)


class RecentViolation(BaseModel):
    """One violation for the "recent violations" view: ids and codes only (no description,
    which is free text and may be L3/L4)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    violationId: str
    workOrderId: str | None = None
    regulation: str
    requirement: str
    severity: str
    at: int  # event time, epoch ms


class ComplianceWindows(TableState):
    """One shard (a tenant's UTC day) of compliance windows, by name ("1d") and start (ms),
    plus the shard's newest violations (at most ``RECENT_MAX``, newest first by event time)."""

    start: int = 0  # shard start, epoch ms
    windows: dict[str, dict[int, ComplianceAggregate]] = Field(default_factory=dict)
    recent: list[RecentViolation] = Field(default_factory=list)

    def window(self, name: str, at: datetime, specs: tuple[WindowSpec, ...]) -> ComplianceAggregate:
        spec = next(s for s in specs if s.name == name)
        return self.windows.get(name, {}).get(spec.start_of(unix_ms(at)), ComplianceAggregate())


Observed = tuple[int, str, str, str, str | None, bool]
"""One counted item, for the summary as of the close: (event time ms, kind "audit" |
"signature" | "violation", id (event id, signatureId, violationId), the event id that brought
it, its causationId, severity >= HIGH). A plain tuple, not a model: every event of a work order
adds one, and tuples of scalars are cheap to copy (shared), dump and load."""


class Closing(BaseModel):
    """A close waiting for its summary check (``tick``)."""

    model_config = ConfigDict(extra="ignore")

    reported: ComplianceSummary
    cause: Cause
    arrivedAt: datetime  # the processing clock when the close was applied


class WorkOrderCompliance(TableState):
    """What the pipeline observed for one work order (see the module docstring)."""

    workOrderId: str
    auditEntries: int = 0
    signatures: list[str] = Field(default_factory=list)
    violations: list[str] = Field(default_factory=list)
    capaRequired: bool = False
    # Since this field exists every item is kept with its event time; older values count all.
    tracked: bool = False
    observed: list[Observed] = Field(default_factory=list)
    closing: Closing | None = None
    closeChecked: bool = False

    def next_deadline(self, config: TenantConfig = DEFAULT_CONFIG) -> datetime | None:
        """The close check's time: ``close_grace`` after the close, in event time and after
        it was applied (a backlog replays hours of event time in seconds)."""
        if self.closing is None or self.closeChecked:
            return None
        closing = self.closing
        return max(closing.cause.timestamp, closing.arrivedAt) + config.close_grace

    def summary_before(self, close: Cause) -> ComplianceSummary:
        """The summary of the items observed before ``close`` in event time (not the close
        itself, nor what it caused)."""
        if not self.tracked:
            return self.summary()
        close_ms = unix_ms(close.timestamp)
        items = [
            (kind, item_id, capa)
            for at, kind, item_id, event_id, causation, capa in self.observed
            if at <= close_ms and close.id not in (event_id, causation)
        ]
        violations = [(item_id, capa) for kind, item_id, capa in items if kind == "violation"]
        return ComplianceSummary(
            auditEntries=sum(1 for kind, _, _ in items if kind == "audit"),
            signatures=len({item_id for kind, item_id, _ in items if kind == "signature"}),
            deviations=len({item_id for item_id, _ in violations}),
            capaRequired=any(capa for _, capa in violations),
        )

    def summary(self) -> ComplianceSummary:
        return ComplianceSummary(
            auditEntries=self.auditEntries,
            signatures=len(self.signatures),
            deviations=len(self.violations),
            capaRequired=self.capaRequired,
        )


def route_aggregate(event: DomainEvent, config: TenantConfig = DEFAULT_CONFIG) -> list[str]:
    if event.type not in AGGREGATE_INPUTS:
        return []
    return [shard_key(event.tenantId, event.timestamp, config.compliance_windows)]


def route_summary(event: DomainEvent, config: TenantConfig = DEFAULT_CONFIG) -> list[str]:
    wo = policy.work_order_of(event)
    return [] if wo is None else [make_key(event.tenantId, wo)]


def apply_aggregate(
    state: ComplianceWindows | None,
    event: DomainEvent,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[ComplianceWindows]:
    """Count one compliance event in every window of its shard; report it if late."""
    start = shard_spec(config.compliance_windows).start_of(unix_ms(event.timestamp))
    fresh = partial(ComplianceWindows, tenant=event.tenantId, start=start)
    st, duplicate = admit(state, fresh, key, event.tenantId, event.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if event.type not in AGGREGATE_INPUTS:
        return Result(st)
    if st.start != start:
        raise ValueError(f"event at {event.timestamp.isoformat()} routed to shard {key!r}")
    at_ms, late = unix_ms(event.timestamp), False
    for spec in config.compliance_windows:
        if spec.is_late(at_ms, now):
            late = True
            continue
        windows = st.windows.setdefault(spec.name, {})
        window = spec.start_of(at_ms)
        windows[window] = _count(windows.get(window, ComplianceAggregate()), event)
    if event.type == "compliance.violation_detected" and not late:
        st.recent = _newest([*st.recent, _recent(event, at_ms)])
    return Result(st, late=late)


def _recent(event: DomainEvent, at_ms: int) -> RecentViolation:
    data = event.data
    wo = data.workOrderId
    return RecentViolation(
        violationId=str(data.violationId),
        workOrderId=None if wo is None else str(wo),
        regulation=str(data.regulation),
        requirement=data.requirement,
        severity=str(data.severity),
        at=at_ms,
    )


def _newest(items: list[RecentViolation]) -> list[RecentViolation]:
    """Newest first (ties by id, so the order never depends on arrival), at most RECENT_MAX."""
    return sorted(items, key=lambda v: (v.at, v.violationId), reverse=True)[:RECENT_MAX]


def _count(agg: ComplianceAggregate, event: DomainEvent) -> ComplianceAggregate:
    out = clone(agg)
    out.count += 1
    data = event.data
    if event.type == "compliance.violation_detected":
        _inc(out.violationsByRegulation, str(data.regulation))
        _inc(out.violationsBySeverity, str(data.severity))
    elif event.type == "compliance.signature_verified":
        _inc(out.signaturesByResult, str(data.verificationResult))
    elif event.type == "compliance.phi_detected":
        _inc(out.phiByAction, str(data.action))
    elif event.type == "approval.escalated":
        _inc(out.escalationsByReason, str(data.reason))
    return out


def _inc(counter: dict[str, int], name: str) -> None:
    counter[name] = counter.get(name, 0) + 1


def apply_summary(
    state: WorkOrderCompliance | None,
    event: DomainEvent,
    now: datetime,
    *,
    key: str,
    config: TenantConfig = DEFAULT_CONFIG,
) -> Result[WorkOrderCompliance]:
    """Observe one event about the work order; check the summary when it is closed."""
    _, wo = split_key(key)
    fresh = partial(WorkOrderCompliance, tenant=event.tenantId, workOrderId=wo or "", tracked=True)
    st, duplicate = admit(state, fresh, key, event.tenantId, event.id, now, config.dedup_horizon)
    if duplicate:
        return Result(st, duplicate=True)
    if policy.work_order_of(event) != st.workOrderId:
        return Result(st)

    data = event.data
    at_ms = unix_ms(event.timestamp)

    def seen(kind: str, item_id: str, capa: bool = False) -> Observed:
        return (at_ms, kind, item_id, event.id, event.causationId, capa)

    if event.type == CLOSED:
        if not is_own(event) and st.closing is None:
            st.closing = Closing(
                reported=data.complianceSummary, cause=Cause.of(event), arrivedAt=now
            )
    elif requires_audit(event):  # what the audit trail holds for it (events.registry)
        st.auditEntries += 1
        _observe(st, seen("audit", event.id))
    signature = getattr(data, "signatureId", None)
    if event.type in ("approval.decision_submitted", "compliance.signature_verified"):
        if signature is not None:
            if signature not in st.signatures:
                st.signatures.append(signature)
            _observe(st, seen("signature", signature))
    if event.type == "compliance.violation_detected":
        if data.violationId not in st.violations:
            st.violations.append(data.violationId)
        capa = policy.needs_capa(data.severity)
        st.capaRequired = st.capaRequired or capa
        _observe(st, seen("violation", data.violationId, capa))
    return Result(st)


def tick_summary(
    state: WorkOrderCompliance, now: datetime, *, config: TenantConfig = DEFAULT_CONFIG
) -> Result[WorkOrderCompliance]:
    """Timer: the close's summary check once ``close_grace`` has passed after the close."""
    deadline = state.next_deadline(config)
    if deadline is None or now < deadline or state.closing is None:
        return Result(state)
    st = clone(state)
    st.closeChecked = True
    closing = state.closing
    found = policy.summary_mismatch(closing.reported, st.summary_before(closing.cause))
    if found is None:
        return Result(st)
    derived = policy.emit(closing.cause, st.workOrderId, found, key=f"{st.workOrderId}:summary")
    return Result(st, derived=tuple(derived))


def _observe(st: WorkOrderCompliance, item: Observed) -> None:
    if st.tracked:
        # kept in event-time order, so the stored value does not depend on arrival order
        bisect.insort(st.observed, item, key=_order)


def _order(item: Observed) -> tuple[int, str, str, str]:
    return item[0], item[1], item[2], item[3]
