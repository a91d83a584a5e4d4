"""Validating a submitted spec (a preset and explicit fields) into a TrainingSpec, for single jobs and sweeps."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from models.presets import resolve_spec
from models.spec import TrainingSpec
from service.errors import InvalidSpec


def validated_spec(
    preset: str | None, explicit: dict[str, Any], loc: tuple[str | int, ...] = ("body",)
) -> TrainingSpec:
    try:
        return resolve_spec(preset, explicit)
    except ValidationError as exc:
        raise InvalidSpec(
            [{"loc": [*loc, *error["loc"]], "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
        ) from exc
