"""Fashion-MNIST's ten classes, by label (torch-free: the CLI and the client read them without loading torch).

Names as torchvision's ``FashionMNIST.classes`` gives them (Xiao et al., 2017).
"""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
