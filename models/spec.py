"""The training spec: everything that defines one training run, validated.

Defaults are the recipe of "Dive into Deep Learning", chapter 4 (concise MLP):
784-256-10, ReLU, weights ~ N(0, 0.01), SGD with lr 0.1, batch 256, 10 epochs.
"""

from __future__ import annotations

import itertools
import math
from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INPUT_FEATURES = 28 * 28
NUM_CLASSES = 10
TRAIN_SAMPLES = 60_000

MAX_HIDDEN_LAYERS = 8
MAX_LAYER_WIDTH = 8192
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 60_000
MAX_LR = 100.0
MAX_INIT_STD = 10.0
MAX_SHIFT = 4  # pixels of a 28-pixel side
MAX_SECONDS = 7 * 24 * 3600
# parameters x training samples x epochs: about 6 FLOPs each, so 1e15 is ~6 PFLOP, a couple of minutes
# on an H100 and many hours on a CPU. Larger runs are refused before anything is queued.
MAX_BUDGET = 10**15

LayerWidth = Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]


class Activation(StrEnum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    gelu = "gelu"
    leaky_relu = "leaky_relu"


class Init(StrEnum):
    normal = "normal"
    xavier = "xavier"
    kaiming = "kaiming"


class Optimizer(StrEnum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class LRSchedule(StrEnum):
    constant = "constant"
    step = "step"
    cosine = "cosine"
    onecycle = "onecycle"


class SpecFields(BaseModel):
    """The spec's fields, each checked on its own (TrainingSpec adds the rules that tie fields together)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_layers: list[LayerWidth] = Field(
        default=[256],
        max_length=MAX_HIDDEN_LAYERS,
        description="Widths of the hidden layers, input to output; [] is softmax regression.",
        examples=[[256], [1024, 512]],
    )
    activation: Activation = Field(
        default=Activation.relu, description="The non-linearity applied after each hidden layer."
    )
    init: Init = Field(
        default=Init.normal,
        description="Weight initialisation: normal (N(0, init_std)), xavier (Glorot normal) or kaiming (He normal).",
    )
    init_std: float = Field(
        default=0.01,
        gt=0,
        le=MAX_INIT_STD,
        allow_inf_nan=False,
        description="Standard deviation of the initial weights when init is normal (ignored otherwise).",
    )
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Probability of zeroing each hidden unit after its activation, in training only.",
    )
    normalize_inputs: bool = Field(
        default=False, description="Standardise pixels with the training set's mean and std instead of [0, 1]."
    )
    optimizer: Optimizer = Field(
        default=Optimizer.sgd, description="How the gradients update the weights: SGD, Adam or AdamW."
    )
    lr: float = Field(
        default=0.1,
        gt=0,
        le=MAX_LR,
        allow_inf_nan=False,
        description="Step size of the optimiser; the peak when a schedule varies it.",
    )
    momentum: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="SGD momentum: the share of the previous update added to the next (sgd only).",
    )
    nesterov: bool = Field(
        default=False, description="Use Nesterov's look-ahead momentum (needs optimizer sgd and momentum > 0)."
    )
    weight_decay: float = Field(
        default=0.0, ge=0.0, le=1.0, description="L2 penalty (sgd, adam) or decoupled weight decay (adamw)."
    )
    lr_schedule: LRSchedule = Field(
        default=LRSchedule.constant,
        description="constant; step (x gamma every step_epochs); cosine (to 0); onecycle (up to lr, then down).",
    )
    step_epochs: int = Field(
        default=10, ge=1, le=MAX_EPOCHS, description="Epochs between two decays of the step schedule."
    )
    gamma: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="Factor the step schedule multiplies the learning rate by at each decay.",
    )
    warmup_epochs: float = Field(
        default=0.0, ge=0.0, le=MAX_EPOCHS, description="Linear warm-up from 0 over this many epochs (any schedule)."
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Share of each target's probability spread evenly over the other classes (cross-entropy).",
    )
    hflip: bool = Field(
        default=False,
        description="Data augmentation: flip each training image left-right with probability 0.5.",
    )
    max_shift: int = Field(
        default=0,
        ge=0,
        le=MAX_SHIFT,
        description="Data augmentation: shift each training image by up to this many pixels along each axis "
        "(zero-filled); 0 is off.",
    )
    batch_size: int = Field(default=256, ge=1, le=MAX_BATCH_SIZE, description="Training images per gradient step.")
    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS, description="Full passes over the training set.")
    val_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Share of the training set held out for validation; model selection and early stopping use it.",
    )
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EPOCHS,
        description="Stop after this many epochs without a better validation accuracy.",
    )
    max_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        description="Wall-clock limit in seconds; past it the job fails with that reason.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Seeds initialisation, shuffling and dropout; one is drawn at submission when omitted.",
    )

    @field_validator("lr", "init_std")
    @classmethod
    def _finite(cls, value: float) -> float:
        # allow_inf_nan already refuses these for JSON numbers; this guards Python callers too.
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class TrainingSpec(SpecFields):
    """An MLP and the recipe that trains it on Fashion-MNIST."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.nesterov and (self.optimizer is not Optimizer.sgd or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.early_stopping_patience is not None and self.val_fraction == 0:
            raise ValueError(
                "early_stopping_patience needs val_fraction > 0 (early stopping never looks at the test set)"
            )
        if self.warmup_epochs > self.epochs:
            raise ValueError("warmup_epochs cannot exceed epochs")
        if self.budget > MAX_BUDGET:
            raise ValueError(
                f"the run is too large: {self.parameter_count:,} parameters x {TRAIN_SAMPLES:,} samples x "
                f"{self.epochs} epochs = {self.budget:.2e}, over the ceiling of {MAX_BUDGET:.0e}; "
                "use fewer or narrower layers or fewer epochs"
            )
        return self

    @property
    def layer_sizes(self) -> list[int]:
        """Every layer width from the input (784) to the output (10)."""
        return [INPUT_FEATURES, *self.hidden_layers, NUM_CLASSES]

    @property
    def parameter_count(self) -> int:
        sizes = self.layer_sizes
        return sum(fan_in * fan_out + fan_out for fan_in, fan_out in itertools.pairwise(sizes))

    @property
    def budget(self) -> int:
        """Parameters x training samples x epochs: the run's cost in multiply-adds, to within a small factor."""
        return self.parameter_count * TRAIN_SAMPLES * self.epochs
