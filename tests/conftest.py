"""Shared fixtures: a fresh database per test, synthetic and real Fashion-MNIST, settings.

The database is SQLite in the test's temporary folder, or with FMNIST_TEST_DATABASE=postgresql a throwaway
PostgreSQL database (tests/postgres.py) on the server at FMNIST_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.data import DeviceDataset, load_fashion_mnist, locate_idx_files, to_device
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from tests.support.idx import write_synthetic_fashion_mnist
from tests.support.postgres import SHOWN_URL, MigratedDatabase, PostgresServer

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


TEST_DATABASES = ("sqlite", "postgresql")
TEST_DATABASE = os.environ.get("FMNIST_TEST_DATABASE", "sqlite")
ON_POSTGRES = TEST_DATABASE == "postgresql"
# Fixtures through which a test reaches the database: its tests are marked `db`.
DATABASE_FIXTURES = {"db", "settings"}


def pytest_configure(config: pytest.Config) -> None:
    if TEST_DATABASE not in TEST_DATABASES:
        raise pytest.UsageError(f"FMNIST_TEST_DATABASE={TEST_DATABASE!r}: use one of {', '.join(TEST_DATABASES)}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
        if ON_POSTGRES and item.get_closest_marker("sqlite_only"):
            item.add_marker(pytest.mark.skip(reason="SQLite-specific; this run is on PostgreSQL"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.check()
    except Exception as exc:
        server.dispose()
        pytest.fail(f"FMNIST_TEST_DATABASE=postgresql, but no PostgreSQL answers at {SHOWN_URL}: {exc}", pytrace=False)
    yield server
    server.dispose()


@pytest.fixture(scope="session")
def migrated_postgres(postgres: PostgresServer) -> Iterator[MigratedDatabase]:
    """One database, migrated once, for the session; dropped at its end."""
    with postgres.database() as url:
        database = MigratedDatabase(url)
        yield database
        database.dispose()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite (Settings puts it in FMNIST_HOME). On PostgreSQL: the shared migrated database for
    tests that use ``db``, and for the others an empty database of their own, as a fresh SQLite file is."""
    if not ON_POSTGRES:
        yield None
    elif "db" in request.fixturenames:
        migrated: MigratedDatabase = request.getfixturevalue("migrated_postgres")
        migrated.reset()
        yield migrated.url
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        with server.database("fmnist_empty") as url:
            yield url


@pytest.fixture
def settings(
    tmp_path: Path, synthetic_data_dir: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    # Processes the test starts (a server, a worker) inherit the environment: the same database.
    if database_url is None:
        monkeypatch.delenv("FMNIST_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("FMNIST_DATABASE_URL", database_url)
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        data_dir=synthetic_data_dir,
        lease_seconds=5,
        poll_seconds=0.05,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    if not ON_POSTGRES:  # on PostgreSQL, database_url has migrated (once) and reset it
        migrations.upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    yield database
    database.dispose()


@pytest.fixture(autouse=True)
def no_trainer_process_outlives_its_test() -> Iterator[None]:
    """A worker the test dropped without ``close`` stops its trainer process once it is collected: make that
    happen now (reference cycles wait for the collector), so that trainer processes, with torch and a data
    set each, do not pile up over the session."""
    yield
    if any(child.name == "fmnist-trainer" for child in multiprocessing.active_children()):
        gc.collect()
