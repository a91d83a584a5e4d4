"""Fault injection with real processes: workers killed, raced and frozen, the API killed mid-submission.

Every test starts real ``fmnist worker`` / ``fmnist serve`` processes on one FMNIST_HOME and reads the
outcome from the database. Waits poll with deadlines; the only fixed sleeps place a kill inside an epoch.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from models.spec import TrainingSpec
from service.jobs import queue
from service.jobs.queries import get_job, get_metrics
from service.jobs.status import JobStatus
from service.jobs.wakeup import QueueSignal
from service.store.db import Database
from service.store.tables import Job, Model
from tests.support.artifacts import MODES, artifact_files, in_mode, resume_record
from tests.support.fleet import Fleet, freeze, wait_for
from tests.support.servers import free_port, wait_ready

# Each takes 10-50 s on two quiet cores; the timeout leaves room for a machine busy with other work.
pytestmark = [pytest.mark.db, pytest.mark.faults, pytest.mark.timeout(300)]


# ~0.5 s per epoch of the synthetic data on one CPU thread: long enough to land a kill inside one.
SLOW_EPOCHS = TrainingSpec(hidden_layers=[1024, 1024], batch_size=4)
# The claim line the worker logs (Worker.run_jobs): "... [pid] job_id=… attempt=N job <id>: attempt N, spec".
CLAIM_LINE = re.compile(r"\[(\d+)\][^\n]*? job ([0-9a-f]{32}): attempt (\d+), spec")


def started(fleet: Fleet, name: str) -> bool:
    """Whether the worker has loaded everything and looks at the queue."""
    return " on cpu (burst=False)" in fleet.log(name)


def ended(db: Database, job_id: str) -> Job | None:
    job = get_job(db, job_id)
    return job if job.status.is_terminal else None


def epochs_recorded(db: Database, job_id: str) -> list[int]:
    return [row.epoch for row in get_metrics(db, job_id)[1]]


def epoch_seconds(db: Database, job_id: str) -> float:
    """How long the job's last recorded epoch took."""
    return get_metrics(db, job_id)[1][-1].seconds


def models_of(db: Database, job_id: str) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(Model).where(Model.job_id == job_id)) or 0


def keep_artifacts(fleet: Fleet, mode: str) -> None:
    """Runs the fleet with FMNIST_ARTIFACTS=``mode``."""
    fleet.env["FMNIST_ARTIFACTS"] = mode
    fleet.settings = in_mode(fleet.settings, mode)


def expected_files(fleet: Fleet, *model_ids: str | None) -> list[Path]:
    """The files the home should hold once these models' jobs ended: their checkpoints in the folder, nothing
    (no resume state, no temporary file) otherwise; nothing at all when the bytes are in the database."""
    if fleet.settings.artifacts == "database":
        return []
    return sorted(fleet.settings.checkpoint_dir / f"{model_id}.safetensors" for model_id in model_ids if model_id)


# -- kill -9 in a loop ----------------------------------------------------------------------------------
KILLS = 10
# Each attempt trains one epoch and part of the next before its kill: 24 epochs outlast ten kills.
LONG_JOB = SLOW_EPOCHS.model_copy(update={"epochs": 24, "seed": 7})
# Workers started and waiting beside the one training: a start (imports) takes longer than a kill cycle
# (lease expiry, an epoch and a half), so each replacement gets two cycles to be ready.
STANDBYS = 2


@pytest.mark.parametrize("mode", MODES)
def test_a_job_killed_mid_epoch_ten_times_resumes_each_time_and_succeeds(fleet: Fleet, db: Database, mode: str) -> None:
    keep_artifacts(fleet, mode)
    fleet.env["FMNIST_LEASE_SECONDS"] = "2"
    job_id = queue.enqueue_job(db, LONG_JOB, max_attempts=KILLS + 5).id
    # One worker trains; the standbys wait to reap its lease when it dies. Each kill starts a replacement.
    for _ in range(1 + STANDBYS):
        fleet.start_worker()
    killed_at: list[int] = []  # epochs recorded when each kill landed
    last_attempt = 0
    for kill in range(KILLS):

        def claimed_again(after: int = last_attempt) -> Job | None:
            job = get_job(db, job_id)
            return job if job.status is JobStatus.running and job.attempt > after else None

        claim = wait_for(f"a claim after attempt {last_attempt}", claimed_again, fleet)
        assert claim.attempt == last_attempt + 1, "an attempt was spent without a kill"

        def trained_an_epoch(attempt: int = claim.attempt, before: int = claim.epochs_done) -> Job | None:
            job = get_job(db, job_id)
            assert job.attempt == attempt and job.status is JobStatus.running, (job.status, job.error)
            return job if job.epochs_done > before else None

        job = wait_for(f"an epoch of attempt {claim.attempt}", trained_an_epoch, fleet)
        assert job.provenance is not None
        if killed_at:
            assert job.provenance["resumed_from_epoch"] >= killed_at[-1], "the attempt lost the progress before it"
        # Into the next epoch, at 10% of it for the first kill up to 90% for the last.
        time.sleep(epoch_seconds(db, job_id) * (0.1 + 0.8 * kill / (KILLS - 1)))
        fleet.kill(fleet.worker_named(job.worker_id))
        last_attempt = claim.attempt
        killed_at.append(get_job(db, job_id).epochs_done)
        fleet.start_worker()

    job = wait_for("the job to end", lambda: ended(db, job_id), fleet)
    assert job.status is JobStatus.succeeded, (job.error, fleet.logs())
    assert job.attempt == KILLS + 1
    assert killed_at == sorted(killed_at) and killed_at[-1] < LONG_JOB.epochs, killed_at
    assert job.provenance is not None and job.provenance["resumed_from_epoch"] >= killed_at[-1] > 0
    assert epochs_recorded(db, job_id) == list(range(1, LONG_JOB.epochs + 1)), "each epoch recorded once"
    assert models_of(db, job_id) == 1
    assert resume_record(fleet.settings, db, job_id) is None
    assert artifact_files(fleet.settings.home) == expected_files(fleet, job.model_id)


# -- the trainer process --------------------------------------------------------------------------------
def test_a_killed_workers_trainer_process_stops_too(fleet: Fleet, db: Database) -> None:
    fleet.env["FMNIST_LEASE_SECONDS"] = "2"
    job_id = queue.enqueue_job(db, SLOW_EPOCHS.model_copy(update={"epochs": 4, "seed": 3}), max_attempts=3).id
    first = fleet.start_worker()
    wait_for("an epoch", lambda: get_job(db, job_id).epochs_done >= 1, fleet)
    # Below the worker: its fork server, the trainer process the fork server started, the resource tracker.
    below = psutil.Process(fleet.processes[first].pid).children(recursive=True)
    assert len(below) >= 2, f"the worker has no trainer process: {below}"
    fleet.kill(first)
    _gone, alive = psutil.wait_procs(below, timeout=15)
    assert not alive, f"processes of the killed worker go on: {alive}"
    # Nothing of the killed worker writes any more: the next worker resumes the job and finishes it.
    fleet.start_worker()
    job = wait_for("the job to end", lambda: ended(db, job_id), fleet)
    assert job.status is JobStatus.succeeded and job.attempt == 2, (job.error, fleet.logs())
    assert epochs_recorded(db, job_id) == list(range(1, 5))


def test_a_worker_whose_trainer_aborts_retries_the_job_and_keeps_serving(fleet: Fleet, db: Database) -> None:
    fleet.env["FMNIST_FAULT_INJECTION"] = '{"kind": "abort", "seed": 13, "attempt": 1}'
    dying = queue.enqueue_job(db, TINY_JOB.model_copy(update={"epochs": 2, "seed": 13}), max_attempts=3).id
    after = queue.enqueue_job(db, TINY_JOB, max_attempts=3).id
    worker = fleet.start_worker()
    jobs = [wait_for("the jobs to end", partial(ended, db, job_id), fleet) for job_id in (dying, after)]
    assert [(job.status, job.attempt) for job in jobs] == [(JobStatus.succeeded, 2), (JobStatus.succeeded, 1)]
    assert fleet.processes[worker].poll() is None, "the worker outlived its trainer"
    log = fleet.log(worker)
    assert "the trainer process died (SIGABRT) (attempt 1 of 3, retrying)" in log, log
    assert fleet.stop(worker) == [0], fleet.logs()


# -- racing workers -------------------------------------------------------------------------------------
TINY_JOB = TrainingSpec(hidden_layers=[8], batch_size=200, epochs=1, seed=1)
RACERS, JOBS = 4, 50


@pytest.mark.parametrize("mode", MODES)
def test_four_workers_racing_over_fifty_jobs_claim_each_attempt_once(fleet: Fleet, db: Database, mode: str) -> None:
    keep_artifacts(fleet, mode)
    # Idle workers look at the queue only when the signal file says so: all four wake on the same write.
    fleet.env["FMNIST_POLL_SECONDS"] = "60"
    names = [fleet.start_worker() for _ in range(RACERS)]
    for name in names:
        wait_for(f"{name} to start", partial(started, fleet, name), fleet)
    job_ids = [queue.enqueue_job(db, TINY_JOB, max_attempts=3).id for _ in range(JOBS)]
    QueueSignal(fleet.settings.queue_signal_path).notify()

    def all_ended() -> list[Job] | None:
        jobs = [get_job(db, job_id) for job_id in job_ids]
        return jobs if all(job.status.is_terminal for job in jobs) else None

    jobs = wait_for("every job to end", all_ended, fleet)
    assert fleet.stop(*names) == [0] * RACERS, fleet.logs()

    pids = {fleet.processes[name].pid: name for name in names}
    claims = [
        (job_id, int(attempt), pids[int(pid)])
        for name in names
        for pid, job_id, attempt in CLAIM_LINE.findall(fleet.log(name))
    ]
    twice = [key for key, n in Counter((job_id, attempt) for job_id, attempt, _ in claims).items() if n > 1]
    assert not twice, f"claimed more than once: {twice}"
    assert sorted((job_id, attempt) for job_id, attempt, _ in claims) == sorted((job_id, 1) for job_id in job_ids)
    claimer = {job_id: name for job_id, _, name in claims}
    for job in jobs:
        assert job.status is JobStatus.succeeded, (job.id, job.error)
        # The token goes up on every claim: 1 means one claim, by the worker whose log says so.
        assert (job.attempt, job.lease_token) == (1, 1)
        assert fleet.worker_named(job.worker_id) == claimer[job.id]
        assert models_of(db, job.id) == 1
    assert len(set(claimer.values())) >= 2, f"no race: {Counter(claimer.values())}"
    assert artifact_files(fleet.settings.home) == expected_files(fleet, *(job.model_id for job in jobs))


# -- kill -9 the API ------------------------------------------------------------------------------------
# 200 submissions in waves of 20, 150 ms apart (one burst of 200 makes the client, not the server, the
# bottleneck: it reads no answer until it has sent everything); the kill lands at the 50th answer. A wave also
# waits for the answers to all waves but the one before it: a client slowed down (a busy machine) cannot fall so
# far behind the server that every submission is answered before the client has read 50 answers.
SUBMISSIONS, WAVE, WAVE_SECONDS, KILL_AFTER_ACKS = 200, 20, 0.15, 50


async def submit_concurrently(url: str, count: int, on_ack: Callable[[str], None]) -> list[int | None]:
    """POSTs ``count`` jobs in waves; each answer's status, None where the connection broke."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    answered = 0
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def submit(seed: int) -> int | None:
            nonlocal answered
            wave = seed // WAVE
            await asyncio.sleep(wave * WAVE_SECONDS)
            while answered < (wave - 1) * WAVE:
                await asyncio.sleep(0.005)
            try:
                response = await client.post("/v1/jobs", json={"hidden_layers": [8], "epochs": 1, "seed": seed})
            except httpx.TransportError:
                return None
            finally:
                answered += 1
            if response.status_code == 202:
                on_ack(response.json()["id"])
            return response.status_code

        return list(await asyncio.gather(*(submit(seed) for seed in range(count))))


def test_every_job_acknowledged_before_the_api_is_killed_is_stored(fleet: Fleet, db: Database) -> None:
    port = free_port()
    api = fleet.start("api", "serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client, api)
    acked: list[str] = []
    killed = threading.Event()

    def kill_once() -> None:
        if not killed.is_set():
            killed.set()
            fleet.kill("api", wait=False)  # called from the event loop: no blocking wait

    def on_ack(job_id: str) -> None:
        acked.append(job_id)
        if len(acked) >= KILL_AFTER_ACKS:
            kill_once()

    try:
        statuses = asyncio.run(submit_concurrently(url, SUBMISSIONS, on_ack))
    finally:
        kill_once()
    assert api.wait(timeout=30) == -signal.SIGKILL
    assert set(statuses) <= {202, None}, Counter(statuses)
    assert None in statuses, f"the kill did not land during the submissions: {Counter(statuses)}"
    assert len(set(acked)) == len(acked) == statuses.count(202)

    port = free_port()
    restarted = fleet.start("api-restarted", "serve", "--port", str(port))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, restarted)
        missing = [job_id for job_id in acked if client.get(f"/v1/jobs/{job_id}").status_code != 200]
        listed = client.get("/v1/jobs", params={"limit": 500}).json()
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged jobs are gone"
    # Jobs committed whose answer the kill cut off may be there too; none beyond what was sent.
    assert len(acked) <= listed["count"] <= SUBMISSIONS
    assert {job["id"] for job in listed["data"]} >= set(acked)
    assert all(job["status"] == "queued" for job in listed["data"])
    assert fleet.stop("api-restarted", sig=signal.SIGINT) == [0], fleet.log("api-restarted")


# -- a worker frozen past its lease ---------------------------------------------------------------------
STALLED_JOB = SLOW_EPOCHS.model_copy(update={"epochs": 10, "seed": 11})


@pytest.mark.parametrize("mode", MODES)
def test_a_worker_frozen_past_its_lease_has_its_late_writes_refused(fleet: Fleet, db: Database, mode: str) -> None:
    keep_artifacts(fleet, mode)
    fleet.env["FMNIST_LEASE_SECONDS"] = "2"
    job_id = queue.enqueue_job(db, STALLED_JOB, max_attempts=3).id
    first = fleet.start_worker()
    wait_for("the first epoch", lambda: get_job(db, job_id).epochs_done >= 1, fleet)
    time.sleep(epoch_seconds(db, job_id) / 2)
    freeze(fleet.processes[first], db, job_id)
    frozen_at = get_job(db, job_id).epochs_done

    # The second worker starts after the lease has run out (a start takes longer), reaps and claims it.
    second = fleet.start_worker()

    def second_trained_an_epoch() -> Job | None:
        # The frozen worker writes nothing: progress past where it froze is the second worker's, and so
        # is the provenance by then (begin_attempt wrote it before the epoch).
        job = get_job(db, job_id)
        return job if job.attempt == 2 and job.epochs_done > frozen_at else None

    job = wait_for("the second worker's first epoch", second_trained_an_epoch, fleet)
    assert job.status is JobStatus.running and job.attempt == 2
    assert fleet.worker_named(job.worker_id) == second
    assert job.provenance is not None and job.provenance["resumed_from_epoch"] >= frozen_at

    seen = len(fleet.log(first))
    fleet.processes[first].send_signal(signal.SIGCONT)
    wait_for("the thawed worker to see its lease lost", lambda: "lease lost" in fleet.log(first)[seen:], fleet)

    job = wait_for("the job to end", lambda: ended(db, job_id), fleet)
    assert job.status is JobStatus.succeeded, (job.error, fleet.logs())
    assert (job.attempt, job.lease_token) == (2, 2)
    assert fleet.worker_named(job.worker_id) == second
    assert epochs_recorded(db, job_id) == list(range(1, STALLED_JOB.epochs + 1)), "each epoch recorded once"
    assert models_of(db, job_id) == 1
    assert artifact_files(fleet.settings.home) == expected_files(fleet, job.model_id)
    assert fleet.processes[first].poll() is None, "the thawed worker should go back to the queue, not die"
    assert fleet.stop(first, second) == [0, 0], fleet.logs()
    thawed = fleet.log(first)[seen:]
    assert "succeeded" not in thawed and "Traceback" not in thawed, thawed
