"""Schema compatibility rules (catalog §9): which schema changes need a minor or a major bump.

``diff_schemas`` lists the structural changes between two JSON Schemas (``$ref``s resolved;
titles, descriptions, examples, defaults and ``x-`` keys ignored). Each change needs a bump:

=========================  ======  =========================================================
change                     bump    why
=========================  ======  =========================================================
optional field added       minor   §9 "add optional field"; old consumers ignore it
enum value added           minor   additive, but consumers must learn the new value
required field added       major   events of older producers no longer validate
field removed              major   §9 "rename/remove field"
field renamed              major   §9; reported when a removed and an added field of one
                                   object have the same schema
field type changed         major   §9 "change field type"; includes nullability, formats,
                                   patterns and numeric bounds
optional made required     major   older events without the field no longer validate
required made optional     major   consumers relying on the field's presence break
enum value removed         major   events carrying the value no longer validate
=========================  ======  =========================================================

``compare_schemas`` turns the changes that need more than the actual bump between two
versions into ``CompatViolation``s; a version that goes backwards is a violation by itself.
A new event type has no previous schema and is always fine (new subject).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from events.semver import parse_version


class Bump(IntEnum):
    """Size of a version step, or the step a change needs."""

    NONE = 0
    MINOR = 1
    MAJOR = 2


class ChangeKind(StrEnum):
    FIELD_ADDED_OPTIONAL = "FIELD_ADDED_OPTIONAL"
    FIELD_ADDED_REQUIRED = "FIELD_ADDED_REQUIRED"
    FIELD_REMOVED = "FIELD_REMOVED"
    FIELD_RENAMED = "FIELD_RENAMED"
    TYPE_CHANGED = "TYPE_CHANGED"
    MADE_REQUIRED = "MADE_REQUIRED"
    MADE_OPTIONAL = "MADE_OPTIONAL"
    ENUM_VALUES_ADDED = "ENUM_VALUES_ADDED"
    ENUM_VALUES_REMOVED = "ENUM_VALUES_REMOVED"
    VERSION_DECREASED = "VERSION_DECREASED"


REQUIRED_BUMP: dict[ChangeKind, Bump] = {
    ChangeKind.FIELD_ADDED_OPTIONAL: Bump.MINOR,
    ChangeKind.ENUM_VALUES_ADDED: Bump.MINOR,
    ChangeKind.FIELD_ADDED_REQUIRED: Bump.MAJOR,
    ChangeKind.FIELD_REMOVED: Bump.MAJOR,
    ChangeKind.FIELD_RENAMED: Bump.MAJOR,
    ChangeKind.TYPE_CHANGED: Bump.MAJOR,
    ChangeKind.MADE_REQUIRED: Bump.MAJOR,
    ChangeKind.MADE_OPTIONAL: Bump.MAJOR,
    ChangeKind.ENUM_VALUES_REMOVED: Bump.MAJOR,
    ChangeKind.VERSION_DECREASED: Bump.MAJOR,
}


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """One structural change at a dotted field path (``[]`` marks array items)."""

    kind: ChangeKind
    path: str
    detail: str = ""

    @property
    def required_bump(self) -> Bump:
        return REQUIRED_BUMP[self.kind]


@dataclass(frozen=True, slots=True)
class CompatViolation:
    """A change whose required bump is larger than the version step it was published with."""

    event_type: str
    old_version: str
    new_version: str
    path: str
    change: ChangeKind
    required_bump: Bump
    message: str

    def __str__(self) -> str:
        return (
            f"{self.event_type or '<schema>'} {self.old_version} -> {self.new_version}: "
            f"{self.message}"
        )


def compare_schemas(
    old: dict[str, Any],
    new: dict[str, Any],
    old_version: str,
    new_version: str,
    *,
    event_type: str | None = None,
) -> list[CompatViolation]:
    """Violations of §9 when ``new`` (at new_version) follows ``old`` (at old_version)."""
    before, after = parse_version(old_version), parse_version(new_version)
    kind = event_type if event_type is not None else _event_type_of(new) or _event_type_of(old)
    if after < before:
        return [
            CompatViolation(
                kind,
                old_version,
                new_version,
                "",
                ChangeKind.VERSION_DECREASED,
                Bump.MAJOR,
                "version must not decrease",
            )
        ]
    if after.major > before.major:
        actual = Bump.MAJOR
    elif after.minor > before.minor:
        actual = Bump.MINOR
    else:
        actual = Bump.NONE
    return [
        CompatViolation(
            kind,
            old_version,
            new_version,
            change.path,
            change.kind,
            change.required_bump,
            f"{change.path or 'schema'}: {_TEXT[change.kind]}{change.detail} needs a "
            f"{change.required_bump.name.lower()} version bump, got "
            f"{'none' if actual is Bump.NONE else actual.name.lower()}",
        )
        for change in diff_schemas(old, new)
        if change.required_bump > actual
    ]


def diff_schemas(old: dict[str, Any], new: dict[str, Any]) -> list[SchemaChange]:
    """Structural changes from ``old`` to ``new``, in path order."""
    out: list[SchemaChange] = []
    _diff(_normalize(old, old, ()), _normalize(new, new, ()), "", out)
    return out


_TEXT: dict[ChangeKind, str] = {
    ChangeKind.FIELD_ADDED_OPTIONAL: "optional field added",
    ChangeKind.FIELD_ADDED_REQUIRED: "required field added",
    ChangeKind.FIELD_REMOVED: "field removed",
    ChangeKind.FIELD_RENAMED: "field renamed",
    ChangeKind.TYPE_CHANGED: "field type changed",
    ChangeKind.MADE_REQUIRED: "optional field made required",
    ChangeKind.MADE_OPTIONAL: "required field made optional",
    ChangeKind.ENUM_VALUES_ADDED: "enum values added",
    ChangeKind.ENUM_VALUES_REMOVED: "enum values removed",
    ChangeKind.VERSION_DECREASED: "version decreased",
}

# Keywords that document a schema without constraining instances.
_ANNOTATIONS = frozenset(
    {"title", "description", "examples", "default", "$comment", "deprecated", "$id", "$schema"}
)
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_VALUES = frozenset(
    {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"}
)
_NULL = {"type": "null"}


def _event_type_of(schema: dict[str, Any]) -> str:
    const = schema.get("properties", {}).get("type", {}).get("const")
    return const if isinstance(const, str) else ""


def _normalize(node: Any, root: dict[str, Any], resolving: tuple[str, ...]) -> Any:
    """Resolve local ``$ref``s and drop annotations, keeping field names intact."""
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in resolving:  # recursive type: compare by reference name
            return {"$ref": name}
        target = root.get("$defs", {}).get(name, {})
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _normalize({**target, **siblings}, root, (*resolving, name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS or key == "$defs" or key.startswith("x-"):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _normalize(v, root, resolving) for k, v in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_normalize(v, root, resolving) for v in value]
        elif key in _SCHEMA_VALUES:
            out[key] = _normalize(value, root, resolving)
        elif key == "required" and isinstance(value, list):
            out[key] = sorted(value)
        else:
            out[key] = value
    return out


def _split_nullable(node: Any) -> tuple[bool, Any]:
    if not isinstance(node, dict):
        return False, node
    options = node.get("anyOf")
    if isinstance(options, list) and _NULL in options:
        rest = [option for option in options if option != _NULL]
        siblings = {k: v for k, v in node.items() if k != "anyOf"}
        if len(rest) == 1 and isinstance(rest[0], dict):
            return True, {**rest[0], **siblings}
        return True, {**siblings, "anyOf": rest}
    return False, node


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _diff(old: Any, new: Any, path: str, out: list[SchemaChange]) -> None:
    if old == new:
        return
    old_nullable, old = _split_nullable(old)
    new_nullable, new = _split_nullable(new)
    if old_nullable != new_nullable:
        out.append(SchemaChange(ChangeKind.TYPE_CHANGED, path, " (nullability)"))
        return
    if _is_object(old) and _is_object(new):
        _diff_object(old, new, path, out)
    elif _is_array(old) and _is_array(new):
        if _without(old, "items") != _without(new, "items"):
            out.append(SchemaChange(ChangeKind.TYPE_CHANGED, path, " (array constraints)"))
        _diff(old.get("items", {}), new.get("items", {}), f"{path}[]", out)
    elif _is_enum(old) and _is_enum(new) and _without(old, "enum") == _without(new, "enum"):
        before = {json.dumps(v, sort_keys=True) for v in old["enum"]}
        after = {json.dumps(v, sort_keys=True) for v in new["enum"]}
        if before - after:
            removed = ", ".join(sorted(before - after))
            out.append(SchemaChange(ChangeKind.ENUM_VALUES_REMOVED, path, f" ({removed})"))
        if after - before:
            added = ", ".join(sorted(after - before))
            out.append(SchemaChange(ChangeKind.ENUM_VALUES_ADDED, path, f" ({added})"))
    elif old != new:
        out.append(SchemaChange(ChangeKind.TYPE_CHANGED, path))


def _diff_object(
    old: dict[str, Any], new: dict[str, Any], path: str, out: list[SchemaChange]
) -> None:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    if _without(old, "properties", "required") != _without(new, "properties", "required"):
        out.append(SchemaChange(ChangeKind.TYPE_CHANGED, path, " (object constraints)"))

    removed = sorted(old_props.keys() - new_props.keys())
    added = sorted(new_props.keys() - old_props.keys())
    for name in list(removed):
        twin = next(
            (
                candidate
                for candidate in added
                if new_props[candidate] == old_props[name]
                and (candidate in new_required) == (name in old_required)
            ),
            None,
        )
        if twin is not None:
            removed.remove(name)
            added.remove(twin)
            out.append(SchemaChange(ChangeKind.FIELD_RENAMED, _join(path, name), f" (to {twin})"))
    for name in removed:
        out.append(SchemaChange(ChangeKind.FIELD_REMOVED, _join(path, name)))
    for name in added:
        kind = (
            ChangeKind.FIELD_ADDED_REQUIRED
            if name in new_required
            else ChangeKind.FIELD_ADDED_OPTIONAL
        )
        out.append(SchemaChange(kind, _join(path, name)))
    for name in sorted(old_props.keys() & new_props.keys()):
        field_path = _join(path, name)
        if name not in old_required and name in new_required:
            out.append(SchemaChange(ChangeKind.MADE_REQUIRED, field_path))
        elif name in old_required and name not in new_required:
            out.append(SchemaChange(ChangeKind.MADE_OPTIONAL, field_path))
        _diff(old_props[name], new_props[name], field_path, out)


def _is_object(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "object" and "properties" in node


def _is_array(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "array"


def _is_enum(node: Any) -> bool:
    return isinstance(node, dict) and isinstance(node.get("enum"), list)


def _without(node: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in keys}
