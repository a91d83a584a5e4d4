"""The training spec: everything that defines one training run, validated.

Defaults are the recipe of "Dive into Deep Learning", chapter 4 (concise MLP):
784-256-10, ReLU, weights ~ N(0, 0.01), SGD with lr 0.1, batch 256, 10 epochs.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

INPUT_FEATURES = 28 * 28
NUM_CLASSES = 10

MAX_HIDDEN_LAYERS = 8
MAX_LAYER_WIDTH = 8192
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 60_000
MAX_LR = 100.0
MAX_INIT_STD = 10.0

LayerWidth = Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]


class Activation(StrEnum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"


class Optimizer(StrEnum):
    sgd = "sgd"


class TrainingSpec(BaseModel):
    """An MLP and the recipe that trains it on Fashion-MNIST."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_layers: list[LayerWidth] = Field(
        default=[256],
        max_length=MAX_HIDDEN_LAYERS,
        description="Widths of the hidden layers, input to output; [] is softmax regression.",
        examples=[[256], [1024, 512]],
    )
    activation: Activation = Field(default=Activation.relu, description="Non-linearity after each hidden layer.")
    init_std: float = Field(
        default=0.01,
        gt=0,
        le=MAX_INIT_STD,
        allow_inf_nan=False,
        description="Weights are drawn from N(0, init_std); biases start at 0.",
    )
    optimizer: Optimizer = Field(default=Optimizer.sgd, description="Optimisation algorithm.")
    lr: float = Field(default=0.1, gt=0, le=MAX_LR, allow_inf_nan=False, description="Learning rate.")
    batch_size: int = Field(default=256, ge=1, le=MAX_BATCH_SIZE, description="Minibatch size.")
    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS, description="Passes over the training set.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Seeds initialisation and shuffling; the worker picks one when omitted.",
    )

    @field_validator("lr", "init_std")
    @classmethod
    def _finite(cls, value: float) -> float:
        # allow_inf_nan already refuses these for JSON numbers; this guards Python callers too.
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def layer_sizes(self) -> list[int]:
        """Every layer width from the input (784) to the output (10)."""
        return [INPUT_FEATURES, *self.hidden_layers, NUM_CLASSES]
