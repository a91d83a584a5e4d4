"""Fashion-MNIST loading: every file layout, the cache, the errors that say what to set, the device copy."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.utils

from models.data import (
    CLASS_NAMES,
    IDX_FILES,
    TORCHVISION_RAW,
    DatasetUnavailable,
    FashionMNISTArrays,
    images_to_inputs,
    load_fashion_mnist,
    locate_idx_files,
    to_device,
)
from tests.support.idx import encode_images, encode_labels, synthetic_split, write_synthetic_fashion_mnist

N_TRAIN, N_TEST = 600, 200
REAL_TRAIN_IMAGES_SHA256 = "0757a63a5cf7ada877d588a5933d1aec6e44e67c46b0af6178b37358f118756c"


def _source_folder(root: Path, layout: str) -> Path:
    return root / TORCHVISION_RAW if layout == "torchvision" else root


def _corrupt(folder: Path, name: str, payload: bytes) -> None:
    """Replaces one (gzip-compressed) IDX file of a synthetic set with ``payload``."""
    (folder / f"{name}.gz").write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_every_layout_loads_the_same_arrays(tmp_path: Path, layout: str, compress: bool) -> None:
    root = write_synthetic_fashion_mnist(tmp_path / "data", compress=compress, layout=layout)

    arrays = load_fashion_mnist(root, tmp_path / "cache")

    expected_train_x, expected_train_y = synthetic_split(N_TRAIN, seed=1)
    expected_test_x, expected_test_y = synthetic_split(N_TEST, seed=2)
    assert arrays.train_images.shape == (N_TRAIN, 28, 28)
    assert arrays.test_images.shape == (N_TEST, 28, 28)
    assert arrays.train_images.dtype == arrays.test_images.dtype == torch.uint8
    assert arrays.train_labels.dtype == arrays.test_labels.dtype == torch.int64
    assert np.array_equal(arrays.train_images.numpy(), expected_train_x)
    assert np.array_equal(arrays.test_images.numpy(), expected_test_x)
    assert np.array_equal(arrays.train_labels.numpy(), expected_train_y.astype(np.int64))
    assert np.array_equal(arrays.test_labels.numpy(), expected_test_y.astype(np.int64))


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_file_sha256_digests_the_source_files(tmp_path: Path, layout: str, compress: bool) -> None:
    root = write_synthetic_fashion_mnist(tmp_path / "data", compress=compress, layout=layout)
    folder = _source_folder(root, layout)

    arrays = load_fashion_mnist(root, tmp_path / "cache")

    assert set(arrays.file_sha256) == set(IDX_FILES)
    for name, digest in arrays.file_sha256.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest), digest
        source = folder / (f"{name}.gz" if compress else name)
        assert digest == hashlib.sha256(source.read_bytes()).hexdigest(), name


def test_idx_file_names_are_torchvisions() -> None:
    assert set(IDX_FILES) == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }


def test_locate_prefers_raw_over_gz_and_flat_over_torchvision(tmp_path: Path) -> None:
    write_synthetic_fashion_mnist(tmp_path, layout="torchvision")
    write_synthetic_fashion_mnist(tmp_path, compress=True)
    write_synthetic_fashion_mnist(tmp_path, compress=False)

    found = locate_idx_files(tmp_path)

    assert found == {name: tmp_path / name for name in IDX_FILES}


def test_locate_returns_none_unless_all_four_are_there(tmp_path: Path) -> None:
    write_synthetic_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()

    assert locate_idx_files(tmp_path) is None


def test_second_load_reuses_the_cached_raw_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_synthetic_fashion_mnist(tmp_path / "data")
    cache = tmp_path / "cache"
    first = load_fashion_mnist(root, cache)
    cached = {name: (cache / TORCHVISION_RAW / name).stat().st_ino for name in IDX_FILES}

    def no_extraction(*args: object, **kwargs: object) -> str:
        raise AssertionError("the cached raw files should have been reused")

    monkeypatch.setattr(torchvision.datasets.utils, "extract_archive", no_extraction)
    second = load_fashion_mnist(root, cache)

    assert {name: (cache / TORCHVISION_RAW / name).stat().st_ino for name in IDX_FILES} == cached
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert first.file_sha256 == second.file_sha256


def test_cache_is_refreshed_when_a_source_is_newer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_synthetic_fashion_mnist(tmp_path / "data")
    cache = tmp_path / "cache"
    load_fashion_mnist(root, cache)
    # Replace the training labels with a newer file that labels everything 3.
    labels_gz = root / "train-labels-idx1-ubyte.gz"
    labels_gz.write_bytes(gzip.compress(encode_labels(np.full(N_TRAIN, 3))))
    future = (cache / TORCHVISION_RAW / "train-labels-idx1-ubyte").stat().st_mtime + 10
    os.utime(labels_gz, (future, future))
    extracted: list[str] = []
    real_extract = torchvision.datasets.utils.extract_archive

    def counting_extract(source: str, *args: object, **kwargs: object) -> str:
        extracted.append(Path(source).name)
        return real_extract(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torchvision.datasets.utils, "extract_archive", counting_extract)
    arrays = load_fashion_mnist(root, cache)

    assert extracted == ["train-labels-idx1-ubyte.gz"]
    assert torch.equal(arrays.train_labels, torch.full((N_TRAIN,), 3))


def test_other_data_dir_with_older_files_is_not_served_from_a_stale_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    older = write_synthetic_fashion_mnist(tmp_path / "older", n_train=100)
    newer = write_synthetic_fashion_mnist(tmp_path / "newer", n_train=N_TRAIN)
    for path in older.iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))
    load_fashion_mnist(newer, cache)

    arrays = load_fashion_mnist(older, cache)

    assert len(arrays.train_images) == 100


def test_missing_file_says_what_to_set(tmp_path: Path) -> None:
    root = write_synthetic_fashion_mnist(tmp_path / "data")
    (root / "train-images-idx3-ubyte.gz").unlink()

    with pytest.raises(DatasetUnavailable) as caught:
        load_fashion_mnist(root, tmp_path / "cache")

    message = str(caught.value)
    assert "FMNIST_DATA_DIR" in message
    assert "FMNIST_DOWNLOAD" in message
    assert str(root) in message


def test_empty_folder_without_download_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="FMNIST_DOWNLOAD"):
        load_fashion_mnist(tmp_path, tmp_path / "cache", download=False)


def test_no_data_dir_and_no_download_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable) as caught:
        load_fashion_mnist(None, tmp_path / "cache", download=False)

    message = str(caught.value)
    assert "FMNIST_DATA_DIR" in message
    assert "FMNIST_DOWNLOAD" in message


def _truncated_idx_in_valid_gzip(folder: Path) -> None:
    payload = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    _corrupt(folder, "train-images-idx3-ubyte", gzip.compress(payload[:1000]))


def _wrong_magic_number(folder: Path) -> None:
    payload = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    _corrupt(folder, "train-images-idx3-ubyte", gzip.compress(b"\x00\x00\x08\x09" + payload[4:]))


def _labels_out_of_range(folder: Path) -> None:
    _corrupt(folder, "train-labels-idx1-ubyte", gzip.compress(encode_labels(np.full(N_TRAIN, 12))))


def _fewer_labels_than_images(folder: Path) -> None:
    labels = synthetic_split(N_TRAIN, seed=1)[1][:-1]
    _corrupt(folder, "train-labels-idx1-ubyte", gzip.compress(encode_labels(labels)))


def _images_not_28x28(folder: Path) -> None:
    _corrupt(folder, "t10k-images-idx3-ubyte", gzip.compress(encode_images(np.zeros((N_TEST, 14, 56)))))


def _garbage_gz(folder: Path) -> None:
    _corrupt(folder, "train-images-idx3-ubyte", b"this is not a gzip stream " * 20)


def _truncated_gz(folder: Path) -> None:
    packed = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    _corrupt(folder, "train-images-idx3-ubyte", packed[: len(packed) // 2])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_truncated_idx_in_valid_gzip, id="truncated-idx"),
        pytest.param(_wrong_magic_number, id="wrong-magic"),
        pytest.param(_labels_out_of_range, id="labels-out-of-range"),
        pytest.param(_fewer_labels_than_images, id="fewer-labels"),
        pytest.param(_images_not_28x28, id="images-not-28x28"),
        pytest.param(_garbage_gz, id="garbage-gz"),
        pytest.param(_truncated_gz, id="truncated-gz"),
    ],
)
def test_corrupt_files_are_unavailable(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    root = write_synthetic_fashion_mnist(tmp_path / "data")
    damage(root)

    with pytest.raises(DatasetUnavailable):
        load_fashion_mnist(root, tmp_path / "cache")


def test_truncated_raw_idx_is_unavailable(tmp_path: Path) -> None:
    root = write_synthetic_fashion_mnist(tmp_path / "data", compress=False)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])

    with pytest.raises(DatasetUnavailable, match="could not be read"):
        load_fashion_mnist(root, tmp_path / "cache")


def test_to_device_scales_pixels_into_unit_floats(synthetic_data_dir: Path, tmp_path: Path) -> None:
    arrays = load_fashion_mnist(synthetic_data_dir, tmp_path / "cache")

    data = to_device(arrays, torch.device("cpu"))

    assert data.device == torch.device("cpu")
    assert data.train_x.shape == (N_TRAIN, 784)
    assert data.test_x.shape == (N_TEST, 784)
    assert data.train_x.dtype == data.test_x.dtype == torch.float32
    assert data.train_y.dtype == data.test_y.dtype == torch.int64
    assert data.train_x.min().item() >= 0.0
    assert data.train_x.max().item() <= 1.0
    assert data.train_x.max().item() > 0.5  # the bright bands, so not all dark
    assert torch.allclose(data.train_x, arrays.train_images.reshape(N_TRAIN, 784).float() / 255)
    assert torch.equal(data.test_y, arrays.test_labels)
    assert data.file_sha256 == arrays.file_sha256


def test_images_to_inputs_maps_0_and_255_to_0_and_1() -> None:
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)

    inputs = images_to_inputs(images)

    assert inputs.dtype == torch.float32
    assert inputs.shape == (1, 4)
    assert inputs[0].tolist() == pytest.approx([0.0, 1.0, 0.2, 0.4])
    assert images.dtype == torch.uint8  # the source is not modified in place


def test_class_names() -> None:
    assert len(CLASS_NAMES) == 10
    assert CLASS_NAMES[0] == "T-shirt/top"
    assert CLASS_NAMES[7] == "Sneaker"
    assert CLASS_NAMES[9] == "Ankle boot"


@pytest.mark.real_data
def test_real_files_are_the_expected_fashion_mnist(real_data: Path, tmp_path: Path) -> None:
    arrays: FashionMNISTArrays = load_fashion_mnist(real_data, tmp_path / "cache")

    assert arrays.train_images.shape == (60_000, 28, 28)
    assert arrays.test_images.shape == (10_000, 28, 28)
    assert len(arrays.train_labels) == 60_000
    assert len(arrays.test_labels) == 10_000
    assert arrays.file_sha256["train-images-idx3-ubyte"] == REAL_TRAIN_IMAGES_SHA256
    assert torch.bincount(arrays.train_labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(arrays.test_labels, minlength=10).tolist() == [1000] * 10


def test_the_names_kept_here_are_torchvisions() -> None:
    from torchvision.datasets import FashionMNIST

    assert tuple(FashionMNIST.classes) == CLASS_NAMES
    assert tuple(Path(url).stem for url, _ in FashionMNIST.resources) == IDX_FILES
