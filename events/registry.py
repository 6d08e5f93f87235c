"""Registry of event types: (type, major) -> payload model, current version and catalog facts.

Adding an event type is one payload model plus one ``EventSpec`` line (in ``CATALOG`` for the
catalog's 23 types, in ``STREAM_TYPES`` for wo-stream's own); adding a major version of an
existing type is one more line with the new model and ``"2.0"``. ``REGISTRY`` holds both.

Per-type facts come from the catalog's tables where it states them; where it is silent we
chose (marked "ours" below) with this rule: everything that creates or changes a record, an
approval, a signature, a qualification or a regulated configuration is audited (FDA
§11.10(e): audit trail for creation, modification and deletion of records), and the
classification follows the most sensitive data the payload can carry. ``regulatory`` is the
default of ``metadata.regulatory``; producers set it per event (for work_order.created it is
taken from ``data.regulatory``), and a regulatory event of a type with
``classification_if_regulatory`` gets that higher class (catalog: "L2, or L3 if regulatory").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import StringConstraints, create_model

from events.enums import DataClassification
from events.envelope import DomainEvent
from events.payloads import (
    AgentCheckpointReached,
    AgentTaskCompleted,
    AgentTaskDispatched,
    ApprovalDecisionSubmitted,
    ApprovalEscalated,
    ApprovalRequested,
    AuditTrailIntegrityCheck,
    BackupCompleted,
    CapaAssessmentRequired,
    CertificationExpiring,
    CertificationRecorded,
    CircuitBreakerStateChanged,
    ComplianceViolationDetected,
    FeatureFlagChanged,
    MasterProgressUpdated,
    Payload,
    PHIDetected,
    ResourceAssigned,
    SignatureVerified,
    SlaBreached,
    TenantProvisioned,
    ToolCalibrationDue,
    WorkOrderBlocked,
    WorkOrderClosed,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderStatusChanged,
    WorkOrderUpdated,
)
from events.semver import major_pattern, parse_version
from events.subjects import domain_for


class UnknownEventTypeError(KeyError):
    """An event type (or a major version of it) that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message in quotes
        return str(self.args[0]) if self.args else "unknown event type"


@dataclass(frozen=True, slots=True)
class EventSpec:
    """Catalog facts of one event type at one major version, and its models."""

    event_type: str
    version: str  # the current "MAJOR.MINOR" within this major
    payload: type[Payload]
    classification: DataClassification
    regulatory: bool
    audit_required: bool
    classification_if_regulatory: DataClassification | None = None
    envelope: type[DomainEvent] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domain_for(self.event_type)  # rejects malformed types and unknown domains early
        major = parse_version(self.version).major
        envelope = create_model(
            f"{self.payload.__name__}Event",
            __base__=DomainEvent[self.payload],
            __module__=__name__,
            __doc__=f"Envelope of {self.event_type} {major}.x with its typed payload.",
            type=(Literal[self.event_type], ...),
            version=(Annotated[str, StringConstraints(pattern=major_pattern(major))], ...),
        )
        object.__setattr__(self, "envelope", envelope)

    @property
    def major(self) -> int:
        return parse_version(self.version).major

    @property
    def domain(self) -> str:
        """Subject domain token, e.g. ``workorder``."""
        return domain_for(self.event_type)

    def classification_for(self, regulatory: bool) -> DataClassification:
        """Default classification of an event of this type."""
        if regulatory and self.classification_if_regulatory is not None:
            return self.classification_if_regulatory
        return self.classification


class EventRegistry:
    """Lookup of EventSpecs by (type, major); the current version of a type is its highest."""

    def __init__(self, specs: Iterable[EventSpec] = ()) -> None:
        self._by_key: dict[tuple[str, int], EventSpec] = {}
        self._current: dict[str, EventSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: EventSpec) -> EventSpec:
        key = (spec.event_type, spec.major)
        if key in self._by_key:
            raise ValueError(f"{spec.event_type} major {spec.major} is already registered")
        self._by_key[key] = spec
        current = self._current.get(spec.event_type)
        if current is None or parse_version(spec.version) > parse_version(current.version):
            self._current[spec.event_type] = spec
        return spec

    def lookup(self, event_type: str, major: int) -> EventSpec | None:
        """The spec of (type, major), or None; never raises (parser hot path)."""
        return self._by_key.get((event_type, major))

    def get(self, event_type: str, major: int | None = None) -> EventSpec:
        """The spec of (type, major), or of the current version when major is None."""
        spec = self._current.get(event_type) if major is None else self.lookup(event_type, major)
        if spec is None:
            raise UnknownEventTypeError(
                f"event type {event_type!r} is not registered"
                + ("" if major is None else f" with major version {major}")
            )
        return spec

    def is_known(self, event_type: object) -> bool:
        return isinstance(event_type, str) and event_type in self._current

    def majors(self, event_type: str) -> tuple[int, ...]:
        return tuple(sorted(m for (t, m) in self._by_key if t == event_type))

    def current_version(self, event_type: str) -> str:
        return self.get(event_type).version

    def event_types(self) -> tuple[str, ...]:
        return tuple(sorted(self._current))

    def specs(self) -> tuple[EventSpec, ...]:
        """Every registered (type, major), sorted by type then major."""
        return tuple(self._by_key[key] for key in sorted(self._by_key))

    def __contains__(self, event_type: object) -> bool:
        return self.is_known(event_type)

    def __iter__(self) -> Iterator[EventSpec]:
        return iter(self.specs())

    def __len__(self) -> int:
        return len(self._current)


L1, L2, L3, L4 = (
    DataClassification.L1,
    DataClassification.L2,
    DataClassification.L3,
    DataClassification.L4,
)

# fmt: off
# Columns: type, current version, payload model, default dataClassification, default
# metadata.regulatory, auditRequired, dataClassification when the event is regulatory.
CATALOG: tuple[EventSpec, ...] = (
    # §2 work orders: catalog says L2/L3 and audit for created/status_changed/updated/blocked;
    # completed and closed (ours): audited, since they change the record and closing freezes it.
    EventSpec("work_order.created", "1.0", WorkOrderCreated, L2, False, True, L3),
    EventSpec("work_order.status_changed", "1.0", WorkOrderStatusChanged, L2, False, True, L3),
    EventSpec("work_order.updated", "1.0", WorkOrderUpdated, L2, False, True, L3),
    EventSpec("work_order.blocked", "1.0", WorkOrderBlocked, L2, False, True, L3),
    EventSpec("work_order.completed", "1.0", WorkOrderCompleted, L2, False, True, L3),
    EventSpec("work_order.closed", "1.0", WorkOrderClosed, L2, False, True, L3),
    # §3 approvals (ours): audited; a decision is an electronic-signature record (§11.50/§11.70)
    # and therefore regulatory and L3.
    EventSpec("approval.requested", "1.0", ApprovalRequested, L2, False, True, L3),
    EventSpec("approval.decision_submitted", "1.0", ApprovalDecisionSubmitted, L3, True, True),
    EventSpec("approval.escalated", "1.0", ApprovalEscalated, L2, False, True, L3),
    # §4 compliance: violation_detected is L4 + audited (catalog); the others (ours) are
    # regulatory evidence: L3, and L4 for PHI findings (HIPAA).
    EventSpec("compliance.violation_detected", "1.0", ComplianceViolationDetected, L4, True, True),
    EventSpec("compliance.audit_trail_integrity_check", "1.0", AuditTrailIntegrityCheck, L3, True, True),  # noqa: E501
    EventSpec("compliance.signature_verified", "1.0", SignatureVerified, L3, True, True),
    EventSpec("compliance.phi_detected", "1.0", PHIDetected, L4, True, True),
    # §5 agents (ours): agent actions on work orders are audited (attributable, ALCOA+);
    # circuit-breaker changes are operational telemetry: L1, not audited.
    EventSpec("agent.task_dispatched", "1.0", AgentTaskDispatched, L2, False, True),
    EventSpec("agent.task_completed", "1.0", AgentTaskCompleted, L2, False, True),
    EventSpec("agent.circuit_breaker_state_changed", "1.0", CircuitBreakerStateChanged, L1, False, False),  # noqa: E501
    EventSpec("agent.checkpoint_reached", "1.0", AgentCheckpointReached, L2, False, True, L3),
    # §6 resources (ours): assignment, qualification and calibration status are GMP records.
    EventSpec("resource.assigned", "1.0", ResourceAssigned, L2, False, True, L3),
    EventSpec("resource.certification_expiring", "1.0", CertificationExpiring, L2, True, True),
    EventSpec("resource.tool_calibration_due", "1.0", ToolCalibrationDue, L2, True, True),
    # §7 system (ours): tenant setup and flag changes are configuration changes (audited; the
    # catalog requires it for flags affecting regulatory functions, and a producer cannot always
    # tell); backups are evidence of record protection (§11.10(c)) but carry no business data.
    EventSpec("system.tenant_provisioned", "1.0", TenantProvisioned, L2, False, True),
    EventSpec("system.feature_flag_changed", "1.0", FeatureFlagChanged, L2, False, True),
    EventSpec("system.backup_completed", "1.0", BackupCompleted, L1, True, True),
)

# wo-stream's own types (issue 4), not in the catalog; same columns. The input type is a GMP
# qualification record (regulatory, audited, like certification_expiring). Derived types:
# master progress is a projection of already-audited child events carrying only ids and
# counts (L2, not audited); an SLA breach is a schedule-compliance record (audited; L3 when its
# cause is regulatory); a CAPA assessment request is quality-system evidence (§4.1) carrying ids
# and the violated requirement but no free text: L3, regulatory, audited.
STREAM_TYPES: tuple[EventSpec, ...] = (
    EventSpec("resource.certification_recorded", "1.0", CertificationRecorded, L2, True, True),
    EventSpec("work_order.master_progress_updated", "1.0", MasterProgressUpdated, L2, False, False),
    EventSpec("work_order.sla_breached", "1.0", SlaBreached, L2, False, True, L3),
    EventSpec("compliance.capa_assessment_required", "1.0", CapaAssessmentRequired, L3, True, True),
)
# fmt: on

DERIVED_TYPES: frozenset[str] = frozenset(
    {
        "work_order.master_progress_updated",
        "work_order.sla_breached",
        "compliance.capa_assessment_required",
    }
)
"""Types only wo-stream emits (to ``wo.derived``); producers never publish them."""

REGISTRY = EventRegistry((*CATALOG, *STREAM_TYPES))


def __getattr__(name: str) -> type[DomainEvent]:
    # The envelope classes are generated, so they are no module attributes; resolving them by
    # name here lets pickle (and imports) find e.g. events.registry.WorkOrderCreatedEvent.
    for spec in REGISTRY.specs():
        if spec.envelope.__name__ == name:
            return spec.envelope
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec_for(event_type: str, major: int | None = None) -> EventSpec:
    """Spec of a registered type (current version if major is None)."""
    return REGISTRY.get(event_type, major)


def payload_model(event_type: str, major: int | None = None) -> type[Payload]:
    """Payload model of a registered type."""
    return REGISTRY.get(event_type, major).payload


def envelope_model(event_type: str, major: int | None = None) -> type[DomainEvent]:
    """Concrete DomainEvent subclass of a registered type."""
    return REGISTRY.get(event_type, major).envelope


def current_version(event_type: str) -> str:
    """Current "MAJOR.MINOR" of a registered type."""
    return REGISTRY.current_version(event_type)


def event_types() -> tuple[str, ...]:
    """All registered event types, sorted."""
    return REGISTRY.event_types()


def requires_audit(event: DomainEvent) -> bool:
    """Whether ``event`` belongs in the audit trail: its ``metadata.auditRequired``, or the
    catalog's "Audit Required: Yes" for its type and major. A producer's ``false`` on such a
    type (a bug, or a way around the trail) does not keep a regulated record out of it."""
    if event.metadata.auditRequired:
        return True
    spec = REGISTRY.lookup(event.type, parse_version(event.version).major)
    return spec is not None and spec.audit_required


def type_requires_audit(event_type: object) -> bool:
    """The catalog's "Audit Required" of a type name, in any of its majors (False if unknown)."""
    return any(s.audit_required for s in REGISTRY.specs() if s.event_type == event_type)
