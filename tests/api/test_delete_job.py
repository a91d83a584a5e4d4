"""DELETE /v1/jobs/{id} (service/jobs/retention.py ``delete_job``): an ended job goes with its metrics, its model and
their artifacts (records, and files when kept in the folder; both FMNIST_ARTIFACTS settings); refused, with nothing
removed, for a live job, an aliased model, a running study's trial and another key's job; sweeps and studies list
what is left. Then the client's ``delete_job`` and ``fmnist delete-job`` against a real server and worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from service import registry
from service.api import auth
from service.api.app import create_app
from service.cli import app as fmnist
from service.client import Client, Conflict, NotFound
from service.jobs import queue, retention
from service.jobs.status import JobStatus, StudyStatus
from service.settings import Settings
from service.store.artifacts import ArtifactStore
from service.store.db import Database
from service.store.tables import EpochMetric, Job, Model, StudyTrial
from tests.support.live import TINY, Live, live_stack
from tests.support.retention import (
    MODES,
    artifact_rows,
    count,
    finished_job,
    home_files,
    interrupted_resume_write,
    new_study,
    new_sweep,
    publish_resume,
    study_trial,
    write_file,
)
from tests.support.studies import claim_all, run_curve

pytestmark = pytest.mark.timeout(120)

ENV_KEY = "delete-job-tests-admin-key"
ADMIN = {"Authorization": f"Bearer {ENV_KEY}"}


@pytest.fixture(params=MODES)
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Each test that reaches the home runs twice: artifacts kept as files in it, and as rows of the database."""
    return settings.model_copy(update={"artifacts": request.param})


def in_folder(settings: Settings) -> bool:
    return settings.artifacts == "folder"


@pytest.fixture
def client(settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    with TestClient(create_app(settings.model_copy(update={"api_keys": SecretStr(ENV_KEY)}))) as test_client:
        yield test_client


def with_resume_state(db: Database, settings: Settings, job_id: str) -> str:
    """Publishes a resume state for the job (token 1, then token 2 replacing it); its file's name in the folder."""
    publish_resume(db, settings, job_id, 1, size=12)
    return publish_resume(db, settings, job_id, 2)


def snapshot(db: Database, settings: Settings) -> tuple[int, int, int, set[tuple[str, str]], set[str]]:
    return count(db, Job), count(db, EpochMetric), count(db, Model), artifact_rows(db), home_files(settings)


def test_an_ended_job_goes_with_its_metrics_model_and_artifacts(
    client: TestClient, db: Database, settings: Settings
) -> None:
    job = finished_job(db, settings)
    kept = finished_job(db, settings)
    resume_file = with_resume_state(db, settings, job.job_id)
    model, other = str(job.model_id), str(kept.model_id)
    assert artifact_rows(db) == {
        *(("checkpoint", m) for m in (model, other)),
        *(("onnx", m) for m in (model, other)),
        ("resume", job.job_id),
    }
    kept_files = {f"checkpoints/{path.name}" for path in kept.model_files(settings)}
    if in_folder(settings):
        job_files = {f"checkpoints/{path.name}" for path in job.model_files(settings)} | {f"resume/{resume_file}"}
        assert home_files(settings) == kept_files | job_files
    else:
        assert home_files(settings) == set()  # the bytes are in the rows: nothing written to the home
    version = registry.current_version(db)

    response = client.delete(f"/v1/jobs/{job.job_id}", headers=ADMIN)
    assert response.status_code == 204 and response.content == b""
    assert count(db, Job, Job.id == job.job_id) == 0
    assert count(db, EpochMetric, EpochMetric.job_id == job.job_id) == 0
    assert count(db, Model, Model.id == job.model_id) == 0
    assert artifact_rows(db) == {("checkpoint", other), ("onnx", other)}  # the job's records went with it
    assert home_files(settings) == (kept_files if in_folder(settings) else set())
    assert registry.current_version(db) > version  # what "the newest model" resolves to may have changed
    assert client.get(f"/v1/jobs/{job.job_id}", headers=ADMIN).status_code == 404
    assert client.get(f"/v1/models/{job.model_id}", headers=ADMIN).status_code == 404
    # The other job is untouched, its checkpoint still served.
    assert count(db, Model) == 1
    downloaded = client.get(f"/v1/models/{other}/download", headers=ADMIN)
    assert downloaded.status_code == 200 and downloaded.content == b"c" * 100

    again = client.delete(f"/v1/jobs/{job.job_id}", headers=ADMIN)
    assert again.status_code == 404 and again.json()["code"] == "job_not_found"


def test_delete_job_reports_exactly_the_records_and_files_it_removed(db: Database, settings: Settings) -> None:
    store = ArtifactStore.for_settings(settings)
    job = finished_job(db, settings)
    kept = finished_job(db, settings)
    resume_file = with_resume_state(db, settings, job.job_id)
    model = str(job.model_id)
    # A resume file an earlier release wrote, with no record (nor a file the store writes in database mode).
    stray = write_file(settings.resume_dir / f"{job.job_id}.safetensors", 10)
    # A resume state a killed worker was writing (its temporary file); the other job's stays.
    interrupted = interrupted_resume_write(settings, job.job_id)
    others = interrupted_resume_write(settings, kept.job_id)
    before = snapshot(db, settings)

    deleted = retention.delete_job(db, job.job_id, store)
    assert (deleted.job_id, deleted.model_id) == (job.job_id, model)
    assert [(a.kind.value, a.name, a.token, a.size_bytes) for a in deleted.artifacts] == [
        ("checkpoint", model, None, 100),
        ("onnx", model, None, 50),
        ("resume", job.job_id, 2, 10),
    ]
    if in_folder(settings):
        recorded = [f"{model}.safetensors", f"{model}.onnx", resume_file]
        assert [a.file for a in deleted.artifacts] == recorded
        assert deleted.files == sorted([*recorded, stray.name, interrupted.name])
    else:
        assert all(a.in_database for a in deleted.artifacts)
        assert deleted.files == sorted([stray.name, interrupted.name])
    jobs, metrics, models, rows, files = before
    assert snapshot(db, settings) == (
        jobs - 1,
        metrics - 1,
        models - 1,
        rows - {("checkpoint", model), ("onnx", model), ("resume", job.job_id)},
        {path for path in files if path.split("/", 1)[1] not in deleted.files},
    )
    assert len(files) - len(home_files(settings)) == len(deleted.files)  # every file it names is one it removed
    assert not stray.exists() and not interrupted.exists() and others.exists()
    assert artifact_rows(db) == {("checkpoint", str(kept.model_id)), ("onnx", str(kept.model_id))}


@pytest.mark.parametrize("status", [JobStatus.failed, JobStatus.cancelled, JobStatus.pruned])
def test_an_ended_job_without_a_model_goes_too(
    client: TestClient, db: Database, settings: Settings, status: JobStatus
) -> None:
    job = finished_job(db, settings, status=status)
    with_resume_state(db, settings, job.job_id)
    assert artifact_rows(db) == {("resume", job.job_id)}
    assert len(home_files(settings)) == (1 if in_folder(settings) else 0)
    assert client.delete(f"/v1/jobs/{job.job_id}", headers=ADMIN).status_code == 204
    assert count(db, Job) == 0 and count(db, EpochMetric) == 0
    assert artifact_rows(db) == set() and home_files(settings) == set()


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.running])
def test_a_live_job_is_refused_cancel_it_first(
    client: TestClient, db: Database, settings: Settings, status: JobStatus
) -> None:
    job = finished_job(db, settings, status=status)
    with_resume_state(db, settings, job.job_id)
    before = snapshot(db, settings)
    response = client.delete(f"/v1/jobs/{job.job_id}", headers=ADMIN)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "job_not_ended"
    assert response.json()["detail"] == (
        f"job {job.job_id} is {status.value}: cancel it first (POST /v1/jobs/{job.job_id}/cancel), then delete it "
        "once it has ended"
    )
    assert snapshot(db, settings) == before  # nothing removed


@pytest.mark.parametrize("job_id", ["0" * 32, "not-an-id", "a%00b"])
def test_an_unknown_job_is_a_404(client: TestClient, job_id: str) -> None:
    response = client.delete(f"/v1/jobs/{job_id}", headers=ADMIN)
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"


def test_a_job_whose_model_an_alias_serves_is_refused_naming_the_aliases(
    client: TestClient, db: Database, settings: Settings
) -> None:
    job = finished_job(db, settings)
    for name in ("staging", "production"):
        registry.set_alias(db, name, str(job.model_id))
    before = snapshot(db, settings)
    response = client.delete(f"/v1/jobs/{job.job_id}", headers=ADMIN)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "job_model_in_use"
    assert "alias(es) production, staging" in response.json()["detail"]
    assert snapshot(db, settings) == before  # nothing removed
    assert count(db, Model) == 1 and len(artifact_rows(db)) == 2

    for name in ("staging", "production"):
        registry.delete_alias(db, name)
    assert client.delete(f"/v1/jobs/{job.job_id}", headers=ADMIN).status_code == 204


def test_only_the_owner_or_an_admin_deletes_a_job(client: TestClient, db: Database, settings: Settings) -> None:
    alice, alice_key = auth.create_key(db, "alice-notebook", ["train", "predict"])
    _, bob_key = auth.create_key(db, "bob-notebook", ["train", "predict"])
    _, admin_key = auth.create_key(db, "ops", ["admin"])
    _, predict_key = auth.create_key(db, "app", ["predict"])
    mine, theirs = (finished_job(db, settings, owner=alice.id) for _ in range(2))
    before = snapshot(db, settings)

    refused = client.delete(f"/v1/jobs/{mine.job_id}", headers={"Authorization": f"Bearer {bob_key}"})
    assert refused.status_code == 403 and refused.json()["code"] == "not_owner"
    assert refused.json()["detail"] == (
        f"job {mine.job_id!r} belongs to the API key 'alice-notebook' ({alice.id}): only that key or an admin key "
        "may delete it"
    )
    no_scope = client.delete(f"/v1/jobs/{mine.job_id}", headers={"Authorization": f"Bearer {predict_key}"})
    assert no_scope.status_code == 403 and no_scope.json()["code"] == "missing_scope"
    assert client.delete(f"/v1/jobs/{mine.job_id}").status_code == 401
    assert snapshot(db, settings) == before  # nothing removed

    assert client.delete(f"/v1/jobs/{mine.job_id}", headers={"Authorization": f"Bearer {alice_key}"}).status_code == 204
    assert (
        client.delete(f"/v1/jobs/{theirs.job_id}", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 204
    )
    assert count(db, Job) == 0 and artifact_rows(db) == set() and home_files(settings) == set()
    # Another key gets the 404 of an unknown job, not a 403 about it.
    gone = client.delete(f"/v1/jobs/{mine.job_id}", headers={"Authorization": f"Bearer {bob_key}"})
    assert gone.status_code == 404


def test_a_sweep_lists_the_jobs_it_has_left(client: TestClient, db: Database, settings: Settings) -> None:
    sweep = new_sweep(db)
    jobs = [finished_job(db, settings, sweep_id=sweep, minute=m, val_acc=0.5 + 0.1 * m) for m in range(3)]
    assert client.delete(f"/v1/jobs/{jobs[2].job_id}", headers=ADMIN).status_code == 204
    shown = client.get(f"/v1/sweeps/{sweep}", headers=ADMIN).json()
    assert [row["id"] for row in shown["jobs"]] == [jobs[1].job_id, jobs[0].job_id]  # best first, as before
    assert shown["counts"] == {"succeeded": 2}
    listed = client.get("/v1/jobs", params={"sweep_id": sweep}, headers=ADMIN).json()
    assert listed["count"] == 2


STUDY = {"base": {"hidden_layers": [8], "epochs": 2}, "space": {"lr": {"choices": [0.1, 0.2]}}, "sampler": "grid"}


def test_a_running_studys_trial_is_refused_and_an_ended_studys_trial_loses_its_job(
    client: TestClient, db: Database
) -> None:
    submitted = client.post("/v1/studies", json={**STUDY, "trials": 2, "max_concurrent": 2, "seed": 0}, headers=ADMIN)
    assert submitted.status_code == 202, submitted.text
    study_id = submitted.json()["id"]
    first, second = claim_all(db)
    run_curve(db, first, [0.5, 0.8])
    queue.advance_study(db, study_id)

    refused = client.delete(f"/v1/jobs/{first.job_id}", headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["code"] == "study_still_running"
    assert f"study {study_id}, which is still running" in refused.json()["detail"]
    assert count(db, Job, Job.id == first.job_id) == 1

    run_curve(db, second, [0.4, 0.6])
    queue.advance_study(db, study_id)
    assert client.get(f"/v1/studies/{study_id}", headers=ADMIN).json()["status"] == "completed"
    assert client.delete(f"/v1/jobs/{first.job_id}", headers=ADMIN).status_code == 204

    shown = client.get(f"/v1/studies/{study_id}", headers=ADMIN).json()
    deleted, _ = shown["trials"]
    assert deleted["job_id"] is None and deleted["status"] == "failed"
    assert deleted["error"] == f"its job {first.job_id} was deleted (DELETE /v1/jobs/{first.job_id})"
    assert deleted["params"] == {"lr": first.spec.lr}  # the trial's suggestion stays
    assert shown["counts"] == {"failed": 1, "succeeded": 1}
    assert shown["best"]["job_id"] == second.job_id  # the best of what is left
    assert count(db, StudyTrial) == 2


def test_a_cancelled_studys_trial_can_be_deleted(db: Database, settings: Settings) -> None:
    # A cancelled study asks for no more trials: any of its ended trials' jobs may go.
    study = new_study(db, StudyStatus.cancelled)
    job = finished_job(db, settings, study_id=study, status=JobStatus.cancelled)
    study_trial(db, study, 0, job.job_id)
    with_resume_state(db, settings, job.job_id)
    deleted = retention.delete_job(db, job.job_id, ArtifactStore.for_settings(settings))
    assert deleted.model_id is None and count(db, Job) == 0 and count(db, StudyTrial, StudyTrial.job_id.is_(None)) == 1
    assert [(a.kind.value, a.name) for a in deleted.artifacts] == [("resume", job.job_id)]
    assert artifact_rows(db) == set() and home_files(settings) == set()


# -- the client and the CLI, against a real server and worker ------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    with live_stack(tmp_path_factory.mktemp("delete-job"), synthetic_data_dir) as stack:
        yield stack


def test_the_client_and_fmnist_delete_job(live: Live) -> None:
    checkpoints = Path(live.stack.env["FMNIST_HOME"]) / "checkpoints"
    runner = CliRunner()
    environment = {"FMNIST_URL": live.url, "FMNIST_API_KEY": live.admin_key}
    with Client(live.url, api_key=live.admin_key) as service:
        trained = service.wait(service.submit(TINY).id, timeout=60)
        assert trained.status is JobStatus.succeeded and trained.model_id is not None
        assert (checkpoints / f"{trained.model_id}.safetensors").is_file()
        long = service.submit({**TINY, "epochs": 200, "seed": 2})
        with pytest.raises(Conflict) as refused:
            service.delete_job(long.id)
        assert refused.value.code == "job_not_ended" and "cancel it first" in str(refused.value)

        result = runner.invoke(fmnist, ["delete-job", long.id], env=environment)
        assert result.exit_code == 2 and "cancel it first" in result.output
        service.cancel_job(long.id)
        assert service.wait(long.id, timeout=60).status is JobStatus.cancelled
        service.delete_job(long.id)

        result = runner.invoke(fmnist, ["delete-job", trained.id], env=environment, catch_exceptions=False)
        assert result.exit_code == 0 and result.output == f"deleted job {trained.id}\n"
        with pytest.raises(NotFound):
            service.get_job(trained.id)
        with pytest.raises(NotFound):
            service.get_model(trained.model_id)
        assert runner.invoke(fmnist, ["delete-job", trained.id], env=environment).exit_code == 3
    assert not (checkpoints / f"{trained.model_id}.safetensors").exists()
