"""The HTTP API through httpx (FastAPI's TestClient), on a real SQLite database and a real worker."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.spec import TrainingSpec
from service.api.app import create_app
from service.jobs import queue
from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.idx import synthetic_split

pytestmark = pytest.mark.db

TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 2, "seed": 1}


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def train_one(settings: Settings, db: Database, client: TestClient, spec: dict[str, Any] = TINY) -> dict[str, Any]:
    job = client.post("/v1/jobs", json=spec).json()
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    result: dict[str, Any] = client.get(f"/v1/jobs/{job['id']}").json()
    assert result["status"] == "succeeded", result
    return result


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def garment() -> np.ndarray:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:7, 4:24] = 220
    return image


# -- jobs -----------------------------------------------------------------------------------------


def test_submit_returns_202_with_location_and_defaults(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and len(body["id"]) == 32
    assert response.headers["location"].endswith(f"/v1/jobs/{body['id']}")
    assert body["spec"] == TrainingSpec().model_dump(mode="json")
    assert {key: body["spec"][key] for key in ("hidden_layers", "activation", "init_std", "lr", "batch_size")} == {
        "hidden_layers": [256],
        "activation": "relu",
        "init_std": 0.01,
        "lr": 0.1,
        "batch_size": 256,
    }
    assert body["progress"] == {"epoch": 0, "epochs": 10}
    assert body["attempt"] == 0 and body["error"] is None and body["model_id"] is None
    assert client.get(response.headers["location"]).json()["id"] == body["id"]


INVALID_SPECS = [
    ({"hidden_layers": [0]}, "hidden_layers"),
    ({"hidden_layers": [10**7]}, "hidden_layers"),
    ({"hidden_layers": [8] * 100}, "hidden_layers"),
    ({"hidden_layers": "256"}, "hidden_layers"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": 10**6}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"lr": 0}, "lr"),
    ({"lr": -0.1}, "lr"),
    ({"lr": "NaN"}, "lr"),
    ({"lr": "Infinity"}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"init_std": 0}, "init_std"),
    ({"activation": "swish"}, "activation"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"seed": -1}, "seed"),
    ({"hidden_units": [256]}, "hidden_units"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_SPECS)
def test_invalid_specs_are_refused_naming_the_field_and_nothing_is_stored(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(field in location for location in locations), locations
    assert client.get("/v1/jobs").json()["count"] == 0


def test_nan_literal_in_json_is_refused(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b'{"lr": NaN}', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert client.get("/v1/jobs").json()["count"] == 0


@pytest.mark.parametrize("payload", [b"{not json", b"[]", b"null", b""])
def test_malformed_bodies_get_422_json(client: TestClient, payload: bytes) -> None:
    response = client.post("/v1/jobs", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "detail" in response.json()


def test_unknown_job_is_404_json(client: TestClient) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/metrics"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "no job with id 'nope'", "code": "job_not_found"}
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_list_is_newest_first_filtered_and_paginated(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json={"epochs": 1}).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in page["data"]] == ids[::-1][:2]
    assert page["count"] == 5 and page["limit"] == 2 and page["offset"] == 0
    rest = client.get("/v1/jobs", params={"limit": 2, "offset": 4}).json()
    assert [job["id"] for job in rest["data"]] == [ids[0]]
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert cancelled["count"] == 1 and cancelled["data"][0]["id"] == ids[0]
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["count"] == 4


@pytest.mark.parametrize("params", [{"status": "done"}, {"limit": 0}, {"limit": 501}, {"offset": -1}])
def test_list_refuses_bad_query_parameters(client: TestClient, params: dict[str, Any]) -> None:
    assert client.get("/v1/jobs", params=params).status_code == 422


def test_cancel_queued_then_cancel_again_is_409(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={}).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_cancel_running_sets_the_flag(client: TestClient, db: Database) -> None:
    job_id = client.post("/v1/jobs", json={}).json()["id"]
    assert queue.claim_next_job(db, "w", 30, device="cpu") is not None
    body = client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert body["status"] == "running" and body["cancel_requested"] is True


def test_metrics_and_status_after_a_worker_run(client: TestClient, settings: Settings, db: Database) -> None:
    job = client.post("/v1/jobs", json=TINY).json()
    assert client.get(f"/v1/jobs/{job['id']}/metrics").json() == {"job_id": job["id"], "status": "queued", "epochs": []}
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["progress"] == {"epoch": 2, "epochs": 2}
    assert done["model_id"] and done["attempt"] == 1 and done["finished_at"]
    epochs = client.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert set(epochs[0]) == {"epoch", "train_loss", "train_acc", "val_acc", "test_acc", "lr", "seconds"}
    assert all(0 <= e["test_acc"] <= 1 and e["seconds"] > 0 for e in epochs)


# -- predict --------------------------------------------------------------------------------------


def test_predict_without_a_model_is_409(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": ("g.png", png_bytes(garment()), "image/png")})
    assert response.status_code == 409
    assert "POST /v1/jobs" in response.json()["detail"]


def test_predict_uses_the_newest_model_or_the_one_asked_for(
    client: TestClient, settings: Settings, db: Database
) -> None:
    older = train_one(settings, db, client)
    newer = train_one(settings, db, client, {**TINY, "seed": 2})
    files = {"file": ("g.png", png_bytes(garment()), "image/png")}
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200
    body = response.json()
    assert body["model_id"] == newer["model_id"]
    (prediction,) = body["predictions"]
    assert 0 <= prediction["class_id"] < 10 and prediction["class_name"]
    assert len(prediction["top_k"]) == 3 and prediction["top_k"][0]["class_id"] == prediction["class_id"]
    probabilities = [entry["probability"] for entry in prediction["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0 + 1e-6
    chosen = client.post("/v1/predict", params={"model": older["model_id"], "top_k": 10}, files=files).json()
    assert chosen["model_id"] == older["model_id"]
    assert sum(entry["probability"] for entry in chosen["predictions"][0]["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_learns_the_synthetic_classes(client: TestClient, settings: Settings, db: Database) -> None:
    train_one(settings, db, client, {**TINY, "epochs": 30})
    images, labels = synthetic_split(20, seed=5)
    right = 0
    for image, label in zip(images, labels, strict=True):
        body = client.post("/v1/predict", files={"file": ("g.png", png_bytes(image), "image/png")}).json()
        right += body["predictions"][0]["class_id"] == label
    assert right >= 16


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(garment()).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(garment()).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "phrase"),
    [
        (b"", 400, "empty"),
        (b"just some text", 415, "PNG or JPEG"),
        (tiff_bytes(), 415, "a TIFF image"),
        (png_bytes(np.zeros((28, 28), np.uint8)), 422, "no object found"),
        (png_bytes(garment())[:60], 400, "truncated"),
        (jpeg_bytes()[:200], 400, "truncated"),
    ],
)
def test_predict_refuses_bad_uploads_with_4xx_json(
    client: TestClient, settings: Settings, db: Database, payload: bytes, status: int, phrase: str
) -> None:
    train_one(settings, db, client)
    response = client.post("/v1/predict", files={"file": ("upload", payload, "application/octet-stream")})
    assert response.status_code == status
    assert phrase in response.json()["detail"]


def test_predict_refuses_oversized_uploads(settings: Settings, db: Database) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 2048})
    with TestClient(create_app(small)) as client:
        train_one(small, db, client)
        big = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
        assert len(big) > 2048
        response = client.post("/v1/predict", files={"file": ("big.png", big, "image/png")})
        assert response.status_code == 413 and "limit" in response.json()["detail"]
        huge = b"x" * (2048 + 70 * 1024)
        response = client.post("/v1/predict", files={"file": ("huge.png", huge, "image/png")})
        assert response.status_code == 413


def test_predict_refuses_too_many_pixels(settings: Settings, db: Database) -> None:
    strict = settings.model_copy(update={"max_image_pixels": 1000})
    with TestClient(create_app(strict)) as client:
        train_one(strict, db, client)
        response = client.post("/v1/predict", files={"file": ("g.png", png_bytes(np.zeros((100, 100), np.uint8)))})
        assert response.status_code == 413 and "pixels" in response.json()["detail"]


def test_predict_unknown_model_is_404_and_bad_params_422(client: TestClient, settings: Settings, db: Database) -> None:
    train_one(settings, db, client)
    files = {"file": ("g.png", png_bytes(garment()), "image/png")}
    assert client.post("/v1/predict", params={"model": "nope"}, files=files).status_code == 404
    assert client.post("/v1/predict", params={"top_k": 0}, files=files).status_code == 422
    assert client.post("/v1/predict", params={"top_k": 11}, files=files).status_code == 422
    missing = client.post("/v1/predict", data={"other": "x"})
    assert missing.status_code == 422 and "`file`" in missing.json()["detail"]


def test_a_tampered_checkpoint_is_refused_not_served(client: TestClient, settings: Settings, db: Database) -> None:
    done = train_one(settings, db, client)
    path = settings.checkpoint_dir / f"{done['model_id']}.safetensors"
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    response = client.post("/v1/predict", files={"file": ("g.png", png_bytes(garment()), "image/png")})
    assert response.status_code == 500
    assert "sha256" in response.json()["detail"]


# -- health and schema ----------------------------------------------------------------------------


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


def test_readiness_fails_on_an_unmigrated_database(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["schema_revision"] is None and "fmnist db upgrade" in response.json()["database"]
        jobs = client.get("/v1/jobs")
        assert jobs.status_code == 503 and "readyz" in jobs.json()["detail"]


def test_every_route_is_documented_with_a_response_model(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    expected = {
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("get", "/v1/jobs/{job_id}"),
        ("post", "/v1/jobs/{job_id}/cancel"),
        ("get", "/v1/jobs/{job_id}/metrics"),
        ("post", "/v1/predict"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    }
    found = {(method, path) for path, methods in schema["paths"].items() for method in methods}
    assert expected <= found
    for method, path in expected:
        responses = schema["paths"][path][method]["responses"]
        success = responses.get("200") or responses.get("202")
        assert "$ref" in success["content"]["application/json"]["schema"], (method, path)


# -- presets --------------------------------------------------------------------------------------


def test_a_preset_fills_the_spec_and_explicit_fields_override_it(client: TestClient) -> None:
    body = client.post("/v1/jobs", json={"preset": "best-mlp", "epochs": 5, "dropout": 0.1}).json()
    assert body["preset"] == "best-mlp"
    spec = body["spec"]
    assert spec["hidden_layers"] == [1024, 1024] and spec["optimizer"] == "adamw" and spec["val_fraction"] == 0.1
    assert spec["epochs"] == 5 and spec["dropout"] == 0.1


def test_the_d2l_preset_is_the_default_recipe(client: TestClient) -> None:
    assert client.post("/v1/jobs", json={"preset": "d2l-mlp"}).json()["spec"] == TrainingSpec().model_dump(mode="json")


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"preset": "huge-mlp"}, "preset"),
        ({"preset": "best-mlp", "val_fraction": 0, "early_stopping_patience": 3}, "val_fraction"),
        ({"preset": "best-mlp", "warmup_epochs": 50, "epochs": 10}, "warmup_epochs"),
        ({"hidden_layers": [8192] * 8, "epochs": 1000}, "too large"),
        ({"nesterov": True}, "momentum"),
    ],
)
def test_bad_presets_and_inconsistent_specs_are_422(client: TestClient, body: dict[str, Any], phrase: str) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422 and phrase in response.text
    assert client.get("/v1/jobs").json()["count"] == 0


# -- batches --------------------------------------------------------------------------------------


def test_several_files_get_one_prediction_each_in_order(client: TestClient, settings: Settings, db: Database) -> None:
    train_one(settings, db, client, {**TINY, "epochs": 30})
    images, labels = synthetic_split(12, seed=5)
    singles = [
        client.post("/v1/predict", files={"file": ("x.png", png_bytes(image))}).json()["predictions"][0]
        for image in images
    ]
    batch = client.post(
        "/v1/predict",
        files=[("file", ("a.png", png_bytes(images[0])))]
        + [("files", (f"{i}.png", png_bytes(im))) for i, im in enumerate(images[1:])],
    )
    assert batch.status_code == 200
    predictions = batch.json()["predictions"]
    assert len(predictions) == 12
    for single, batched in zip(singles, predictions, strict=True):
        assert batched["class_id"] == single["class_id"]
        assert batched["probability"] == pytest.approx(single["probability"], abs=1e-5)
    assert sum(p["class_id"] == int(label) for p, label in zip(predictions, labels, strict=True)) >= 9


def test_too_many_files_are_refused(settings: Settings, db: Database) -> None:
    strict = settings.model_copy(update={"max_predict_files": 2})
    with TestClient(create_app(strict)) as client:
        train_one(strict, db, client)
        files = [("files", (f"{i}.png", png_bytes(garment()))) for i in range(3)]
        response = client.post("/v1/predict", files=files)
        assert response.status_code == 422 and "limit is 2" in response.json()["detail"]


def test_pixel_arrays_predict_like_the_same_image_uploaded(
    client: TestClient, settings: Settings, db: Database
) -> None:
    train_one(settings, db, client)
    images, _ = synthetic_split(3, seed=6)
    images[:, 0, 0] = 255  # full range, as Fashion-MNIST's images are: an upload that is not is stretched to it
    body = client.post("/v1/predict/pixels", json={"images": images.tolist()}, params={"top_k": 10})
    assert body.status_code == 200
    for image, prediction in zip(images, body.json()["predictions"], strict=True):
        uploaded = client.post("/v1/predict", params={"top_k": 10}, files={"file": ("x.png", png_bytes(image))})
        expected = uploaded.json()["predictions"][0]
        assert prediction["class_id"] == expected["class_id"]
        # The same pixels; one forward pass held three images, the other one: equal up to float rounding.
        classes = [entry["class_id"] for entry in expected["top_k"]]
        probabilities = [entry["probability"] for entry in expected["top_k"]]
        assert [entry["class_id"] for entry in prediction["top_k"]] == classes
        assert [entry["probability"] for entry in prediction["top_k"]] == pytest.approx(probabilities, abs=1e-6)


@pytest.mark.parametrize(
    ("images", "phrase"),
    [
        ([], "at least 1"),
        ([[[0] * 28] * 27], "at least 28"),
        ([[[0] * 29] * 28], "at most 28"),
        ([[[256] * 28] * 28], "less than or equal to 255"),
        ([[[-1] * 28] * 28], "greater than or equal to 0"),
        ([[["a"] * 28] * 28], "valid integer"),
        ([[[0] * 28] * 28] * 257, "at most 256"),
    ],
)
def test_bad_pixel_arrays_are_422(
    client: TestClient, settings: Settings, db: Database, images: Any, phrase: str
) -> None:
    train_one(settings, db, client)
    response = client.post("/v1/predict/pixels", json={"images": images})
    assert response.status_code == 422 and phrase in response.text
