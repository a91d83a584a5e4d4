"""The training loop: minibatch SGD over tensors already on the device.

It knows nothing of jobs or storage. The caller watches progress through ``on_epoch`` and stops a run
through ``should_stop``, which is asked before every batch and must be cheap (an Event, not a query).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.data import DeviceDataset
from models.network import build_mlp
from models.spec import Optimizer, TrainingSpec

EVAL_BATCH_SIZE = 8192


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured: mean training loss and accuracy over the epoch, test accuracy after it."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def test_acc(self) -> float | None:
        return self.history[-1].test_acc if self.history else None


class TrainingStopped(Exception):
    """``should_stop`` asked the loop to end early; the epochs finished so far were reported."""

    def __init__(self, completed_epochs: int) -> None:
        super().__init__(f"training stopped after {completed_epochs} completed epoch(s)")
        self.completed_epochs = completed_epochs


def make_optimizer(spec: TrainingSpec, model: nn.Module) -> torch.optim.Optimizer:
    if spec.optimizer is Optimizer.sgd:
        return torch.optim.SGD(model.parameters(), lr=spec.lr)
    raise ValueError(f"unsupported optimizer {spec.optimizer!r}")


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy over ``inputs`` in a few large batches."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=inputs.device)
    for start in range(0, len(inputs), EVAL_BATCH_SIZE):
        logits = model(inputs[start : start + EVAL_BATCH_SIZE])
        correct += (logits.argmax(dim=1) == labels[start : start + EVAL_BATCH_SIZE]).sum()
    model.train(was_training)
    return correct.item() / max(len(inputs), 1)


def train(
    spec: TrainingSpec,
    data: DeviceDataset,
    *,
    seed: int,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Trains the spec's MLP on ``data`` from scratch; same seed and device give the same run."""
    device = data.device
    init_generator = torch.Generator().manual_seed(seed)
    model = build_mlp(spec, generator=init_generator).to(device)
    shuffle_generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = make_optimizer(spec, model)
    result = TrainResult(model=model)
    n = len(data.train_x)

    for epoch in range(1, spec.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        order = torch.randperm(n, device=device, generator=shuffle_generator)
        for start in range(0, n, spec.batch_size):
            if should_stop is not None and should_stop():
                raise TrainingStopped(epoch - 1)
            index = order[start : start + spec.batch_size]
            inputs, labels = data.train_x[index], data.train_y[index]
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: a .item() per batch would synchronise a GPU every step.
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(dim=1) == labels).sum()
        test_acc = evaluate(model, data.test_x, data.test_y)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum.item() / n,
            train_acc=correct.item() / n,
            test_acc=test_acc,
            seconds=time.perf_counter() - started,
        )
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return result
