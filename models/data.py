"""Fashion-MNIST: finding the IDX files, reading them with torchvision, and holding them on a device.

The worker loads the data set once per process and keeps it on the training device as tensors, so a
training step is an index into memory the device already owns, never a DataLoader.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from models.classes import CLASS_NAMES
from models.files import file_sha256

log = logging.getLogger(__name__)

# torchvision's FashionMNIST.classes and resource names (a test holds them equal). torchvision itself is
# imported only to read the files: importing it loads all of torchvision.models, seconds of start-up for
# every process that only needs these names.
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)  # fmt: skip
# torchvision's own layout below a root folder.
TORCHVISION_RAW = Path("FashionMNIST") / "raw"


class DatasetUnavailable(RuntimeError):
    """The Fashion-MNIST files are missing or unreadable; the message says what to set."""


@dataclass(frozen=True)
class FashionMNISTArrays:
    """The whole data set as uint8 images (N, 28, 28) and int64 labels (N,), on the CPU."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    file_sha256: dict[str, str]


@dataclass(frozen=True)
class DeviceDataset:
    """Training and test sets on one device: float32 pixels in [0, 1] shaped (N, 784), int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    file_sha256: dict[str, str]

    @property
    def device(self) -> torch.device:
        return self.train_x.device


def locate_idx_files(data_dir: Path) -> dict[str, Path] | None:
    """Each IDX file by its torchvision name, raw or ``.gz``, flat in ``data_dir`` or in ``FashionMNIST/raw``.

    Returns None unless all four are there.
    """
    found: dict[str, Path] = {}
    for folder in (data_dir, data_dir / TORCHVISION_RAW):
        for name in IDX_FILES:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if name not in found and candidate.is_file():
                    found[name] = candidate
    return found if len(found) == len(IDX_FILES) else None


def _materialise_raw(files: dict[str, Path], digests: dict[str, str], cache_dir: Path) -> Path:
    """A torchvision root under ``cache_dir`` whose raw folder holds the four uncompressed files.

    A decompressed file is reused only while it was made from a source with the same sha256 (kept in a
    ``.sha256`` file beside it); each file lands by an atomic rename, so two workers preparing the same
    cache never see half a file.
    """
    from torchvision.datasets.utils import extract_archive

    raw = cache_dir / TORCHVISION_RAW
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        target, stamp = raw / name, raw / f"{name}.sha256"
        if target.is_file() and stamp.is_file() and stamp.read_text().strip() == digests[name]:
            continue
        with tempfile.TemporaryDirectory(dir=raw) as scratch:
            if source.suffix == ".gz":
                extracted = Path(extract_archive(str(source), scratch))
            else:
                extracted = Path(scratch) / name
                shutil.copyfile(source, extracted)
            extracted.replace(target)
            (Path(scratch) / "stamp").write_text(digests[name])
            (Path(scratch) / "stamp").replace(stamp)
    return cache_dir


def _missing_message(data_dir: Path | None) -> str:
    where = f"in {data_dir} (flat or under FashionMNIST/raw)" if data_dir else "(FMNIST_DATA_DIR is not set)"
    return (
        f"Fashion-MNIST files not found {where}. Set FMNIST_DATA_DIR to a folder holding "
        f"{', '.join(IDX_FILES)} (each raw or .gz), or set FMNIST_DOWNLOAD=1 to let torchvision fetch them."
    )


def load_fashion_mnist(data_dir: Path | None, cache_dir: Path, download: bool = False) -> FashionMNISTArrays:
    """Read the four IDX files through torchvision.

    ``data_dir`` is searched first; without the files there, ``download`` lets torchvision fetch the
    official ones into ``cache_dir``. Raises DatasetUnavailable with a message that says what to set.
    """
    from torchvision.datasets import FashionMNIST

    files = locate_idx_files(data_dir) if data_dir else None
    if files is None and not download:
        raise DatasetUnavailable(_missing_message(data_dir))
    try:
        if files is not None:
            sha = {name: file_sha256(path) for name, path in sorted(files.items())}
            root = _materialise_raw(files, sha, cache_dir)
        else:
            root = cache_dir
        train = FashionMNIST(str(root), train=True, download=files is None)
        test = FashionMNIST(str(root), train=False, download=False)
        if files is None:
            sha = {name: file_sha256(path) for name, path in sorted((locate_idx_files(root) or {}).items())}
    except (RuntimeError, OSError, EOFError, AssertionError, ValueError) as exc:
        reason = str(exc).strip() or f"{type(exc).__name__} (not an IDX file?)"
        raise DatasetUnavailable(f"Fashion-MNIST files in {data_dir or cache_dir} could not be read: {reason}") from exc
    _check_shapes(train.data, train.targets, test.data, test.targets)
    return FashionMNISTArrays(
        train_images=train.data,
        train_labels=train.targets.long(),
        test_images=test.data,
        test_labels=test.targets.long(),
        file_sha256=sha,
    )


def _check_shapes(*tensors: torch.Tensor) -> None:
    train_x, train_y, test_x, test_y = tensors
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or len(images) != len(labels) or not len(labels):
            raise DatasetUnavailable(
                f"the {split} IDX files hold {tuple(images.shape)} images and {len(labels)} labels; "
                "expected (N, 28, 28) images, N > 0, with one label each"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
            raise DatasetUnavailable(f"the {split} labels must lie in 0..{len(CLASS_NAMES) - 1}")


def images_to_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) to the network's float32 inputs (N, 784) in [0, 1]."""
    return images.reshape(len(images), -1).to(torch.float32).div_(255.0)


def to_device(arrays: FashionMNISTArrays, device: torch.device) -> DeviceDataset:
    """Moves the data set to ``device`` once, already scaled to [0, 1]."""
    return DeviceDataset(
        train_x=images_to_inputs(arrays.train_images.to(device)),
        train_y=arrays.train_labels.to(device),
        test_x=images_to_inputs(arrays.test_images.to(device)),
        test_y=arrays.test_labels.to(device),
        file_sha256=arrays.file_sha256,
    )
