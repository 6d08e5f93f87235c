"""Compatibility rules of catalog §9 on real schema pairs generated from small versioned models."""

from __future__ import annotations

import json
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from events import (
    CATALOG,
    SCHEMAS_DIR,
    Bump,
    ChangeKind,
    CompatViolation,
    DataClassification,
    EventRegistry,
    EventSpec,
    WorkOrderCreated,
    check_compatibility,
    compare_schemas,
    write_schemas,
)
from events.compat import diff_schemas
from events.primitives import OpaqueId


class Line(BaseModel):
    sku: str
    qty: int


class V1_0(BaseModel):
    orderId: str
    count: int
    note: str | None
    lines: list[Line]


class V1_1(V1_0):
    """1.0 plus an optional field."""

    channel: str | None = None


class V1_1Nested(BaseModel):
    orderId: str
    count: int
    note: str | None
    lines: list[LineWithUnit]


class LineWithUnit(Line):
    unit: str = "pcs"


V1_1Nested.model_rebuild()


class V1_2Required(V1_0):
    """1.1 with its optional field made required."""

    channel: str | None


class WithoutNote(BaseModel):
    orderId: str
    count: int
    lines: list[Line]


class Renamed(BaseModel):
    orderId: str
    total: int  # was count
    note: str | None
    lines: list[Line]


class CountAsString(BaseModel):
    orderId: str
    count: str
    note: str | None
    lines: list[Line]


class NoteNotNull(BaseModel):
    orderId: str
    count: int
    note: str
    lines: list[Line]


class NoteOptional(BaseModel):
    orderId: str
    count: int
    note: str | None = None
    lines: list[Line]


class WithRequiredChannel(V1_0):
    channel: str


class Colour(StrEnum):
    RED = "RED"
    BLUE = "BLUE"


class MoreColour(StrEnum):
    RED = "RED"
    BLUE = "BLUE"
    GREEN = "GREEN"


class Painted(BaseModel):
    colour: Colour


class PaintedMore(BaseModel):
    colour: MoreColour


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _kinds(violations: list[CompatViolation]) -> list[tuple[str, ChangeKind]]:
    return [(v.path, v.change) for v in violations]


RULES = [
    # (old, new, old version, new version, expected violations)
    (V1_0, V1_1, "1.0", "1.1", []),
    (V1_0, V1_1, "1.0", "2.0", []),
    (V1_0, V1_1, "1.0", "1.0", [("channel", ChangeKind.FIELD_ADDED_OPTIONAL)]),
    (V1_0, V1_1Nested, "1.0", "1.1", []),
    (V1_0, V1_1Nested, "1.0", "1.0", [("lines[].unit", ChangeKind.FIELD_ADDED_OPTIONAL)]),
    (V1_0, WithoutNote, "1.0", "1.1", [("note", ChangeKind.FIELD_REMOVED)]),
    (V1_0, WithoutNote, "1.3", "2.0", []),
    (V1_0, Renamed, "1.0", "1.1", [("count", ChangeKind.FIELD_RENAMED)]),
    (V1_0, Renamed, "1.0", "2.0", []),
    (V1_0, CountAsString, "1.0", "1.1", [("count", ChangeKind.TYPE_CHANGED)]),
    (V1_0, CountAsString, "1.0", "2.0", []),
    (V1_1, V1_2Required, "1.1", "1.2", [("channel", ChangeKind.MADE_REQUIRED)]),
    (V1_1, V1_2Required, "1.1", "2.0", []),
    (V1_0, WithRequiredChannel, "1.0", "1.1", [("channel", ChangeKind.FIELD_ADDED_REQUIRED)]),
    (V1_0, NoteNotNull, "1.0", "1.1", [("note", ChangeKind.TYPE_CHANGED)]),
    (NoteNotNull, V1_0, "1.0", "1.1", [("note", ChangeKind.TYPE_CHANGED)]),
    (V1_0, NoteOptional, "1.0", "1.1", [("note", ChangeKind.MADE_OPTIONAL)]),
    (Painted, PaintedMore, "1.0", "1.1", []),
    (Painted, PaintedMore, "1.0", "1.0", [("colour", ChangeKind.ENUM_VALUES_ADDED)]),
    (PaintedMore, Painted, "1.1", "1.2", [("colour", ChangeKind.ENUM_VALUES_REMOVED)]),
    (V1_1, V1_0, "1.1", "1.0", [("", ChangeKind.VERSION_DECREASED)]),
    (V1_0, V1_0, "1.0", "1.0", []),
]


@pytest.mark.parametrize(
    ("old", "new", "old_version", "new_version", "expected"),
    RULES,
    ids=[f"{r[0].__name__}-{r[2]}->{r[1].__name__}-{r[3]}" for r in RULES],
)
def test_rule(
    old: type[BaseModel],
    new: type[BaseModel],
    old_version: str,
    new_version: str,
    expected: list[tuple[str, ChangeKind]],
) -> None:
    violations = compare_schemas(_schema(old), _schema(new), old_version, new_version)
    assert _kinds(violations) == expected
    for violation in violations:
        assert violation.old_version == old_version and violation.new_version == new_version
        assert violation.path in violation.message or violation.path == ""


def test_violation_carries_required_bump_and_readable_message() -> None:
    [violation] = compare_schemas(_schema(V1_0), _schema(Renamed), "1.0", "1.1", event_type="x.y")
    assert violation.required_bump is Bump.MAJOR
    assert violation.event_type == "x.y"
    assert str(violation) == (
        "x.y 1.0 -> 1.1: count: field renamed (to total) needs a major version bump, got minor"
    )


def test_documentation_changes_are_not_structural() -> None:
    schema = _schema(V1_0)
    documented = json.loads(json.dumps(schema))
    documented["title"] = "Renamed title"
    documented["description"] = "Now with docs"
    documented["properties"]["count"]["description"] = "How many"
    documented["x-catalog"] = {"auditRequired": True}
    assert diff_schemas(schema, documented) == []


def test_malformed_versions_raise() -> None:
    with pytest.raises(ValueError):
        compare_schemas(_schema(V1_0), _schema(V1_1), "1", "1.1")


# --- the same rules on the real envelope, through the registry and the files ------------------


class WorkOrderCreatedV11(WorkOrderCreated):
    """work_order.created 1.1: adds an optional site."""

    siteId: OpaqueId | None = None


def _registry(version: str, model: type = WorkOrderCreatedV11) -> EventRegistry:
    specs = [s for s in CATALOG if s.event_type != "work_order.created"]
    return EventRegistry(
        [
            *specs,
            EventSpec("work_order.created", version, model, DataClassification.L2, False, True),
        ]
    )


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, target)
    return target


def test_minor_bump_with_optional_field_is_compatible(schemas_copy: Path) -> None:
    registry = _registry("1.1")
    assert check_compatibility(schemas_copy, registry=registry) == []
    assert [p.name for p in write_schemas(schemas_copy, registry=registry)] == ["1.1.json"]
    assert sorted(p.name for p in (schemas_copy / "work_order.created").iterdir()) == [
        "1.0.json",
        "1.1.json",
    ]
    assert check_compatibility(schemas_copy, registry=registry) == []


def test_unbumped_change_of_the_models_is_reported(schemas_copy: Path) -> None:
    violations = check_compatibility(schemas_copy, registry=_registry("1.0"))
    assert _kinds(violations) == [("data.siteId", ChangeKind.FIELD_ADDED_OPTIONAL)]
    assert violations[0].event_type == "work_order.created"


def test_breaking_file_in_history_is_reported(schemas_copy: Path) -> None:
    folder = schemas_copy / "work_order.created"
    schema = json.loads((folder / "1.0.json").read_text("utf-8"))
    del schema["$defs"]["WorkOrderCreated"]["properties"]["title"]
    schema["$defs"]["WorkOrderCreated"]["required"].remove("title")
    (folder / "1.1.json").write_text(json.dumps(schema), encoding="utf-8")
    violations = check_compatibility(schemas_copy, registry=EventRegistry())
    assert _kinds(violations) == [("data.title", ChangeKind.FIELD_REMOVED)]
    (folder / "1.1.json").rename(folder / "2.0.json")
    assert check_compatibility(schemas_copy, registry=EventRegistry()) == []


def test_a_new_type_has_no_previous_schema(schemas_copy: Path) -> None:
    new_type = schemas_copy / "resource.training_completed"
    new_type.mkdir()
    (new_type / "1.0.json").write_text(json.dumps(_schema(V1_0)), encoding="utf-8")
    assert check_compatibility(schemas_copy) == []
