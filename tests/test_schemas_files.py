"""The committed schema registry (events/schemas/) against the models, and the files themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import orjson
import pytest

from events import (
    CATALOG,
    REGISTRY,
    SCHEMAS_DIR,
    STREAM_TYPES,
    ChangeKind,
    check_compatibility,
    check_schemas,
    generate_schemas,
    write_schemas,
)

SAMPLES = Path(__file__).parent / "samples"
COMMITTED = sorted(SCHEMAS_DIR.glob("*/*.json"))


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, target)
    return target


def test_committed_schemas_equal_the_models() -> None:
    # If this fails: bump the version if the contract changed, then write_schemas().
    assert check_schemas() == []


def test_committed_history_is_compatible() -> None:
    assert check_compatibility() == []


def test_one_file_per_type_and_version() -> None:
    assert {f"{p.parent.name}/{p.name}" for p in COMMITTED} == {
        f"{t}/{REGISTRY.current_version(t)}.json" for t in REGISTRY.event_types()
    }


def test_generation_is_deterministic_and_files_are_pretty_sorted_with_newline() -> None:
    assert generate_schemas() == generate_schemas()
    for path in COMMITTED:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n") and not text.endswith("\n\n")
        assert (
            text
            == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_schema_is_valid_and_accepts_its_sample(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["type"]["const"] == path.parent.name
    assert schema["x-catalog"]["eventType"] == path.parent.name
    assert "data" in schema["required"] and "metadata" in schema["required"]
    sample = orjson.loads((SAMPLES / f"{path.parent.name}.json").read_bytes())
    jsonschema.Draft202012Validator(schema).validate(sample)


def test_schema_carries_the_envelope_rules() -> None:
    schema = json.loads((SCHEMAS_DIR / "work_order.created" / "1.0.json").read_text("utf-8"))
    sample = orjson.loads((SAMPLES / "work_order.created.json").read_bytes())
    validator = jsonschema.Draft202012Validator(schema)
    for field, bad in [
        ("timestamp", "2026-02-13T09:30:00"),  # naive
        ("id", "2f1e4c3b-8a9d-4e6f-b1c2-d3e4f5a6b7c8"),  # UUIDv4
        ("tenantId", "tenant.abc"),
        ("version", "2.0"),
    ]:
        assert not validator.is_valid({**sample, field: bad}), field
    assert validator.is_valid({**sample, "version": "1.9", "unknownField": 1})


def test_write_schemas_creates_all_then_nothing(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert len(written) == len(CATALOG) + len(STREAM_TYPES) == 23 + 4
    assert all(p.is_file() for p in written)
    assert check_schemas(tmp_path) == []
    assert write_schemas(tmp_path) == []
    for path in written:
        assert path.read_bytes() == (SCHEMAS_DIR / path.relative_to(tmp_path)).read_bytes()


def test_modified_copy_is_detected(schemas_copy: Path) -> None:
    target = schemas_copy / "work_order.status_changed" / "1.0.json"
    schema = json.loads(target.read_text("utf-8"))
    schema["$defs"]["WorkOrderStatusChanged"]["required"].remove("reason")
    target.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    problems = check_schemas(schemas_copy)
    assert len(problems) == 1
    assert "work_order.status_changed/1.0.json" in problems[0]
    assert "differs" in problems[0]
    # The same edit is a compatibility break of the models against the committed file.
    violations = check_compatibility(schemas_copy)
    assert [(v.path, v.change) for v in violations] == [("data.reason", ChangeKind.MADE_REQUIRED)]


def test_whitespace_only_change_is_detected(schemas_copy: Path) -> None:
    target = schemas_copy / "system.backup_completed" / "1.0.json"
    target.write_text(target.read_text("utf-8").rstrip("\n"), encoding="utf-8")
    assert check_schemas(schemas_copy) == [
        "system.backup_completed/1.0.json: differs from the models (bump the version if the "
        "contract changed, then write_schemas)"
    ]


def test_missing_stray_unknown_and_ahead_files_are_detected(schemas_copy: Path) -> None:
    (schemas_copy / "agent.task_completed" / "1.0.json").unlink()
    (schemas_copy / "agent.task_dispatched" / "notes.txt").write_text("x", encoding="utf-8")
    (schemas_copy / "billing.invoice_sent").mkdir()
    ahead = schemas_copy / "work_order.closed" / "1.1.json"
    shutil.copy(schemas_copy / "work_order.closed" / "1.0.json", ahead)
    shutil.copy(ahead, schemas_copy / "work_order.closed" / "2.0.json")
    problems = check_schemas(schemas_copy)
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    for expected in [
        "agent.task_completed/1.0.json: missing",
        "agent.task_dispatched/notes.txt: not a",
        "billing.invoice_sent/: event type is not registered",
        "work_order.closed/1.1.json: ahead of the models",
        "work_order.closed/2.0.json: no model is registered for major 2",
    ]:
        assert expected in joined


def test_older_versions_are_kept_as_history(schemas_copy: Path) -> None:
    history = schemas_copy / "work_order.closed" / "0.9.json"
    shutil.copy(schemas_copy / "work_order.closed" / "1.0.json", history)
    assert check_schemas(schemas_copy) == []
    assert write_schemas(schemas_copy) == []
    assert history.is_file()
