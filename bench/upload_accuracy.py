"""Accuracy on uploads as people make them, against the test images themselves.

Trains the default recipe (d2l's 784-256-10 MLP, 10 epochs) on the real data, then turns each of the
first N test images into the files people really upload: a dark garment on a white page photographed
large and saved as JPEG (light and heavy compression) or WebP, RGBA cut-outs of a dark and of a light
garment on a transparent background, a white image whose alpha channel is the garment, the garment
off-centre on a wide canvas, a phone photo stored sideways with an EXIF orientation tag, palette, GIF and
16-bit PNGs, and images that use only part of their range: a 28x28 PNG at a quarter of its brightness,
12-bit data in a 16-bit PNG, 8-bit values in a 16-bit PNG. Every file goes through the service's own
preprocessing (models/preprocessing.py); the table shows accuracy, and how often the prediction agrees with
the one for the original tensor. An upload refused as having no object counts as wrong.

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
from models.preprocessing import NoObjectFound, preprocess_upload
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


def light_cut_out(image: np.ndarray) -> bytes:
    """RGBA, 200x200: a light garment (grey 190-254, lighter where the data set's pixel is) on a fully
    transparent background, as a white or pastel product with its background removed."""
    pixels = np.asarray(Image.fromarray(image).resize((200, 200), Image.Resampling.BICUBIC), dtype=np.float64)
    grey = np.rint(190 + pixels * (64 / 255)).astype(np.uint8)
    alpha = np.where(pixels > 10, 255, 0).astype(np.uint8)
    return encode(Image.fromarray(np.stack([grey, grey, grey, alpha], axis=-1), "RGBA"), "PNG")


def alpha_only(image: np.ndarray) -> bytes:
    """LA, 28x28: every pixel white, the garment drawn only by the alpha channel."""
    return encode(Image.fromarray(np.stack([np.full_like(image, WHITE), image], axis=-1), "LA"), "PNG")


def dim(image: np.ndarray) -> bytes:
    """The 28x28 test image at a quarter of its brightness (0-63)."""
    return encode(Image.fromarray((image // 4).astype(np.uint8)), "PNG")


def twelve_bit(image: np.ndarray) -> bytes:
    """A 160x160 page in a 16-bit PNG whose values only reach 4095, as a 12-bit camera or scanner writes."""
    grey = np.asarray(page(on_white(image, 112), (160, 160), (24, 24)), dtype=np.uint16) * 16
    return encode(Image.fromarray(grey), "PNG")


def eight_bit_in_sixteen(image: np.ndarray) -> bytes:
    """The 28x28 image's 8-bit values (0-255) written unscaled into a 16-bit PNG (range 0-65535)."""
    return encode(Image.fromarray(image.astype(np.uint16)), "PNG")


def photo_webp(image: np.ndarray) -> bytes:
    return encode(tinted(page(on_white(image, 224), (320, 320), (48, 48))), "WEBP", quality=80)


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
    "dark on white, 320x320 RGB WebP q80": photo_webp,
    "28x28 GIF of the test image": lambda image: encode(Image.fromarray(image), "GIF"),
    "light garment (190-254) cut-out, 200x200 RGBA": light_cut_out,
    "28x28 LA: white, the garment only in the alpha": alpha_only,
    "28x28 PNG at a quarter of the brightness": dim,
    "16-bit PNG with 12-bit data (0-4095)": twelve_bit,
    "28x28 16-bit PNG holding 8-bit values (0-255)": eight_bit_in_sixteen,
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
    rows = [["the test tensors themselves", f"{(original == labels).float().mean():.4f}", "-", "1.0000", "0", "-"]]
    plain_accuracy = None
    for name, make in VARIANTS.items():
        started = time.perf_counter()
        uploads, refused = [], []
        for index, image in enumerate(images):
            try:
                uploads.append(preprocess_upload(make(image.numpy())))
            except NoObjectFound:  # counted as a wrong answer: the garment was there
                uploads.append(torch.zeros(28, 28, dtype=torch.uint8))
                refused.append(index)
        seconds = time.perf_counter() - started
        predicted = classify(model, torch.stack(uploads)).clone()  # a plain tensor, to mark the refused
        predicted[refused] = -1
        accuracy = float((predicted == labels).float().mean())
        plain_accuracy = accuracy if plain_accuracy is None else plain_accuracy  # the first row: the 28x28 PNG
        rows.append(
            [
                name,
                f"{accuracy:.4f}",
                f"{accuracy - plain_accuracy:+.4f}",
                f"{(predicted == original).float().mean():.4f}",
                str(len(refused)),
                f"{seconds / len(images) * 1000:.2f}",
            ]
        )
    print(f"first {len(images)} test images")
    header = ["upload", "accuracy", "vs the 28x28 PNG", "agrees with the tensor's prediction", "no object found"]
    print(markdown_table([*header, "make + preprocess ms/image"], rows))


if __name__ == "__main__":
    main()
