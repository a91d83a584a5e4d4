"""models/export.py and GET /v1/models/{id}/onnx: the ONNX model agrees with the checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from models.checkpoints import load_checkpoint
from models.data import DeviceDataset, images_to_inputs
from models.export import INPUT_NAME, export_onnx
from models.training import train
from service.api.app import create_app
from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.specs import spec_of


def onnx_top1(data: bytes, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    inputs = images_to_inputs(images).view(-1, 28, 28).numpy()
    return np.asarray(session.run(None, {INPUT_NAME: inputs})[0]).argmax(axis=1)


def torch_top1(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(images_to_inputs(images)).argmax(dim=1).numpy()


@pytest.mark.parametrize(
    "fields",
    [
        {"hidden_layers": [32]},
        {"hidden_layers": [32, 16], "activation": "gelu", "dropout": 0.3, "normalize_inputs": True},
        {"hidden_layers": [], "activation": "tanh"},
    ],
    ids=["relu", "gelu-dropout-normalised", "softmax-regression"],
)
def test_onnx_gives_the_same_top1_as_torch(
    synthetic_dataset: DeviceDataset, tmp_path: Path, fields: dict[str, object]
) -> None:
    model = train(spec_of(batch_size=64, epochs=2, **fields), synthetic_dataset, seed=0).model
    path = export_onnx(model, tmp_path / "m.onnx")
    images = (synthetic_dataset.test_x * 255).round().to(torch.uint8).view(-1, 28, 28)
    assert (onnx_top1(path.read_bytes(), images) == torch_top1(model, images)).all()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.real_data
def test_onnx_agrees_on_1000_real_test_images(real_dataset: DeviceDataset, tmp_path: Path) -> None:
    model = train(spec_of(epochs=1), real_dataset, seed=0).model
    path = export_onnx(model, tmp_path / "m.onnx")
    images = (real_dataset.test_x[:1000] * 255).round().to(torch.uint8).view(-1, 28, 28)
    agree = onnx_top1(path.read_bytes(), images) == torch_top1(model, images)
    assert agree.sum() == 1000


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_onnx_endpoint_serves_the_checkpoint_s_model(client: TestClient, settings: Settings, db: Database) -> None:
    job = client.post("/v1/jobs", json={"hidden_layers": [16], "batch_size": 64, "epochs": 2}).json()
    Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    model_id = client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
    client.put("/v1/aliases/production", json={"model_id": model_id})
    response = client.get("/v1/models/production/onnx")
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    assert (settings.checkpoint_dir / f"{model_id}.onnx").is_file(), "kept for the next request"
    module, _ = load_checkpoint(settings.checkpoint_dir / f"{model_id}.safetensors")
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert (onnx_top1(response.content, images) == torch_top1(module, images)).all()
    assert client.get("/v1/models/nope/onnx").status_code == 404
    client.delete("/v1/aliases/production")
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert not (settings.checkpoint_dir / f"{model_id}.onnx").exists()
