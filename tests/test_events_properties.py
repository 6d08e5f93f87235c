"""Property tests: for generated events of every type, parse(canonical(e)) == e, stable bytes.

Strategies are derived from the models' own annotations (so a new payload type is covered
without touching this file), with one strategy per constrained field type of events.primitives.
"""

from __future__ import annotations

import functools
import types
import uuid
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from events import REGISTRY, DomainEvent, EventSpec, ParseError, is_uuid7, parse_event
from events import primitives as p

_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_instants = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets
)
_opaque = TypeAdapter(p.OpaqueId)


def _is_opaque_id(value: str) -> bool:
    try:
        _opaque.validate_python(value)
    except ValidationError:
        return False
    return True


_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-p.MAX_SAFE_INT, max_value=p.MAX_SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


def _uuid7(unix_ms: int, random_bits: int) -> str:
    value = (unix_ms << 80) | (0x7 << 76) | ((random_bits >> 62) << 64) | (0b10 << 62)
    return str(uuid.UUID(int=value | (random_bits & (2**62 - 1))))


_uuids = st.uuids().map(str)
_PRIMITIVES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (p.Uuid, _uuids | _uuids.map(str.upper)),
    (p.Uuid7, st.builds(_uuid7, st.integers(0, 2**48 - 1), st.integers(0, 2**74 - 1))),
    (p.TenantId, st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)),
    (p.OpaqueId, st.text(min_size=1, max_size=24).filter(_is_opaque_id)),
    (p.NonEmptyText, st.text(min_size=1, max_size=40)),
    (p.UtcDateTime, _instants | _instants.map(lambda d: d.isoformat())),
    (p.Count, st.integers(min_value=0, max_value=p.MAX_SAFE_INT)),
    (p.SignedInt, st.integers(min_value=-p.MAX_SAFE_INT, max_value=p.MAX_SAFE_INT)),
    (p.PositiveInt, st.integers(min_value=1, max_value=p.MAX_SAFE_INT)),
    (p.NonNegativeFloat, st.floats(min_value=0, max_value=1e15, allow_nan=False)),
    (p.Confidence, st.floats(min_value=0, max_value=1)),
    (p.Percent, st.floats(min_value=0, max_value=100)),
    (p.SourceName, st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)),
    (JsonValue, _json_values),
]


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy of valid JSON-side values for one field annotation."""
    for known, strategy in _PRIMITIVES:
        if annotation is known or annotation == known:
            return strategy
    origin = get_origin(annotation)
    if origin is Annotated:  # Lax[SomeEnum]
        return strategy_for(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return st.one_of([strategy_for(arg) for arg in get_args(annotation)])
    if origin is list:
        return st.lists(strategy_for(get_args(annotation)[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(
            st.text(max_size=8), strategy_for(get_args(annotation)[1]), max_size=3
        )
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is str:
        return st.text(max_size=40)
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_dicts(annotation)
    raise NotImplementedError(f"no strategy for {annotation!r}")


_extras = st.dictionaries(st.from_regex(r"x_[a-z]{1,6}", fullmatch=True), _json_values, max_size=2)


@functools.cache
def model_dicts(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts that validate as ``model``, sometimes with unknown extra fields."""
    hints = get_type_hints(model, include_extras=True)
    fields = st.fixed_dictionaries({name: strategy_for(hints[name]) for name in model.model_fields})
    return st.builds(lambda known, extra: {**extra, **known}, fields, _extras)


@functools.cache
def events_of(spec: EventSpec) -> st.SearchStrategy[DomainEvent]:
    envelope = {
        "id": strategy_for(p.Uuid7),
        "type": st.just(spec.event_type),
        "version": st.integers(min_value=0, max_value=40).map(lambda m: f"{spec.major}.{m}"),
        "timestamp": strategy_for(p.UtcDateTime),
        "source": strategy_for(p.SourceName),
        "tenantId": strategy_for(p.TenantId),
        "correlationId": strategy_for(p.Uuid),
        "causationId": strategy_for(p.Uuid),
        "actor": strategy_for(get_type_hints(DomainEvent)["actor"]),
        "data": model_dicts(spec.payload),
        "metadata": strategy_for(get_type_hints(DomainEvent)["metadata"]),
    }
    return st.builds(
        lambda known, extra: spec.envelope.model_validate({**extra, **known}),
        st.fixed_dictionaries(envelope),
        _extras,
    )


SPECS = REGISTRY.specs()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.event_type)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_of_canonical_is_identity(spec: EventSpec, data: st.DataObject) -> None:
    event = data.draw(events_of(spec))
    canonical = event.canonical_bytes()
    parsed = parse_event(canonical)
    assert not isinstance(parsed, ParseError), parsed
    assert parsed == event
    assert parsed.canonical_bytes() == canonical
    # Canonical bytes do not depend on how the input was laid out.
    shuffled = orjson.dumps(dict(reversed(list(orjson.loads(canonical).items()))))
    reparsed = parse_event(shuffled)
    assert not isinstance(reparsed, ParseError)
    assert reparsed.canonical_bytes() == canonical


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SPECS).flatmap(events_of))
def test_generated_events_are_normalised(event: DomainEvent) -> None:
    assert event.timestamp.tzinfo is UTC
    assert event.id == event.id.lower()
    assert is_uuid7(event.id)
    decoded = orjson.loads(event.canonical_bytes())
    assert decoded["timestamp"].endswith("Z")
    assert decoded["type"] == event.type
    assert set(decoded) >= {"id", "type", "version", "data", "metadata", "actor"}
