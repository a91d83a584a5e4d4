"""A study through real processes: its worker killed with SIGKILL mid-trial and its API killed and restarted
mid-study; the study ends with every trial asked once, run once to its end, and none lost."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.store.db import Database
from service.store.tables import Job, StudyTrial
from tests.support.fleet import DEADLINE, Fleet, wait_for
from tests.support.servers import free_port, wait_ready

pytestmark = [pytest.mark.db, pytest.mark.faults, pytest.mark.timeout(300)]

# About a second per epoch on one CPU thread: a kill lands inside a trial.
BASE = {"hidden_layers": [1024, 1024], "batch_size": 4, "epochs": 3}
TRIALS = 6


def start_api(fleet: Fleet, name: str) -> str:
    port = free_port()
    process = fleet.start(name, "serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client, process)
    return url


def study_rows(db: Database, study_id: str) -> tuple[list[StudyTrial], list[Job]]:
    with db.read() as session:
        trials = list(session.scalars(select(StudyTrial).where(StudyTrial.study_id == study_id)))
        jobs = list(session.scalars(select(Job).where(Job.study_id == study_id)))
    return trials, jobs


def test_a_study_survives_a_killed_worker_and_a_restarted_api(fleet: Fleet, db: Database) -> None:
    fleet.env["FMNIST_LEASE_SECONDS"] = "2"
    url = start_api(fleet, "api")
    body: dict[str, Any] = {
        "base": BASE,
        "space": {"lr": {"low": 0.01, "high": 0.1, "log": True}},
        "sampler": "random",
        "pruner": {"type": "median", "n_startup_trials": 2},
        "trials": TRIALS,
        "max_concurrent": 2,
        "seed": 5,
    }
    with httpx.Client(base_url=url, timeout=30) as client:
        study = client.post("/v1/studies", json=body).json()
    study_id = study["id"]
    fleet.start_worker()
    fleet.start_worker()  # a standby: it reaps the killed worker's lease and runs on

    def a_trial_mid_run() -> Job | None:
        _trials, jobs = study_rows(db, study_id)
        return next((job for job in jobs if job.status is JobStatus.running and job.epochs_done >= 1), None)

    job = wait_for("a trial past its first epoch", a_trial_mid_run, fleet)
    fleet.kill(fleet.worker_named(job.worker_id))
    killed_job = job.id

    # The API killed and restarted while trials run: the study is all in the database.
    fleet.kill("api")
    url = start_api(fleet, "api-restarted")
    fleet.start_worker()

    def done() -> dict[str, Any] | None:
        with httpx.Client(base_url=url, timeout=30) as client:
            answer = client.get(f"/v1/studies/{study_id}").json()
        return answer if answer["status"] != "running" else None

    final = wait_for("the study to end", done, fleet, timeout=DEADLINE * 2)
    assert final["status"] == "completed", fleet.logs()
    assert [trial["number"] for trial in final["trials"]] == list(range(TRIALS))
    assert len({trial["job_id"] for trial in final["trials"]}) == TRIALS
    assert all(trial["status"] in ("succeeded", "pruned") for trial in final["trials"]), final["trials"]
    trials, jobs = study_rows(db, study_id)
    assert len(trials) == len(jobs) == TRIALS  # no job without its trial, none asked twice
    resumed = get_job(db, killed_job)
    assert resumed.attempt == 2 and resumed.status in (JobStatus.succeeded, JobStatus.pruned), resumed.error
    assert final["best"] is not None and final["best"]["model_id"]
