"""preprocess_upload: PNG and JPEG uploads to 28x28 light-on-black, and the uploads it refuses."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from models.data import DeviceDataset
from models.preprocessing import (
    CorruptImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    UnsupportedImage,
    open_upload,
    preprocess_upload,
)

WHITE, DARK = 255, 20


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _preprocess(data: bytes, **options: Any) -> np.ndarray:
    """preprocess_upload, checking the output contract every time."""
    tensor = preprocess_upload(data, **options)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (28, 28)
    return tensor.numpy().astype(np.int64)


def _garment() -> np.ndarray:
    """A Fashion-MNIST-like 28x28 image: a textured light object on black, full height, centred."""
    rng = np.random.default_rng(0)
    image = np.zeros((28, 28), dtype=np.uint8)
    rows = np.arange(28)[:, None]
    image[:, 7:21] = (120 + 4 * rows + rng.integers(0, 20, size=(28, 14))).clip(0, 255).astype(np.uint8)
    image[2:12, 4:7] = 160  # sleeves
    image[2:12, 21:24] = 160
    image[20:26, 12:16] = 40  # a darker patch, so the texture matters
    return image


def _bbox(pixels: np.ndarray, threshold: int = 30) -> tuple[int, int]:
    """Height and width of the region brighter than ``threshold``."""
    rows = np.flatnonzero((pixels > threshold).any(axis=1))
    cols = np.flatnonzero((pixels > threshold).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    total = pixels.sum()
    rows, cols = np.indices(pixels.shape)
    return float((rows * pixels).sum() / total), float((cols * pixels).sum() / total)


def _dark_shape_on_white(size: tuple[int, int], box: tuple[int, int, int, int], mode: str = "L") -> Image.Image:
    """A dark filled rectangle at ``box`` (left, top, right, bottom inclusive) on a white canvas."""
    image = Image.new("L", size, WHITE)
    ImageDraw.Draw(image).rectangle(box, fill=DARK)
    return image.convert(mode)


def test_fashion_mnist_png_passes_through_pixel_for_pixel() -> None:
    original = _garment()

    result = _preprocess(_encode(Image.fromarray(original), "PNG"))

    assert np.array_equal(result, original)


def test_every_real_test_image_saved_as_png_passes_through_pixel_for_pixel(real_dataset: DeviceDataset) -> None:
    # Even the few garments that fill the frame, whose border is lighter than mid-grey, are not negated.
    images = (real_dataset.test_x.reshape(-1, 28, 28) * 255).round().to(torch.uint8).numpy()
    for index, image in enumerate(images):
        assert np.array_equal(_preprocess(_encode(Image.fromarray(image), "PNG")), image), index


def test_inverted_upscaled_jpeg_comes_back_close_to_the_original() -> None:
    original = _garment()
    photo = Image.fromarray(255 - original).resize((280, 280), Image.Resampling.NEAREST).convert("RGB")

    result = _preprocess(_encode(photo, "JPEG", quality=90))

    assert np.abs(result - original).mean() < 12  # measured: about 3
    assert np.corrcoef(result.ravel(), original.ravel())[0, 1] > 0.95
    # The best alignment of result and original is no shift at all (give or take a pixel).
    shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]
    scores = [(np.roll(original, (dy, dx), axis=(0, 1)) * result).sum() for dy, dx in shifts]
    best_dy, best_dx = shifts[int(np.argmax(scores))]
    assert abs(best_dy) <= 1 and abs(best_dx) <= 1


def test_rgba_cut_out_comes_out_light_on_black() -> None:
    cut_out = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(cut_out).rectangle((30, 20, 69, 79), fill=(30, 30, 30, 255))

    result = _preprocess(_encode(cut_out, "PNG"))

    assert result[0, 0] == result[0, -1] == result[-1, 0] == result[-1, -1] == 0
    assert result[14, 14] > 200
    assert result.mean() > 60  # the object fills much of the frame


def test_small_off_centre_object_is_centred_and_fills_the_frame() -> None:
    canvas = Image.new("L", (600, 200), WHITE)
    ImageDraw.Draw(canvas).ellipse((20, 10, 59, 69), fill=DARK)  # 40 wide, 60 tall, top-left corner

    result = _preprocess(_encode(canvas, "PNG"))

    row, col = _centre_of_mass(result)
    assert abs(row - 13.5) <= 2
    assert abs(col - 13.5) <= 2
    height, width = _bbox(result, threshold=0)
    assert height >= 26
    assert width < height


def test_wide_object_fills_the_frame_horizontally() -> None:
    canvas = _dark_shape_on_white((300, 300), (200, 250, 279, 289))  # 80 wide, 40 tall, bottom right

    result = _preprocess(_encode(canvas, "PNG"))

    height, width = _bbox(result)
    assert width >= 26
    assert abs(height - 14) <= 1
    row, col = _centre_of_mass(result)
    assert abs(row - 13.5) <= 2 and abs(col - 13.5) <= 2


def test_aspect_ratio_is_kept() -> None:
    canvas = _dark_shape_on_white((300, 300), (40, 100, 99, 219))  # 60 wide, 120 tall

    result = _preprocess(_encode(canvas, "PNG"))

    height, width = _bbox(result)
    assert abs(height - 28) <= 1
    assert abs(width - 14) <= 1


def test_blank_page_gives_a_black_image() -> None:
    result = _preprocess(_encode(Image.new("RGB", (64, 48), (255, 255, 255)), "PNG"))

    assert result.max() == 0


def _grey_reference() -> Image.Image:
    """Pure black on white, so that even a bilevel image can hold it exactly."""
    image = Image.new("L", (120, 120), WHITE)
    ImageDraw.Draw(image).rectangle((30, 20, 89, 99), fill=0)
    return image


def _palette(image: Image.Image) -> Image.Image:
    palette = image.convert("P")
    assert palette.mode == "P"
    return palette


def _sixteen_bit(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.uint16) * 257  # 255 -> 65535
    deep = Image.fromarray(pixels)
    assert deep.mode == "I;16"
    return deep


def _grey_alpha(image: Image.Image) -> Image.Image:
    with_alpha = image.convert("LA")
    assert with_alpha.mode == "LA"
    return with_alpha


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(_palette, id="palette-P"),
        pytest.param(_sixteen_bit, id="16-bit-grey"),
        pytest.param(_grey_alpha, id="LA"),
        pytest.param(lambda image: image.convert("RGB"), id="RGB"),
        pytest.param(lambda image: image.convert("1", dither=Image.Dither.NONE), id="bilevel"),
    ],
)
def test_other_pixel_modes_give_what_grey_gives(convert: Callable[[Image.Image], Image.Image]) -> None:
    expected = _preprocess(_encode(_grey_reference(), "PNG"))

    result = _preprocess(_encode(convert(_grey_reference()), "PNG"))

    assert expected.max() > 200  # the reference really shows the object
    assert np.abs(result - expected).max() <= 2


def test_la_cut_out_comes_out_light_on_black() -> None:
    cut_out = Image.new("LA", (80, 80), (0, 0))
    ImageDraw.Draw(cut_out).rectangle((20, 10, 59, 69), fill=(25, 255))

    result = _preprocess(_encode(cut_out, "PNG"))

    assert result[0, 0] == 0
    assert result[14, 14] > 200


def test_dark_16_bit_image_stays_dark() -> None:
    pixels = np.zeros((60, 60), dtype=np.uint16)
    pixels[10:50, 20:40] = 255

    result = _preprocess(_encode(Image.fromarray(pixels), "PNG"))

    assert result.max() <= 2


def _exif_rotated_jpeg(orientation: int) -> bytes:
    """A bar with a heavy end, stored lying down (heavy end left) and tagged to be shown upright."""
    stored = Image.new("L", (400, 200), WHITE)
    draw = ImageDraw.Draw(stored)
    draw.rectangle((50, 85, 349, 114), fill=DARK)  # the bar: 300 x 30
    draw.rectangle((50, 60, 109, 139), fill=DARK)  # its heavy end, on the left
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(stored.convert("RGB"), "JPEG", exif=exif, quality=95)


@pytest.mark.parametrize(("orientation", "heavy_end"), [(6, "top"), (8, "bottom")])
def test_exif_orientation_is_applied(orientation: int, heavy_end: str) -> None:
    result = _preprocess(_exif_rotated_jpeg(orientation))

    height, width = _bbox(result)
    assert height >= 26
    assert width <= 12  # ignoring the tag would give a wide bar
    top, bottom = result[:14].sum(), result[14:].sum()
    assert (top > bottom) == (heavy_end == "top")


def _with_broken_exif(fmt: str) -> bytes:
    """The garment with an EXIF block whose TIFF header is damaged (found by tests/test_fuzz_images.py)."""
    data = _encode(Image.fromarray(_garment()), fmt, exif=_exif_block(6))
    tiff_header = data.index(b"II*\x00") if b"II*\x00" in data else data.index(b"MM\x00*")
    broken = data[:tiff_header] + b"LM" + data[tiff_header + 2 :]
    if fmt == "PNG":  # the eXIf chunk's CRC made right again, so that Pillow reads the chunk
        start = broken.index(b"eXIf") - 4
        (length,) = struct.unpack(">I", broken[start : start + 4])
        end = start + 8 + length
        crc = struct.pack(">I", zlib.crc32(broken[start + 4 : end]))
        broken = broken[:end] + crc + broken[end + 4 :]
    return broken


def _exif_block(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_unreadable_exif_block_is_ignored_not_an_error(fmt: str) -> None:
    """It raised SyntaxError from the EXIF parser: a 500 through the API."""
    result = _preprocess(_with_broken_exif(fmt))

    assert np.array_equal(result, _preprocess(_encode(Image.fromarray(_garment()), fmt))), "stored as is: upright"


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring ``width`` x ``height``, with almost no data behind it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_max_pixels_above_pillows_own_bomb_limit_applies() -> None:
    """Pillow's process-wide limit (89M pixels) refused a 100M-pixel image that max_pixels=200M allows, saying
    "more than 200000000 pixels"; found by tests/test_fuzz_images.py."""
    assert open_upload(_png_declaring(10_000, 10_000), max_pixels=200_000_000).size == (10_000, 10_000)
    with pytest.raises(ImageTooLarge, match="10000x10000 pixels; the limit is 99999999 pixels"):
        open_upload(_png_declaring(10_000, 10_000), max_pixels=99_999_999)


def _gif() -> bytes:
    return _encode(Image.fromarray(_garment()), "GIF")


def _bmp() -> bytes:
    return _encode(Image.fromarray(_garment()), "BMP")


def _tiff() -> bytes:
    return _encode(Image.fromarray(_garment()), "TIFF")


def _truncated_png() -> bytes:
    data = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)), "PNG")
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "JPEG")
    return data[: len(data) // 2]


def _png_signature_only() -> bytes:
    return _encode(Image.fromarray(_garment()), "PNG")[:20]


def _large_png() -> bytes:
    return _encode(Image.new("L", (100, 100), WHITE), "PNG")


@pytest.mark.parametrize(
    ("make_upload", "max_pixels", "error"),
    [
        pytest.param(lambda: b"", None, EmptyImage, id="empty"),
        pytest.param(lambda: b"hello", None, UnsupportedImage, id="text"),
        pytest.param(_gif, None, UnsupportedImage, id="gif"),
        pytest.param(_bmp, None, UnsupportedImage, id="bmp"),
        pytest.param(_tiff, None, UnsupportedImage, id="tiff"),
        pytest.param(_truncated_png, None, CorruptImage, id="truncated-png"),
        pytest.param(_truncated_jpeg, None, CorruptImage, id="truncated-jpeg"),
        pytest.param(_png_signature_only, None, CorruptImage, id="png-header-only"),
        pytest.param(_large_png, 1000, ImageTooLarge, id="over-max-pixels"),
    ],
)
def test_unusable_uploads_are_rejected(
    make_upload: Callable[[], bytes], max_pixels: int | None, error: type[ImageRejected]
) -> None:
    options = {} if max_pixels is None else {"max_pixels": max_pixels}

    with pytest.raises(error) as caught:
        preprocess_upload(make_upload(), **options)

    assert isinstance(caught.value, ImageRejected)
    assert str(caught.value)  # the message says why


def test_image_at_max_pixels_is_accepted() -> None:
    result = _preprocess(_large_png(), max_pixels=100 * 100)

    assert result.max() == 0


@pytest.mark.parametrize("error", [EmptyImage, UnsupportedImage, CorruptImage, ImageTooLarge])
def test_rejections_share_one_base(error: type[Exception]) -> None:
    assert issubclass(error, ImageRejected)
    assert issubclass(ImageRejected, ValueError)
