"""The schema registry in Git (catalog §9): JSON Schema files made from the models, and checks.

Layout: ``events/schemas/{event type}/{MAJOR.MINOR}.json``, one file per event type and
version, e.g. ``events/schemas/work_order.created/1.0.json``. Each file is the JSON Schema
(draft 2020-12, as pydantic generates it) of the **full envelope** of that type: ``type`` pinned
to the event type, ``version`` to the major, ``data`` to the payload schema (under ``$defs``),
so envelope changes are versioned with every type. ``x-catalog`` records the registry's
catalog facts (domain, default classification, regulatory, auditRequired); it documents, it is
not compared for compatibility. Files are pretty-printed with sorted keys and a trailing newline,
so the same models always give the same bytes.

Only the current version of each registered (type, major) is generated from the models; the
files of earlier versions stay in Git as the history that ``check_compatibility`` walks. The
CLI (``python pipeline.py schemas --check|--write|--compat``) wraps ``check_schemas``,
``write_schemas`` and ``check_compatibility``.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

from events.compat import CompatViolation, compare_schemas
from events.registry import REGISTRY, EventRegistry, EventSpec
from events.semver import Version, try_parse_version

__all__ = [
    "JSON_SCHEMA_DIALECT",
    "SCHEMAS_DIR",
    "CompatViolation",
    "check_compatibility",
    "check_schemas",
    "compare_schemas",
    "generate_schemas",
    "render_schema",
    "schema_for",
    "schema_path",
    "write_schemas",
]

SCHEMAS_DIR: Final = Path(__file__).resolve().parent / "schemas"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def schema_for(spec: EventSpec) -> dict[str, Any]:
    """JSON Schema of the envelope of one registered (type, current version)."""
    schema = spec.envelope.model_json_schema(mode="validation")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:wo-stream:event-schema:{spec.event_type}:{spec.version}",
        **schema,
        "x-catalog": {
            "eventType": spec.event_type,
            "version": spec.version,
            "domain": spec.domain,
            "dataClassification": str(spec.classification),
            "dataClassificationIfRegulatory": (
                None
                if spec.classification_if_regulatory is None
                else str(spec.classification_if_regulatory)
            ),
            "regulatory": spec.regulatory,
            "auditRequired": spec.audit_required,
        },
    }


def render_schema(schema: dict[str, Any]) -> str:
    """The exact text of a schema file."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_path(schemas_dir: Path, event_type: str, version: str) -> Path:
    return schemas_dir / event_type / f"{version}.json"


def generate_schemas(registry: EventRegistry | None = None) -> dict[Path, str]:
    """Relative path -> file text of every schema the models produce."""
    reg = REGISTRY if registry is None else registry
    return {
        schema_path(Path(), spec.event_type, spec.version): render_schema(schema_for(spec))
        for spec in reg.specs()
    }


def write_schemas(
    schemas_dir: Path | None = None, *, registry: EventRegistry | None = None
) -> list[Path]:
    """Write the models' schema files; return the paths created or changed (others untouched)."""
    root = SCHEMAS_DIR if schemas_dir is None else Path(schemas_dir)
    written: list[Path] = []
    for relative, text in generate_schemas(registry).items():
        path = root / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def check_schemas(
    schemas_dir: Path | None = None, *, registry: EventRegistry | None = None
) -> list[str]:
    """Differences between the committed schema files and the models; empty means in sync."""
    root = SCHEMAS_DIR if schemas_dir is None else Path(schemas_dir)
    reg = REGISTRY if registry is None else registry
    problems: list[str] = []
    for relative, text in generate_schemas(reg).items():
        path = root / relative
        if not path.is_file():
            problems.append(f"{relative}: missing (generate it with write_schemas)")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(
                f"{relative}: differs from the models (bump the version if the contract changed,"
                " then write_schemas)"
            )
    if not root.is_dir():
        return problems
    for type_dir in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not type_dir.is_dir():
            problems.append(f"{type_dir.name}: unexpected file outside a type directory")
            continue
        if not reg.is_known(type_dir.name):
            problems.append(f"{type_dir.name}/: event type is not registered")
            continue
        majors = {major: reg.get(type_dir.name, major) for major in reg.majors(type_dir.name)}
        for path in sorted(type_dir.iterdir()):
            version = _file_version(path)
            relative = f"{type_dir.name}/{path.name}"
            if version is None:
                problems.append(f"{relative}: not a '{{MAJOR.MINOR}}.json' schema file")
            elif version.major in majors and version > _version(majors[version.major]):
                problems.append(
                    f"{relative}: ahead of the models (current is {majors[version.major].version})"
                )
            elif version.major > max(majors):
                problems.append(f"{relative}: no model is registered for major {version.major}")
    return problems


def check_compatibility(
    schemas_dir: Path | None = None, *, registry: EventRegistry | None = None
) -> list[CompatViolation]:
    """§9 violations along each type's version history, and of the models against that history.

    Every committed version is compared with the previous committed version of its type. The
    models are compared too, with the committed file of their version (any structural change
    then lacks a bump) or else with the latest earlier version, so an unbumped contract change
    is reported before ``write_schemas`` overwrites the evidence.
    """
    root = SCHEMAS_DIR if schemas_dir is None else Path(schemas_dir)
    reg = REGISTRY if registry is None else registry
    history = _committed(root)
    violations: list[CompatViolation] = []
    for event_type, files in sorted(history.items()):
        for before, after in pairwise(sorted(files)):
            violations += compare_schemas(
                files[before], files[after], str(before), str(after), event_type=event_type
            )
    for spec in reg.specs():
        files = history.get(spec.event_type, {})
        current = _version(spec)
        earlier = [v for v in files if v <= current]
        if earlier:
            base = max(earlier)
            violations += compare_schemas(
                files[base], schema_for(spec), str(base), spec.version, event_type=spec.event_type
            )
    return violations


def _committed(root: Path) -> dict[str, dict[Version, dict[str, Any]]]:
    # Unreadable or misnamed files are skipped here; check_schemas reports them.
    history: dict[str, dict[Version, dict[str, Any]]] = {}
    if not root.is_dir():
        return history
    for type_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(type_dir.iterdir()):
            version = _file_version(path)
            if version is None:
                continue
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(schema, dict):
                history.setdefault(type_dir.name, {})[version] = schema
    return history


def _file_version(path: Path) -> Version | None:
    if not path.is_file() or path.suffix != ".json":
        return None
    return try_parse_version(path.name.removesuffix(".json"))


def _version(spec: EventSpec) -> Version:
    version = try_parse_version(spec.version)
    if version is None:  # EventSpec validated it at registration
        raise ValueError("registered version is malformed")
    return version
