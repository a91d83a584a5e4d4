"""Shared fixtures: a fresh SQLite database per test, synthetic and real Fashion-MNIST, settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.data import DeviceDataset, load_fashion_mnist, locate_idx_files, to_device
from service import migrations
from service.db import Database
from service.settings import Settings
from tests.idx import write_synthetic_fashion_mnist

REPO_ROOT = Path(__file__).resolve().parent.parent
_SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"


def real_data_dir() -> Path | None:
    """FMNIST_DATA_DIR when it holds the four files, else ../shared/data/fashion-mnist when present."""
    for candidate in (os.environ.get("FMNIST_DATA_DIR"), str(_SHARED_DATA)):
        if candidate and locate_idx_files(Path(candidate)) is not None:
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_fashion_mnist(tmp_path_factory.mktemp("synthetic-fmnist"))


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DeviceDataset:
    arrays = load_fashion_mnist(synthetic_data_dir, tmp_path_factory.mktemp("cache"))
    return to_device(arrays, torch.device("cpu"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real Fashion-MNIST not available: set FMNIST_DATA_DIR to the folder with the IDX files")
    return found


@pytest.fixture(scope="session")
def real_dataset(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> DeviceDataset:
    arrays = load_fashion_mnist(real_data, tmp_path_factory.mktemp("real-cache"))
    return to_device(arrays, torch.device("cpu"))


@pytest.fixture
def settings(tmp_path: Path, synthetic_data_dir: Path) -> Settings:
    return Settings(home=tmp_path / "home", data_dir=synthetic_data_dir, lease_seconds=5, poll_seconds=0.05)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    migrations.upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    yield database
    database.dispose()
