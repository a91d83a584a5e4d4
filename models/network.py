"""Builds the MLP a spec describes."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from models.spec import Activation, TrainingSpec

_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.relu: nn.ReLU,
    Activation.sigmoid: nn.Sigmoid,
    Activation.tanh: nn.Tanh,
}


def build_mlp(spec: TrainingSpec, generator: torch.Generator | None = None) -> nn.Sequential:
    """Flatten, then Linear layers with the spec's activation between them; weights ~ N(0, init_std), biases 0.

    The layer layout (Flatten at index 0, Linear/activation pairs after) is the checkpoint format:
    state-dict keys such as ``1.weight`` depend on it.
    """
    sizes = spec.layer_sizes
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.normal_(linear.weight, mean=0.0, std=spec.init_std, generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(_ACTIVATIONS[spec.activation]())
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
