"""Builds the MLP a spec describes."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from models.spec import Activation, Init, TrainingSpec

_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.relu: nn.ReLU,
    Activation.sigmoid: nn.Sigmoid,
    Activation.tanh: nn.Tanh,
    Activation.gelu: nn.GELU,
    Activation.leaky_relu: nn.LeakyReLU,
}

# The gain each activation asks of xavier/kaiming (GELU behaves like ReLU here).
_NONLINEARITY: dict[Activation, str] = {
    Activation.relu: "relu",
    Activation.sigmoid: "sigmoid",
    Activation.tanh: "tanh",
    Activation.gelu: "relu",
    Activation.leaky_relu: "leaky_relu",
}


class Standardize(nn.Module):
    """(x - mean) / std with the training set's statistics, kept as buffers so checkpoints carry them."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SeededDropout(nn.Dropout):
    """Inverted dropout that draws its masks from ``generator`` when one is set.

    The trainer gives each run its own generator, so runs that share a process (concurrent worker slots)
    do not share a random stream, and a run's masks follow from its seed alone.
    """

    generator: torch.Generator | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.generator is None:
            return super().forward(input)
        keep = torch.rand(input.shape, device=input.device, generator=self.generator) >= self.p
        return input * keep / (1.0 - self.p)


def _init_weight(weight: torch.Tensor, spec: TrainingSpec, last: bool, generator: torch.Generator | None) -> None:
    if spec.init is Init.normal:
        nn.init.normal_(weight, mean=0.0, std=spec.init_std, generator=generator)
    elif spec.init is Init.xavier:
        gain = 1.0 if last else nn.init.calculate_gain(_NONLINEARITY[spec.activation])  # type: ignore[arg-type]
        nn.init.xavier_normal_(weight, gain=gain, generator=generator)
    else:
        nonlinearity = "linear" if last else _NONLINEARITY[spec.activation]
        # LeakyReLU's default slope, as calculate_gain assumes on the xavier path.
        slope = 0.01 if nonlinearity == "leaky_relu" else 0.0
        nn.init.kaiming_normal_(weight, a=slope, nonlinearity=nonlinearity, generator=generator)  # type: ignore[arg-type]


def build_mlp(spec: TrainingSpec, generator: torch.Generator | None = None) -> nn.Sequential:
    """Flatten, [Standardize], then Linear layers with activation (and dropout) between them; biases 0.

    The layout follows from the spec alone, so a checkpoint's state-dict keys (``1.weight``, ...) are
    rebuilt exactly from the spec stored beside them.
    """
    sizes = spec.layer_sizes
    layers: list[nn.Module] = [nn.Flatten()]
    if spec.normalize_inputs:
        layers.append(Standardize())
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        last = index == len(sizes) - 2
        linear = nn.Linear(fan_in, fan_out)
        _init_weight(linear.weight, spec, last, generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(_ACTIVATIONS[spec.activation]())
            if spec.dropout > 0:
                layers.append(SeededDropout(spec.dropout))
    return nn.Sequential(*layers)


def input_standardizer(model: nn.Module) -> Standardize | None:
    return next((module for module in model.modules() if isinstance(module, Standardize)), None)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
