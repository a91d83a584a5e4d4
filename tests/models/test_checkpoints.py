"""Checkpoints: safetensors weights with the spec in the header, written atomically, refused when wrong."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import models.files
from models.checkpoints import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from models.files import file_sha256
from models.network import build_mlp
from models.spec import Activation, TrainingSpec

SPEC = TrainingSpec(hidden_layers=[16, 8], activation=Activation.tanh, lr=0.05, epochs=2, seed=3)


def _model(spec: TrainingSpec = SPEC, seed: int = 0) -> nn.Module:
    return build_mlp(spec, generator=torch.Generator().manual_seed(seed))


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().contiguous() for name, value in model.state_dict().items()}


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_round_trip_gives_the_same_outputs_and_spec(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "model.safetensors"

    saved = save_checkpoint(path, model, SPEC)
    loaded, spec = load_checkpoint(path, expected_sha256=saved.sha256)

    assert spec == SPEC
    assert not loaded.training
    inputs = torch.rand(5, 28, 28)
    model.eval()
    assert torch.equal(loaded(inputs), model(inputs))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_file_is_safetensors_with_format_and_spec_metadata(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"

    save_checkpoint(path, _model(), SPEC, extra={"job_id": "abc"})

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["format"] == FORMAT == "fmnist-mlp/1"
    assert TrainingSpec.model_validate(json.loads(metadata["spec"])) == SPEC
    assert metadata["job_id"] == "abc"
    assert keys == {"1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"}


def test_save_reports_the_files_digest_and_size(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "model.safetensors"

    saved = save_checkpoint(path, _model(), SPEC)

    content = path.read_bytes()
    assert saved.path == path
    assert saved.sha256 == hashlib.sha256(content).hexdigest() == file_sha256(path)
    assert saved.size_bytes == len(content)


def test_save_leaves_no_temp_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "model.safetensors", _model(), SPEC)

    assert _leftovers(tmp_path, keep="model.safetensors") == []


def test_save_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, _model(seed=1), SPEC)
    other_spec = TrainingSpec(hidden_layers=[4])
    replacement = _model(other_spec, seed=2)

    saved = save_checkpoint(path, replacement, other_spec)

    loaded, spec = load_checkpoint(path, expected_sha256=saved.sha256)
    assert spec == other_spec
    assert torch.equal(loaded.state_dict()["1.weight"], replacement.state_dict()["1.weight"])
    assert _leftovers(tmp_path, keep="model.safetensors") == []


def test_interrupted_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int) -> None:  # the bytes are in the temporary file; making them durable fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models.files.os, "fsync", disk_full)

    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "model.safetensors", _model(), SPEC)

    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    previous = save_checkpoint(path, _model(), SPEC)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(models.files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _model(seed=9), SPEC)

    assert file_sha256(path) == previous.sha256
    assert _leftovers(tmp_path, keep="model.safetensors") == []


def test_wrong_expected_sha256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, _model(), SPEC)

    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, expected_sha256="0" * 64)


def test_tampered_checkpoint_fails_its_recorded_digest(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    saved = save_checkpoint(path, _model(), SPEC)
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF  # one bit of one weight
    path.write_bytes(bytes(content))

    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, expected_sha256=saved.sha256)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path)


def _valid_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.safetensors"
    save_checkpoint(path, _model(), SPEC)
    return path.read_bytes()


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda valid: b"", id="empty"),
        pytest.param(lambda valid: b"\x00" * 64 + b"garbage" * 100, id="garbage"),
        pytest.param(lambda valid: b"\xff" * 8 + b"{}", id="absurd-header-length"),
        pytest.param(lambda valid: valid[:20], id="truncated-header"),
        pytest.param(lambda valid: valid[: len(valid) // 2], id="truncated-data"),
    ],
)
def test_corrupt_file_is_refused(tmp_path: Path, corrupt: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(corrupt(_valid_bytes(tmp_path)))

    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(None, id="no-metadata"),
        pytest.param({"spec": SPEC.model_dump_json()}, id="no-format"),
        pytest.param({"format": "fmnist-mlp/0", "spec": SPEC.model_dump_json()}, id="other-format"),
        pytest.param({"format": FORMAT}, id="no-spec"),
    ],
)
def test_safetensors_without_our_metadata_is_refused(tmp_path: Path, metadata: dict[str, str] | None) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(_model()), str(path), metadata=metadata)

    with pytest.raises(CheckpointError, match=FORMAT):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "spec_json",
    [
        pytest.param("{not json", id="spec-not-json"),
        pytest.param(json.dumps({"hidden_layers": [0]}), id="spec-invalid"),
    ],
)
def test_unusable_spec_in_header_is_refused(tmp_path: Path, spec_json: str) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(_model()), str(path), metadata={"format": FORMAT, "spec": spec_json})

    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "tensors",
    [
        pytest.param(lambda: _tensors(_model(TrainingSpec(hidden_layers=[16, 9]))), id="wrong-shape"),
        pytest.param(lambda: _tensors(_model(TrainingSpec(hidden_layers=[16]))), id="missing-layer"),
        pytest.param(lambda: {**_tensors(_model()), "7.weight": torch.zeros(2, 2)}, id="extra-tensor"),
        pytest.param(lambda: {k: v for k, v in _tensors(_model()).items() if k != "3.bias"}, id="missing-tensor"),
    ],
)
def test_tensors_that_do_not_fit_the_spec_are_refused(
    tmp_path: Path, tensors: Callable[[], dict[str, torch.Tensor]]
) -> None:
    path = tmp_path / "model.safetensors"
    save_file(tensors(), str(path), metadata={"format": FORMAT, "spec": SPEC.model_dump_json()})

    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path)
