"""Named specs: a preset fills in fields, and whatever the caller sets explicitly overrides it."""

from __future__ import annotations

from typing import Any, Literal

from models.spec import TrainingSpec

PresetName = Literal["d2l-mlp", "best-mlp"]

PRESETS: dict[str, dict[str, Any]] = {
    # "Dive into Deep Learning", chapter 4: the defaults, spelled out.
    "d2l-mlp": {
        "hidden_layers": [256],
        "activation": "relu",
        "init": "normal",
        "init_std": 0.01,
        "optimizer": "sgd",
        "lr": 0.1,
        "batch_size": 256,
        "epochs": 10,
    },
    # The most accurate plain MLP found here: two wide layers, dropout, AdamW with cosine decay and label
    # smoothing, standardised inputs; the model kept is the epoch with the best validation accuracy.
    "best-mlp": {
        "hidden_layers": [1024, 1024],
        "activation": "relu",
        "init": "kaiming",
        "dropout": 0.3,
        "normalize_inputs": True,
        "optimizer": "adamw",
        "lr": 0.001,
        "weight_decay": 0.05,
        "lr_schedule": "cosine",
        "warmup_epochs": 1,
        "label_smoothing": 0.1,
        "batch_size": 256,
        "epochs": 40,
        "val_fraction": 0.1,
    },
}


def resolve_spec(preset: str | None, explicit: dict[str, Any]) -> TrainingSpec:
    """Defaults, then the preset's values, then the explicitly given fields; validated together."""
    return TrainingSpec.model_validate({**(PRESETS[preset] if preset else {}), **explicit})
