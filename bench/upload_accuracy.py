"""Accuracy on uploads as people make them, against the test images themselves.

Trains the default recipe (d2l's 784-256-10 MLP, 10 epochs) on the real data, then turns each of the
first N test images into the files people really upload: a dark garment on a white page photographed
large and saved as JPEG (light and heavy compression), an RGBA cut-out on a transparent background, the
garment off-centre on a wide canvas, a phone photo stored sideways with an EXIF orientation tag, palette
and 16-bit PNGs. Every file goes through the service's own preprocessing (models/preprocessing.py); the
table shows accuracy, and how often the prediction agrees with the one for the original tensor.

    .venv/bin/python -m bench.upload_accuracy [--images 2000] [--epochs 10]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import data_dir, markdown_table
from models.data import images_to_inputs, load_fashion_mnist, to_device
from models.preprocessing import preprocess_upload
from models.spec import TrainingSpec
from models.training import Trainer

WHITE = 255


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def on_white(image: np.ndarray, size: int) -> Image.Image:
    """The garment dark on white, as product photos are, scaled up to ``size`` pixels square."""
    return Image.fromarray(WHITE - image).resize((size, size), Image.Resampling.BICUBIC)


def page(garment: Image.Image, canvas: tuple[int, int], at: tuple[int, int]) -> Image.Image:
    sheet = Image.new("L", canvas, WHITE)
    sheet.paste(garment, at)
    return sheet


def tinted(grey: Image.Image, tint: tuple[float, float, float] = (0.55, 0.75, 1.0)) -> Image.Image:
    """A grey picture as a coloured one (a blue-ish garment), so that RGB is really used."""
    pixels = np.asarray(grey, dtype=np.float64)
    dark = WHITE - pixels
    channels = [np.clip(WHITE - dark * factor, 0, 255) for factor in tint]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), "RGB")


def photo_jpeg(image: np.ndarray, quality: int) -> bytes:
    return encode(tinted(page(on_white(image, 224), (320, 320), (48, 48))), "JPEG", quality=quality)


def cut_out(image: np.ndarray) -> bytes:
    """RGBA: the garment opaque, everything around it transparent (a 'background removed' product shot)."""
    garment = tinted(on_white(image, 256)).convert("RGBA")
    alpha = np.asarray(Image.fromarray(image).resize((256, 256), Image.Resampling.BICUBIC))
    garment.putalpha(Image.fromarray(np.where(alpha > 10, 255, 0).astype(np.uint8)))
    return encode(garment, "PNG")


def off_centre(image: np.ndarray) -> bytes:
    return encode(tinted(page(on_white(image, 200), (900, 400), (60, 150))), "PNG")


def exif_sideways(image: np.ndarray) -> bytes:
    """Stored rotated a quarter turn, with the EXIF tag (6) that tells viewers to turn it back."""
    upright = tinted(page(on_white(image, 240), (320, 320), (40, 40)))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=90, exif=exif.tobytes())


def palette(image: np.ndarray) -> bytes:
    return encode(page(on_white(image, 112), (160, 160), (24, 24)).convert("P"), "PNG")


def sixteen_bit(image: np.ndarray) -> bytes:
    grey = np.asarray(page(on_white(image, 112), (160, 160), (24, 24)), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


VARIANTS: dict[str, Callable[[np.ndarray], bytes]] = {
    "28x28 PNG of the test image": lambda image: encode(Image.fromarray(image), "PNG"),
    "dark on white, 320x320 RGB JPEG q90": lambda image: photo_jpeg(image, 90),
    "dark on white, 320x320 RGB JPEG q15": lambda image: photo_jpeg(image, 15),
    "RGBA cut-out, transparent background": cut_out,
    "off-centre on a 900x400 canvas": off_centre,
    "sideways JPEG with EXIF orientation 6": exif_sideways,
    "palette PNG (P mode)": palette,
    "16-bit grey PNG": sixteen_bit,
}


@torch.inference_mode()
def classify(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images_to_inputs(images)).argmax(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="how many test images (the first N)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        arrays = load_fashion_mnist(data_dir(), Path(cache))
    started = time.perf_counter()
    spec = TrainingSpec(epochs=args.epochs, seed=args.seed)
    result = Trainer(spec, to_device(arrays, torch.device("cpu")), seed=args.seed).run()
    print(f"trained the default recipe, {args.epochs} epochs, in {time.perf_counter() - started:.0f} s")
    model = result.model.eval()
    images, labels = arrays.test_images[: args.images], arrays.test_labels[: args.images]
    original = classify(model, images)
    rows = [["the test tensors themselves", f"{(original == labels).float().mean():.4f}", "1.0000", "-"]]
    for name, make in VARIANTS.items():
        started = time.perf_counter()
        uploads = [preprocess_upload(make(image.numpy())) for image in images]
        seconds = time.perf_counter() - started
        predicted = classify(model, torch.stack(uploads))
        rows.append(
            [
                name,
                f"{(predicted == labels).float().mean():.4f}",
                f"{(predicted == original).float().mean():.4f}",
                f"{seconds / len(images) * 1000:.2f}",
            ]
        )
    print(f"first {len(images)} test images")
    print(
        markdown_table(
            ["upload", "accuracy", "agrees with the tensor's prediction", "make + preprocess ms/image"], rows
        )
    )


if __name__ == "__main__":
    main()
