"""Writes small synthetic Fashion-MNIST look-alikes in the IDX format, for tests that need no real data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801


def encode_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", IMAGE_MAGIC, n, rows, cols) + images.astype(np.uint8).tobytes()


def encode_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", LABEL_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class is a bright band at its own rows plus noise: learnable in an epoch or two."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, label in enumerate(labels):
        top = 2 + 2 * int(label)
        images[i, top : top + 3, 4:24] = rng.integers(180, 256, size=(3, 20))
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_synthetic_fashion_mnist(
    folder: Path, n_train: int = 600, n_test: int = 200, compress: bool = True, layout: str = "flat"
) -> Path:
    """The four files under ``folder`` (or ``folder/FashionMNIST/raw`` with layout="torchvision")."""
    target = folder / "FashionMNIST" / "raw" if layout == "torchvision" else folder
    target.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_split(n_train, seed=1)
    test_x, test_y = synthetic_split(n_test, seed=2)
    payloads = {
        "train-images-idx3-ubyte": encode_images(train_x),
        "train-labels-idx1-ubyte": encode_labels(train_y),
        "t10k-images-idx3-ubyte": encode_images(test_x),
        "t10k-labels-idx1-ubyte": encode_labels(test_y),
    }
    for name, payload in payloads.items():
        if compress:
            (target / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (target / name).write_bytes(payload)
    return folder
