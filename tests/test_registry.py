"""The model registry and aliases (service/registry.py, service/api/routes/models.py)."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from models.spec import TrainingSpec
from service.api.app import create_app
from service.settings import Settings
from service.store.db import Database
from tests.support.artifacts import DATABASE_STORE
from tests.support.idx import synthetic_split
from tests.support.models import png, train_model
from tests.support.servers import free_port, wait_ready

pytestmark = pytest.mark.db

TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 2}


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def train(client: TestClient, settings: Settings, db: Database, **spec: Any) -> str:
    return train_model(client, settings, db, **{**TINY, **spec})


def predict_model(client: TestClient | httpx.Client, **params: str) -> str:
    response = client.post("/v1/predict", params=params, files={"file": ("x.png", png(), "image/png")})
    assert response.status_code == 200, response.text
    model_id: str = response.json()["model_id"]
    return model_id


def test_models_are_listed_newest_first_with_their_details(
    client: TestClient, settings: Settings, db: Database
) -> None:
    first = train(client, settings, db, seed=1)
    second = train(client, settings, db, seed=2, hidden_layers=[32, 16])
    body = client.get("/v1/models").json()
    assert body["count"] == 2 and [m["id"] for m in body["models"]] == [second, first]
    newest = body["models"][0]
    assert newest["summary"] == "784-32-16-10 relu, sgd lr 0.1, 2 epochs"
    assert newest["parameters"] == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert newest["epoch"] == 2 and 0 <= newest["test_acc"] <= 1 and newest["aliases"] == []
    assert len(newest["sha256"]) == 64 and newest["size_bytes"] > 0
    assert client.get(f"/v1/models/{first}").json()["id"] == first
    assert client.get("/v1/models/0123456789abcdef0123456789abcdef").status_code == 404


def test_aliases_name_models_and_predict_follows_them(client: TestClient, settings: Settings, db: Database) -> None:
    first = train(client, settings, db, seed=1)
    second = train(client, settings, db, seed=2)
    assert predict_model(client) == second, "no production alias: the newest model"
    created = client.put("/v1/aliases/production", json={"model_id": first})
    assert created.status_code == 201 and created.json()["model_id"] == first
    assert predict_model(client) == first, "the production alias wins over the newest model"
    assert predict_model(client, model="production") == first
    assert predict_model(client, model=second) == second
    moved = client.put("/v1/aliases/production", json={"model_id": second})
    assert moved.status_code == 200 and moved.json()["model_id"] == second
    assert predict_model(client) == second
    client.put("/v1/aliases/staging", json={"model_id": "production"})  # an alias may copy another
    assert client.get("/v1/aliases/staging").json()["model_id"] == second
    assert [a["name"] for a in client.get("/v1/aliases").json()["aliases"]] == ["production", "staging"]
    assert client.get("/v1/models/staging").json()["aliases"] == ["production", "staging"]
    assert client.delete("/v1/aliases/production").status_code == 204
    assert client.delete("/v1/aliases/production").status_code == 404
    assert predict_model(client) == second


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("Production", {"model_id": "x"}, 422),
        ("0123456789abcdef0123456789abcdef", {"model_id": "x"}, 422),
        ("has space", {"model_id": "x"}, 422),
        ("ok", {"model_id": "no-such-model"}, 404),
        ("ok", {}, 422),
        ("ok", {"model_id": "x", "extra": 1}, 422),
    ],
)
def test_bad_alias_requests(
    client: TestClient, settings: Settings, db: Database, name: str, body: dict[str, Any], status: int
) -> None:
    train(client, settings, db)
    response = client.put(f"/v1/aliases/{name}", json=body)
    assert response.status_code == status, response.text
    assert client.get("/v1/aliases").json()["aliases"] == []


def test_a_model_an_alias_points_at_cannot_be_deleted(client: TestClient, settings: Settings, db: Database) -> None:
    kept = train(client, settings, db, seed=1)
    other = train(client, settings, db, seed=2)
    client.put("/v1/aliases/production", json={"model_id": kept})
    refused = client.delete(f"/v1/models/{kept}")
    assert refused.status_code == 409 and "production" in refused.json()["detail"]
    assert (settings.checkpoint_dir / f"{kept}.safetensors").exists()
    assert client.delete(f"/v1/models/{other}").status_code == 204
    assert not (settings.checkpoint_dir / f"{other}.safetensors").exists()
    assert client.get(f"/v1/models/{other}").status_code == 404
    assert client.delete(f"/v1/models/{other}").status_code == 404
    assert client.post("/v1/predict", params={"model": other}, files={"file": ("x.png", png())}).status_code == 404


def build_plain(spec: dict[str, Any]) -> nn.Sequential:
    """The README's recipe: the MLP from the spec in the header, with nothing from this project."""
    sizes = [784, *spec["hidden_layers"], 10]
    activation = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation[spec["activation"]]())
            if spec["dropout"] > 0:
                layers.append(nn.Dropout(spec["dropout"]))
    return nn.Sequential(*layers)


def test_a_downloaded_checkpoint_loads_with_plain_pytorch(
    client: TestClient, settings: Settings, db: Database, tmp_path: Path
) -> None:
    model_id = train(client, settings, db, dropout=0.2, activation="tanh")
    response = client.get(f"/v1/models/{model_id}/download")
    assert response.status_code == 200
    assert response.headers["x-checkpoint-sha256"] == client.get(f"/v1/models/{model_id}").json()["sha256"]
    path = tmp_path / "model.safetensors"
    path.write_bytes(response.content)
    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()["spec"])
    net = build_plain(spec)
    net.load_state_dict(load_file(str(path)))
    net.eval()
    images, _ = synthetic_split(8, seed=4)
    inputs = torch.from_numpy(images).float().div(255)
    served = client.post("/v1/predict", params={"model": model_id, "top_k": 1}, files={"file": ("x.png", png())})
    first = torch.from_numpy(synthetic_split(1, seed=9)[0]).float().div(255)
    assert int(net(first).argmax(1)) == served.json()["predictions"][0]["class_id"]
    assert net(inputs).shape == (8, 10)


# -- moving an alias under load, through a real server --------------------------------------------


def test_moving_the_production_alias_under_load_fails_no_request(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    with TestClient(create_app(settings)) as setup:
        first = train(setup, settings, db, seed=1)
        second = train(setup, settings, db, seed=2)
        setup.put("/v1/aliases/production", json={"model_id": first})
    port = free_port()
    env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(settings.data_dir)}
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while not stop.is_set():
                response = http.post("/v1/predict", files={"file": ("x.png", png(), "image/png")})
                model = response.json().get("model_id", "") if response.status_code == 200 else ""
                results.append((time.monotonic(), response.status_code, model))

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            wait_ready(http, server)
            threads = [threading.Thread(target=hammer) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            assert http.put("/v1/aliases/production", json={"model_id": second}).status_code == 200
            switched = time.monotonic()
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(results) > 20
    assert all(status == 200 for _, status, _ in results), "a request failed during the switch"
    before = {model for at, _, model in results if at < switched - 0.5}
    after = {model for at, _, model in results if at > switched + 0.2}
    assert before == {first} and after == {second}


def test_png_of_a_test_image_predicts_like_the_tensor(client: TestClient, settings: Settings, db: Database) -> None:
    model_id = train(client, settings, db, seed=3)
    images, _ = synthetic_split(5, seed=11)
    from models.checkpoints import load_checkpoint

    module, _spec = load_checkpoint(settings.checkpoint_dir / f"{model_id}.safetensors")
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        served = client.post(
            "/v1/predict", params={"model": model_id, "top_k": 10}, files={"file": ("x.png", buffer.getvalue())}
        ).json()["predictions"][0]
        with torch.no_grad():
            direct = torch.softmax(module(torch.from_numpy(np.asarray(image)).float().div(255).view(1, -1)), dim=1)[0]
        assert served["class_id"] == int(direct.argmax())
        for entry in served["top_k"]:
            assert entry["probability"] == pytest.approx(float(direct[entry["class_id"]]), abs=1e-6)


def test_cached_resolutions_follow_every_registry_change(client: TestClient, settings: Settings, db: Database) -> None:
    first = train(client, settings, db, seed=1)
    assert predict_model(client) == first
    second = train(client, settings, db, seed=2)  # registered by the worker, outside the API
    assert predict_model(client) == second, "a new model is the new default"
    client.put("/v1/aliases/production", json={"model_id": first})
    assert predict_model(client) == first
    client.put("/v1/aliases/production", json={"model_id": second})
    assert predict_model(client) == second
    client.delete("/v1/aliases/production")
    client.delete(f"/v1/models/{second}")
    assert predict_model(client) == first, "the deleted model is no longer served"


def test_concurrent_writers_of_one_alias_all_succeed(db: Database) -> None:
    """PostgreSQL does not serialise writers as SQLite's BEGIN IMMEDIATE does: two first PUTs of one alias
    must not both try to insert it."""
    from service import registry
    from service.jobs import queue

    model_ids = []
    for _ in range(2):
        queue.enqueue_job(db, TrainingSpec(hidden_layers=[8], epochs=1), max_attempts=1)
        claim = queue.claim_next_job(db, "w", 30, device="cpu")
        assert claim is not None
        model_ids.append(claim.job_id)
        queue.finish_job(
            db, claim, model_id=claim.job_id, checkpoint=b"checkpoint", artifacts=DATABASE_STORE, selected=None
        )
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def point(index: int) -> None:
        try:
            start.wait()
            for round_ in range(20):
                registry.set_alias(db, f"canary-{round_}", model_ids[index % 2])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=point, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert {alias.name for alias in registry.list_aliases(db)} == {f"canary-{i}" for i in range(20)}
