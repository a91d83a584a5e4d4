"""The submit form, generated from the training spec's JSON schema so that a new spec field appears by itself.

Each field is shown with a human label, the schema's description and its allowed range, in one of a few
sections (architecture, optimiser, schedule...) as people think of a training run; a field this module does
not place yet lands in "Other", so the form never loses one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


@dataclass(frozen=True, order=True)
class FormSection:
    """A group of spec fields; the rarely changed groups start folded. Sections sort in the order shown."""

    order: int
    slug: str = field(compare=False)
    title: str = field(compare=False)
    hint: str = field(compare=False)
    folded: bool = field(default=False, compare=False)


SECTIONS: dict[str, FormSection] = {
    section.slug: section
    for section in (
        FormSection(0, "architecture", "Architecture", "The network: its layers and its initial weights."),
        FormSection(1, "optimiser", "Optimiser", "How each gradient step changes the weights."),
        FormSection(2, "schedule", "Schedule", "How long training runs, in what batches, at what learning rate."),
        FormSection(
            3, "regularisation", "Regularisation", "Dropout, label smoothing and data augmentation.", folded=True
        ),
        FormSection(4, "run", "Run and data", "Inputs, validation split, limits and the seed.", folded=True),
        FormSection(5, "other", "Other", "Spec fields without a section of their own yet."),
    )
}
OTHER = SECTIONS["other"]

# Spec field -> (section, label), in the order the form shows them. Labels carry the unit where there is one.
LAYOUT: dict[str, tuple[str, str]] = {
    "hidden_layers": ("architecture", "Hidden layers"),
    "activation": ("architecture", "Activation"),
    "init": ("architecture", "Weight initialisation"),
    "init_std": ("architecture", "Initial weight std"),
    "optimizer": ("optimiser", "Optimiser"),
    "lr": ("optimiser", "Learning rate"),
    "momentum": ("optimiser", "Momentum"),
    "nesterov": ("optimiser", "Nesterov momentum"),
    "weight_decay": ("optimiser", "Weight decay"),
    "epochs": ("schedule", "Epochs"),
    "batch_size": ("schedule", "Batch size (images)"),
    "lr_schedule": ("schedule", "Learning-rate schedule"),
    "warmup_epochs": ("schedule", "Warm-up (epochs)"),
    "step_epochs": ("schedule", "Decay every (epochs)"),
    "gamma": ("schedule", "Decay factor"),
    "dropout": ("regularisation", "Dropout"),
    "label_smoothing": ("regularisation", "Label smoothing"),
    "hflip": ("regularisation", "Horizontal flips"),
    "max_shift": ("regularisation", "Random shift (pixels)"),
    "normalize_inputs": ("run", "Standardise inputs"),
    "val_fraction": ("run", "Validation split"),
    "early_stopping_patience": ("run", "Early-stopping patience (epochs)"),
    "max_seconds": ("run", "Time limit (seconds)"),
    "seed": ("run", "Seed"),
}


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
    label: str = ""
    section: FormSection = OTHER
    position: int = 0  # where the form shows it: sections first, then LAYOUT's order, then the schema's
    bounds: str = ""  # the allowed values in words, e.g. "> 0, ≤ 100"

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
    def default_text(self) -> str:
        """The default as a person reads it: "none" rather than null, "off" rather than false."""
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if self.kind is InputKind.integer_list:
            return self.shown_default or "none ([])"
        return self.shown_default

    @property
    def step(self) -> str:
        """The number input's step: whole numbers for integer fields."""
        return "1" if self.kind is InputKind.integer else "any"


def _resolve(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[-1]]
        return {**target, **{key: value for key, value in schema.items() if key != "$ref"}}
    return schema


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> float | None:
    value = schema.get(inclusive, schema.get(exclusive))
    return _exact(value) if value is not None else None


def _exact(value: float) -> float:
    # 0.0 as 0: the bound reads as the schema wrote it (and an integer bound past 2^53 keeps every digit).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _number(value: float) -> str:
    value = _exact(value)
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def bounds_text(schema: dict[str, Any]) -> str:
    """A value schema's range in words: "> 0, ≤ 100"; "up to 8 values, each ≥ 1, ≤ 8,192" for an array."""
    if schema.get("type") == "array":
        each = bounds_text(schema.get("items", {}))
        count = f"up to {schema['maxItems']} values" if "maxItems" in schema else ""
        return ", ".join(part for part in (count, f"each {each}" if each else "") if part)
    parts = []
    if "exclusiveMinimum" in schema:
        parts.append(f"> {_number(schema['exclusiveMinimum'])}")
    elif "minimum" in schema:
        parts.append(f"≥ {_number(schema['minimum'])}")
    if "exclusiveMaximum" in schema:
        parts.append(f"< {_number(schema['exclusiveMaximum'])}")
    elif "maximum" in schema:
        parts.append(f"≤ {_number(schema['maximum'])}")
    return ", ".join(parts)


def form_fields(schema: dict[str, Any]) -> list[FormField]:
    """The fields of a pydantic model's JSON schema, in the schema's order, with their widgets, bounds, labels
    and sections. A field missing from ``LAYOUT`` keeps the schema's title and goes to the "Other" section."""
    definitions = schema.get("$defs", {})
    placed = list(LAYOUT)
    fields = []
    for index, (name, raw) in enumerate(schema["properties"].items()):
        prop = _resolve(raw, definitions)
        variants = [_resolve(variant, definitions) for variant in prop.get("anyOf", [prop])]
        nullable = any(variant.get("type") == "null" for variant in variants)
        value = next((variant for variant in variants if variant.get("type") != "null"), {})
        kind = _kind(value)
        slug, label = LAYOUT.get(name, (OTHER.slug, prop.get("title") or name))
        section = SECTIONS[slug]
        order = placed.index(name) if name in LAYOUT else len(placed) + index
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
                label=label,
                section=section,
                position=section.order * 1000 + order,
                bounds=bounds_text(value),
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
