"""Sweeps over HTTP (service/api/routes/sweeps.py, service/jobs/sweeps.py): expansion, ranking, cancelling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker

pytestmark = pytest.mark.db

BASE = {"hidden_layers": [16], "batch_size": 64, "epochs": 2, "seed": 1}


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_sweep_queues_one_job_per_grid_point_in_grid_order(client: TestClient) -> None:
    grid = {"hidden_layers": [[16], [32]], "lr": [0.1, 0.5]}
    response = client.post("/v1/sweeps", json={"base": BASE, "grid": grid})
    assert response.status_code == 202
    sweep = response.json()
    assert response.headers["location"].endswith(f"/v1/sweeps/{sweep['id']}")
    assert sweep["counts"] == {"queued": 4} and len(sweep["jobs"]) == 4
    params = [job["params"] for job in sweep["jobs"]]
    assert sorted(map(str, params)) == sorted(
        map(str, [{"hidden_layers": h, "lr": lr} for h in ([16], [32]) for lr in (0.1, 0.5)])
    )
    for job in sweep["jobs"]:
        assert job["spec"]["epochs"] == 2 and job["spec"]["hidden_layers"] == job["params"]["hidden_layers"]
    listed = client.get("/v1/jobs").json()
    assert listed["count"] == 4 and all(job["sweep_id"] == sweep["id"] for job in listed["data"])


def test_sweep_results_come_best_first(client: TestClient, settings: Settings, db: Database) -> None:
    # lr 1e-6 learns nothing in two epochs; lr 0.5 learns the synthetic classes.
    sweep = client.post("/v1/sweeps", json={"base": BASE, "grid": {"lr": [1e-6, 0.5]}}).json()
    assert Worker(settings, db, torch.device("cpu"), burst=True).run() == 0
    ranked = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert ranked["counts"] == {"succeeded": 2}
    assert [job["params"]["lr"] for job in ranked["jobs"]] == [0.5, 1e-6]
    accuracies = [job["test_acc"] for job in ranked["jobs"]]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] > accuracies[1]
    assert all(job["model_id"] and job["val_acc"] is None for job in ranked["jobs"])


def test_with_validation_the_ranking_uses_validation_accuracy(
    client: TestClient, settings: Settings, db: Database
) -> None:
    base = {**BASE, "val_fraction": 0.2}
    sweep = client.post("/v1/sweeps", json={"base": base, "grid": {"lr": [1e-6, 0.5, 0.05]}}).json()
    Worker(settings, db, torch.device("cpu"), burst=True).run()
    jobs = client.get(f"/v1/sweeps/{sweep['id']}").json()["jobs"]
    val = [job["val_acc"] for job in jobs]
    assert None not in val and val == sorted(val, reverse=True)


def test_cancelling_a_sweep_cancels_its_jobs(client: TestClient, settings: Settings, db: Database) -> None:
    sweep = client.post("/v1/sweeps", json={"base": BASE, "grid": {"lr": [0.1, 0.2, 0.3]}}).json()
    other = client.post("/v1/jobs", json=BASE).json()
    body = client.post(f"/v1/sweeps/{sweep['id']}/cancel").json()
    assert body["counts"] == {"cancelled": 3}
    assert get_job(db, other["id"]).status is JobStatus.queued
    again = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert again.status_code == 200 and again.json()["counts"] == {"cancelled": 3}


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"grid": {"lr": [0.1], "depth": [2]}}, "not a spec field"),
        ({"grid": {"lr": []}}, "at least one value"),
        ({"grid": {}}, "at least one field"),
        ({"grid": {"lr": [0.1, -1.0]}}, "greater than 0"),
        ({"grid": {"hidden_layers": [[16], [0]]}}, "greater than or equal to 1"),
        ({"grid": {"lr": [0.1] * 9, "epochs": [1] * 9}}, "limit is 64"),
        ({"base": {"lr": -1}, "grid": {"epochs": [1]}}, "greater than 0"),
        ({"base": {"nope": 1}, "grid": {"epochs": [1]}}, "Extra inputs"),
        ({"grid": {"nesterov": [True]}}, "nesterov needs"),
    ],
)
def test_bad_sweeps_are_refused_and_store_nothing(client: TestClient, body: dict[str, Any], phrase: str) -> None:
    response = client.post("/v1/sweeps", json={"base": BASE, **body} if "base" not in body else body)
    assert response.status_code == 422, response.text
    assert phrase in response.text
    assert client.get("/v1/jobs").json()["count"] == 0
    assert client.get("/v1/sweeps").json()["count"] == 0


def test_grid_point_errors_say_which_point(client: TestClient) -> None:
    response = client.post("/v1/sweeps", json={"base": BASE, "grid": {"lr": [0.1, -1.0]}})
    (error,) = response.json()["detail"]
    assert error["loc"][:4] == ["body", "grid", 1, "lr"]


def test_unknown_sweep_is_404(client: TestClient) -> None:
    assert client.get("/v1/sweeps/nope").status_code == 404
    assert client.post("/v1/sweeps/nope/cancel").status_code == 404


def test_list_sweeps_newest_first(client: TestClient) -> None:
    ids = [client.post("/v1/sweeps", json={"base": BASE, "grid": {"lr": [0.1]}}).json()["id"] for _ in range(3)]
    listed = client.get("/v1/sweeps").json()
    assert listed["count"] == 3 and [sweep["id"] for sweep in listed["data"]] == ids[::-1]


def test_a_preset_base_with_overrides(client: TestClient) -> None:
    sweep = client.post(
        "/v1/sweeps", json={"base": {"preset": "best-mlp", "epochs": 3}, "grid": {"dropout": [0.1, 0.5]}}
    ).json()
    for job in sweep["jobs"]:
        assert job["spec"]["hidden_layers"] == [1024, 1024] and job["spec"]["epochs"] == 3
        assert job["spec"]["dropout"] == job["params"]["dropout"]
    assert sweep["base"] == {"preset": "best-mlp", "epochs": 3}
