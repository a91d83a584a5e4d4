"""service/settings.py: the environment is read in one place, with checked values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FMNIST_HOME", "FMNIST_DATABASE_URL", "FMNIST_DATA_DIR", "FMNIST_DOWNLOAD", "FMNIST_LEASE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.home == tmp_path / "var"
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'var' / 'fmnist.db'}"
    assert settings.data_dir is None and settings.download is False and settings.lease_seconds == 30


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FMNIST_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("FMNIST_DOWNLOAD", "1")
    monkeypatch.setenv("FMNIST_LEASE_SECONDS", "12.5")
    monkeypatch.setenv("FMNIST_DATABASE_URL", "postgresql+psycopg://u@db/fmnist")
    settings = Settings()
    assert settings.home == tmp_path / "h" and settings.data_dir == tmp_path / "d"
    assert settings.download is True and settings.lease_seconds == 12.5
    assert settings.sqlalchemy_url == "postgresql+psycopg://u@db/fmnist"
    assert settings.checkpoint_dir == tmp_path / "h" / "checkpoints"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FMNIST_LEASE_SECONDS", "0"),
        ("FMNIST_LEASE_SECONDS", "abc"),
        ("FMNIST_MAX_ATTEMPTS", "0"),
        ("FMNIST_DOWNLOAD", "maybe"),
        ("FMNIST_POLL_SECONDS", "-1"),
    ],
)
def test_unsafe_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("FMNIST_").lower()):
        Settings()


def test_overload_settings_default_to_a_bounded_queue_and_no_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FMNIST_PREDICT_MAX_QUEUE", "FMNIST_RATE_LIMIT_PREDICT", "FMNIST_RATE_LIMIT_TRAIN"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.predict_max_queue == 2048
    assert settings.rate_limit_predict == "" and settings.rate_limit_train == ""


@pytest.mark.parametrize(
    ("name", "value", "kept"),
    [
        ("FMNIST_RATE_LIMIT_PREDICT", "100/second", "100/second"),
        ("FMNIST_RATE_LIMIT_PREDICT", " 6000 per minute ", "6000 per minute"),
        ("FMNIST_RATE_LIMIT_TRAIN", "10/minute", "10/minute"),
        ("FMNIST_RATE_LIMIT_TRAIN", "2/3 hours", "2/3 hours"),
        ("FMNIST_RATE_LIMIT_TRAIN", "", ""),
        ("FMNIST_PREDICT_MAX_QUEUE", "1", 1),
    ],
)
def test_overload_settings_are_read(monkeypatch: pytest.MonkeyPatch, name: str, value: str, kept: object) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(Settings(), name.removeprefix("FMNIST_").lower()) == kept


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FMNIST_RATE_LIMIT_PREDICT", "10/s"),  # no such period
        ("FMNIST_RATE_LIMIT_PREDICT", "fast"),
        ("FMNIST_RATE_LIMIT_PREDICT", "100"),  # no period
        ("FMNIST_RATE_LIMIT_PREDICT", "0/second"),  # would refuse everything: not a limit anyone means
        ("FMNIST_RATE_LIMIT_TRAIN", "-1/minute"),
        ("FMNIST_RATE_LIMIT_TRAIN", "10/second;100/minute"),  # one limit per scope
        ("FMNIST_PREDICT_MAX_QUEUE", "0"),
        ("FMNIST_PREDICT_MAX_QUEUE", "many"),
    ],
)
def test_bad_overload_settings_refuse_to_start_and_say_what_to_write(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("FMNIST_").lower()) as refused:
        Settings()
    if "RATE_LIMIT" in name:
        assert f"{name}={value!r} is not a rate limit" in str(refused.value)
        assert "'100/second'" in str(refused.value)
