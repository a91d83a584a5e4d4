"""Building specs in tests."""

from __future__ import annotations

from typing import Any

from models.spec import TrainingSpec


def spec_of(**fields: Any) -> TrainingSpec:
    """A spec from plain values (strings for the enums), validated like a request body."""
    return TrainingSpec.model_validate(fields)
