"""Work-order status facts shared by the families: which events carry a status, which are open."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from events.enums import WorkOrderStatus
from events.envelope import DomainEvent

S = WorkOrderStatus
DONE: Final = frozenset({S.COMPLETED, S.CLOSED})
"""Counts as done for master progress (issue: completed-or-closed)."""
TERMINAL: Final = frozenset({S.COMPLETED, S.CLOSED, S.CANCELLED})
"""No longer open: no more work will be done, so no SLA timer or assignment applies."""

WORK_ORDER_LIFECYCLE: Final = frozenset(
    {
        "work_order.created",
        "work_order.updated",
        "work_order.status_changed",
        "work_order.blocked",
        "work_order.completed",
        "work_order.closed",
    }
)


def status_of(event: DomainEvent) -> str | None:
    """The status an event puts its work order in, or None if it says nothing about status.

    ``created`` carries no status (the catalog has none on it), so it does not override one.
    """
    if event.type == "work_order.status_changed":
        return str(event.data.newStatus)
    return _IMPLIED.get(event.type)


_IMPLIED: Final[dict[str, str]] = {
    "work_order.blocked": S.BLOCKED.value,
    "work_order.completed": S.COMPLETED.value,
    "work_order.closed": S.CLOSED.value,
}


def is_open(status: str | None) -> bool:
    """Open = not completed, closed or cancelled (a created order without status is open)."""
    return status not in TERMINAL


def schedule_of(event: DomainEvent) -> dict[str, datetime | None]:
    """The schedule fields an event states: all of them on ``created``, changed ones on
    ``updated`` (``changedFields`` values are any JSON; unreadable ones are left out)."""
    if event.type == "work_order.created":
        return {
            "scheduledStart": event.data.scheduledStart,
            "scheduledEnd": event.data.scheduledEnd,
        }
    out: dict[str, datetime | None] = {}
    if event.type == "work_order.updated":
        for change in event.data.changedFields:
            if change.field in ("scheduledStart", "scheduledEnd"):
                try:
                    out[change.field] = json_datetime(change.newValue)
                except ValueError:
                    continue
    return out


def json_datetime(value: object) -> datetime | None:
    """An RFC 3339 string with offset as an aware UTC datetime, None for null.

    Raises ValueError for anything else (``updated`` values are any JSON).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not a date-time string")
    parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    if parsed.utcoffset() is None:
        raise ValueError("date-time without offset")
    return parsed.astimezone(UTC)
