"""Derived events from a remembered cause, so deferred checks and timers derive reproducibly."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from events.envelope import DomainEvent
from events.factory import make_event
from events.ids import derived_event_id
from events.payloads.base import Payload


class Cause(BaseModel):
    """The parts of a causing event a derived event needs; small enough to keep in state.

    Storing this instead of the event lets a check that completes later (a schedule arriving
    after the completion) or a timer derive exactly what ``events.factory.derive_event`` would.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    timestamp: datetime
    tenantId: str
    correlationId: str
    regulatory: bool

    @classmethod
    def of(cls, event: DomainEvent) -> Cause:
        # the envelope is already validated (same field types), so skip re-validating them
        return cls.model_construct(
            id=event.id,
            timestamp=event.timestamp,
            tenantId=event.tenantId,
            correlationId=event.correlationId,
            regulatory=event.metadata.regulatory,
        )


def derive(
    cause: Cause,
    event_type: str,
    data: Mapping[str, Any] | Payload,
    *,
    key: str,
    at: datetime | None = None,
) -> DomainEvent:
    """A derived envelope: source wo-stream, actor SYSTEM, trace continued from ``cause``.

    Same result as ``derive_event(cause_event, ...)``: id ``derived_event_id(at, cause id,
    type, key)``, timestamp ``at``, causationId the cause's id, correlationId carried over,
    regulatory if the cause is, classification/auditRequired from the registry. ``at`` defaults
    to the cause's timestamp; timers pass the deadline they crossed (e.g. scheduledEnd), which
    is just as reproducible as the cause's time and says when the condition became true.
    """
    when = cause.timestamp if at is None else at
    return make_event(
        event_type,
        data,
        tenant_id=cause.tenantId,
        timestamp=when,
        correlation_id=cause.correlationId,
        causation_id=cause.id,
        event_id=derived_event_id(when, cause.id, event_type, key),
        regulatory=True if cause.regulatory else None,
    )
