"""The base class of every event payload (the envelope's ``data``)."""

from __future__ import annotations

from events.base import ContractModel


class Payload(ContractModel):
    """The typed ``data`` of one event type; subclasses are registered in ``events.registry``."""
