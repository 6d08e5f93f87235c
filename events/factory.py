"""Event builders: ``make_event`` fills the catalog's defaults, ``derive_event`` chains a cause.

Defaults for a root event: id is a new UUIDv7 whose time part is the event's timestamp;
correlationId and causationId are the event's own id (it starts a trace and has no causing
event); actor is the pipeline itself (SYSTEM ``wo-stream``); metadata comes from the registry
(see ``events.registry`` for how regulatory events get their higher classification).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ConfigDict, TypeAdapter

from events.enums import ActorType, DataClassification, EventSource
from events.envelope import Actor, DomainEvent
from events.ids import derived_event_id, new_event_id
from events.payloads.base import Payload
from events.primitives import UtcDateTime
from events.registry import REGISTRY, EventRegistry
from events.semver import parse_version

_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(
    UtcDateTime, config=ConfigDict(hide_input_in_errors=True)
)

SYSTEM_ACTOR = Actor(id="wo-stream", type=ActorType.SYSTEM, role="system")


def make_event(
    event_type: str,
    data: Mapping[str, Any] | Payload,
    *,
    tenant_id: str,
    actor: Actor | Mapping[str, Any] | None = None,
    source: str = EventSource.WO_STREAM,
    timestamp: datetime | str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    event_id: str | None = None,
    classification: DataClassification | str | None = None,
    regulatory: bool | None = None,
    audit_required: bool | None = None,
    version: str | None = None,
    registry: EventRegistry | None = None,
) -> DomainEvent:
    """Build and validate one event of a registered type.

    ``data`` is a payload model or a dict with the catalog's camelCase keys (enum values and
    date-times may be strings). ``version`` defaults to the type's current version; pass an
    older "MAJOR.MINOR" to produce an older major. Raises UnknownEventTypeError for an
    unregistered type and pydantic.ValidationError (without input values) for invalid data.
    """
    reg = REGISTRY if registry is None else registry
    spec = reg.get(event_type, None if version is None else parse_version(version).major)
    payload = data if isinstance(data, Payload) else spec.payload.model_validate(dict(data))

    at = datetime.now(UTC) if timestamp is None else _TIMESTAMP.validate_python(timestamp)
    if event_id is None:
        event_id = new_event_id(at)
    if regulatory is None:
        # work_order.created says itself whether the work order is regulatory.
        own = getattr(payload, "regulatory", None)
        regulatory = own if isinstance(own, bool) else spec.regulatory
    if classification is None:
        classification = spec.classification_for(regulatory)

    return spec.envelope.model_validate(
        {
            "id": event_id,
            "type": event_type,
            "version": spec.version if version is None else version,
            "timestamp": at,
            "source": str(source),
            "tenantId": tenant_id,
            "correlationId": event_id if correlation_id is None else correlation_id,
            "causationId": event_id if causation_id is None else causation_id,
            "actor": SYSTEM_ACTOR if actor is None else actor,
            "data": payload,
            "metadata": {
                "dataClassification": classification,
                "regulatory": regulatory,
                "auditRequired": spec.audit_required if audit_required is None else audit_required,
            },
        }
    )


def derive_event(
    cause: DomainEvent,
    event_type: str,
    data: Mapping[str, Any] | Payload,
    *,
    key: str,
    actor: Actor | Mapping[str, Any] | None = None,
    source: str = EventSource.WO_STREAM,
    classification: DataClassification | str | None = None,
    regulatory: bool | None = None,
    audit_required: bool | None = None,
    registry: EventRegistry | None = None,
) -> DomainEvent:
    """Build an event derived from ``cause``, reproducibly.

    Id (``derived_event_id``) and timestamp come from the cause, so reprocessing the same cause
    yields byte-identical canonical events; ``key`` distinguishes several events of one type
    derived from one cause (e.g. the affected work-order id). The trace is continued:
    correlationId is the cause's, causationId is the cause's id. A derived event is regulatory
    if its cause is.
    """
    if regulatory is None and cause.metadata.regulatory:
        regulatory = True
    return make_event(
        event_type,
        data,
        tenant_id=cause.tenantId,
        actor=actor,
        source=source,
        timestamp=cause.timestamp,
        correlation_id=cause.correlationId,
        causation_id=cause.id,
        event_id=derived_event_id(cause.timestamp, cause.id, event_type, key),
        classification=classification,
        regulatory=regulatory,
        audit_required=audit_required,
        registry=registry,
    )
