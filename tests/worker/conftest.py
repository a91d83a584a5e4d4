"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from service.store.db import Database
from tests.support.fleet import Fleet


@pytest.fixture
def fleet(settings: Settings, db: Database, tmp_path: Path) -> Iterator[Fleet]:
    # `db` has migrated the database the processes share.
    instance = Fleet(settings, tmp_path)
    yield instance
    instance.close()
