"""Catalog-shaped samples of all 27 event types (23 catalog + 4 wo-stream): bytes <-> canonical."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

from events import (
    CATALOG,
    REGISTRY,
    STREAM_TYPES,
    DomainEvent,
    ParseError,
    canonical_bytes,
    parse_event,
)

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))


def _sample(event_type: str) -> dict[str, Any]:
    return orjson.loads((SAMPLES / f"{event_type}.json").read_bytes())


def _parse_ok(raw: bytes) -> DomainEvent:
    event = parse_event(raw)
    assert not isinstance(event, ParseError), event
    return event


def test_one_sample_per_registered_type() -> None:
    assert {p.stem for p in SAMPLE_FILES} == set(REGISTRY.event_types())
    assert len(SAMPLE_FILES) == len(CATALOG) + len(STREAM_TYPES) == 23 + 4


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_sample_round_trips_through_canonical_bytes(path: Path) -> None:
    raw = path.read_bytes()
    event = _parse_ok(raw)
    spec = REGISTRY.get(path.stem)
    assert type(event) is spec.envelope
    assert type(event.data) is spec.payload
    assert event.type == path.stem

    canonical = event.canonical_bytes()
    again = _parse_ok(canonical)
    assert again == event
    assert again.canonical_bytes() == canonical
    assert canonical_bytes(again) == canonical

    # Same content as the sample (same keys everywhere), only normalised.
    decoded = orjson.loads(canonical)
    source = orjson.loads(raw)
    assert decoded.keys() == source.keys()
    assert decoded["data"].keys() == source["data"].keys()
    assert decoded["metadata"] == source["metadata"]


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_canonical_form_is_sorted_compact_utf8_with_utc_z(path: Path) -> None:
    canonical = _parse_ok(path.read_bytes()).canonical_bytes()
    decoded = orjson.loads(canonical)
    # orjson's compact output with sorted keys has no whitespace outside strings.
    assert canonical == orjson.dumps(decoded, option=orjson.OPT_SORT_KEYS)
    assert canonical.startswith(b'{"actor":{"id":')
    assert decoded["timestamp"].endswith("Z")
    canonical.decode("utf-8")


def test_canonical_normalises_offsets_case_and_precision() -> None:
    raw = _sample("work_order.created")
    raw["timestamp"] = "2026-02-13t10:30:00.123456789+01:00"
    raw["id"] = raw["id"].upper()
    raw["correlationId"] = raw["correlationId"].upper()
    raw["data"]["scheduledStart"] = "2026-02-16T08:00:00Z"
    event = _parse_ok(orjson.dumps(raw))
    decoded = orjson.loads(event.canonical_bytes())
    assert decoded["timestamp"] == "2026-02-13T09:30:00.123456Z"
    assert decoded["id"] == raw["id"].lower()
    assert decoded["correlationId"] == raw["correlationId"].lower()
    assert decoded["data"]["scheduledStart"] == "2026-02-16T08:00:00Z"


def test_equal_events_from_differently_serialised_inputs_have_equal_canonical_bytes() -> None:
    raw = _sample("work_order.status_changed")
    pretty = orjson.dumps(raw, option=orjson.OPT_INDENT_2)
    reordered = orjson.dumps(dict(reversed(list(raw.items()))))
    assert pretty != reordered
    assert _parse_ok(pretty).canonical_bytes() == _parse_ok(reordered).canonical_bytes()


def test_unknown_extra_fields_are_kept_everywhere_and_survive_canonical_bytes() -> None:
    raw = _sample("work_order.updated")
    raw["x_mirror"] = {"hop": 2, "via": ["nats", "kafka"]}
    raw["actor"]["sessionId"] = "s-1"
    raw["metadata"]["retentionClass"] = "R7"
    raw["data"]["siteId"] = "SITE-9"
    raw["data"]["changedFields"][0]["unit"] = None
    event = _parse_ok(orjson.dumps(raw))
    assert event.model_extra == {"x_mirror": {"hop": 2, "via": ["nats", "kafka"]}}
    assert event.actor.model_extra == {"sessionId": "s-1"}
    assert event.metadata.model_extra == {"retentionClass": "R7"}
    assert event.data.model_extra == {"siteId": "SITE-9"}
    decoded = orjson.loads(event.canonical_bytes())
    assert decoded["x_mirror"] == {"hop": 2, "via": ["nats", "kafka"]}
    assert decoded["data"]["siteId"] == "SITE-9"
    assert decoded["data"]["changedFields"][0]["unit"] is None
    assert _parse_ok(event.canonical_bytes()) == event


def test_later_minor_version_with_new_optional_field_is_accepted() -> None:
    raw = _sample("approval.decision_submitted")
    raw["version"] = "1.7"
    raw["data"]["delegatedFrom"] = "usr_qa_lead_02"
    event = _parse_ok(orjson.dumps(raw))
    assert event.version == "1.7"
    assert event.major == 1
    assert orjson.loads(event.canonical_bytes())["version"] == "1.7"
    assert event.data.model_extra == {"delegatedFrom": "usr_qa_lead_02"}


def test_any_typed_fields_keep_arbitrary_json() -> None:
    raw = _sample("system.feature_flag_changed")
    values = [None, True, 0, -1.5, "on", [1, [2, {"a": None}]], {"nested": {"deep": [False]}}]
    for previous, new in zip(values, reversed(values), strict=True):
        case = copy.deepcopy(raw)
        case["data"]["previousValue"] = previous
        case["data"]["newValue"] = new
        event = _parse_ok(orjson.dumps(case))
        assert event.data.previousValue == previous
        assert event.data.newValue == new
        assert _parse_ok(event.canonical_bytes()) == event


def test_subject_of_parsed_event() -> None:
    event = _parse_ok((SAMPLES / "work_order.status_changed.json").read_bytes())
    assert event.subject == "wo.tenant_abc.workorder.status_changed"


@pytest.mark.parametrize("path", SAMPLE_FILES[:3], ids=lambda p: p.stem)
def test_parsed_events_pickle(path: Path) -> None:
    event = _parse_ok(path.read_bytes())
    assert pickle.loads(pickle.dumps(event)) == event
