"""Data augmentation of training batches: random horizontal flips and random translations, per image.

Both act on a batch of flattened images already on the device, with a generator of the run's own, so an
augmented run is as reproducible as any other (same spec and seed, same batches) and the step stays free of
host synchronisation (it is captured in the CUDA graph like the rest of the step). Evaluation and serving
never augment.

Recipes: the flip and the zero-padded random crop ("translate by up to k pixels") are the standard
Fashion-MNIST augmentations (torchvision's ``RandomHorizontalFlip`` and ``RandomCrop(28, padding=k)``, here
drawn per image rather than once per batch). Garments are close to left-right symmetric, and the dark
background makes zero fill the natural border.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.spec import TrainingSpec

SIDE = 28


def augments(spec: TrainingSpec) -> bool:
    """Whether ``spec`` augments its training batches at all."""
    return spec.hflip or spec.max_shift > 0


def augment_batch(inputs: torch.Tensor, spec: TrainingSpec, generator: torch.Generator) -> torch.Tensor:
    """The batch with each image flipped left-right with probability 0.5 (``spec.hflip``) and shifted by
    a uniform whole number of pixels in [-max_shift, max_shift] along each axis (``spec.max_shift``), the
    uncovered border filled with 0 (background).

    ``inputs``: (B, 784) float, rows are 28x28 images in row-major order; returns a new (B, 784) tensor on
    the same device. ``generator`` must live on that device; it is advanced by a fixed number of draws per
    call, whatever the images hold.
    """
    batch = inputs.shape[0]
    images = inputs.view(batch, SIDE, SIDE)
    device = inputs.device
    if spec.hflip:
        flip = torch.rand(batch, device=device, generator=generator) < 0.5
        images = torch.where(flip.view(batch, 1, 1), images.flip(2), images)
    shift = spec.max_shift
    if shift > 0:
        padded = F.pad(images, (shift, shift, shift, shift))
        offsets = torch.randint(0, 2 * shift + 1, (2, batch), device=device, generator=generator)
        line = torch.arange(SIDE, device=device)
        rows = (line.view(1, SIDE) + offsets[0].view(batch, 1)).view(batch, SIDE, 1)
        cols = (line.view(1, SIDE) + offsets[1].view(batch, 1)).view(batch, 1, SIDE)
        images = padded[torch.arange(batch, device=device).view(batch, 1, 1), rows, cols]
    return images.reshape(batch, SIDE * SIDE)
