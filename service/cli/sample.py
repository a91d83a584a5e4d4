"""``fmnist sample``: test images of the local data set as PNG files, something to send to ``fmnist predict``.

It needs no server: it reads the IDX files in FMNIST_DATA_DIR through ``models.data``, as the worker does, and
writes each image as the data set holds it (28x28 grey, a light garment on black), which the service reads as
it reads the test tensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from models.classes import CLASS_NAMES
from service.cli.remote import ExitCode, counted, stdout
from service.settings import get_settings

# d2l's get_fashion_mnist_labels names, in class order, beside torchvision's CLASS_NAMES.
D2L_NAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
# Other words people use for a class.
ALIASES: dict[str, int] = {"top": 0, "tee": 0, "trousers": 1, "pants": 1, "sweater": 2, "boot": 9}


def _key(name: str) -> str:
    """A name as compared: lower case, letters and digits only (`Ankle boot`, `ankle-boot`, `ANKLE_BOOT` agree)."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


CLASS_BY_NAME: dict[str, int] = {
    **{_key(name): class_id for name, class_id in ALIASES.items()},
    **{_key(name): class_id for class_id, name in enumerate(CLASS_NAMES)},
    **{_key(name): class_id for class_id, name in enumerate(D2L_NAMES)},
}


class UnknownClass(ValueError):
    """A class name that names no Fashion-MNIST class; the message lists the names."""


def class_id_of(name: str) -> int:
    """The class a name means: torchvision's or d2l's name, or a simple alias, in any case, with spaces, hyphens
    or underscores (`sneaker`, `Ankle boot`, `ankle-boot`, `t-shirt`, `T-shirt/top`); a trailing s is allowed."""
    key = _key(name)
    for candidate in (key, key.removesuffix("s"), key.removesuffix("es")):
        if candidate in CLASS_BY_NAME:
            return CLASS_BY_NAME[candidate]
    names = ", ".join(name.replace(" ", "-") for name in D2L_NAMES)
    raise UnknownClass(f"--class {name!r} is not a Fashion-MNIST class; the classes: {names}")


def file_name(index: int, class_id: int) -> str:
    """`test-00012-sneaker.png`: where in the test set the image is, and its label."""
    return f"test-{index:05d}-{D2L_NAMES[class_id].replace(' ', '-')}.png"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(ExitCode.invalid))


def sample(
    class_name: Annotated[
        str | None,
        typer.Option(
            "--class",
            metavar="NAME",
            help="Only images of this class: sneaker, ankle-boot, t-shirt, bag... (any case).",
            show_default=False,
        ),
    ] = None,
    index: Annotated[
        int | None,
        typer.Option(
            "--index", min=0, metavar="N", help="The test image at this position (from 0).", show_default=False
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", min=1, max=10_000, metavar="N", help="How many images to write.")
    ] = 1,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="The PNG file to write; with --count above 1, the folder (made if missing). Default: "
            "test-INDEX-CLASS.png in the current folder.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write test images of the data set (FMNIST_DATA_DIR) as PNG files, e.g. to predict: no server needed.

    The first images of the test set, or of one --class; or the one at --index. Each is 28x28 grey, a light
    garment on black, as the data set holds it.
    """
    if index is not None and (class_name is not None or count != 1):
        raise _fail("--index names one image: give it without --class and --count")
    try:
        class_id = None if class_name is None else class_id_of(class_name)
    except UnknownClass as exc:
        raise _fail(str(exc)) from exc
    if count > 1 and output is not None and output.suffix.lower() == ".png":
        raise _fail(f"--output {output}: --count {count} writes several files; name a folder")

    images, labels = _test_set()
    if index is not None:
        if index >= len(labels):
            raise _fail(f"--index {index}: the test set has {counted(len(labels), 'image')} (0 to {len(labels) - 1})")
        chosen = [index]
    else:
        matching = [i for i, label in enumerate(labels) if class_id is None or label == class_id]
        if len(matching) < count:
            what = "the test set" if class_id is None else f"the test set's {CLASS_NAMES[class_id]} class"
            raise _fail(f"--count {count}: {what} has {counted(len(matching), 'image')}")
        chosen = matching[:count]

    for position in chosen:
        target = _target(output, position, labels[position], several=count > 1)
        _write_png(images[position], target)
        stdout.print(
            f"wrote {target}: test image {position}, {CLASS_NAMES[labels[position]]}", markup=False, highlight=False
        )


def _test_set() -> tuple[list[bytes], list[int]]:
    """The test images (28x28 bytes each) and labels, read with the project's loader; exit 2 saying what to set
    when the files are not there."""
    from models.data import DatasetUnavailable, load_fashion_mnist

    settings = get_settings()
    try:
        arrays = load_fashion_mnist(settings.data_dir, settings.dataset_cache_dir, download=settings.download)
    except DatasetUnavailable as exc:
        raise _fail(str(exc)) from exc
    images = [image.numpy().tobytes() for image in arrays.test_images]
    return images, [int(label) for label in arrays.test_labels]


def _target(output: Path | None, index: int, class_id: int, *, several: bool) -> Path:
    """The file for one image: --output itself, or a file named after the image in the --output folder."""
    if output is None:
        return Path(file_name(index, class_id))
    if several or output.is_dir():
        return output / file_name(index, class_id)
    return output


def _write_png(pixels: bytes, target: Path) -> None:
    from PIL import Image

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("L", (28, 28), pixels).save(target, format="PNG")
    except OSError as exc:
        raise _fail(f"--output {target}: {exc.strerror or exc}") from exc


def register(app: typer.Typer) -> None:
    """Adds ``sample`` to the ``fmnist`` command."""
    app.command("sample")(sample)
