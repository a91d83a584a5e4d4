"""The training loop on synthetic data: metrics, determinism, stopping, and evaluate()."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import models.training
from models.data import DeviceDataset
from models.spec import Activation, TrainingSpec
from models.training import EpochMetrics, TrainingStopped, evaluate, train

# Larger steps than the d2l recipe so that three epochs over 600 synthetic images reliably learn the bands.
TINY = TrainingSpec(hidden_layers=[32], batch_size=32, epochs=3, lr=0.5, init_std=0.1)


def _batches_per_epoch(spec: TrainingSpec, data: DeviceDataset) -> int:
    return math.ceil(len(data.train_x) / spec.batch_size)


def _comparable(history: list[EpochMetrics]) -> list[tuple[int, float, float, float]]:
    """Everything but the wall-clock seconds."""
    return [(m.epoch, m.train_loss, m.train_acc, m.test_acc) for m in history]


def test_history_reports_every_epoch_in_order(synthetic_dataset: DeviceDataset) -> None:
    reported: list[EpochMetrics] = []

    result = train(TINY, synthetic_dataset, seed=0, on_epoch=reported.append)

    assert len(result.history) == TINY.epochs
    assert [m.epoch for m in result.history] == list(range(1, TINY.epochs + 1))
    assert reported == result.history
    for metrics in result.history:
        assert math.isfinite(metrics.train_loss) and metrics.train_loss >= 0
        assert 0.0 <= metrics.train_acc <= 1.0
        assert 0.0 <= metrics.test_acc <= 1.0
        assert metrics.seconds >= 0
        assert set(metrics.as_dict()) == {"epoch", "train_loss", "train_acc", "test_acc", "seconds", "val_acc", "lr"}


def test_training_learns_the_synthetic_classes(synthetic_dataset: DeviceDataset) -> None:
    result = train(TINY, synthetic_dataset, seed=0)

    losses = [m.train_loss for m in result.history]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.5 * losses[0]
    assert result.test_acc is not None and result.test_acc > 0.5
    assert result.test_acc == result.history[-1].test_acc


def test_final_test_acc_is_what_evaluate_measures(synthetic_dataset: DeviceDataset) -> None:
    result = train(TINY, synthetic_dataset, seed=0)

    assert evaluate(result.model, synthetic_dataset.test_x, synthetic_dataset.test_y) == result.test_acc


def test_same_seed_gives_the_same_run(synthetic_dataset: DeviceDataset) -> None:
    first = train(TINY, synthetic_dataset, seed=11)
    second = train(TINY, synthetic_dataset, seed=11)

    assert _comparable(first.history) == _comparable(second.history)
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), key


def test_different_seed_gives_different_weights(synthetic_dataset: DeviceDataset) -> None:
    spec = TINY.model_copy(update={"epochs": 1})

    first = train(spec, synthetic_dataset, seed=1).model.state_dict()
    second = train(spec, synthetic_dataset, seed=2).model.state_dict()

    assert not torch.equal(first["1.weight"], second["1.weight"])


def test_should_stop_is_asked_before_every_batch(synthetic_dataset: DeviceDataset) -> None:
    spec = TINY.model_copy(update={"epochs": 2})
    calls = 0

    def never() -> bool:
        nonlocal calls
        calls += 1
        return False

    result = train(spec, synthetic_dataset, seed=0, should_stop=never)

    assert len(result.history) == 2
    assert calls == 2 * _batches_per_epoch(spec, synthetic_dataset)


@pytest.mark.parametrize(
    ("stop_at_call", "completed"),
    [
        pytest.param(lambda per_epoch: 1, 0, id="before-the-first-batch"),
        pytest.param(lambda per_epoch: 5, 0, id="mid-first-epoch"),
        pytest.param(lambda per_epoch: per_epoch + 1, 1, id="first-batch-of-epoch-2"),
        pytest.param(lambda per_epoch: per_epoch + 7, 1, id="mid-second-epoch"),
    ],
)
def test_should_stop_raises_training_stopped(
    synthetic_dataset: DeviceDataset, stop_at_call: Callable[[int], int], completed: int
) -> None:
    stop_at = stop_at_call(_batches_per_epoch(TINY, synthetic_dataset))
    calls = 0
    reported: list[int] = []

    def stop_at_call_n() -> bool:
        nonlocal calls
        calls += 1
        return calls >= stop_at

    with pytest.raises(TrainingStopped) as caught:
        train(TINY, synthetic_dataset, seed=0, on_epoch=lambda m: reported.append(m.epoch), should_stop=stop_at_call_n)

    assert caught.value.completed_epochs == completed
    assert f"{completed} completed epoch" in str(caught.value)
    assert reported == list(range(1, completed + 1))
    assert calls == stop_at  # nothing asked after the stop


@pytest.mark.parametrize("activation", list(Activation))
def test_each_activation_trains(synthetic_dataset: DeviceDataset, activation: Activation) -> None:
    spec = TINY.model_copy(update={"activation": activation})

    result = train(spec, synthetic_dataset, seed=0)

    assert isinstance(result.model, nn.Sequential)
    assert type(result.model[2]).__name__.lower() == activation.value.replace("_", "")
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test_acc is not None and result.test_acc > 0.5


def test_softmax_regression_trains(synthetic_dataset: DeviceDataset) -> None:
    spec = TINY.model_copy(update={"hidden_layers": []})

    result = train(spec, synthetic_dataset, seed=0)

    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test_acc is not None and result.test_acc > 0.5


class _FirstFeatureIsTheClass(nn.Module):
    """Predicts class ``int(x[:, 0])``: a model whose argmax is known."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(inputs[:, 0].long(), 10).float()


@pytest.mark.parametrize("eval_batch_size", [8192, 3], ids=["one-batch", "several-batches"])
def test_evaluate_returns_the_fraction_correct(monkeypatch: pytest.MonkeyPatch, eval_batch_size: int) -> None:
    monkeypatch.setattr(models.training, "EVAL_BATCH_SIZE", eval_batch_size)
    predicted = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 0, 0])  # 7 of 10 right
    inputs = torch.zeros(10, 784)
    inputs[:, 0] = predicted.float()

    assert evaluate(_FirstFeatureIsTheClass(), inputs, labels) == pytest.approx(0.7)


def test_evaluate_keeps_the_models_mode() -> None:
    model = _FirstFeatureIsTheClass()
    inputs, labels = torch.zeros(4, 784), torch.zeros(4, dtype=torch.int64)

    model.train()
    assert evaluate(model, inputs, labels) == 1.0
    assert model.training
    model.eval()
    evaluate(model, inputs, labels)
    assert not model.training


def test_evaluate_on_no_inputs_is_zero() -> None:
    assert evaluate(_FirstFeatureIsTheClass(), torch.zeros(0, 784), torch.zeros(0, dtype=torch.int64)) == 0.0


@pytest.mark.real_data
def test_d2l_recipe_learns_real_fashion_mnist(real_dataset: DeviceDataset) -> None:
    spec = TrainingSpec(epochs=2, seed=0)

    result = train(spec, real_dataset, seed=0)

    assert [m.epoch for m in result.history] == [1, 2]
    assert result.history[1].train_loss < result.history[0].train_loss
    # Seeds 0-7 measured 0.747-0.814 after two epochs; the recipe's test accuracy swings epoch to epoch.
    assert result.test_acc is not None and result.test_acc >= 0.74
