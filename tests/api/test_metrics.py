"""GET /metrics: Prometheus text that parses, with values that follow real requests and real jobs."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import SecretStr

from models.training import EpochMetrics
from service.api.app import create_app
from service.jobs import queue
from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.idx import synthetic_split
from tests.support.servers import free_port

TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 2}
# Families a scraper can count on, whatever has happened so far.
ALWAYS = {
    "fmnist_database_up",
    "fmnist_jobs",
    "fmnist_queue_depth",
    "fmnist_queue_oldest_age_seconds",
    "fmnist_job_duration_seconds",
    "fmnist_training_samples_per_second",
    "fmnist_predict_latency_seconds",
    "fmnist_predict_batch_size",
    "fmnist_model_cache_hits",
    "fmnist_model_cache_misses",
    "fmnist_model_cache_models",
    "fmnist_model_cache_capacity",
    "fmnist_predict_shed",
    "fmnist_predict_queue_images",
    "fmnist_rate_limited",
}


def scrape(client: TestClient) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``."""
    (found,) = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return found


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def train_one(client: TestClient, settings: Settings, db: Database, **spec: object) -> str:
    """A job submitted over HTTP and trained by a real worker on the synthetic data; its id."""
    job = client.post("/v1/jobs", json={**TINY, **spec}).json()
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    return str(job["id"])


def test_metrics_are_open_unlisted_prometheus_text_named_fmnist(settings: Settings, db: Database) -> None:
    keyed = settings.model_copy(update={"api_keys": SecretStr("k" * 40)})
    with TestClient(create_app(keyed)) as client:
        assert client.get("/v1/jobs").status_code == 401  # the API is closed...
        families = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    assert families >= ALWAYS, ALWAYS - families  # ...and /metrics open, like /healthz
    # Ours are prefixed; the rest are the client library's standard process and runtime families.
    assert all(name.startswith(("fmnist_", "process_", "python_")) for name in families), families


def test_an_openmetrics_scraper_gets_openmetrics(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert "# TYPE fmnist_job_duration_seconds gaugehistogram" in response.text


def test_jobs_by_status_and_the_queue_follow_the_database(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json=TINY).json()["id"] for _ in range(3)]
    assert client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 200
    samples = scrape(client)
    assert value(samples, "fmnist_database_up") == 1
    assert value(samples, "fmnist_jobs", status="queued") == 2
    assert value(samples, "fmnist_jobs", status="cancelled") == 1
    for status in ("running", "succeeded", "failed"):
        assert value(samples, "fmnist_jobs", status=status) == 0
    assert value(samples, "fmnist_queue_depth") == 2
    assert 0 < value(samples, "fmnist_queue_oldest_age_seconds") < 60
    # Cancelled while queued: it never ran, so it has no duration.
    assert value(samples, "fmnist_job_duration_seconds_gcount", status="cancelled") == 0


def test_a_finished_job_shows_in_the_durations(client: TestClient, settings: Settings, db: Database) -> None:
    train_one(client, settings, db)
    samples = scrape(client)
    assert value(samples, "fmnist_jobs", status="succeeded") == 1
    assert value(samples, "fmnist_queue_depth") == 0
    assert value(samples, "fmnist_queue_oldest_age_seconds") == 0
    assert value(samples, "fmnist_job_duration_seconds_gcount", status="succeeded") == 1
    took = value(samples, "fmnist_job_duration_seconds_gsum", status="succeeded")
    assert 0 < took < 60
    assert value(samples, "fmnist_job_duration_seconds_bucket", status="succeeded", le="+Inf") == 1
    assert value(samples, "fmnist_job_duration_seconds_bucket", status="succeeded", le="86400.0") == 1


def test_the_durations_window_is_bounded(settings: Settings, db: Database) -> None:
    from service.api.metrics import DatabaseCollector

    app = create_app(settings)
    with TestClient(app) as client:
        for _ in range(2):
            train_one(client, settings, db)
    (histogram,) = [
        m for m in DatabaseCollector(db, recent_jobs=1).collect() if m.name == "fmnist_job_duration_seconds"
    ]
    counts = {s.labels["status"]: s.value for s in histogram.samples if s.name.endswith("_gcount")}
    assert counts == {"succeeded": 1, "failed": 0, "cancelled": 0, "pruned": 0}


def test_a_running_job_reports_its_training_speed(client: TestClient, settings: Settings, db: Database) -> None:
    job = client.post("/v1/jobs", json=TINY).json()
    # The queue's own operations put the job where a worker leaves it after one epoch of 2 seconds.
    claim = queue.claim_next_job(db, "test-worker", lease_seconds=60, device="cpu")
    assert claim is not None and claim.job_id == job["id"]
    queue.begin_attempt(db, claim, [], {"train_samples": 1000})
    queue.record_epoch(db, claim, EpochMetrics(epoch=1, train_loss=1.0, train_acc=0.5, test_acc=0.5, seconds=2.0))
    queue.record_epoch(db, claim, EpochMetrics(epoch=2, train_loss=1.0, train_acc=0.5, test_acc=0.5, seconds=4.0))
    samples = scrape(client)
    assert value(samples, "fmnist_jobs", status="running") == 1
    # The newest epoch's speed, not the first's.
    assert value(samples, "fmnist_training_samples_per_second", job_id=job["id"], device="cpu") == 250
    queue.fail_job(db, claim, "stopped by the test")
    assert not [s for s in scrape(client) if s.name == "fmnist_training_samples_per_second"]


def test_a_real_workers_job_records_what_speed_needs(client: TestClient, settings: Settings, db: Database) -> None:
    job_id = train_one(client, settings, db, val_fraction=0.1)
    # The synthetic set's 600 training images, less the 60 held out for validation.
    assert client.get(f"/v1/jobs/{job_id}").json()["provenance"]["train_samples"] == 540


def predict(client: TestClient, image: bytes, **params: str) -> int:
    return client.post("/v1/predict", files={"file": ("x.png", image)}, params=params).status_code


def test_predictions_count_latency_batches_and_cache_hits(client: TestClient, settings: Settings, db: Database) -> None:
    train_one(client, settings, db)
    images, _ = synthetic_split(3, seed=1)
    assert predict(client, png(images[0])) == 200  # loads the model: a miss
    assert predict(client, png(images[1])) == 200  # a hit
    assert predict(client, png(images[2])) == 200  # a hit
    assert predict(client, b"not an image") == 415  # refused before a model is needed
    pixels = client.post("/v1/predict/pixels", json={"images": [images[0].tolist(), images[1].tolist()]})
    assert pixels.status_code == 200
    assert client.get("/v1/predict").status_code == 405  # not a prediction
    samples = scrape(client)
    assert value(samples, "fmnist_model_cache_misses_total") == 1
    assert value(samples, "fmnist_model_cache_hits_total") == 3
    assert value(samples, "fmnist_model_cache_models") == 1
    assert value(samples, "fmnist_model_cache_capacity") == settings.model_cache_size
    assert value(samples, "fmnist_predict_latency_seconds_count", endpoint="predict", status="200") == 3
    assert value(samples, "fmnist_predict_latency_seconds_count", endpoint="predict", status="415") == 1
    assert value(samples, "fmnist_predict_latency_seconds_count", endpoint="predict_pixels", status="200") == 1
    assert 0 < value(samples, "fmnist_predict_latency_seconds_sum", endpoint="predict", status="200") < 30
    # Every forward pass: three of one image, one of two (the refused upload never reached one).
    assert value(samples, "fmnist_predict_batch_size_count") == 4
    assert value(samples, "fmnist_predict_batch_size_sum") == 5
    assert value(samples, "fmnist_predict_batch_size_bucket", le="1.0") == 3
    assert value(samples, "fmnist_predict_batch_size_bucket", le="2.0") == 4
    # Only predictions are timed: neither the training job's requests above nor the GET added anything.
    assert sum(s.value for s in samples if s.name == "fmnist_predict_latency_seconds_count") == 5


@pytest.mark.parametrize("broken", ["not migrated", "unreachable"])
def test_without_a_database_the_scrape_still_answers(
    broken: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    if broken == "not migrated":
        url = settings.sqlalchemy_url  # the `settings` fixture's database, never migrated here
    else:
        url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    app: FastAPI = create_app(settings.model_copy(update={"database_url": url}))
    assert not caplog.records, "creating the app queried the database"  # only a scrape does
    with TestClient(app) as client:
        samples = scrape(client)
    assert [r.name for r in caplog.records] == ["service.api.metrics"]  # the operator is told why
    assert value(samples, "fmnist_database_up") == 0
    assert not [s for s in samples if s.name.startswith(("fmnist_jobs", "fmnist_queue", "fmnist_job_duration"))]
    assert value(samples, "fmnist_model_cache_hits_total") == 0  # what the process knows itself is still there
