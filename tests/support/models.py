"""A model trained through the API and a worker, and an image to ask it about: what model tests start from."""

from __future__ import annotations

import io
from typing import Any

import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.idx import synthetic_split


def train_model(client: TestClient, settings: Settings, db: Database, **spec: Any) -> str:
    """Submits ``spec`` through ``client``, runs it on a worker of ``settings`` on the CPU; the model's id."""
    job = client.post("/v1/jobs", json=spec).json()
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    model_id: str = client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
    assert model_id
    return model_id


def png() -> bytes:
    """A synthetic 28x28 garment as a PNG file's bytes."""
    images, _ = synthetic_split(1, seed=9)
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    return buffer.getvalue()
