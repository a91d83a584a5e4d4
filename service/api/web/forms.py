"""The submit form, generated from the training spec's JSON schema so that a new spec field appears by itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class InputKind(StrEnum):
    """How a field is typed in: the JavaScript reads each input back by this kind."""

    select = "select"
    checkbox = "checkbox"
    integer = "integer"
    number = "number"
    integer_list = "integer_list"
    json = "json"  # anything the form has no widget for: typed as JSON, checked by the server


@dataclass(frozen=True)
class FormField:
    """One spec field as the form shows it."""

    name: str
    kind: InputKind
    default: Any
    description: str
    nullable: bool = False
    options: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def shown_default(self) -> str:
        """The default as the field's input holds it."""
        if self.default is None:
            return ""
        if self.kind is InputKind.integer_list:
            return ", ".join(str(width) for width in self.default)
        if self.kind is InputKind.json:
            return json.dumps(self.default)
        return str(self.default)

    @property
    def step(self) -> str:
        return "1" if self.kind is InputKind.integer else "any"


def _resolve(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[-1]]
        return {**target, **{key: value for key, value in schema.items() if key != "$ref"}}
    return schema


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> float | None:
    value = schema.get(inclusive, schema.get(exclusive))
    return float(value) if value is not None else None


def form_fields(schema: dict[str, Any]) -> list[FormField]:
    """The fields of a pydantic model's JSON schema, in the schema's order, with their widgets and bounds."""
    definitions = schema.get("$defs", {})
    fields = []
    for name, raw in schema["properties"].items():
        prop = _resolve(raw, definitions)
        variants = [_resolve(variant, definitions) for variant in prop.get("anyOf", [prop])]
        nullable = any(variant.get("type") == "null" for variant in variants)
        value = next((variant for variant in variants if variant.get("type") != "null"), {})
        kind = _kind(value)
        fields.append(
            FormField(
                name=name,
                kind=kind,
                default=prop.get("default"),
                description=prop.get("description", ""),
                nullable=nullable,
                options=tuple(str(option) for option in value.get("enum", ())),
                minimum=_bound(value, "minimum", "exclusiveMinimum"),
                maximum=_bound(value, "maximum", "exclusiveMaximum"),
            )
        )
    return fields


def _kind(schema: dict[str, Any]) -> InputKind:
    if "enum" in schema:
        return InputKind.select
    match schema.get("type"):
        case "boolean":
            return InputKind.checkbox
        case "integer":
            return InputKind.integer
        case "number":
            return InputKind.number
        case "array" if schema.get("items", {}).get("type") == "integer":
            return InputKind.integer_list
    return InputKind.json
