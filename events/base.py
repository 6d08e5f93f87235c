"""The base model of every event contract: strict, immutable, and keeping unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ContractModel(BaseModel):
    """Base of the envelope, its parts and every payload.

    * ``strict``: a string where a boolean or number is expected is an error, not a coercion
      (JSON-only types are relaxed per field, see ``events.primitives``).
    * ``extra="allow"``: unknown fields are kept, so mirroring and auditing lose nothing and they
      survive in canonical bytes; consumers ignore them (catalog §9).
    * ``frozen``: an event is a fact; change it with ``model_copy(update=...)`` into a new one.
    * ``hide_input_in_errors``: a ValidationError that reaches a log must not carry PHI.
    """

    model_config = ConfigDict(
        strict=True,
        extra="allow",
        frozen=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,
        # Schema titles keep the catalog's field names instead of "Workorderid".
        field_title_generator=lambda name, _info: name,
    )
