"""Turns an uploaded image into what the network was trained on.

Fashion-MNIST was made from product photos on white: trimmed to the object, the longest edge resized to
28 pixels, centred, converted to grey and negated, every image spanning the full 0-255 range. So an
upload becomes a light object on a black background, cropped to the object with its aspect ratio kept,
centred in 28x28, its brightest pixel at 255. Every upload, whatever its size, bit depth and range, is
first stretched to the full range by one rule, which leaves a full-range image as it is: an image that
already is 28x28 on a dark background (a Fashion-MNIST image saved as a file) passes through pixel for
pixel. A cut-out's alpha channel is its silhouette: its opaque pixels are stretched like a whole picture
and set back onto white (then negated with the page), or onto black when the garment is light all over.
An image in which nothing stands out (one colour, fully transparent, only noise) is refused with
``NoObjectFound`` rather than given a class.

PNG and JPEG, and WebP, GIF (its first frame) and BMP are read; only those decoders are ever tried, and
the pixel limit is checked from the header before any pixel is decoded or any canvas allocated.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError, features

SIZE = 28
# Pillow's names for the formats read. WebP only where Pillow was built with libwebp (its wheels are).
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP") + (("WEBP",) if features.check("webp") else ())
SEND_INSTEAD = "send a PNG or JPEG image (WebP, GIF and BMP are read too)"
RESEND = "upload the whole file again, or open and re-save it as PNG"
DEFAULT_MAX_PIXELS = 40_000_000
# Pixels this much brighter than the background count as the object when cropping, in levels of 255 of an
# image already stretched to the full range. An object whose brightest pixel, at 28x28, is no brighter
# than this above its background is not there (``NoObjectFound``).
OBJECT_THRESHOLD = 30
# A frame of this fraction of the shorter side is read to find the background's brightness.
BORDER_FRACTION = 0.05
# Fashion-MNIST's images all run from 0 to 254 or 255 (measured on all 70,000): a range at least this wide,
# in levels of 255, is already full and is left exactly as it is; a narrower one is stretched to 0-255.
FULL_RANGE = 254
# An image whose lightest and darkest pixels are fewer than this many levels of its own bit depth apart is
# one colour, give or take compression noise (a flat JPEG with slight noise spans up to 13 levels of 255).
MIN_CONTRAST_LEVELS = 16
# Modes in which Pillow gives 16-bit grey (PNG's only 16-bit mode it keeps at 16 bits).
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_SEND_A_GARMENT = "send a picture of one garment"
# A cut-out goes onto black rather than white when the darkest DARKEST_PERCENT of its opaque pixels are lighter
# than this (two thirds of white): a light garment, which white would hide. A garment photo has darker
# parts: the darkest percent of the tinted photos of bench.upload_accuracy's cut-outs is at most grey 166
# (measured on 1,000 test images); of its light garments (grey 190-254) at least 193.
LIGHT_GARMENT = 170
DARKEST_PERCENT = 1

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
    """Not in a format that is read (PNG, JPEG, WebP, GIF, BMP); the message names the format found."""


class CorruptImage(ImageRejected):
    """An image in an accepted format that is truncated or damaged."""


class ImageTooLarge(ImageRejected):
    """More pixels than the configured limit."""


class NoObjectFound(ImageRejected):
    """A readable image in which nothing stands out from the background: one colour, fully transparent, or
    only faint noise. A class for it would be a guess."""


# -- what an upload is ----------------------------------------------------------------------------

# Leading bytes of the files people send by mistake, and what to call them. ISO media files (HEIC, AVIF,
# MP4) and text are told apart in ``describe_format``.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"II+\x00", "a TIFF image"),
    (b"MM\x00+", "a TIFF image"),
    (b"%PDF-", "a PDF document"),
    (b"%!PS", "a PostScript document"),
    (b"\xc5\xd0\xd3\xc6", "a PostScript document"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x01\x00", "a Windows icon"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 image"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"),
    (b"\xff\n", "a JPEG XL image"),
    (b"\x93NUMPY", "a NumPy array file"),
    (b"\x00\x00\x08\x03", "an IDX file (the Fashion-MNIST data format)"),
    (b"\x00\x00\x08\x01", "an IDX file (the Fashion-MNIST data format)"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
# BMP's second header (the DIB header) announces its own size, one of these.
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def describe_format(data: bytes) -> str | None:
    """What ``data`` looks like, from its first bytes ("a WebP image", "an HEIC photo", "text"), for messages;
    None when it looks like nothing known. Reads no further than the first kilobyte."""
    head = data[:1024]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _BMP_HEADER_SIZES:
        return "a BMP image"
    if head[4:8] == b"ftyp":  # an ISO media file: its major brand, then a version, then compatible brands
        end = min(len(head), int.from_bytes(head[:4], "big"))
        brands = {head[8:12]} | {head[at : at + 4] for at in range(16, end - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "an AVIF image"
        if brands & _HEIF_BRANDS:
            return "an HEIC photo"
        return "an MP4 or QuickTime video"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a multi-byte character cut at the kilobyte's end
            return None
        text = head[: exc.start].decode("utf-8")
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith("<svg") or (lowered.startswith("<?xml") and "<svg" in lowered):
        return "an SVG drawing"
    if lowered.startswith(("<!doctype html", "<html")):
        return "an HTML page"
    if all(character.isprintable() or character in "\t\r\n" for character in text):
        return "text"
    return None


_ACCEPTED_NAMES = {
    "PNG": "a PNG image",
    "JPEG": "a JPEG image",
    "GIF": "a GIF image",
    "BMP": "a BMP image",
    "WEBP": "a WebP image",
}


def _unsupported(data: bytes) -> UnsupportedImage:
    found = describe_format(data)
    if found is None:
        return UnsupportedImage(f"the upload is not an image this service reads; {SEND_INSTEAD}")
    if found in (_ACCEPTED_NAMES[name] for name in ACCEPTED_FORMATS):
        # The right signature, then nothing Pillow recognises (no header after it): not the format at all.
        return UnsupportedImage(f"the upload starts like {found} but has no valid header after that; {SEND_INSTEAD}")
    return UnsupportedImage(f"the upload is {found}, which this service does not read; {SEND_INSTEAD}")


def _webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file's header declares (RFC 9649), as (width, height); None when the header is
    too damaged to say. libwebp allocates the canvas when Pillow opens the file, before anything is decoded,
    so the pixel limit has to be checked here first."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: a 24-bit width-1 and height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit width-1 and height-1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes
        return (int.from_bytes(data[26:28], "little") & 0x3FFF), (int.from_bytes(data[28:30], "little") & 0x3FFF)
    return None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise CorruptImage("the image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels in all")


def open_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Reads an image's bytes up to the pixel data, refusing anything not in ``ACCEPTED_FORMATS`` (the message
    names what it is) and anything over ``max_pixels`` before a pixel is decoded. The image's size is known;
    ``load_image`` decodes it. Raises EmptyImage, UnsupportedImage, CorruptImage, ImageTooLarge."""
    if not data:
        raise EmptyImage(f"the uploaded file is empty; {SEND_INSTEAD}")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and "WEBP" in ACCEPTED_FORMATS:
        size = _webp_canvas_size(data)
        if size is None:
            raise CorruptImage(f"the WebP image's header is truncated or corrupt: it gives no image size; {RESEND}")
        _check_size(*size, max_pixels)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise _unsupported(data) from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise CorruptImage(f"the image data is truncated or corrupt ({exc}); {RESEND}") from exc
    _check_size(*image.size, max_pixels)
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decodes an image ``open_upload`` returned (a GIF's or WebP's first frame). Raises CorruptImage."""
    if image.format == "JPEG":
        # Let the JPEG decoder scale down by 2-8x while it decodes: the result is 28 pixels wide anyway.
        image.draft("RGB", (max(SIZE * 8, 224), max(SIZE * 8, 224)))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise CorruptImage(f"the image data is truncated or corrupt ({exc}); {RESEND}") from exc
    return image


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Opens and decodes an upload's bytes; raises ImageRejected."""
    return load_image(open_upload(data, max_pixels))


# -- from pixels to what the network saw ----------------------------------------------------------

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


def _grey_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Luminance as float in [0, 255], opacity in [0, 1] (None when every pixel is opaque), and one level of
    the image's own bit depth in those units (1/257 for 16-bit images, 1 otherwise)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        raw = np.asarray(image, dtype=np.float64)
        grey = np.clip(raw, 0, 65535) * (255.0 / 65535.0)
        key = image.info.get("transparency")  # a 16-bit PNG's tRNS is one grey value that is transparent
        alpha = (raw != key).astype(np.float64) if isinstance(key, int) else None
        return grey, alpha if alpha is not None and alpha.min() < 1 else None, 255.0 / 65535.0
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float64), 0, 255), None, 1.0
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
        grey = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
        return grey, alpha if alpha.min() < 1 else None, 1.0
    return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.float64), None, 1.0


def _set_against_background(grey: np.ndarray, alpha: np.ndarray | None, level: float) -> np.ndarray:
    """A cut-out's transparency filled in. The alpha channel is the silhouette, and the opaque pixels are the
    whole picture: their levels are stretched over the full range by the rule every upload follows (a
    one-colour object, drawn by its alpha alone, stays as it is). The object then goes back onto white, where
    Fashion-MNIST's garments were photographed (and is negated with the rest of the picture), unless it is
    light all over (its darkest opaque pixels lighter than ``LIGHT_GARMENT``): white would hide it, so it
    goes onto black, lighter where it is lighter. A white image whose alpha is a Fashion-MNIST image gives
    back exactly that image. Raises NoObjectFound when every pixel is transparent."""
    if alpha is None:
        return grey
    solid = alpha >= 0.5
    if not solid.any():
        solid = alpha > 0
    if not solid.any():
        raise NoObjectFound(f"no object found in the image: it is fully transparent; {_SEND_A_GARMENT}")
    light_all_over = float(np.percentile(grey[solid], DARKEST_PERCENT)) > LIGHT_GARMENT
    darkest, lightest = float(grey[solid].min()), float(grey[solid].max())
    if lightest - darkest >= MIN_CONTRAST_LEVELS * level:
        grey = np.clip(_stretched(grey, darkest, lightest), 0, 255)
    background = 0.0 if light_all_over else 255.0
    return grey * alpha + background * (1.0 - alpha)


def _stretched(pixels: np.ndarray, darkest: float, lightest: float) -> np.ndarray:
    """``darkest`` to 0 and ``lightest`` to 255, unless they are already a full range apart (as every
    Fashion-MNIST image's are: those pass through unchanged)."""
    spread = lightest - darkest
    if spread >= FULL_RANGE:
        return pixels
    return (pixels - darkest) * (255.0 / spread)


def _stretch_levels(pixels: np.ndarray, level: float) -> np.ndarray:
    """The image's darkest pixel to 0 and its lightest to 255, unless its range is already full. The same
    rule for every size, bit depth and range: a dim photo, a 12-bit scan in a 16-bit file and a faded 28x28
    image all come out full range, and a Fashion-MNIST image as it is. Raises NoObjectFound when the range is
    under ``MIN_CONTRAST_LEVELS`` levels of the image's bit depth (``level``, in units of 1/255)."""
    darkest, lightest = float(pixels.min()), float(pixels.max())
    spread = lightest - darkest
    if spread < MIN_CONTRAST_LEVELS * level:
        if spread == 0:
            raise NoObjectFound(f"no object found in the image: it is all one colour; {_SEND_A_GARMENT}")
        levels, depth = round(spread / level), round(255 / level)
        raise NoObjectFound(
            f"no object found in the image: its lightest and darkest pixels are only {levels} of {depth} levels "
            f"apart; {_SEND_A_GARMENT}"
        )
    return _stretched(pixels, darkest, lightest)


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


def _object_at_28(pixels: np.ndarray) -> np.ndarray | None:
    """A light-on-dark image of any size cropped to its object, scaled to fit 28x28 with its aspect ratio
    kept, centred, its brightest pixel at 255; None when nothing stands out from the background there."""
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
    if brightest <= OBJECT_THRESHOLD:  # noise over a plain ground, or a mark too thin to survive 28x28
        return None
    # Every Fashion-MNIST image spans the full range (its brightest pixel is 254-255): so must an upload,
    # whose garment may be a mid-tone colour that comes out grey once the background is taken away.
    return result * (255.0 / brightest)


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """A decoded image to a (28, 28) uint8 tensor: light object on black, centred, aspect ratio kept, full
    range. Raises NoObjectFound when nothing in the image stands out from its background."""
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(_exif_orientation(image))
    if transpose is not None:
        image = image.transpose(transpose)
    grey, alpha, level = _grey_and_alpha(image)
    pixels = _stretch_levels(_set_against_background(grey, alpha, level), level)
    negate = _dark_on_light(pixels)
    if pixels.shape == (SIZE, SIZE):
        return torch.from_numpy(np.rint(255.0 - pixels if negate else pixels).astype(np.uint8))
    result = _object_at_28(255.0 - pixels if negate else pixels)
    if result is None:
        # The guess at which side is the background can be wrong where the garment reaches the frame (an
        # outline touching the edges, the page showing through it): the other side is tried before giving up.
        result = _object_at_28(pixels if negate else 255.0 - pixels)
    if result is None:
        raise NoObjectFound(
            "no object found in the image: nothing in it stands out from the background once it is reduced to "
            f"28x28 pixels; {_SEND_A_GARMENT} that fills most of the frame"
        )
    return torch.from_numpy(np.rint(result).astype(np.uint8))


def preprocess_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An upload's bytes to a (28, 28) uint8 tensor ready for the network; raises ImageRejected (its
    subclasses EmptyImage, UnsupportedImage, CorruptImage, ImageTooLarge, NoObjectFound)."""
    return preprocess_image(decode_upload(data, max_pixels=max_pixels))
