"""The retention policy (service/jobs/retention.py), run as ``fmnist gc`` and ``POST /v1/admin/gc``: exactly what
it removes from a real database and a real FMNIST_HOME, artifacts kept in the folder and in the database
(FMNIST_ARTIFACTS), what it keeps, and that a dry run removes nothing and reports what the run then removes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import delete, update
from typer.testing import CliRunner

from service import registry
from service.api import auth
from service.api.app import create_app
from service.cli import app as fmnist
from service.jobs import retention
from service.jobs.retention import RetentionPolicy, collect_garbage
from service.jobs.status import JobStatus, StudyStatus
from service.settings import Settings, get_settings
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.store.tables import Artifact, EpochMetric, Job, Model, Study
from tests.support.jobs import add_job
from tests.support.retention import (
    CHECKPOINT_BYTES,
    MODES,
    ONNX_BYTES,
    Finished,
    artifact_rows,
    count,
    finished_job,
    home_files,
    interrupted_resume_write,
    new_study,
    new_sweep,
    publish_resume,
    write_file,
)

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]

HOUR = 3600.0
CHECKPOINT, ONNX, RESUME = ArtifactKind.checkpoint, ArtifactKind.onnx, ArtifactKind.resume


@pytest.fixture(params=MODES)
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Each test that reaches the home runs twice: artifacts kept as files in it, and as rows of the database."""
    return settings.model_copy(update={"artifacts": request.param})


def in_folder(settings: Settings) -> bool:
    return settings.artifacts == "folder"


def gc(db: Database, settings: Settings, keep_best: int, keep_latest: int, dry_run: bool) -> retention.GarbageReport:
    policy = RetentionPolicy(keep_best=keep_best, keep_latest=keep_latest)
    return collect_garbage(db, ArtifactStore.for_settings(settings), policy, dry_run=dry_run)


def summary(report: retention.GarbageReport) -> dict[str, Any]:
    """Everything a report says but whether it was a dry run."""
    return {
        "models": sorted(model.id for model in report.models),
        "artifacts": report.artifacts,
        "model_files": report.model_files,
        "resume_job_ids": report.resume_job_ids,
        "resume_states": report.resume_states,
        "resume_files": report.resume_files,
        "orphan_files": report.orphan_files,
        "temporary_files": report.temporary_files,
        "bytes": report.bytes,
    }


def state(db: Database, settings: Settings) -> tuple[int, int, set[tuple[str, str]], set[str]]:
    """What a dry run must leave as it was: models, jobs, artifact records, files."""
    return count(db, Model), count(db, Job), artifact_rows(db), home_files(settings)


def records(report: retention.GarbageReport) -> list[tuple[str, str, int | None]]:
    return [(artifact.kind.value, artifact.name, artifact.token) for artifact in report.artifacts]


def files_in(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def model_ids(jobs: list[Finished]) -> list[str]:
    return sorted(str(job.model_id) for job in jobs)


def age(path: Path, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(path, (moment, moment))


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
    before = state(db, settings)
    models_before, jobs_before, rows_before, files_before = before
    assert len(rows_before) == 2 * models_before  # a checkpoint and an ONNX export each
    if in_folder(settings):
        assert len(files_before) == 2 * models_before
    else:
        assert files_before == set()  # the bytes are in the rows: nothing written to the home

    dry = gc(db, settings, keep_best=2, keep_latest=1, dry_run=True)
    assert dry.dry_run and sorted(model.id for model in dry.models) == expected
    assert records(dry) == [("checkpoint", m, None) for m in expected] + [("onnx", m, None) for m in expected]
    assert dry.bytes == 3 * (CHECKPOINT_BYTES + ONNX_BYTES)
    if in_folder(settings):
        assert dry.model_files == sorted(f"{m}.{ext}" for m in expected for ext in ("safetensors", "onnx"))
        assert sorted(str(a.file) for a in dry.artifacts) == dry.model_files
    else:
        assert dry.model_files == [] and all(artifact.in_database for artifact in dry.artifacts)
    assert (dry.resume_states, dry.resume_files, dry.orphan_files, dry.temporary_files) == (0, [], [], [])
    assert state(db, settings) == before  # nothing removed

    version = registry.current_version(db)
    real = gc(db, settings, keep_best=2, keep_latest=1, dry_run=False)
    assert summary(real) == summary(dry) and not real.dry_run
    assert count(db, Model) == models_before - 3
    assert count(db, Model, Model.id.in_(expected)) == 0
    assert artifact_rows(db) == rows_before - {(kind, m) for m in expected for kind in ("checkpoint", "onnx")}
    if in_folder(settings):
        gone = {f"checkpoints/{name}" for name in real.model_files}
        assert len(gone) == 6 and home_files(settings) == files_before - gone
    else:
        assert home_files(settings) == set()
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
    assert len(removed.artifacts) == 2 * len(surplus) and len(artifact_rows(db)) == 2 * count(db, Model)


def test_a_study_that_ends_is_trimmed_on_the_next_run(db: Database, settings: Settings) -> None:
    study = new_study(db, StudyStatus.running)
    jobs = [finished_job(db, settings, study_id=study, minute=m, val_acc=0.1 * (m + 1)) for m in range(3)]
    assert gc(db, settings, keep_best=1, keep_latest=0, dry_run=False).models == []
    new_study_status(db, study, StudyStatus.cancelled)
    removed = gc(db, settings, keep_best=1, keep_latest=0, dry_run=False)
    assert sorted(model.id for model in removed.models) == model_ids(jobs[:2])


def test_a_removed_models_files_go_even_without_a_record(db: Database, settings: Settings) -> None:
    # ONNX exports made before the records were kept (migration 0009) have none; nor has a file of a home that kept
    # its artifacts in the folder before it kept them in the database.
    sweep = new_sweep(db)
    jobs = [finished_job(db, settings, sweep_id=sweep, minute=m, val_acc=0.9 - 0.1 * m) for m in range(2)]
    surplus = str(jobs[1].model_id)
    with db.write() as session:
        session.execute(delete(Artifact).where(Artifact.kind == ONNX.value, Artifact.name == surplus))
    unrecorded = write_file(settings.checkpoint_dir / f"{surplus}.onnx", 30)
    before = state(db, settings)

    dry = gc(db, settings, keep_best=1, keep_latest=0, dry_run=True)
    assert [model.id for model in dry.models] == [surplus] and records(dry) == [("checkpoint", surplus, None)]
    assert dry.model_files == sorted([unrecorded.name, *([f"{surplus}.safetensors"] if in_folder(settings) else [])])
    assert dry.bytes == CHECKPOINT_BYTES + 30 and dry.orphan_files == []
    assert state(db, settings) == before

    real = gc(db, settings, keep_best=1, keep_latest=0, dry_run=False)
    assert summary(real) == summary(dry)
    assert not unrecorded.exists() and {name for _, name in artifact_rows(db)} == {str(jobs[0].model_id)}


def new_study_status(db: Database, study_id: str, status: StudyStatus) -> None:
    with db.write() as session:
        session.execute(update(Study).where(Study.id == study_id).values(status=status))


# -- resume states, orphans, temporary files -------------------------------------------------------------------


def test_resume_states_of_ended_and_deleted_jobs_go_and_those_of_live_jobs_stay(
    db: Database, settings: Settings
) -> None:
    store = ArtifactStore.for_settings(settings)
    ended = add_job(db, status=JobStatus.succeeded)
    failed = add_job(db, status=JobStatus.failed)
    running = add_job(db, status=JobStatus.running)
    queued = add_job(db, status=JobStatus.queued)  # requeued after a lost lease: it resumes from its state
    deleted = "d" * 32  # its row is gone
    tokens = {ended: 3, failed: 1, running: 4, queued: 1, deleted: 1}
    publish_resume(db, settings, ended, 2, size=12)  # replaced by the next claim's
    names = {job_id: publish_resume(db, settings, job_id, token) for job_id, token in tokens.items()}
    going = sorted([ended, failed, deleted])
    before = state(db, settings)
    assert len(before[2]) == 5
    assert len(before[3]) == (5 if in_folder(settings) else 0)  # one file a job: the replaced state's went

    dry = gc(db, settings, 3, 3, dry_run=True)
    assert dry.resume_job_ids == going and dry.resume_states == 3
    assert records(dry) == [("resume", job_id, tokens[job_id]) for job_id in going]
    expected_files = sorted(names[job_id] for job_id in going)
    assert dry.resume_files == (expected_files if in_folder(settings) else [])
    assert dry.bytes == 3 * 10 and dry.models == [] and dry.orphan_files == []
    assert state(db, settings) == before  # nothing removed

    real = gc(db, settings, 3, 3, dry_run=False)
    assert summary(real) == summary(dry)
    assert artifact_rows(db) == {("resume", running), ("resume", queued)}
    if in_folder(settings):
        assert files_in(settings.resume_dir) == {names[running], names[queued]}
    else:
        assert home_files(settings) == set()
    for job_id in (running, queued):  # what stays is still the job's state, for its next claim
        assert store.resume_state(db, job_id, below_token=tokens[job_id] + 1) == b"r" * 10
    assert summary(gc(db, settings, 3, 3, dry_run=False)) == summary(retention.GarbageReport(dry_run=False))


def test_resume_files_that_no_record_names_go_for_ended_and_deleted_jobs(db: Database, settings: Settings) -> None:
    # Files an earlier release wrote (<job>.safetensors, <job>.<token>.safetensors) have no record; nor has a state
    # whose publishing transaction never committed (a crash), nor a file of a home that kept its artifacts in the
    # folder before it kept them in the database.
    ended = add_job(db, status=JobStatus.cancelled)
    running = add_job(db, status=JobStatus.running)
    deleted = "e" * 32
    published = publish_resume(db, settings, ended, 3, size=20)
    recorded = [published] if in_folder(settings) else []
    folder = settings.resume_dir
    digest = "0123456789abcdef"
    strays = [
        f"{ended}.safetensors",
        f"{ended}.000000000002.safetensors",
        f"{ended}.000000000004.{digest}.safetensors",
        f"{deleted}.000000000001.safetensors",
    ]
    kept = [
        f"{running}.safetensors",
        f"{running}.000000000001.{digest}.safetensors",  # a live job's: its publishing may be under way
        "notes.safetensors",
        f"{ended}.3.safetensors",  # not a resume state's name
    ]
    for name in (*strays, *kept):
        write_file(folder / name, 10)
    # Writes a killed worker left (temporary files): an ended or deleted job's go at once (counted once, however
    # old), a live job's stays.
    interrupted = [
        interrupted_resume_write(settings, ended).name,
        interrupted_resume_write(settings, deleted, age_seconds=2 * HOUR).name,
    ]
    kept.append(interrupted_resume_write(settings, running).name)
    before = state(db, settings)

    dry = gc(db, settings, 3, 3, dry_run=True)
    assert dry.resume_job_ids == sorted([ended, deleted])
    assert dry.resume_states == 1 + len(strays) and records(dry) == [("resume", ended, 3)]
    assert dry.resume_files == sorted(strays + recorded)
    assert dry.temporary_files == sorted(interrupted)
    assert dry.bytes == 20 + 10 * len(strays) + 7 * len(interrupted)
    assert state(db, settings) == before

    real = gc(db, settings, 3, 3, dry_run=False)
    assert summary(real) == summary(dry)
    assert files_in(folder) == set(kept) and artifact_rows(db) == set()


def test_orphaned_checkpoints_go_once_an_hour_old(db: Database, settings: Settings) -> None:
    folder = settings.checkpoint_dir
    registered = finished_job(db, settings)
    for path in registered.model_files(settings):
        if path.exists():
            age(path, 2 * HOUR)  # old, but its model is registered
    # Files no record names: a crash between writing and registering (or from before the records were kept).
    old = ["1" * 32 + ".safetensors", "1" * 32 + ".onnx", "2" * 32 + ".onnx"]
    for name in old:
        write_file(folder / name, 7, age_seconds=HOUR + 60)
    fresh = write_file(folder / ("3" * 32 + ".safetensors"), 7, age_seconds=60)  # a registration may be under way
    other = write_file(folder / "README.txt", 7, age_seconds=2 * HOUR)
    # A record whose model is gone goes at once, whatever its age.
    unowned = "4" * 32
    with db.write() as session:
        ArtifactStore.for_settings(settings).publish(session, CHECKPOINT, unowned, b"u" * 9)
    before = state(db, settings)

    dry = gc(db, settings, 3, 3, dry_run=True)
    assert records(dry) == [("checkpoint", unowned, None)] and dry.models == []
    assert dry.orphan_files == sorted(old + ([f"{unowned}.safetensors"] if in_folder(settings) else []))
    assert dry.bytes == 7 * 3 + 9
    assert state(db, settings) == before

    real = gc(db, settings, 3, 3, dry_run=False)
    assert summary(real) == summary(dry)
    kept = {fresh.name, other.name} | (
        {p.name for p in registered.model_files(settings)} if in_folder(settings) else set()
    )
    assert files_in(folder) == kept
    assert artifact_rows(db) == {("checkpoint", str(registered.model_id)), ("onnx", str(registered.model_id))}


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
    assert home_files(settings) == set()


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
    assert body["artifacts"]["count"] == 4 and body["bytes"] == 2 * (CHECKPOINT_BYTES + ONNX_BYTES)
    assert count(db, Model) == 3 and len(artifact_rows(db)) == 6

    real = client.post("/v1/admin/gc", params={"keep_latest": 1}, headers=admin)  # the query overrides a default
    assert real.status_code == 200, real.text
    body = real.json()
    surplus = str(jobs[1].model_id)
    assert body["models"]["data"] == [{"id": surplus, "job_id": jobs[1].job_id, "sweep_id": sweep, "study_id": None}]
    files = [f"{surplus}.onnx", f"{surplus}.safetensors"] if in_folder(settings) else []
    assert body["models"]["files"] == files
    assert body["artifacts"] == {
        "count": 2,
        "data": [
            {
                "kind": kind,
                "name": surplus,
                "token": None,
                "size_bytes": size,
                "file": f"{surplus}.{ext}" if in_folder(settings) else None,
            }
            for kind, size, ext in (("checkpoint", CHECKPOINT_BYTES, "safetensors"), ("onnx", ONNX_BYTES, "onnx"))
        ],
    }
    assert body["resume_states"] == {"count": 0, "job_ids": [], "files": []}
    assert count(db, Model) == 2 and body["bytes"] == CHECKPOINT_BYTES + ONNX_BYTES
    assert (surplus not in {name for _, name in artifact_rows(db)}) and len(artifact_rows(db)) == 4


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
    """`fmnist gc` reads the environment: this test's FMNIST_HOME and FMNIST_ARTIFACTS (and database, set by the
    settings fixture)."""
    monkeypatch.setenv("FMNIST_HOME", str(settings.home))
    monkeypatch.setenv("FMNIST_ARTIFACTS", settings.artifacts)
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
    assert "; 4 artifact records: 300 bytes" in dry.output.splitlines()[0]
    where = "file {}.safetensors" if in_folder(settings) else "in the database"
    assert f"  checkpoint {jobs[1].model_id} ({where.format(jobs[1].model_id)}, 100 bytes)" in dry.output
    assert count(db, Model) == 4 and len(artifact_rows(db)) == 8
    real = runner.invoke(fmnist, ["gc", "--keep-best", "1", "--keep-latest", "1", "--json"], catch_exceptions=False)
    assert real.exit_code == 0, real.output
    body = json.loads(real.output)
    assert body["dry_run"] is False and sorted(m["id"] for m in body["models"]["data"]) == model_ids(jobs[1:3])
    assert body["artifacts"]["count"] == 4 and body["bytes"] == 300
    assert count(db, Model) == 2 and len(artifact_rows(db)) == 4
    assert len(home_files(settings)) == (4 if in_folder(settings) else 0)


def test_fmnist_gc_refuses_a_policy_without_a_best_model(local_settings: None) -> None:
    result = CliRunner().invoke(fmnist, ["gc", "--keep-best", "0"])
    assert result.exit_code == 2 and "--keep-best" in result.output


def test_a_lone_jobs_model_is_never_collected(db: Database, settings: Settings) -> None:
    lone = [finished_job(db, settings, minute=m) for m in range(5)]
    assert gc(db, settings, keep_best=1, keep_latest=0, dry_run=False).models == []
    assert count(db, Model) == len(lone)
