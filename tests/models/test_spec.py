"""TrainingSpec: the d2l defaults, the limits it refuses, and the edge cases it accepts."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from models.network import build_mlp, count_parameters
from models.spec import (
    INPUT_FEATURES,
    MAX_BUDGET,
    MAX_EPOCHS,
    MAX_HIDDEN_LAYERS,
    MAX_LAYER_WIDTH,
    NUM_CLASSES,
    TRAIN_SAMPLES,
    Activation,
    Init,
    LRSchedule,
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


def test_defaults_of_the_newer_fields_change_nothing_in_the_recipe() -> None:
    spec = TrainingSpec()

    assert spec.init is Init.normal
    assert spec.dropout == 0
    assert spec.normalize_inputs is False
    assert spec.momentum == 0
    assert spec.nesterov is False
    assert spec.weight_decay == 0
    assert spec.lr_schedule is LRSchedule.constant
    assert spec.step_epochs == 10
    assert spec.gamma == 0.1
    assert spec.warmup_epochs == 0
    assert spec.label_smoothing == 0
    assert spec.val_fraction == 0
    assert spec.early_stopping_patience is None
    assert spec.max_seconds is None


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
        pytest.param({"init": "orthogonal"}, "init", id="unknown-init"),
        pytest.param({"dropout": 1.0}, "dropout", id="dropout-1"),
        pytest.param({"dropout": -0.1}, "dropout", id="dropout-negative"),
        pytest.param({"dropout": float("nan")}, "dropout", id="dropout-nan"),
        pytest.param({"normalize_inputs": "perhaps"}, "normalize_inputs", id="normalize-inputs-not-a-bool"),
        pytest.param({"momentum": 1.0}, "momentum", id="momentum-1"),
        pytest.param({"momentum": -0.5}, "momentum", id="momentum-negative"),
        pytest.param({"momentum": float("nan")}, "momentum", id="momentum-nan"),
        pytest.param({"weight_decay": 2}, "weight_decay", id="weight-decay-2"),
        pytest.param({"weight_decay": -1e-4}, "weight_decay", id="weight-decay-negative"),
        pytest.param({"lr_schedule": "exponential"}, "lr_schedule", id="unknown-lr-schedule"),
        pytest.param({"step_epochs": 0}, "step_epochs", id="step-epochs-0"),
        pytest.param({"gamma": 0}, "gamma", id="gamma-0"),
        pytest.param({"gamma": 1.5}, "gamma", id="gamma-over-1"),
        pytest.param({"warmup_epochs": -1}, "warmup_epochs", id="warmup-negative"),
        pytest.param({"warmup_epochs": float("inf")}, "warmup_epochs", id="warmup-inf"),
        pytest.param({"label_smoothing": 0.6}, "label_smoothing", id="label-smoothing-0.6"),
        pytest.param({"label_smoothing": -0.1}, "label_smoothing", id="label-smoothing-negative"),
        pytest.param({"val_fraction": 0.6}, "val_fraction", id="val-fraction-0.6"),
        pytest.param({"val_fraction": -0.1}, "val_fraction", id="val-fraction-negative"),
        pytest.param({"early_stopping_patience": 0}, "early_stopping_patience", id="patience-0"),
        pytest.param({"early_stopping_patience": 2.5}, "early_stopping_patience", id="patience-fractional"),
        pytest.param({"max_seconds": 0}, "max_seconds", id="max-seconds-0"),
        pytest.param({"max_seconds": -5}, "max_seconds", id="max-seconds-negative"),
        pytest.param({"max_seconds": float("nan")}, "max_seconds", id="max-seconds-nan"),
        pytest.param({"max_seconds": 10**9}, "max_seconds", id="max-seconds-over-a-week"),
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
        pytest.param({"init": "kaiming", "lr_schedule": "onecycle", "activation": "gelu"}, id="new-enum-values"),
        pytest.param({"dropout": 0.0}, id="dropout-0"),
        pytest.param({"dropout": 0.99}, id="dropout-0.99"),
        pytest.param({"momentum": 0.9, "nesterov": True}, id="nesterov-sgd"),
        pytest.param({"optimizer": "adamw", "weight_decay": 1.0}, id="weight-decay-1"),
        pytest.param({"label_smoothing": 0.5}, id="label-smoothing-0.5"),
        pytest.param({"val_fraction": 0.5, "early_stopping_patience": 1}, id="val-half-patience-1"),
        pytest.param({"warmup_epochs": 10, "epochs": 10}, id="warmup-the-whole-run"),
        pytest.param({"warmup_epochs": 0.5}, id="warmup-half-an-epoch"),
        pytest.param({"gamma": 1.0}, id="gamma-1"),
        pytest.param({"max_seconds": 0.001}, id="max-seconds-tiny"),
        pytest.param({"hidden_layers": [1024, 1024], "epochs": 100}, id="1024x1024-for-100-epochs"),
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


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        pytest.param({"nesterov": True}, "momentum > 0", id="nesterov-without-momentum"),
        pytest.param({"nesterov": True, "optimizer": "adam", "momentum": 0.9}, "optimizer 'sgd'", id="nesterov-adam"),
        pytest.param({"nesterov": True, "optimizer": "adamw", "momentum": 0.9}, "optimizer 'sgd'", id="nesterov-adamw"),
        pytest.param({"early_stopping_patience": 3}, "needs val_fraction > 0", id="patience-without-validation"),
        pytest.param(
            {"early_stopping_patience": 3, "val_fraction": 0.0}, "needs val_fraction > 0", id="patience-val-0"
        ),
        pytest.param({"warmup_epochs": 10.5, "epochs": 10}, "warmup_epochs cannot exceed epochs", id="warmup-over"),
        pytest.param({"warmup_epochs": 3, "epochs": 2}, "warmup_epochs cannot exceed epochs", id="warmup-3-of-2"),
    ],
)
def test_inconsistent_fields_are_refused_saying_what_to_change(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        TrainingSpec(**fields)

    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == ()
    assert says in errors[0]["msg"]


@pytest.mark.parametrize(
    ("hidden_layers", "epochs"),
    [
        pytest.param([MAX_LAYER_WIDTH] * MAX_HIDDEN_LAYERS, MAX_EPOCHS, id="8x8192-for-1000-epochs"),
        pytest.param([MAX_LAYER_WIDTH] * MAX_HIDDEN_LAYERS, 40, id="8x8192-for-40-epochs"),
        pytest.param([4096, 4096], 1000, id="2x4096-for-1000-epochs"),
    ],
)
def test_runs_over_the_budget_ceiling_are_refused(hidden_layers: list[int], epochs: int) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        TrainingSpec(hidden_layers=hidden_layers, epochs=epochs)

    errors = caught.value.errors()
    assert len(errors) == 1 and errors[0]["loc"] == ()
    message = errors[0]["msg"]
    assert "too large" in message
    assert f"{MAX_BUDGET:.0e}" in message  # the ceiling, 1e+15
    assert "fewer" in message  # and what to change


def test_budget_ceiling_sits_between_accepted_and_refused_epoch_counts() -> None:
    layers = [MAX_LAYER_WIDTH] * MAX_HIDDEN_LAYERS
    per_epoch = TrainingSpec(hidden_layers=layers, epochs=1).budget
    most = MAX_BUDGET // per_epoch

    assert TrainingSpec(hidden_layers=layers, epochs=most).budget <= MAX_BUDGET
    with pytest.raises(pydantic.ValidationError, match="too large"):
        TrainingSpec(hidden_layers=layers, epochs=most + 1)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="d2l"),
        pytest.param({"hidden_layers": []}, id="softmax-regression"),
        pytest.param({"hidden_layers": [1024, 512]}, id="two-layers"),
        pytest.param({"hidden_layers": [7, 3, 11], "dropout": 0.5}, id="odd-widths-dropout"),
        pytest.param({"hidden_layers": [64], "normalize_inputs": True}, id="standardized-inputs"),
    ],
)
def test_parameter_count_is_what_the_built_network_has(fields: dict[str, Any]) -> None:
    spec = TrainingSpec(**fields)

    assert spec.parameter_count == count_parameters(build_mlp(spec))


@pytest.mark.parametrize("epochs", [1, 10, 100])
def test_budget_is_parameters_times_samples_times_epochs(epochs: int) -> None:
    spec = TrainingSpec(hidden_layers=[1024, 1024], epochs=epochs)

    assert TRAIN_SAMPLES == 60_000
    assert spec.budget == spec.parameter_count * 60_000 * epochs
    assert spec.budget <= MAX_BUDGET
