"""A fleet that shares only the database (FMNIST_ARTIFACTS=database): two workers and an API server, each with
its own FMNIST_HOME. A job starts on worker A; A is killed with SIGKILL mid-job; worker B resumes it from the
state A published in the database; the API, on a third home, predicts with the model and serves its downloads.
No checkpoint, ONNX export or resume state is ever a file in any of the three homes.

Runs on each test database: in the PostgreSQL pass the three share one PostgreSQL, as machines of a fleet
would; on SQLite they share one database file that lies in none of their homes.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from models.files import bytes_sha256
from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.settings import Settings
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.store.tables import Job
from tests.support.fleet import Fleet, wait_for
from tests.support.models import png
from tests.support.servers import free_port, wait_ready

pytestmark = [pytest.mark.db, pytest.mark.faults, pytest.mark.timeout(300)]

# ~0.5 s an epoch of the synthetic data on one CPU thread (tests/worker/test_faults.py): a kill lands mid-job.
JOB = {"hidden_layers": [1024, 1024], "batch_size": 4, "epochs": 6, "seed": 5}


def no_artifact_files(*homes: Path) -> list[Path]:
    """Every file under the homes that holds (or is on its way to hold) a model or a training state."""
    patterns = ("*.safetensors", "*.onnx", "*.tmp")
    return sorted(path for home in homes for pattern in patterns for path in home.rglob(pattern))


def test_two_workers_and_an_api_on_three_homes_share_only_the_database(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    homes = {name: tmp_path / f"home-{name}" for name in ("a", "b", "api")}
    fleet = Fleet(settings, tmp_path)
    fleet.env.update(
        FMNIST_DATABASE_URL=settings.sqlalchemy_url,  # on SQLite: a file in none of the three homes
        FMNIST_ARTIFACTS="database",
        FMNIST_LEASE_SECONDS="2",
    )
    try:
        port = free_port()
        fleet.env["FMNIST_HOME"] = str(homes["api"])
        api = fleet.start("api", "serve", "--port", str(port))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_ready(client, api)
            submitted = client.post("/v1/jobs", json=JOB)
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]

            fleet.env["FMNIST_HOME"] = str(homes["a"])
            fleet.start("worker-a", "worker", "--device", "cpu")
            killed_at = wait_for("two epochs on worker A", lambda: running_past(db, job_id, 2), fleet).epochs_done
            fleet.kill("worker-a")  # SIGKILL: its trainer process goes with it (test_faults)
            assert get_job(db, job_id).status is JobStatus.running, "A was killed mid-job"

            fleet.env["FMNIST_HOME"] = str(homes["b"])
            fleet.start("worker-b", "worker", "--device", "cpu")
            job = wait_for("worker B to finish the job", lambda: ended(db, job_id), fleet)
            assert job.status is JobStatus.succeeded, (job.error, fleet.logs())
            assert fleet.worker_named(job.worker_id) == "worker-b" and job.attempt == 2
            assert job.provenance is not None and job.provenance["resumed_from_epoch"] >= killed_at > 0
            assert job.epochs_done == JOB["epochs"]

            model = client.get(f"/v1/models/{job.model_id}").json()
            prediction = client.post("/v1/predict", params={"model": job.model_id}, files={"file": ("x.png", png())})
            assert prediction.status_code == 200, prediction.text
            assert prediction.json()["model_id"] == job.model_id
            download = client.get(f"/v1/models/{job.model_id}/download")
            assert download.status_code == 200 and bytes_sha256(download.content) == model["sha256"]
            assert client.get(f"/v1/models/{job.model_id}/onnx").status_code == 200
        assert fleet.stop("worker-b") == [0], fleet.logs()
        assert fleet.stop("api", sig=signal.SIGINT) == [0], fleet.logs()  # uvicorn re-raises a SIGTERM
    finally:
        fleet.close()

    store = ArtifactStore.for_settings(settings)
    assert store.stat(db, ArtifactKind.resume, job_id) is None, "dropped once the job ended"
    for kind in (ArtifactKind.checkpoint, ArtifactKind.onnx):
        record = store.stat(db, kind, job.model_id)
        assert record is not None and record.in_database, kind
    assert no_artifact_files(*homes.values()) == []


def running_past(db: Database, job_id: str, epochs: int) -> Job | None:
    job = get_job(db, job_id)
    return job if job.status is JobStatus.running and job.epochs_done >= epochs else None


def ended(db: Database, job_id: str) -> Job | None:
    job = get_job(db, job_id)
    return job if job.status.is_terminal else None
