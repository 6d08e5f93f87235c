"""The uniform reducer shape: table keys, tenant guard, Result, forwarded facts, state models."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import Enum
from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict

from events.enums import EventSource
from events.envelope import DomainEvent
from tables.dedup import SeenIds

OWN_SOURCE = EventSource.WO_STREAM.value

Stamp = tuple[datetime, str]
"""Order of two facts about one entity: (event time, event id); ids break timestamp ties."""


class TenantMismatchError(ValueError):
    """A reducer was handed an event, fact or state of another tenant than its table key."""


def make_key(tenant: str, entity: str | None = None) -> str:
    """Table key ``{tenant}:{entity}``, or ``{tenant}`` for per-tenant tables.

    A tenant id is one ``[A-Za-z0-9_-]`` token, so it never contains ``:`` and keys of two
    tenants can never collide (same rule as ``events.keys``).
    """
    return tenant if entity is None else f"{tenant}:{entity}"


def split_key(key: str) -> tuple[str, str | None]:
    tenant, sep, entity = key.partition(":")
    return tenant, (entity if sep else None)


def check_tenant(key: str, tenant: str, state: TableState | None = None) -> None:
    """Refuse to mix tenants: the key's tenant must be the event's and the state's."""
    key_tenant, _ = split_key(key)
    if tenant != key_tenant:
        raise TenantMismatchError(f"event of tenant {tenant!r} handed to key of {key_tenant!r}")
    if state is not None and state.tenant != key_tenant:
        raise TenantMismatchError(f"state of tenant {state.tenant!r} under key of {key_tenant!r}")


def is_own(event: DomainEvent) -> bool:
    """An event wo-stream derived itself: rules never derive from these (no feedback loops)."""
    return event.source == OWN_SOURCE


def stamp_of(event: DomainEvent) -> Stamp:
    return (event.timestamp, event.id)


def newer(stamp: Stamp, than: Stamp | None) -> bool:
    return than is None or stamp > than


class TableState(BaseModel):
    """Base of every table value: plain JSON data, validated back on load.

    ``extra="ignore"`` lets a newer deployment drop a field without failing to read older
    changelog records; reducers never mutate a state they are given (they copy first).
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=False)

    tenant: str
    seen: SeenIds = SeenIds()

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible value for the Faust table (RocksDB + changelog)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Self:
        return cls.model_validate(value)


class Fact(BaseModel):
    """A fact one stage forwards to another stage's key (a repartition), e.g. child -> master.

    ``id`` is the dedup id at the receiving stage (derived from the causing event id) and ``at``
    the causing event's time (what windows count by).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    tenant: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Self:
        return cls.model_validate(value)


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``fact`` to table ``stage`` under ``key`` (the Faust layer repartitions it)."""

    stage: str
    key: str
    fact: Fact


S = TypeVar("S", bound=TableState)


@dataclass(frozen=True, slots=True)
class Result(Generic[S]):
    """Outcome of one apply or tick.

    * ``state``: the new table value (the input object itself when nothing changed).
    * ``derived``: full envelopes for ``wo.derived``.
    * ``forwards``: facts for other tables (repartitioned by key).
    * ``duplicate``: the event id was already applied; dropped (metric).
    * ``late``: the event is older than a window's retention; not counted there (metric).
    * ``expired``: pending checks given up because their answer never came (metric).
    """

    state: S
    derived: tuple[DomainEvent, ...] = ()
    forwards: tuple[Forward, ...] = ()
    duplicate: bool = False
    late: bool = False
    expired: int = 0


def admit(
    state: S | None,
    fresh: S | Callable[[], S],
    key: str,
    tenant: str,
    item_id: str,
    now: datetime,
    horizon: timedelta,
) -> tuple[S, bool]:
    """Common prologue of every apply: tenant guard, dedup, copy-on-write.

    Returns the state to work on and whether the item is a duplicate. For a duplicate the state
    is the one given, untouched; otherwise it is a deep copy (the caller's object is never
    mutated) that already remembers ``item_id`` -- except inside :func:`batch_ownership` for a
    copy the same batch made, which is updated in place. ``fresh`` is the state of a new key, or
    a function making it (called only when ``state`` is None; its result is not copied).
    """
    check_tenant(key, tenant, state)
    if state is not None:
        current = state
    else:
        current = fresh() if callable(fresh) else fresh
    if item_id in current.seen:
        return current, True
    owned = _BATCH.get()
    if owned is not None and owned.get(id(current)) is current:
        # this batch's own copy (see batch_ownership), its memory included: nobody else holds it
        current.seen.remember_in_place(item_id, now, horizon)
        return current, False
    if state is None and callable(fresh):
        work = current  # made just now for this call
    else:
        # ``seen`` is replaced by a new memory right away, so it is not copied first.
        work = clone(current, skip="seen")
    work.seen = current.seen.remember(item_id, now, horizon)
    if owned is not None:
        owned[id(work)] = work
    return work, False


# States admit() copied during the current batch, by id (the value keeps the object alive, so
# an id is never reused by another object while the batch runs). None: no batch, always copy.
_BATCH: ContextVar[dict[int, TableState] | None] = ContextVar("wo_batch_owned", default=None)


@contextmanager
def batch_ownership() -> Iterator[None]:
    """Within it, a state that ``admit`` copied is updated in place by the next ``admit`` of
    the same key instead of being copied again.

    For a caller that, like the worker's runner, keeps only the newest state per key during a
    batch and hands each state to nobody else until the batch ends: a copy made in the batch
    is then private to it. A key updated n times in a batch is copied once instead of n times
    (the worker's batches rewrite the same keys often: 40k updates of 7k keys in its bench).
    Reducers never read the state they were given after ``admit`` (they work on its result),
    so updating in place gives the same results. Without this context, ``admit`` always copies.
    """
    token = _BATCH.set({})
    try:
        yield
    finally:
        _BATCH.reset(token)


def owned_by_batch(state: object) -> bool:
    """Whether ``state`` is a copy the current batch made (and may update in place)."""
    owned = _BATCH.get()
    return owned is not None and owned.get(id(state)) is state


def disown(state: object) -> None:
    """Stop updating ``state`` in place (a reducer failed halfway through it)."""
    owned = _BATCH.get()
    if owned is not None and owned.get(id(state)) is state:
        del owned[id(state)]


_IMMUTABLE: frozenset[type] = frozenset(
    {str, int, float, bool, type(None), bytes, datetime, date, time, timedelta}
)


def _clone_value(value: Any) -> Any:
    """Deep copy of plain state data (what ``copy.deepcopy`` gives, much faster).

    State values are JSON-like: scalars, datetimes, enums, tuples, lists, dicts and pydantic
    models. Immutable values are shared (as ``deepcopy`` does), containers and models are
    rebuilt; anything else falls back to ``copy.deepcopy``. A frozen model holding only
    immutable values (``Cause``) is immutable too, so it is shared.
    """
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    imm = _IMMUTABLE
    if kind is dict:
        return {
            (k if type(k) in imm else _clone_value(k)): (v if type(v) in imm else _clone_value(v))
            for k, v in value.items()
        }
    if kind is list:
        return [v if type(v) in imm else _clone_value(v) for v in value]
    if kind is tuple:
        if all(type(v) in imm for v in value):
            return value  # like deepcopy: a tuple of immutable items is itself returned
        items = tuple(_clone_value(v) for v in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, BaseModel):
        if (
            value.model_config.get("frozen")
            and value.__pydantic_extra__ is None
            and all(type(v) in imm for v in value.__dict__.values())
        ):
            return value
        return clone(value)
    if isinstance(value, Enum):
        return value
    return copy.deepcopy(value)


M = TypeVar("M", bound=BaseModel)


def clone(model: M, *, skip: str | None = None) -> M:
    """A deep copy of ``model`` (same as ``model.model_copy(deep=True)``), without ``deepcopy``.

    ``skip`` names one field that is shared instead of copied: only for a field the caller
    replaces at once (``admit`` replaces ``seen``), never one it mutates in place.
    """
    cls = type(model)
    out = cls.__new__(cls)
    imm = _IMMUTABLE
    fields = {
        k: (v if type(v) in imm or k == skip else _clone_value(v))
        for k, v in model.__dict__.items()
    }
    object.__setattr__(out, "__dict__", fields)
    extra = model.__pydantic_extra__
    object.__setattr__(out, "__pydantic_extra__", None if extra is None else _clone_value(extra))
    object.__setattr__(out, "__pydantic_fields_set__", set(model.__pydantic_fields_set__))
    private = getattr(model, "__pydantic_private__", None)
    object.__setattr__(
        out, "__pydantic_private__", None if private is None else copy.deepcopy(private)
    )
    return out
