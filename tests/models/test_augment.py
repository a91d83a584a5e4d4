"""models/augment.py: per-image flips and shifts of flattened 28x28 batches, drawn from the run's generator."""

from __future__ import annotations

import pytest
import torch

from models.augment import augment_batch, augments
from models.spec import TrainingSpec


def _spec(**fields: object) -> TrainingSpec:
    return TrainingSpec.model_validate(fields)


def _batch(size: int = 64) -> torch.Tensor:
    return torch.rand(size, 784, generator=torch.Generator().manual_seed(0))


def test_off_by_default_and_on_when_either_is_set() -> None:
    assert not augments(_spec())
    assert augments(_spec(hflip=True)) and augments(_spec(max_shift=1))


def test_each_image_is_itself_or_its_mirror_and_both_occur() -> None:
    inputs = _batch(256)
    out = augment_batch(inputs, _spec(hflip=True), torch.Generator().manual_seed(1)).view(-1, 28, 28)
    images = inputs.view(-1, 28, 28)
    same = (out == images).flatten(1).all(dim=1)
    mirrored = (out == images.flip(2)).flatten(1).all(dim=1)
    assert bool((same | mirrored).all())
    assert 80 < int(mirrored.sum()) < 176  # Binomial(256, 0.5): 128 ± 48 is beyond 6 standard deviations


def test_each_image_is_a_zero_filled_shift_within_the_bound_and_all_shifts_occur() -> None:
    shift = 2
    inputs = _batch(400)
    out = augment_batch(inputs, _spec(max_shift=shift), torch.Generator().manual_seed(2)).view(-1, 28, 28)
    padded = torch.nn.functional.pad(inputs.view(-1, 28, 28), (shift,) * 4)
    seen = set()
    for image, pad in zip(out, padded, strict=True):
        matches = [
            (dy - shift, dx - shift)
            for dy in range(2 * shift + 1)
            for dx in range(2 * shift + 1)
            if torch.equal(image, pad[dy : dy + 28, dx : dx + 28])
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == (2 * shift + 1) ** 2


def test_same_generator_state_same_batch_and_the_input_is_untouched() -> None:
    inputs = _batch()
    before = inputs.clone()
    spec = _spec(hflip=True, max_shift=3)
    a = augment_batch(inputs, spec, torch.Generator().manual_seed(5))
    b = augment_batch(inputs, spec, torch.Generator().manual_seed(5))
    c = augment_batch(inputs, spec, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(inputs, before) and a.shape == inputs.shape


@pytest.mark.parametrize("bad", [-1, 5, 1.5])
def test_max_shift_is_bounded_to_whole_pixels(bad: object) -> None:
    with pytest.raises(ValueError, match="max_shift"):
        _spec(max_shift=bad)
