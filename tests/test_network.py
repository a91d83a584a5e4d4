"""build_mlp: the layer layout a spec describes, its initialisation, and its output shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.network import build_mlp, count_parameters
from models.spec import Activation, TrainingSpec


@pytest.mark.parametrize(
    ("hidden_layers", "expected"),
    [
        ([256], 784 * 256 + 256 + 256 * 10 + 10),
        ([1024, 512], 784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10),
        ([], 784 * 10 + 10),
    ],
)
def test_parameter_count(hidden_layers: list[int], expected: int) -> None:
    model = build_mlp(TrainingSpec(hidden_layers=hidden_layers))

    assert count_parameters(model) == expected


def test_d2l_network_has_203530_parameters() -> None:
    assert count_parameters(build_mlp(TrainingSpec())) == 203_530


def test_count_parameters_skips_frozen_ones() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[]))
    model[1].bias.requires_grad_(False)

    assert count_parameters(model) == 7840


@pytest.mark.parametrize(
    ("activation", "module_type"),
    [(Activation.relu, nn.ReLU), (Activation.sigmoid, nn.Sigmoid), (Activation.tanh, nn.Tanh)],
)
def test_activation_sits_between_linear_layers(activation: Activation, module_type: type[nn.Module]) -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[32, 16], activation=activation))

    layer_types = [type(layer) for layer in model]
    assert layer_types == [nn.Flatten, nn.Linear, module_type, nn.Linear, module_type, nn.Linear]


def test_softmax_regression_is_flatten_then_one_linear_layer() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[]))

    assert [type(layer) for layer in model] == [nn.Flatten, nn.Linear]
    assert model[1].in_features == 784
    assert model[1].out_features == 10


def test_state_dict_keys_follow_the_checkpoint_layout() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[32]))

    assert list(model.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias"]


@pytest.mark.parametrize("init_std", [0.01, 0.5])
def test_weights_are_normal_with_init_std_and_biases_zero(init_std: float) -> None:
    spec = TrainingSpec(hidden_layers=[256], init_std=init_std)
    model = build_mlp(spec, generator=torch.Generator().manual_seed(0))

    linears = [layer for layer in model if isinstance(layer, nn.Linear)]
    big = linears[0].weight.detach()  # 784 x 256 draws
    assert big.std().item() == pytest.approx(init_std, rel=0.05)
    assert abs(big.mean().item()) < 0.05 * init_std
    for linear in linears:
        assert torch.count_nonzero(linear.bias) == 0


def test_same_generator_seed_gives_identical_weights() -> None:
    spec = TrainingSpec(hidden_layers=[64, 32])

    first = build_mlp(spec, generator=torch.Generator().manual_seed(123)).state_dict()
    second = build_mlp(spec, generator=torch.Generator().manual_seed(123)).state_dict()
    other = build_mlp(spec, generator=torch.Generator().manual_seed(124)).state_dict()

    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert not torch.equal(first["1.weight"], other["1.weight"])


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("input_shape", [(28, 28), (784,)], ids=["images", "flat"])
@pytest.mark.parametrize("hidden_layers", [[], [32], [32, 16]], ids=["0-hidden", "1-hidden", "2-hidden"])
def test_output_is_one_logit_per_class(batch: int, input_shape: tuple[int, ...], hidden_layers: list[int]) -> None:
    model = build_mlp(TrainingSpec(hidden_layers=hidden_layers))

    logits = model(torch.rand(batch, *input_shape))

    assert logits.shape == (batch, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_images_and_flat_inputs_give_the_same_logits() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[32]), generator=torch.Generator().manual_seed(0))
    images = torch.rand(4, 28, 28)

    assert torch.equal(model(images), model(images.reshape(4, 784)))
