"""The retention policy (service/jobs/retention.py), run as ``fmnist gc`` and ``POST /v1/admin/gc``: exactly what
it removes from a real database and a real FMNIST_HOME, what it keeps, and that a dry run removes nothing and
reports what the run then removes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import update
from typer.testing import CliRunner

from service import registry
from service.api import auth
from service.api.app import create_app
from service.cli import app as fmnist
from service.jobs import retention
from service.jobs.retention import RetentionPolicy, collect_garbage
from service.jobs.status import JobStatus, StudyStatus
from service.settings import Settings, get_settings
from service.store.db import Database
from service.store.tables import EpochMetric, Job, Model, Study
from service.worker import resume
from tests.support.jobs import add_job
from tests.support.retention import Finished, count, finished_job, new_study, new_sweep, write_file

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]

HOUR = 3600.0


def gc(db: Database, settings: Settings, keep_best: int, keep_latest: int, dry_run: bool) -> retention.GarbageReport:
    policy = RetentionPolicy(keep_best=keep_best, keep_latest=keep_latest)
    return collect_garbage(db, settings.checkpoint_dir, settings.resume_dir, policy, dry_run=dry_run)


def summary(report: retention.GarbageReport) -> dict[str, Any]:
    """Everything a report says but whether it was a dry run."""
    return {
        "models": sorted(model.id for model in report.models),
        "resume_job_ids": report.resume_job_ids,
        "resume_files": report.resume_files,
        "orphan_files": report.orphan_files,
        "temporary_files": report.temporary_files,
        "bytes": report.bytes,
    }


def files_in(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def model_ids(jobs: list[Finished]) -> list[str]:
    return sorted(str(job.model_id) for job in jobs)


# -- models of sweeps and studies ------------------------------------------------------------------------------


@pytest.fixture
def searches(db: Database, settings: Settings) -> dict[str, Any]:
    """A sweep of six models (one aliased), a completed study of four, a running study of four, lone jobs."""
    sweep = new_sweep(db)
    # (minute created, val_acc, test_acc): validation ranks first; a model without it ranks by test accuracy after.
    sweep_jobs = [
        finished_job(db, settings, sweep_id=sweep, minute=minute, val_acc=val, test_acc=test)
        for minute, val, test in [
            (0, 0.90, 0.1),
            (1, 0.70, 0.9),
            (2, 0.85, 0.5),
            (3, None, 0.99),
            (4, 0.60, 0.6),
            (5, 0.50, 0.5),
        ]
    ]
    # Failed and cancelled jobs of the sweep have no model: nothing to count.
    finished_job(db, settings, sweep_id=sweep, status=JobStatus.failed)
    registry.set_alias(db, "staging", str(sweep_jobs[4].model_id))
    done = new_study(db, StudyStatus.completed)
    done_jobs = [
        finished_job(db, settings, study_id=done, minute=minute, val_acc=val)
        for minute, val in [(0, 0.5), (1, 0.9), (2, 0.7), (3, 0.6)]
    ]
    running = new_study(db, StudyStatus.running)
    running_jobs = [finished_job(db, settings, study_id=running, minute=m, val_acc=0.1 * m) for m in range(4)]
    lone = [finished_job(db, settings, minute=m, val_acc=0.1) for m in range(3)]
    return {"sweep": sweep_jobs, "done": done_jobs, "running": running_jobs, "lone": lone, "ids": (sweep, done)}


def test_each_sweep_and_ended_study_keeps_its_best_and_newest_and_aliased_models(
    db: Database, settings: Settings, searches: dict[str, Any]
) -> None:
    sweep, done = searches["sweep"], searches["done"]
    # Sweep, keep_best=2, keep_latest=1: the best are 0 (0.90) and 2 (0.85), the newest 5; 4 is aliased.
    # Completed study: the best are 1 (0.9) and 2 (0.7), the newest 3. Running study and lone jobs: all kept.
    expected = model_ids([sweep[1], sweep[3], done[0]])
    files_before = files_in(settings.checkpoint_dir)
    models_before, jobs_before = count(db, Model), count(db, Job)

    dry = gc(db, settings, keep_best=2, keep_latest=1, dry_run=True)
    assert dry.dry_run and sorted(model.id for model in dry.models) == expected
    assert dry.bytes == 3 * (100 + 50)
    assert (count(db, Model), files_in(settings.checkpoint_dir)) == (models_before, files_before)  # nothing removed

    version = registry.current_version(db)
    real = gc(db, settings, keep_best=2, keep_latest=1, dry_run=False)
    assert summary(real) == summary(dry) and not real.dry_run
    assert count(db, Model) == models_before - 3
    assert count(db, Model, Model.id.in_(expected)) == 0
    gone = {path.name for job in (sweep[1], sweep[3], done[0]) for path in job.model_files(settings)}
    assert files_in(settings.checkpoint_dir) == files_before - gone
    assert registry.current_version(db) > version  # servers drop their cached resolutions
    # The jobs and their metrics stay; the sweep and the study still list them.
    assert count(db, Job) == jobs_before and count(db, EpochMetric) == jobs_before
    by_id = {model.id: model for model in real.models}
    sweep_id, study_id = searches["ids"]
    assert (by_id[str(sweep[1].model_id)].sweep_id, by_id[str(sweep[1].model_id)].study_id) == (sweep_id, None)
    assert (by_id[str(done[0].model_id)].sweep_id, by_id[str(done[0].model_id)].study_id) == (None, study_id)
    assert by_id[str(done[0].model_id)].job_id == done[0].job_id
    assert registry.get_model(db, "staging").id == sweep[4].model_id

    again = gc(db, settings, keep_best=2, keep_latest=1, dry_run=False)
    assert summary(again) == summary(retention.GarbageReport(dry_run=False))  # nothing left to remove


def test_keep_latest_zero_keeps_only_the_best_and_a_larger_policy_keeps_all(
    db: Database, settings: Settings, searches: dict[str, Any]
) -> None:
    assert gc(db, settings, keep_best=10, keep_latest=0, dry_run=False).models == []
    removed = gc(db, settings, keep_best=1, keep_latest=0, dry_run=False)
    sweep, done = searches["sweep"], searches["done"]
    kept = {sweep[0].model_id, sweep[4].model_id, done[1].model_id}  # the two best, and the aliased one
    surplus = [job for job in (*sweep, *done) if job.model_id not in kept]
    assert sorted(model.id for model in removed.models) == model_ids(surplus)
    assert count(db, Model) == 6 + 4 + 4 + 3 - len(surplus)


def test_a_study_that_ends_is_trimmed_on_the_next_run(db: Database, settings: Settings) -> None:
    study = new_study(db, StudyStatus.running)
    jobs = [finished_job(db, settings, study_id=study, minute=m, val_acc=0.1 * (m + 1)) for m in range(3)]
    assert gc(db, settings, keep_best=1, keep_latest=0, dry_run=False).models == []
    new_study_status(db, study, StudyStatus.cancelled)
    removed = gc(db, settings, keep_best=1, keep_latest=0, dry_run=False)
    assert sorted(model.id for model in removed.models) == model_ids(jobs[:2])


def new_study_status(db: Database, study_id: str, status: StudyStatus) -> None:
    with db.write() as session:
        session.execute(update(Study).where(Study.id == study_id).values(status=status))


# -- files ---------------------------------------------------------------------------------------------------


def test_resume_states_of_ended_and_deleted_jobs_go_and_those_of_live_jobs_stay(
    db: Database, settings: Settings
) -> None:
    folder = settings.resume_dir
    ended = add_job(db, status=JobStatus.succeeded)
    failed = add_job(db, status=JobStatus.failed)
    running = add_job(db, status=JobStatus.running)
    queued = add_job(db, status=JobStatus.queued)  # requeued after a lost lease: it resumes from its state
    deleted = "d" * 32  # its row is gone
    names = {
        ended: [f"{ended}.000000000002.safetensors", f"{ended}.000000000003.safetensors", f"{ended}.safetensors"],
        failed: [f"{failed}.000000000001.safetensors"],
        running: [f"{running}.000000000004.safetensors"],
        queued: [f"{queued}.000000000001.safetensors"],
        deleted: [f"{deleted}.000000000001.safetensors"],
    }
    for files in names.values():
        for name in files:
            write_file(folder / name, 10)
    write_file(folder / "notes.safetensors", 10)  # not a resume state's name: never touched
    expected_files = sorted(names[ended] + names[failed] + names[deleted])

    dry = gc(db, settings, 3, 3, dry_run=True)
    assert dry.resume_job_ids == sorted([ended, failed, deleted]) and dry.resume_files == expected_files
    assert dry.bytes == 10 * len(expected_files)
    assert len(files_in(folder)) == 8
    real = gc(db, settings, 3, 3, dry_run=False)
    assert summary(real) == summary(dry)
    assert files_in(folder) == {*names[running], *names[queued], "notes.safetensors"}


def test_the_resume_file_names_are_the_workers(settings: Settings) -> None:
    job_id = "a" * 32
    path = resume.resume_path(settings.resume_dir, job_id)
    for token in (0, 1, 12):
        write_file(resume.fenced_path(path, token) if token else path)
    write_file(settings.resume_dir / f"{'a' * 31}b.000000000001.safetensors")  # another job's
    assert retention.job_resume_files(settings.resume_dir, job_id) == sorted(p for _, p in resume.resume_files(path))
    assert len(retention.job_resume_files(settings.resume_dir, job_id)) == 3


def test_orphaned_checkpoints_go_once_an_hour_old(db: Database, settings: Settings) -> None:
    folder = settings.checkpoint_dir
    registered = finished_job(db, settings)
    for path in registered.model_files(settings):
        write_file(path, 100, age_seconds=2 * HOUR)  # old, but its model is registered
    old = ["1" * 32 + ".safetensors", "1" * 32 + ".onnx", "2" * 32 + ".onnx"]
    for name in old:
        write_file(folder / name, 7, age_seconds=HOUR + 60)
    fresh = write_file(folder / ("3" * 32 + ".safetensors"), 7, age_seconds=60)  # a registration may be under way
    other = write_file(folder / "README.txt", 7, age_seconds=2 * HOUR)
    dry = gc(db, settings, 3, 3, dry_run=True)
    assert dry.orphan_files == sorted(old) and dry.bytes == 7 * 3 and dry.models == []
    real = gc(db, settings, 3, 3, dry_run=False)
    assert summary(real) == summary(dry)
    assert files_in(folder) == {*(p.name for p in registered.model_files(settings)), fresh.name, other.name}


def test_stale_temporary_files_go_in_both_folders(db: Database, settings: Settings) -> None:
    old = [
        write_file(settings.checkpoint_dir / ".a.safetensors.x1.tmp", 5, age_seconds=HOUR + 60),
        write_file(settings.resume_dir / ".b.safetensors.x2.tmp", 5, age_seconds=2 * HOUR),
    ]
    fresh = write_file(settings.checkpoint_dir / ".c.onnx.x3.tmp", 5, age_seconds=10)
    dry = gc(db, settings, 3, 3, dry_run=True)
    assert sorted(dry.temporary_files) == sorted(path.name for path in old) and dry.bytes == 10
    assert all(path.exists() for path in old)
    real = gc(db, settings, 3, 3, dry_run=False)
    assert summary(real) == summary(dry)
    assert not any(path.exists() for path in old) and fresh.exists()


def test_an_empty_home_has_nothing_to_remove(db: Database, settings: Settings) -> None:
    report = gc(db, settings, 3, 3, dry_run=False)
    assert summary(report) == summary(retention.GarbageReport(dry_run=False))


# -- the policy's bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("keep_best", "keep_latest"), [(0, 3), (3, -1)])
def test_a_policy_always_keeps_the_best_model(keep_best: int, keep_latest: int) -> None:
    with pytest.raises(ValueError, match="keep_best must be at least 1"):
        RetentionPolicy(keep_best=keep_best, keep_latest=keep_latest)


@pytest.mark.parametrize(("field", "value"), [("gc_keep_best", 0), ("gc_keep_latest", -1), ("gc_keep_best", "many")])
def test_settings_refuse_a_policy_that_keeps_no_best_model(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({field: value})


def test_the_settings_defaults_keep_three_and_three() -> None:
    defaults = Settings()
    assert (defaults.gc_keep_best, defaults.gc_keep_latest) == (3, 3)


# -- POST /v1/admin/gc and fmnist gc ---------------------------------------------------------------------------

ADMIN_KEY = "retention-tests-admin-key"


@pytest.fixture
def client(settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    keyed = settings.model_copy(update={"api_keys": SecretStr(ADMIN_KEY), "gc_keep_best": 1, "gc_keep_latest": 0})
    with TestClient(create_app(keyed)) as test_client:
        yield test_client


def test_the_admin_route_runs_the_policy_dry_then_for_real(
    client: TestClient, db: Database, settings: Settings
) -> None:
    sweep = new_sweep(db)
    jobs = [finished_job(db, settings, sweep_id=sweep, minute=m, val_acc=0.7 - 0.1 * m) for m in range(3)]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    dry = client.post("/v1/admin/gc", params={"dry_run": "true"}, headers=admin)
    assert dry.status_code == 200, dry.text
    body = dry.json()
    assert body["dry_run"] is True and (body["keep_best"], body["keep_latest"]) == (1, 0)  # the settings' defaults
    assert body["models"]["count"] == 2
    assert sorted(m["id"] for m in body["models"]["data"]) == model_ids(jobs[1:])
    assert {m["sweep_id"] for m in body["models"]["data"]} == {sweep}
    assert count(db, Model) == 3

    real = client.post("/v1/admin/gc", params={"keep_latest": 1}, headers=admin)  # the query overrides a default
    assert real.status_code == 200, real.text
    assert real.json()["models"]["data"] == [
        {"id": jobs[1].model_id, "job_id": jobs[1].job_id, "sweep_id": sweep, "study_id": None}
    ]
    assert count(db, Model) == 2 and real.json()["bytes"] == 150


@pytest.mark.parametrize(
    ("params", "field"),
    [({"keep_best": 0}, "keep_best"), ({"keep_latest": -1}, "keep_latest"), ({"dry_run": "maybe"}, "dry_run")],
)
def test_the_admin_route_refuses_a_bad_parameter(client: TestClient, params: dict[str, Any], field: str) -> None:
    response = client.post("/v1/admin/gc", params=params, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", field]


def test_the_admin_route_needs_the_admin_scope(client: TestClient, db: Database, settings: Settings) -> None:
    sweep = new_sweep(db)
    for minute in range(2):
        finished_job(db, settings, sweep_id=sweep, minute=minute)
    _, train_key = auth.create_key(db, "trainer", ["train", "predict"])
    refused = client.post("/v1/admin/gc", headers={"Authorization": f"Bearer {train_key}"})
    assert refused.status_code == 403 and refused.json()["code"] == "missing_scope"
    assert client.post("/v1/admin/gc").status_code == 401
    assert count(db, Model) == 2


@pytest.fixture
def local_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`fmnist gc` reads the environment: this test's FMNIST_HOME (and database, set by the settings fixture)."""
    monkeypatch.setenv("FMNIST_HOME", str(settings.home))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_fmnist_gc_dry_run_then_run(db: Database, settings: Settings, local_settings: None) -> None:
    sweep = new_sweep(db)
    jobs = [finished_job(db, settings, sweep_id=sweep, minute=m, val_acc=0.9 - 0.1 * m) for m in range(4)]
    runner = CliRunner()
    dry = runner.invoke(fmnist, ["gc", "--dry-run", "--keep-best", "1", "--keep-latest", "1"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would remove 2 models (keeping the best 1 and the newest 1")
    assert f"model {jobs[1].model_id} (job {jobs[1].job_id}, sweep {sweep})" in dry.output
    assert count(db, Model) == 4
    real = runner.invoke(fmnist, ["gc", "--keep-best", "1", "--keep-latest", "1", "--json"], catch_exceptions=False)
    assert real.exit_code == 0, real.output
    body = json.loads(real.output)
    assert body["dry_run"] is False and sorted(m["id"] for m in body["models"]["data"]) == model_ids(jobs[1:3])
    assert count(db, Model) == 2


def test_fmnist_gc_refuses_a_policy_without_a_best_model(local_settings: None) -> None:
    result = CliRunner().invoke(fmnist, ["gc", "--keep-best", "0"])
    assert result.exit_code == 2 and "--keep-best" in result.output


def test_a_lone_jobs_model_is_never_collected(db: Database, settings: Settings) -> None:
    lone = [finished_job(db, settings, minute=m) for m in range(5)]
    assert gc(db, settings, keep_best=1, keep_latest=0, dry_run=False).models == []
    assert count(db, Model) == len(lone)
