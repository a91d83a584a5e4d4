"""TrainingSpec: the d2l defaults, the limits it refuses, and the edge cases it accepts."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from models.spec import (
    INPUT_FEATURES,
    MAX_EPOCHS,
    MAX_HIDDEN_LAYERS,
    MAX_LAYER_WIDTH,
    NUM_CLASSES,
    Activation,
    Optimizer,
    TrainingSpec,
)


def test_defaults_are_the_d2l_recipe() -> None:
    spec = TrainingSpec()

    assert spec.hidden_layers == [256]
    assert spec.activation is Activation.relu
    assert spec.init_std == 0.01
    assert spec.optimizer is Optimizer.sgd
    assert spec.lr == 0.1
    assert spec.batch_size == 256
    assert spec.epochs == 10
    assert spec.seed is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"hidden_units": [256]}, "hidden_units", id="unknown-field"),
        pytest.param({"epochs": "abc"}, "epochs", id="epochs-not-a-number"),
        pytest.param({"hidden_layers": ["wide", "narrow"]}, "hidden_layers", id="hidden-layers-strings"),
        pytest.param({"hidden_layers": "256"}, "hidden_layers", id="hidden-layers-a-string"),
        pytest.param({"hidden_layers": [256, 0]}, "hidden_layers", id="zero-unit-layer"),
        pytest.param({"hidden_layers": [10**7]}, "hidden_layers", id="ten-million-unit-layer"),
        pytest.param({"hidden_layers": [MAX_LAYER_WIDTH + 1]}, "hidden_layers", id="one-over-max-width"),
        pytest.param({"hidden_layers": [16] * 100}, "hidden_layers", id="100-layers"),
        pytest.param({"hidden_layers": [16] * (MAX_HIDDEN_LAYERS + 1)}, "hidden_layers", id="one-layer-too-many"),
        pytest.param({"epochs": 0}, "epochs", id="epochs-0"),
        pytest.param({"epochs": 10**6}, "epochs", id="epochs-million"),
        pytest.param({"epochs": 2.5}, "epochs", id="epochs-fractional"),
        pytest.param({"lr": 0}, "lr", id="lr-0"),
        pytest.param({"lr": -0.1}, "lr", id="lr-negative"),
        pytest.param({"lr": float("nan")}, "lr", id="lr-nan"),
        pytest.param({"lr": float("inf")}, "lr", id="lr-inf"),
        pytest.param({"lr": 1e9}, "lr", id="lr-huge"),
        pytest.param({"batch_size": 0}, "batch_size", id="batch-size-0"),
        pytest.param({"init_std": 0}, "init_std", id="init-std-0"),
        pytest.param({"init_std": float("nan")}, "init_std", id="init-std-nan"),
        pytest.param({"activation": "swish"}, "activation", id="unknown-activation"),
        pytest.param({"optimizer": "lbfgs"}, "optimizer", id="unknown-optimizer"),
        pytest.param({"seed": -1}, "seed", id="seed-negative"),
        pytest.param({"seed": 2**63}, "seed", id="seed-over-int64"),
    ],
)
def test_invalid_spec_is_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        TrainingSpec(**fields)

    locations = [error["loc"] for error in caught.value.errors()]
    assert locations, "a ValidationError with no errors"
    assert all(loc[0] == field for loc in locations), locations


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"hidden_layers": []}, id="softmax-regression"),
        pytest.param({"hidden_layers": [16] * MAX_HIDDEN_LAYERS}, id="eight-layers"),
        pytest.param({"hidden_layers": [MAX_LAYER_WIDTH]}, id="width-8192"),
        pytest.param({"epochs": MAX_EPOCHS}, id="epochs-1000"),
        pytest.param({"epochs": 1, "batch_size": 1}, id="smallest-run"),
        pytest.param({"seed": 0}, id="seed-0"),
        pytest.param({"activation": "tanh", "optimizer": "sgd"}, id="enum-values-as-strings"),
    ],
)
def test_edge_cases_are_accepted(fields: dict[str, Any]) -> None:
    spec = TrainingSpec(**fields)

    for name, value in fields.items():
        assert getattr(spec, name) == value


def test_spec_is_frozen() -> None:
    spec = TrainingSpec()

    with pytest.raises(pydantic.ValidationError):
        spec.epochs = 3  # type: ignore[misc]


def test_json_round_trip_gives_an_equal_spec() -> None:
    spec = TrainingSpec(hidden_layers=[64, 32], activation=Activation.sigmoid, lr=0.5, epochs=3, seed=7)

    assert TrainingSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("hidden_layers", "expected"),
    [
        ([256], [INPUT_FEATURES, 256, NUM_CLASSES]),
        ([1024, 512], [784, 1024, 512, 10]),
        ([], [784, 10]),
    ],
)
def test_layer_sizes_run_from_input_to_output(hidden_layers: list[int], expected: list[int]) -> None:
    assert TrainingSpec(hidden_layers=hidden_layers).layer_sizes == expected
