"""Learning-rate schedules as a pure function of the global step, so resuming needs only the step count."""

from __future__ import annotations

import math

from models.spec import LRSchedule, TrainingSpec

ONECYCLE_PEAK = 0.3
ONECYCLE_START_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def lr_at(spec: TrainingSpec, step: int, steps_per_epoch: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of the run.

    constant: lr. step: lr * gamma ** (epoch // step_epochs). cosine: lr * (1 + cos(pi t)) / 2 over the run.
    onecycle: cosine up from lr/25 to lr over the first 30% of steps, then down to lr/25e4.
    A linear warm-up over ``warmup_epochs`` multiplies any of them: (step + 1) / warm-up steps, capped at 1.
    """
    total = max(spec.epochs * steps_per_epoch, 1)
    progress = min(step / total, 1.0)
    if spec.lr_schedule is LRSchedule.constant:
        value = spec.lr
    elif spec.lr_schedule is LRSchedule.step:
        value = spec.lr * spec.gamma ** ((step // steps_per_epoch) // spec.step_epochs)
    elif spec.lr_schedule is LRSchedule.cosine:
        value = spec.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        start, end = spec.lr / ONECYCLE_START_DIV, spec.lr / ONECYCLE_START_DIV / ONECYCLE_FINAL_DIV
        if progress < ONECYCLE_PEAK:
            phase = progress / ONECYCLE_PEAK
            value = spec.lr + (start - spec.lr) * 0.5 * (1.0 + math.cos(math.pi * phase))
        else:
            phase = (progress - ONECYCLE_PEAK) / (1.0 - ONECYCLE_PEAK)
            value = end + (spec.lr - end) * 0.5 * (1.0 + math.cos(math.pi * phase))
    warmup_steps = spec.warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        value *= min(1.0, (step + 1) / warmup_steps)
    return value
