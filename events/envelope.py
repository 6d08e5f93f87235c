"""The standard event envelope ``DomainEvent`` (catalog §1.2) with its actor and metadata parts.

``DomainEvent[P]`` is generic in its payload. For each registered (type, major version)
``events.registry`` builds a concrete subclass (e.g. ``WorkOrderCreatedEvent``) that pins
``type`` to that literal and ``version`` to that major; the parser returns instances of those,
so ``isinstance(event, DomainEvent)`` holds and ``event.data`` is the typed payload. Validating
the bare ``DomainEvent`` instead leaves ``data`` untyped (a ``Payload`` holding everything as
extras): build events with ``parse_event``, ``make_event`` or ``envelope_model(type)``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from events.base import ContractModel
from events.canonical import canonical_bytes
from events.enums import ActorType, DataClassification
from events.payloads.base import Payload
from events.primitives import (
    EventTypeName,
    Lax,
    NonEmptyText,
    OpaqueId,
    SchemaVersion,
    SourceName,
    TenantId,
    UtcDateTime,
    Uuid,
    Uuid7,
)
from events.semver import parse_version
from events.subjects import subject_for

PayloadT = TypeVar("PayloadT", bound=Payload)


class Actor(ContractModel):
    """Who caused the event: a user, an agent or the system, with its RBAC role at the time."""

    id: OpaqueId
    type: Lax[ActorType]
    role: NonEmptyText


class Metadata(ContractModel):
    """Classification and compliance flags; ``auditRequired`` routes to the audit trail writer."""

    dataClassification: Lax[DataClassification]
    regulatory: bool
    auditRequired: bool


class DomainEvent(ContractModel, Generic[PayloadT]):
    """One domain event: envelope fields with the catalog's camelCase names, ``data`` typed."""

    id: Uuid7
    type: EventTypeName
    version: SchemaVersion
    timestamp: UtcDateTime
    source: SourceName
    tenantId: TenantId
    correlationId: Uuid
    causationId: Uuid
    actor: Actor
    data: PayloadT
    metadata: Metadata

    def canonical_bytes(self) -> bytes:
        """The event's canonical JSON bytes (see ``events.canonical``)."""
        return canonical_bytes(self)

    @property
    def major(self) -> int:
        """Major schema version, the compatibility line this event belongs to."""
        return parse_version(self.version).major

    @property
    def subject(self) -> str:
        """NATS subject the event is published on (catalog §1.3)."""
        return subject_for(self.tenantId, self.type)
