"""Property-based fuzzing of the upload decoder (models/preprocessing.py), directly and through the API.

Whatever the bytes (random, valid PNG, JPEG, WebP, GIF and BMP files of every mode and odd sizes, and
those files mutated: bits flipped, cut short, bytes inserted or deleted, PNG chunks corrupted behind a valid
CRC, JPEG segments corrupted), ``preprocess_upload`` returns a (28, 28) uint8 tensor or raises an
``ImageRejected``, promptly; valid files always decode, or are refused as having no object (and one-colour
files always are); and an image over ``max_pixels``, even one whose header alone claims billions of pixels,
is an ``ImageTooLarge`` before anything is allocated. Derandomized: the same cases every run.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.preprocessing import (
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    ImageTooLarge,
    NoObjectFound,
    decode_upload,
    open_upload,
    preprocess_upload,
)
from service.api.app import create_app
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker

# Generous: a call takes milliseconds; this is far below pytest's timeout, and catches a decoder that spins.
SLOW_SECONDS = 5.0
# Pillow warns about some damage it reads past (EXIF tags that point beyond the file, ...). In production a
# warning is a log line and the upload goes on; the suite's "warnings are errors" would make it an exception.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
# The first bytes of every format read, so that random data gets past the signature check.
WEBP_RIFF = b"RIFF\x00\x00\x00\x00WEBP"
SIGNATURES: tuple[bytes, ...] = (PNG_SIGNATURE, JPEG_SOI, b"\xff\xd8", b"GIF89a", b"GIF87a", b"BM")
SIGNATURES += tuple(WEBP_RIFF + chunk for chunk in (b"VP8 ", b"VP8L", b"VP8X"))
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MODES = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("L", "RGB", "RGBA"),
    "GIF": ("1", "L", "P", "RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
}
ODD_SIZES = ((1, 1), (1, 2), (2, 1), (1, 1500), (1500, 1), (2, 2500), (2500, 3), (28, 28), (29, 27))


# -- the property ---------------------------------------------------------------------------------


def preprocessed_or_rejected(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor | ImageRejected:
    """The tensor, or the ImageRejected raised; anything else raised fails the test, as does a slow call."""
    started = time.perf_counter()
    try:
        result = preprocess_upload(data, max_pixels=max_pixels)
    except ImageRejected as rejected:
        assert str(rejected), "a rejection says why"
        event(type(rejected).__name__)  # the mix of outcomes, in --hypothesis-show-statistics
        return rejected
    finally:
        assert time.perf_counter() - started < SLOW_SECONDS
    assert isinstance(result, torch.Tensor)
    assert result.dtype == torch.uint8 and tuple(result.shape) == (28, 28)
    event("decoded")
    return result


# -- valid files ----------------------------------------------------------------------------------


def _pixels(mode: str, size: tuple[int, int], content: str, seed: int) -> Image.Image:
    """An image in ``mode``: random noise, one colour ("flat"), or a grey blob on a plain ground."""
    width, height = size
    rng = np.random.default_rng(seed)
    if content == "flat":
        rgba = np.full((height, width, 4), rng.integers(0, 256, 4), dtype=np.uint8)
    else:
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        if content == "object":  # a light or dark blob on a plain ground, the shape uploads usually have
            rgba[:] = 255 if seed % 2 else 0
            rgba[height // 4 : height - height // 4, width // 4 : width - width // 4, :3] = 128
    if mode == "I;16":
        if content == "flat":
            return Image.fromarray(np.full((height, width), rng.integers(0, 65536), dtype=np.uint16))
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    image = Image.fromarray(rgba)  # RGBA
    if mode == "P":
        return image.convert("RGB").quantize(colors=int(rng.integers(2, 256)))
    if mode == "1":  # without dithering, which would put black dots in a flat light grey
        return image.convert("L").convert("1", dither=Image.Dither.NONE)
    return image.convert(mode)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@st.composite
def encoded_images(
    draw: st.DrawFn, formats: tuple[str, ...] = FORMATS, contents: tuple[str, ...] = ("noise", "flat", "object")
) -> bytes:
    """A valid file in one of ``formats``: any mode the format stores, sizes from 1x1 to very wide or tall."""
    fmt = draw(st.sampled_from(formats))
    mode = draw(st.sampled_from(MODES[fmt]))
    size = draw(st.one_of(st.tuples(st.integers(1, 40), st.integers(1, 40)), st.sampled_from(ODD_SIZES)))
    image = _pixels(mode, size, draw(st.sampled_from(contents)), draw(st.integers(0, 2**16)))
    options: dict[str, object] = {}
    if fmt in ("PNG", "JPEG", "WEBP") and draw(st.booleans()):
        options["exif"] = _exif(draw(st.integers(1, 8)))
    if fmt == "JPEG":
        options.update(quality=draw(st.integers(1, 95)), progressive=draw(st.booleans()))
    elif fmt == "WEBP":
        options.update(quality=draw(st.integers(1, 100)), lossless=draw(st.booleans()))
    elif fmt == "PNG":
        options["compress_level"] = draw(st.integers(0, 9))
        if mode in ("L", "P", "RGB") and draw(st.booleans()):
            options["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    elif fmt == "GIF" and mode in ("L", "P") and draw(st.booleans()):
        options["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@settings(FUZZ, max_examples=250)
@given(data=encoded_images())
def test_every_valid_file_decodes_to_28x28_or_has_no_object(data: bytes) -> None:
    outcome = preprocessed_or_rejected(data)
    assert isinstance(outcome, torch.Tensor | NoObjectFound), outcome


@settings(FUZZ, max_examples=100)
@given(data=encoded_images(contents=("flat",)))
def test_every_one_colour_file_has_no_object(data: bytes) -> None:
    assert isinstance(preprocessed_or_rejected(data), NoObjectFound)


# -- random and mutated bytes ---------------------------------------------------------------------


@settings(FUZZ, max_examples=300)
@given(
    data=st.one_of(
        st.binary(max_size=512),
        st.builds(bytes.__add__, st.sampled_from(SIGNATURES), st.binary(max_size=512)),
    )
)
def test_random_bytes_are_rejected_never_crash(data: bytes) -> None:
    preprocessed_or_rejected(data)


@st.composite
def mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """``source``'s bytes with 1-4 mutations: bit flips, truncation, insertions, deletions, overwrites."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(("flip", "truncate", "insert", "delete", "overwrite")))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(patch)] = patch
    return bytes(data)


@settings(FUZZ, max_examples=500)
@given(data=mutated(encoded_images()))
def test_mutated_files_are_rejected_or_decoded_never_crash(data: bytes) -> None:
    preprocessed_or_rejected(data)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk with its CRC right, so that a decoder reads what is inside instead of stopping at the CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@st.composite
def png_chunks_corrupted(draw: st.DrawFn) -> bytes:
    """A valid PNG whose chunks are changed behind valid CRCs: payloads mutated, chunks dropped or repeated,
    IHDR fields (size, bit depth, colour type, interlace) set to anything."""
    source = draw(encoded_images(formats=("PNG",)))
    chunks = _png_chunks(source)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(chunks) - 1))
        kind, payload = chunks[at]
        action = draw(st.sampled_from(("payload", "drop", "repeat", "header")))
        if action == "payload":
            chunks[at] = (kind, draw(mutated(st.just(payload))) if payload else draw(st.binary(max_size=16)))
        elif action == "drop" and len(chunks) > 1:
            del chunks[at]
        elif action == "repeat":
            chunks.insert(at, chunks[at])
        elif action == "header" and kind == b"IHDR":
            fields = draw(
                st.tuples(
                    st.integers(0, 64), st.integers(0, 64), st.sampled_from((1, 2, 4, 8, 16, 3, 0)),
                    st.sampled_from((0, 2, 3, 4, 6, 1, 7)), st.integers(0, 1), st.integers(0, 1), st.integers(0, 2),
                )
            )  # fmt: skip
            chunks[at] = (kind, struct.pack(">IIBBBBB", *fields))
    return PNG_SIGNATURE + b"".join(png_chunk(kind, payload) for kind, payload in chunks)


@settings(FUZZ, max_examples=400)
@given(data=png_chunks_corrupted())
def test_png_chunks_corrupted_behind_valid_crcs_are_rejected_or_decoded(data: bytes) -> None:
    preprocessed_or_rejected(data)


# -- the pixel limit ------------------------------------------------------------------------------


@settings(FUZZ, max_examples=100)
@given(data=encoded_images(), slack=st.integers(-50, 50))
def test_the_pixel_limit_is_exact(data: bytes, slack: int) -> None:
    with Image.open(io.BytesIO(data)) as image:
        pixels = image.width * image.height
    max_pixels = max(1, pixels + slack)
    outcome = preprocessed_or_rejected(data, max_pixels=max_pixels)
    assert isinstance(outcome, ImageTooLarge) == (pixels > max_pixels), (pixels, max_pixels, outcome)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` and whose data is a few bytes: a decompression bomb's
    header (the real thing's data inflates to that size; this one would fail later, if ever decoded)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small valid JPEG with the size in its frame header (SOF0) rewritten."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame are ``width`` x ``height`` (at most 65535 each), with one byte of data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x08\x02\x4c\x01\x00"
    return screen + frame + b";"


def bmp_declaring(width: int, height: int) -> bytes:
    """A 24-bit BMP whose info header declares ``width`` x ``height`` (up to 2**31 - 1), with 16 bytes of data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\x00" * 16


def webp_declaring(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) whose canvas is ``width`` x ``height`` (up to 2**24 each), with no image in it.
    libwebp allocates the canvas when the file is opened, so this must be refused before it gets there."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (width - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body)) + body


DECLARING = {"PNG": png_declaring, "JPEG": jpeg_declaring, "GIF": gif_declaring, "BMP": bmp_declaring}
LARGEST_SIDE = {"PNG": 2**31 - 1, "JPEG": 65535, "GIF": 65535, "BMP": 2**31 - 1}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@settings(FUZZ, max_examples=200)
@given(
    fmt=st.sampled_from(tuple(DECLARING)),
    size=st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)),
    max_pixels=st.integers(28 * 28, 10**10),
)
def test_a_header_over_the_limit_is_refused_at_once_without_allocating(
    fmt: str, size: tuple[int, int], max_pixels: int
) -> None:
    width, height = (min(side, LARGEST_SIDE[fmt]) for side in size)
    data = DECLARING[fmt](width, height)
    peak, started = _peak_rss_bytes(), time.perf_counter()
    try:
        image = open_upload(data, max_pixels=max_pixels)
    except ImageTooLarge as refused:
        assert width * height > max_pixels, (width, height, max_pixels, refused)
        assert str(max_pixels) in str(refused)  # the limit the message quotes is the one that applies
    else:
        assert width * height <= max_pixels and image.size == (width, height)
    assert time.perf_counter() - started < 0.5
    assert _peak_rss_bytes() - peak < 64 * 2**20


@settings(FUZZ, max_examples=100)
@given(size=st.tuples(st.integers(1, 2**24), st.integers(1, 2**24)), max_pixels=st.integers(28 * 28, 10**8))
def test_a_webp_canvas_over_the_limit_is_refused_before_libwebp_allocates_it(
    size: tuple[int, int], max_pixels: int
) -> None:
    width, height = size
    peak, started = _peak_rss_bytes(), time.perf_counter()
    outcome = preprocessed_or_rejected(webp_declaring(width, height), max_pixels=max_pixels)
    if width * height > max_pixels:
        assert isinstance(outcome, ImageTooLarge) and str(max_pixels) in str(outcome)
    else:
        assert isinstance(outcome, ImageRejected) and not isinstance(outcome, ImageTooLarge)  # no image in it
    assert time.perf_counter() - started < 0.5
    assert _peak_rss_bytes() - peak < 64 * 2**20


@pytest.mark.parametrize(
    "data",
    [
        png_declaring(2**31 - 1, 2**31 - 1),
        jpeg_declaring(65535, 65535),
        gif_declaring(65535, 65535),
        bmp_declaring(2**31 - 1, 2**31 - 1),
        webp_declaring(2**24, 2**24),
    ],
)
def test_a_decompression_bomb_is_too_large_for_every_entry_point(data: bytes) -> None:
    for entry_point in (open_upload, decode_upload, preprocess_upload):
        with pytest.raises(ImageTooLarge):
            entry_point(data)


# -- through the API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[TestClient]:
    """The app with a trained model, so that uploads are decoded (with none, predict answers 409 first)."""
    app_settings = Settings(
        home=tmp_path_factory.mktemp("fuzz-images") / "home",
        data_dir=synthetic_data_dir,
        max_image_pixels=100_000,
        lease_seconds=5,
        poll_seconds=0.05,
    )
    migrations.upgrade(app_settings.sqlalchemy_url)
    db = Database(app_settings.sqlalchemy_url)
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        client.post("/v1/jobs", json={"hidden_layers": [16], "batch_size": 64, "epochs": 1, "seed": 1})
        assert Worker(app_settings, db, torch.device("cpu"), burst=True).run_once()
        yield client
    db.dispose()


@settings(FUZZ, max_examples=120)
@given(
    uploads=st.lists(
        st.one_of(
            st.binary(max_size=256),
            encoded_images(),
            mutated(encoded_images()),
            png_chunks_corrupted(),
            st.builds(png_declaring, st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_any_upload_gets_a_prediction_or_a_4xx_json_answer(api: TestClient, uploads: list[bytes]) -> None:
    files = [("files", (f"upload-{index}", data, "application/octet-stream")) for index, data in enumerate(uploads)]
    response = api.post("/v1/predict", files=files)
    assert response.headers["content-type"] == "application/json"
    if response.status_code == 200:
        assert len(response.json()["predictions"]) == len(uploads)
        return
    assert response.status_code in (400, 413, 415, 422), response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (png_declaring(100_000, 100_000), 413),
        (jpeg_declaring(60_000, 60_000), 413),
        (gif_declaring(60_000, 60_000), 413),
        (bmp_declaring(100_000, 100_000), 413),
        (webp_declaring(16_384, 16_384), 413),
        (PNG_SIGNATURE + b"\x00" * 40, 415),  # no IHDR after the signature: Pillow does not call it a PNG
        (b"GIF89a" + b"\x00" * 40, 415),  # the same: a GIF signature and no valid header after it
        (b"%PDF-1.7\n" + b"\x00" * 40, 415),
        (b"", 400),
    ],
)
def test_bombs_and_garbage_through_the_api_are_4xx_json(api: TestClient, data: bytes, status: int) -> None:
    started = time.perf_counter()
    response = api.post("/v1/predict", files={"file": ("upload", data, "application/octet-stream")})
    assert response.status_code == status and response.json()["detail"]
    assert time.perf_counter() - started < 2.0


def test_an_upload_with_a_damaged_exif_block_is_predicted_not_a_500(api: TestClient) -> None:
    """A PNG whose eXIf chunk holds a bad TIFF header raised SyntaxError in the EXIF parser: a 500."""
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[4:24, 8:20] = 255
    buffer = io.BytesIO()
    Image.fromarray(garment).save(buffer, "PNG")
    png = buffer.getvalue()
    damaged = png[:33] + png_chunk(b"eXIf", b"LM\x00*\x00\x00\x00\x08") + png[33:]  # after IHDR
    response = api.post("/v1/predict", files={"file": ("upload.png", damaged, "image/png")})
    assert response.status_code == 200, response.text
