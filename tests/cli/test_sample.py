"""`fmnist sample`: test images of the local data set as PNG files, checked against the IDX files themselves."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from models.data import CLASS_NAMES, load_fashion_mnist
from service.cli import app
from service.cli.sample import D2L_NAMES, class_id_of
from service.settings import get_settings
from tests.test_e2e import FMNIST

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def test_set(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic test images and labels, as the project's loader reads them."""
    arrays = load_fashion_mnist(synthetic_data_dir, tmp_path_factory.mktemp("cache"))
    return arrays.test_images.numpy(), arrays.test_labels.numpy()


@pytest.fixture
def sample(synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Runs `fmnist sample ARGS...` in-process, in a fresh folder, on the synthetic data set."""
    monkeypatch.chdir(tmp_path)
    environment = {"FMNIST_DATA_DIR": str(synthetic_data_dir), "FMNIST_HOME": str(tmp_path / "home")}

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        get_settings.cache_clear()  # the settings are read once per process: read this test's environment
        return CliRunner().invoke(app, ["sample", *args], env={**environment, **(env or {})}, catch_exceptions=False)

    yield run
    get_settings.cache_clear()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
        return np.asarray(image)


def test_a_class_by_name_writes_its_first_test_image(sample: Any, test_set: Any, tmp_path: Path) -> None:
    images, labels = test_set
    result = sample("--class", "Sneaker", "-o", "shoe.png")
    assert result.exit_code == 0, result.output
    first = int(np.flatnonzero(labels == 7)[0])
    assert result.stdout == f"wrote shoe.png: test image {first}, Sneaker\n"
    assert np.array_equal(pixels(tmp_path / "shoe.png"), images[first])


def test_an_index_writes_that_image_named_after_it_by_default(sample: Any, test_set: Any, tmp_path: Path) -> None:
    images, labels = test_set
    result = sample("--index", "3")
    assert result.exit_code == 0, result.output
    name = f"test-00003-{D2L_NAMES[labels[3]].replace(' ', '-')}.png"
    assert result.stdout == f"wrote {name}: test image 3, {CLASS_NAMES[labels[3]]}\n"
    assert np.array_equal(pixels(tmp_path / name), images[3])


def test_count_writes_several_into_a_folder(sample: Any, test_set: Any, tmp_path: Path) -> None:
    images, labels = test_set
    result = sample("--count", "4", "--class", "ankle-boot", "-o", "boots")
    assert result.exit_code == 0, result.output
    chosen = np.flatnonzero(labels == 9)[:4]
    written = sorted((tmp_path / "boots").iterdir())
    assert [path.name for path in written] == [f"test-{index:05d}-ankle-boot.png" for index in chosen]
    for path, index in zip(written, chosen, strict=True):
        assert np.array_equal(pixels(path), images[index])
    assert len(result.stdout.splitlines()) == 4

    every = sample("--count", "3", "-o", "first")
    assert every.exit_code == 0, every.output
    assert [path.name[:10] for path in sorted((tmp_path / "first").iterdir())] == [
        "test-00000",
        "test-00001",
        "test-00002",
    ]


@pytest.mark.parametrize(
    ("name", "class_id"),
    [
        ("sneaker", 7),
        ("SNEAKERS", 7),
        ("ankle-boot", 9),
        ("Ankle boot", 9),
        ("ankle_boot", 9),
        ("t-shirt", 0),
        ("T-shirt/top", 0),
        ("tshirt", 0),
        ("trousers", 1),
        ("dress", 3),
        ("dresses", 3),
        ("bag", 8),
        ("pullover", 2),
    ],
)
def test_class_names_as_people_write_them(name: str, class_id: int) -> None:
    assert class_id_of(name) == class_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--class", "shoe"],
            "--class 'shoe' is not a Fashion-MNIST class; the classes: t-shirt, trouser, pullover, dress, coat, "
            "sandal, shirt, sneaker, bag, ankle-boot",
        ),
        (["--index", "200"], "--index 200: the test set has 200 images (0 to 199)"),
        (["--index", "1", "--class", "bag"], "--index names one image: give it without --class and --count"),
        (["--count", "2", "-o", "two.png"], "--output two.png: --count 2 writes several files; name a folder"),
        (["--count", "30", "--class", "bag"], "--count 30: the test set's Bag class has 20 images"),
    ],
)
def test_a_bad_request_is_one_line_and_exit_2(sample: Any, args: list[str], message: str, tmp_path: Path) -> None:
    result = sample(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert not list(tmp_path.glob("*.png"))


def test_without_the_data_set_it_says_what_to_set(sample: Any, tmp_path: Path) -> None:
    result = sample("--class", "bag", env={"FMNIST_DATA_DIR": str(tmp_path / "nowhere")})
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Fashion-MNIST files not found in ")
    assert "Set FMNIST_DATA_DIR" in result.stderr and len(result.stderr.splitlines()) == 1
    unset = sample("--class", "bag", env={"FMNIST_DATA_DIR": None})
    assert unset.exit_code == 2 and "FMNIST_DATA_DIR is not set" in unset.stderr


@pytest.mark.real_data
def test_the_readme_command_on_the_real_data(real_data: Path, tmp_path: Path) -> None:
    """As the quick start types it, in a shell: the installed `fmnist` on the real data set."""
    env = {**os.environ, "FMNIST_DATA_DIR": str(real_data), "FMNIST_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [*FMNIST, "sample", "--class", "sneaker", "-o", "shoe.png"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote shoe.png: test image ") and result.stdout.endswith(", Sneaker\n")
    arrays = load_fashion_mnist(real_data, tmp_path / "cache")
    index = int(result.stdout.split("test image ")[1].split(",")[0])
    assert int(arrays.test_labels[index]) == 7
    assert np.array_equal(pixels(tmp_path / "shoe.png"), arrays.test_images[index].numpy())
