"""Turns an uploaded PNG or JPEG into what the network was trained on.

Fashion-MNIST was made from product photos on white: trimmed to the object, the longest edge resized to
28 pixels, centred, converted to grey and negated, every image spanning the full 0-255 range. So an
upload becomes a light object on a black background, cropped to the object with its aspect ratio kept,
centred in 28x28, its brightest pixel at 255. An image that already is
28x28 on a dark background (a Fashion-MNIST image saved as a file) passes through pixel for pixel.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

SIZE = 28
ACCEPTED_FORMATS = ("PNG", "JPEG")
DEFAULT_MAX_PIXELS = 40_000_000
# Pixels this much brighter than the background count as the object when cropping.
OBJECT_THRESHOLD = 30
# A frame of this fraction of the shorter side is read to find the background's brightness.
BORDER_FRACTION = 0.05

# ``open_upload`` holds every image to ``max_pixels`` as soon as its header is read, before a pixel is
# decoded: where Pillow's decompression-bomb check runs. That check's limit is one for the whole process
# (a warning past 89M pixels, an error past twice that), so it would refuse images that ``max_pixels``
# allows, quoting the wrong limit. It is switched off; ours is the one that applies.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(ValueError):
    """The upload cannot be used; the message says why and what to send instead."""


class EmptyImage(ImageRejected):
    """The upload has no bytes."""


class UnsupportedImage(ImageRejected):
    """Not a PNG or JPEG."""


class CorruptImage(ImageRejected):
    """A PNG or JPEG that is truncated or damaged."""


class ImageTooLarge(ImageRejected):
    """More pixels than the configured limit."""


def open_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Reads PNG or JPEG bytes up to the pixel data, refusing anything else and anything over ``max_pixels``
    before a pixel is decoded. The image's size is known; ``load_image`` decodes it."""
    if not data:
        raise EmptyImage("the uploaded file is empty; send a PNG or JPEG image")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise UnsupportedImage("the upload is not a PNG or JPEG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"the image data is truncated or corrupt: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImage("the image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels in all")
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decodes an image ``open_upload`` returned."""
    if image.format == "JPEG":
        # Let the JPEG decoder scale down by 2-8x while it decodes: the result is 28 pixels wide anyway.
        image.draft("RGB", (max(SIZE * 8, 224), max(SIZE * 8, 224)))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"the image data is truncated or corrupt: {exc}") from exc
    return image


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Opens and decodes PNG or JPEG bytes; raises ImageRejected."""
    return load_image(open_upload(data, max_pixels))


_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag; 1 (upright as stored) when there is none or the EXIF block cannot be read:
    damaged metadata does not make the pixels unusable."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # untrusted bytes: Pillow's TIFF parser raises SyntaxError, struct.error, KeyError, ...
        return 1


def _to_grey(image: Image.Image) -> np.ndarray:
    """EXIF orientation applied, transparency composited onto white, as float luminance in [0, 255]."""
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(_exif_orientation(image))
    if transpose is not None:
        image = image.transpose(transpose)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey (PNG is the only accepted source of these modes): scale the full 16-bit range.
        return np.clip(np.asarray(image, dtype=np.float64), 0, 65535) * (255.0 / 65535.0)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float64), 0, 255)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        # A cut-out is a product photographed on white, as Fashion-MNIST's sources were.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.float64)


def _border_level(pixels: np.ndarray) -> float:
    height, width = pixels.shape
    band = max(1, round(min(height, width) * BORDER_FRACTION))
    frame = np.concatenate(
        [pixels[:band].ravel(), pixels[-band:].ravel(), pixels[:, :band].ravel(), pixels[:, -band:].ravel()]
    )
    frame.sort()  # the median, without np.median's overhead (this runs once or twice per upload)
    middle = len(frame) // 2
    return float(frame[middle]) if len(frame) % 2 else float(frame[middle - 1] + frame[middle]) / 2


def _dark_on_light(pixels: np.ndarray) -> bool:
    """A light background (the frame brighter than mid-grey) around a middle no lighter than it: a product
    photo on white, to be negated. A light garment that fills the whole frame, lighter still in its middle
    (a few Fashion-MNIST images are like that), is already light on dark and stays as it is."""
    border = _border_level(pixels)
    if border <= 127:
        return False
    height, width = pixels.shape
    middle = pixels[height // 4 : height - height // 4, width // 4 : width - width // 4]
    return float(np.median(middle)) <= border


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """A decoded image to a (28, 28) uint8 tensor: light object on black, centred, aspect ratio kept."""
    pixels = _to_grey(image)
    if _dark_on_light(pixels):
        pixels = 255.0 - pixels
    if pixels.shape == (SIZE, SIZE):
        return torch.from_numpy(np.rint(pixels).astype(np.uint8))
    background = _border_level(pixels)
    pixels = np.clip(pixels - background, 0, 255)
    rows = np.flatnonzero((pixels > OBJECT_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((pixels > OBJECT_THRESHOLD).any(axis=0))
    if rows.size and cols.size:
        pixels = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = pixels.shape
    scale = SIZE / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    cropped = Image.fromarray(np.rint(pixels).astype(np.uint8))
    resized = cropped.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(resized, ((SIZE - new_size[0]) // 2, (SIZE - new_size[1]) // 2))
    result = np.asarray(canvas, dtype=np.float64)
    brightest = result.max()
    if brightest > OBJECT_THRESHOLD:
        # Every Fashion-MNIST image spans the full range (its brightest pixel is 250-255): so must an upload,
        # whose garment may be a mid-tone colour that comes out grey, or a photo short of contrast.
        result *= 255.0 / brightest
    return torch.from_numpy(np.rint(result).astype(np.uint8))


def preprocess_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """PNG or JPEG bytes to a (28, 28) uint8 tensor ready for the network; raises ImageRejected."""
    return preprocess_image(decode_upload(data, max_pixels=max_pixels))
