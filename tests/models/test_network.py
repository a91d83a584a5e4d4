"""build_mlp: the layer layout a spec describes, its initialisation, and its output shape."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.network import SeededDropout, Standardize, build_mlp, count_parameters, input_standardizer
from models.spec import Activation, Init, TrainingSpec


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
    [
        (Activation.relu, nn.ReLU),
        (Activation.sigmoid, nn.Sigmoid),
        (Activation.tanh, nn.Tanh),
        (Activation.gelu, nn.GELU),
        (Activation.leaky_relu, nn.LeakyReLU),
    ],
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


def _linears(model: nn.Sequential) -> list[nn.Linear]:
    return [layer for layer in model if isinstance(layer, nn.Linear)]


# The gain torch.nn.init.calculate_gain gives each activation (GELU borrows ReLU's).
_GAIN = {
    Activation.relu: math.sqrt(2.0),
    Activation.gelu: math.sqrt(2.0),
    Activation.tanh: 5.0 / 3.0,
    Activation.sigmoid: 1.0,
    Activation.leaky_relu: math.sqrt(2.0 / (1 + 0.01**2)),
}


@pytest.mark.parametrize("activation", [Activation.relu, Activation.tanh, Activation.gelu, Activation.sigmoid])
def test_xavier_init_has_the_glorot_std(activation: Activation) -> None:
    spec = TrainingSpec(hidden_layers=[1024], init=Init.xavier, activation=activation)
    hidden, last = _linears(build_mlp(spec, generator=torch.Generator().manual_seed(0)))

    # 784 x 1024 draws: the sample std is within a fraction of a percent of the theoretical one.
    assert hidden.weight.std().item() == pytest.approx(_GAIN[activation] * math.sqrt(2 / (784 + 1024)), rel=0.01)
    # The output layer feeds no activation: gain 1.
    assert last.weight.std().item() == pytest.approx(math.sqrt(2 / (1024 + 10)), rel=0.03)
    assert abs(hidden.weight.mean().item()) < 0.01 * hidden.weight.std().item()
    for linear in (hidden, last):
        assert torch.count_nonzero(linear.bias) == 0


@pytest.mark.parametrize("activation", [Activation.relu, Activation.tanh, Activation.leaky_relu])
def test_kaiming_init_has_the_he_std(activation: Activation) -> None:
    spec = TrainingSpec(hidden_layers=[1024, 512], init=Init.kaiming, activation=activation)
    first, second, last = _linears(build_mlp(spec, generator=torch.Generator().manual_seed(0)))

    assert first.weight.std().item() == pytest.approx(_GAIN[activation] / math.sqrt(784), rel=0.01)
    assert second.weight.std().item() == pytest.approx(_GAIN[activation] / math.sqrt(1024), rel=0.01)
    # The output layer is initialised as "linear": gain 1.
    assert last.weight.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.03)
    for linear in (first, second, last):
        assert torch.count_nonzero(linear.bias) == 0


def test_kaiming_relu_last_layer_is_not_scaled_by_the_relu_gain() -> None:
    spec = TrainingSpec(hidden_layers=[2048], init=Init.kaiming)
    _, last = _linears(build_mlp(spec, generator=torch.Generator().manual_seed(1)))

    # sqrt(2) apart: the sample std (20480 draws) tells them apart by far.
    assert last.weight.std().item() < 1.1 / math.sqrt(2048)


@pytest.mark.parametrize("init", list(Init))
def test_same_generator_seed_gives_identical_weights_for_each_init(init: Init) -> None:
    spec = TrainingSpec(hidden_layers=[64, 32], init=init, activation=Activation.tanh)

    first = build_mlp(spec, generator=torch.Generator().manual_seed(5)).state_dict()
    second = build_mlp(spec, generator=torch.Generator().manual_seed(5)).state_dict()
    other = build_mlp(spec, generator=torch.Generator().manual_seed(6)).state_dict()

    assert list(first) == list(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert not torch.equal(first["1.weight"], other["1.weight"])


@pytest.mark.parametrize("init", list(Init))
def test_generator_makes_init_independent_of_the_global_rng(init: Init) -> None:
    spec = TrainingSpec(hidden_layers=[16], init=init)

    torch.manual_seed(0)
    first = build_mlp(spec, generator=torch.Generator().manual_seed(9)).state_dict()
    torch.manual_seed(1)
    second = build_mlp(spec, generator=torch.Generator().manual_seed(9)).state_dict()

    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("hidden_layers", [[32], [32, 16], [8, 8, 8]])
def test_dropout_follows_each_hidden_activation_only(hidden_layers: list[int]) -> None:
    plain = build_mlp(TrainingSpec(hidden_layers=hidden_layers))
    spec = TrainingSpec(hidden_layers=hidden_layers, dropout=0.3)
    model = build_mlp(spec)

    expected: list[type[nn.Module]] = [nn.Flatten]
    for _ in hidden_layers:
        expected += [nn.Linear, nn.ReLU, nn.Dropout]
    expected.append(nn.Linear)
    assert len(model) == len(expected)
    assert all(isinstance(layer, kind) for layer, kind in zip(model, expected, strict=True)), list(model)
    assert all(layer.p == 0.3 for layer in model if isinstance(layer, nn.Dropout))
    # The trainer seeds only SeededDropout modules: a plain nn.Dropout would draw from the global RNG.
    assert all(isinstance(layer, SeededDropout) for layer in model if isinstance(layer, nn.Dropout))
    assert count_parameters(model) == count_parameters(plain) == spec.parameter_count


def test_no_dropout_module_without_dropout() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[32, 16], dropout=0.0))

    assert not any(isinstance(layer, nn.Dropout) for layer in model)


def test_softmax_regression_has_no_dropout_even_when_asked() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[], dropout=0.5))

    assert [type(layer) for layer in model] == [nn.Flatten, nn.Linear]


def test_dropout_is_active_in_training_and_off_in_eval() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[256], dropout=0.5), generator=torch.Generator().manual_seed(0))
    inputs = torch.rand(8, 784)

    model.eval()
    assert torch.equal(model(inputs), model(inputs))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(inputs), model(inputs))


def _seeded_dropout(p: float, seed: int | None) -> SeededDropout:
    module = SeededDropout(p)
    if seed is not None:
        module.generator = torch.Generator().manual_seed(seed)
    return module


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_seeded_dropout_zeroes_about_p_and_rescales_the_rest(p: float) -> None:
    inputs = torch.rand(200, 500) + 0.5  # no zeros of its own

    outputs = _seeded_dropout(p, seed=0)(inputs)

    dropped = outputs == 0
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.01)
    assert torch.allclose(outputs[~dropped], inputs[~dropped] / (1 - p))


def test_seeded_dropout_masks_follow_its_generator_not_the_global_rng() -> None:
    inputs = torch.ones(64, 64)

    torch.manual_seed(1)
    first = _seeded_dropout(0.5, seed=7)(inputs)
    torch.manual_seed(2)
    second = _seeded_dropout(0.5, seed=7)(inputs)
    other = _seeded_dropout(0.5, seed=8)(inputs)

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_seeded_dropout_without_a_generator_is_plain_dropout() -> None:
    inputs = torch.ones(64, 64)

    torch.manual_seed(3)
    seeded = _seeded_dropout(0.5, seed=None)(inputs)
    torch.manual_seed(3)
    plain = nn.Dropout(0.5)(inputs)

    assert torch.equal(seeded, plain)


@pytest.mark.parametrize("seed", [None, 0])
def test_seeded_dropout_is_the_identity_in_eval_mode(seed: int | None) -> None:
    module = _seeded_dropout(0.5, seed).eval()
    inputs = torch.rand(16, 16)

    assert torch.equal(module(inputs), inputs)


def test_normalize_inputs_puts_standardize_right_after_flatten() -> None:
    model = build_mlp(TrainingSpec(hidden_layers=[32], normalize_inputs=True))

    assert [type(layer) for layer in model] == [nn.Flatten, Standardize, nn.Linear, nn.ReLU, nn.Linear]
    assert input_standardizer(model) is model[1]
    assert list(model.state_dict()) == ["1.mean", "1.std", "2.weight", "2.bias", "4.weight", "4.bias"]
    # Buffers, not parameters: the optimiser never touches them and the parameter count is unchanged.
    assert count_parameters(model) == TrainingSpec(hidden_layers=[32]).parameter_count
    assert input_standardizer(build_mlp(TrainingSpec(hidden_layers=[32]))) is None


def test_standardize_computes_the_z_score_and_is_the_identity_by_default() -> None:
    standardize = Standardize()
    inputs = torch.rand(3, 784)

    assert torch.equal(standardize(inputs), inputs)
    standardize.mean.fill_(0.25)
    standardize.std.fill_(0.5)
    assert torch.allclose(standardize(inputs), (inputs - 0.25) / 0.5)


def test_standardize_buffers_round_trip_through_the_state_dict() -> None:
    spec = TrainingSpec(hidden_layers=[8], normalize_inputs=True)
    source, target = build_mlp(spec), build_mlp(spec)
    written, read = input_standardizer(source), input_standardizer(target)
    assert written is not None and read is not None
    written.mean.fill_(0.3)
    written.std.fill_(0.2)

    target.load_state_dict(source.state_dict())

    assert read.mean.item() == pytest.approx(0.3)
    assert read.std.item() == pytest.approx(0.2)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(TrainingSpec(), id="d2l"),
        pytest.param(TrainingSpec(hidden_layers=[], normalize_inputs=True), id="softmax-standardized"),
        pytest.param(TrainingSpec(hidden_layers=[16, 8], dropout=0.1, normalize_inputs=True), id="dropout-std"),
        pytest.param(TrainingSpec(hidden_layers=[16], init=Init.kaiming, activation=Activation.gelu), id="kaiming"),
    ],
)
def test_layout_is_a_function_of_the_spec_alone(spec: TrainingSpec) -> None:
    first = build_mlp(spec, generator=torch.Generator().manual_seed(1))
    second = build_mlp(spec)

    assert list(first.state_dict()) == list(second.state_dict())
    assert {k: v.shape for k, v in first.state_dict().items()} == {k: v.shape for k, v in second.state_dict().items()}
    assert [type(layer) for layer in first] == [type(layer) for layer in second]
