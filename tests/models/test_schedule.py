"""lr_at: each schedule at known points, warm-up on top of them, and the bounds every value keeps."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from models.schedule import ONECYCLE_FINAL_DIV, ONECYCLE_PEAK, ONECYCLE_START_DIV, lr_at
from models.spec import LRSchedule, TrainingSpec

LR = 0.4
EPOCHS = 10
STEPS_PER_EPOCH = 10  # 100 steps in all, so 30% of the run is step 30 and the midpoint is step 50
TOTAL = EPOCHS * STEPS_PER_EPOCH


def _spec(**fields: Any) -> TrainingSpec:
    return TrainingSpec(**{"lr": LR, "epochs": EPOCHS, **fields})


def _curve(spec: TrainingSpec, steps_per_epoch: int = STEPS_PER_EPOCH) -> list[float]:
    return [lr_at(spec, step, steps_per_epoch) for step in range(spec.epochs * steps_per_epoch)]


@pytest.mark.parametrize("step", [0, 1, 37, TOTAL - 1, TOTAL, TOTAL + 5])
def test_constant_is_lr_everywhere(step: int) -> None:
    assert lr_at(_spec(), step, STEPS_PER_EPOCH) == LR


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        pytest.param(0, LR, id="first-step"),
        pytest.param(3 * STEPS_PER_EPOCH - 1, LR, id="last-step-before-the-first-decay"),
        pytest.param(3 * STEPS_PER_EPOCH, LR * 0.5, id="first-decay"),
        pytest.param(6 * STEPS_PER_EPOCH - 1, LR * 0.5, id="last-step-before-the-second-decay"),
        pytest.param(6 * STEPS_PER_EPOCH, LR * 0.5**2, id="second-decay"),
        pytest.param(TOTAL - 1, LR * 0.5**3, id="last-step"),
    ],
)
def test_step_decays_by_gamma_every_step_epochs(step: int, expected: float) -> None:
    spec = _spec(lr_schedule=LRSchedule.step, step_epochs=3, gamma=0.5)

    assert lr_at(spec, step, STEPS_PER_EPOCH) == pytest.approx(expected, rel=1e-12)


def test_step_with_default_step_epochs_and_gamma() -> None:
    spec = _spec(lr_schedule="step", epochs=25)  # step_epochs 10, gamma 0.1

    assert lr_at(spec, 10 * STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH) == LR
    assert lr_at(spec, 10 * STEPS_PER_EPOCH, STEPS_PER_EPOCH) == pytest.approx(LR * 0.1, rel=1e-12)
    assert lr_at(spec, 20 * STEPS_PER_EPOCH, STEPS_PER_EPOCH) == pytest.approx(LR * 0.01, rel=1e-12)


def test_cosine_runs_from_lr_through_half_to_zero() -> None:
    spec = _spec(lr_schedule=LRSchedule.cosine)

    assert lr_at(spec, 0, STEPS_PER_EPOCH) == LR
    assert abs(lr_at(spec, TOTAL // 2, STEPS_PER_EPOCH) - LR / 2) < 1e-9
    assert lr_at(spec, TOTAL // 4, STEPS_PER_EPOCH) == pytest.approx(LR * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert 0 <= lr_at(spec, TOTAL - 1, STEPS_PER_EPOCH) < 1e-3 * LR
    assert abs(lr_at(spec, TOTAL, STEPS_PER_EPOCH)) < 1e-12


def test_cosine_never_rises() -> None:
    curve = _curve(_spec(lr_schedule=LRSchedule.cosine))

    assert all(later < earlier for earlier, later in itertools.pairwise(curve))


def test_onecycle_starts_low_peaks_at_30_percent_and_ends_lower_still() -> None:
    spec = _spec(lr_schedule=LRSchedule.onecycle)
    peak = round(ONECYCLE_PEAK * TOTAL)
    start = LR / ONECYCLE_START_DIV
    end = start / ONECYCLE_FINAL_DIV

    assert ONECYCLE_START_DIV == 25 and ONECYCLE_FINAL_DIV == 1e4 and peak == 30
    assert lr_at(spec, 0, STEPS_PER_EPOCH) == pytest.approx(LR / 25, rel=1e-12)
    assert lr_at(spec, peak, STEPS_PER_EPOCH) == pytest.approx(LR, rel=1e-12)
    assert lr_at(spec, TOTAL, STEPS_PER_EPOCH) == pytest.approx(end, rel=1e-9)
    assert end <= lr_at(spec, TOTAL - 1, STEPS_PER_EPOCH) < 1e-3 * LR
    curve = _curve(spec)
    assert max(curve) == curve[peak]
    rising, falling = curve[: peak + 1], curve[peak:]
    assert rising == sorted(rising)
    assert falling == sorted(falling, reverse=True)


@pytest.mark.parametrize("schedule", list(LRSchedule))
def test_warmup_ramps_linearly_then_hands_over(schedule: LRSchedule) -> None:
    warm = _spec(lr_schedule=schedule, warmup_epochs=2)
    cold = _spec(lr_schedule=schedule)
    warmup_steps = 2 * STEPS_PER_EPOCH

    assert lr_at(warm, 0, STEPS_PER_EPOCH) == pytest.approx(lr_at(cold, 0, STEPS_PER_EPOCH) / warmup_steps, rel=1e-12)
    for step in range(warmup_steps):
        expected = lr_at(cold, step, STEPS_PER_EPOCH) * (step + 1) / warmup_steps
        assert lr_at(warm, step, STEPS_PER_EPOCH) == pytest.approx(expected, rel=1e-12), step
    # Full value at the end of the ramp, and the plain schedule afterwards.
    assert lr_at(warm, warmup_steps - 1, STEPS_PER_EPOCH) == lr_at(cold, warmup_steps - 1, STEPS_PER_EPOCH)
    for step in range(warmup_steps, TOTAL + 1):
        assert lr_at(warm, step, STEPS_PER_EPOCH) == lr_at(cold, step, STEPS_PER_EPOCH), step


def test_constant_with_warmup_is_a_straight_ramp() -> None:
    curve = _curve(_spec(warmup_epochs=1))

    assert curve[:STEPS_PER_EPOCH] == pytest.approx([LR * (s + 1) / STEPS_PER_EPOCH for s in range(STEPS_PER_EPOCH)])
    assert curve[STEPS_PER_EPOCH:] == [LR] * (TOTAL - STEPS_PER_EPOCH)


def test_warmup_over_the_whole_run() -> None:
    curve = _curve(_spec(warmup_epochs=EPOCHS))

    assert curve == pytest.approx([LR * (s + 1) / TOTAL for s in range(TOTAL)])


def test_step_counts_epochs_with_the_given_steps_per_epoch() -> None:
    spec = _spec(lr_schedule=LRSchedule.step, step_epochs=1, gamma=0.5)

    assert lr_at(spec, 6, 7) == LR
    assert lr_at(spec, 7, 7) == pytest.approx(LR / 2, rel=1e-12)
    assert lr_at(spec, 6, 3) == pytest.approx(LR / 4, rel=1e-12)


@pytest.mark.parametrize("steps_per_epoch", [1, 3, 19])
@pytest.mark.parametrize("warmup_epochs", [0, 1, 4])
@pytest.mark.parametrize("schedule", list(LRSchedule))
def test_values_stay_within_zero_and_lr(schedule: LRSchedule, warmup_epochs: float, steps_per_epoch: int) -> None:
    spec = _spec(lr_schedule=schedule, warmup_epochs=warmup_epochs, step_epochs=2, gamma=0.3)

    curve = _curve(spec, steps_per_epoch)

    assert len(curve) == EPOCHS * steps_per_epoch
    assert all(math.isfinite(value) and 0 <= value <= LR for value in curve), curve


@pytest.mark.parametrize(
    ("warmup_epochs", "steps_per_epoch"),
    [pytest.param(0.5, 5, id="2.5-warmup-steps"), pytest.param(0.25, 235, id="58.75-warmup-steps")],
)
def test_fractional_warmup_never_exceeds_lr(warmup_epochs: float, steps_per_epoch: int) -> None:
    curve = _curve(_spec(warmup_epochs=warmup_epochs), steps_per_epoch)

    assert max(curve) <= LR
