"""service/worker/worker.py: claim, run, persist; cancel, shutdown, lost leases and failures."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from models.devices import resolve_device
from models.files import file_sha256
from service.jobs import queue
from service.jobs.queries import get_job, get_metrics
from service.jobs.status import JobStatus
from service.registry import get_model, load_model
from service.settings import FaultInjection, Settings
from service.store.artifacts import ArtifactStore
from service.store.db import Database
from service.store.tables import Model, utcnow
from service.worker.worker import Worker, WorkerPool
from tests.support.artifacts import MODES, artifact_files, checkpoint_file, in_mode, resume_record
from tests.support.specs import spec_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.db

SMALL = spec_of(hidden_layers=[16], batch_size=64, epochs=2, seed=3)
# Long enough to be interrupted mid-run on the synthetic set.
LONG = spec_of(hidden_layers=[16], batch_size=8, epochs=500, seed=3)


def make_worker(settings: Settings, db: Database) -> Worker:
    return Worker(settings, db, torch.device("cpu"), burst=True)


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", MODES)
def test_a_job_runs_to_a_registered_checkpoint(settings: Settings, db: Database, mode: str) -> None:
    settings = in_mode(settings, mode)
    job = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = make_worker(settings, db)
    assert worker.run_once() is True
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.succeeded, stored.error
    assert stored.epochs_done == 2 and stored.attempt == 1 and stored.device == "cpu"
    _, rows = get_metrics(db, job.id)
    assert [row.epoch for row in rows] == [1, 2]
    model = get_model(db, stored.model_id)
    assert model.test_acc == pytest.approx(rows[-1].test_acc)
    _module, spec = load_model(db, model, ArtifactStore.for_settings(settings))
    assert spec == SMALL
    assert resume_record(settings, db, job.id) is None
    if mode == "folder":
        path = checkpoint_file(settings, model.id)
        assert file_sha256(path) == model.sha256 and path.stat().st_size == model.size_bytes
        assert artifact_files(settings.home) == [path], "no temporary file, no resume state left"
    else:
        assert artifact_files(settings.home) == [], "nothing in the home: the bytes are in the database"
    assert worker.run_once() is False


def test_burst_run_drains_the_queue_and_exits(settings: Settings, db: Database) -> None:
    ids = [queue.enqueue_job(db, SMALL, max_attempts=3).id for _ in range(2)]
    assert make_worker(settings, db).run() == 0
    assert [get_job(db, job_id).status for job_id in ids] == [JobStatus.succeeded] * 2


def test_one_trainer_process_loads_the_data_set_once_for_every_job(settings: Settings, db: Database) -> None:
    worker = make_worker(settings, db)
    for _ in range(2):
        queue.enqueue_job(db, SMALL, max_attempts=3)
    worker.run_once()
    first_pid = worker.trainer.pid
    worker.run_once()
    assert worker.trainer.pid == first_pid and first_pid != os.getpid(), "no process start per job"
    assert worker.trainer.starts == 1
    assert worker.last_idle is not None and worker.last_idle.dataset_loads == 1, "no data load per job"
    worker.close()


def test_missing_data_fails_the_job_with_what_to_set(tmp_path: Path, db: Database, settings: Settings) -> None:
    no_data = settings.model_copy(update={"data_dir": tmp_path / "empty", "download": False})
    job = queue.enqueue_job(db, SMALL, max_attempts=3)
    make_worker(no_data, db).run_once()
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.failed
    assert stored.error is not None and "FMNIST_DATA_DIR" in stored.error and "FMNIST_DOWNLOAD" in stored.error
    assert stored.attempt == 1, "a permanent failure is not retried"


def test_cancel_stops_a_running_job_at_the_next_batch(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, LONG, max_attempts=3)
    worker = make_worker(settings, db)
    thread = run_in_thread(worker)
    wait_until(lambda: get_job(db, job.id).epochs_done >= 1)
    queue.request_cancel(db, job.id)
    thread.join(timeout=30)
    assert not thread.is_alive()
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.cancelled
    assert 1 <= stored.epochs_done < LONG.epochs and stored.model_id is None
    assert len(get_metrics(db, job.id)[1]) == stored.epochs_done


def test_shutdown_releases_the_running_job_to_the_queue(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, LONG, max_attempts=3)
    worker = make_worker(settings, db)
    thread = run_in_thread(worker)
    wait_until(lambda: get_job(db, job.id).epochs_done >= 1)
    worker.shutdown.set()
    thread.join(timeout=30)
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.queued and stored.attempt == 0 and stored.epochs_done >= 1
    assert resume_record(settings, db, job.id) is not None, "the next attempt resumes from here"


def test_a_released_job_resumes_where_it_stopped_and_ends_as_if_never_stopped(settings: Settings, db: Database) -> None:
    spec = spec_of(
        hidden_layers=[16],
        batch_size=8,
        epochs=6,
        seed=5,
        optimizer="sgd",
        momentum=0.9,
        lr=0.02,
        lr_schedule="cosine",
        dropout=0.1,
        val_fraction=0.2,
    )
    reference = queue.enqueue_job(db, spec, max_attempts=3)
    make_worker(settings, db).run_once()
    expected = get_metrics(db, reference.id)[1]

    job = queue.enqueue_job(db, spec, max_attempts=3)
    first = make_worker(settings, db)
    thread = run_in_thread(first)
    wait_until(lambda: get_job(db, job.id).epochs_done >= 2)
    first.shutdown.set()
    thread.join(timeout=30)
    interrupted = get_job(db, job.id)
    assert interrupted.status is JobStatus.queued and 2 <= interrupted.epochs_done < 6

    make_worker(settings, db).run_once()
    done = get_job(db, job.id)
    assert done.status is JobStatus.succeeded, done.error
    assert done.provenance is not None and done.provenance["resumed_from_epoch"] == interrupted.epochs_done
    rows = get_metrics(db, job.id)[1]
    assert [row.epoch for row in rows] == [1, 2, 3, 4, 5, 6]

    def comparable(row: Any) -> tuple[Any, ...]:
        return (row.epoch, row.train_loss, row.train_acc, row.val_acc, row.test_acc, row.lr)

    assert [comparable(row) for row in rows] == [comparable(row) for row in expected]
    assert get_model(db, done.model_id).epoch == get_model(db, get_job(db, reference.id).model_id).epoch
    assert resume_record(settings, db, job.id) is None, "dropped once the job ended"
    assert not list(settings.resume_dir.glob("*"))


def test_a_job_records_what_it_ran_with(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, SMALL, max_attempts=3)
    make_worker(settings, db).run_once()
    provenance = get_job(db, job.id).provenance
    assert provenance is not None
    assert provenance["torch"] == torch.__version__ and provenance["device"] == "cpu"
    assert provenance["cuda_graphs"] is False and provenance["resumed_from_epoch"] == 0
    assert set(provenance["data_sha256"]) == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }
    assert provenance["code_version"]


def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, LONG, max_attempts=3)
    worker = make_worker(settings, db)
    thread = run_in_thread(worker)
    wait_until(lambda: get_job(db, job.id).epochs_done >= 1)
    # As if the worker had stalled past its lease: the reaper requeues, another worker claims.
    queue.requeue_expired_leases(db, now=utcnow() + timedelta(hours=1))
    recorded = get_job(db, job.id).epochs_done
    other = queue.claim_next_job(db, "other", 60, device="cpu")
    assert other is not None
    thread.join(timeout=30)
    assert not thread.is_alive()
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.running and stored.worker_id == "other"
    assert stored.epochs_done == recorded and len(get_metrics(db, job.id)[1]) == recorded


def with_fault(settings: Settings, **fault: Any) -> Settings:
    return settings.model_copy(update={"fault_injection": FaultInjection(**fault)})


def test_an_unexpected_error_fails_the_job_and_the_worker_goes_on(settings: Settings, db: Database) -> None:
    bad = queue.enqueue_job(db, SMALL.model_copy(update={"seed": 666}), max_attempts=3)
    good = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = make_worker(with_fault(settings, kind="raise", seed=666), db)
    assert worker.run() == 0
    failed = get_job(db, bad.id)
    assert failed.status is JobStatus.failed and failed.attempt == 1
    assert failed.error == "injected fault (FMNIST_FAULT_INJECTION)"
    assert get_job(db, good.id).status is JobStatus.succeeded
    assert worker.trainer.starts == 1, "an ordinary exception does not cost the trainer process"


def test_a_transient_error_is_retried_and_resumes(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, SMALL, max_attempts=3)
    assert make_worker(with_fault(settings, kind="oserror", seed=SMALL.seed, attempt=1), db).run() == 0
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.succeeded and stored.attempt == 2
    assert stored.provenance is not None and stored.provenance["resumed_from_epoch"] == 1
    assert [row.epoch for row in get_metrics(db, job.id)[1]] == [1, 2]


@pytest.mark.parametrize(
    ("kind", "exit_name"),
    [("abort", "SIGABRT"), ("kill", "SIGKILL")],
)
def test_a_trainer_that_dies_mid_job_retries_that_job_and_the_worker_runs_the_next(
    settings: Settings, db: Database, kind: str, exit_name: str
) -> None:
    dying = queue.enqueue_job(db, SMALL.model_copy(update={"seed": 13}), max_attempts=2)
    after = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = make_worker(with_fault(settings, kind=kind, seed=13, attempt=1), db)
    assert worker.run() == 0
    retried = get_job(db, dying.id)
    # Attempt 1 died after epoch 1; attempt 2, in a new trainer process, resumed after it.
    assert retried.status is JobStatus.succeeded and retried.attempt == 2, retried.error
    assert retried.provenance is not None and retried.provenance["resumed_from_epoch"] == 1
    assert [row.epoch for row in get_metrics(db, dying.id)[1]] == [1, 2]
    assert get_job(db, after.id).status is JobStatus.succeeded
    assert worker.trainer.starts == 2


def test_a_trainer_that_dies_on_every_attempt_fails_the_job_with_why(settings: Settings, db: Database) -> None:
    dying = queue.enqueue_job(db, SMALL.model_copy(update={"seed": 13}), max_attempts=2)
    after = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = make_worker(with_fault(settings, kind="abort", seed=13), db)
    assert worker.run() == 0
    failed = get_job(db, dying.id)
    assert failed.status is JobStatus.failed and failed.attempt == 2
    assert failed.error == "the trainer process died (SIGABRT) (attempt 2 of 2)"
    assert resume_record(settings, db, dying.id) is None
    assert get_job(db, after.id).status is JobStatus.succeeded
    assert worker.trainer.starts == 3


def test_a_trainer_killed_from_outside_mid_job_costs_one_attempt(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, LONG.model_copy(update={"epochs": 3}), max_attempts=3)
    after = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = make_worker(settings, db)
    thread = run_in_thread(worker)
    wait_until(lambda: get_job(db, job.id).epochs_done >= 1)
    pid = worker.trainer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=30)
    requeued = get_job(db, job.id)
    assert requeued.status is JobStatus.queued and requeued.attempt == 1
    assert requeued.error == "the trainer process died (SIGKILL) (attempt 1 of 3, retrying)"
    assert worker.run() == 0
    assert get_job(db, job.id).status is JobStatus.succeeded and get_job(db, job.id).attempt == 2
    assert get_job(db, after.id).status is JobStatus.succeeded
    assert worker.trainer.pid != pid and worker.trainer.starts == 2


def test_an_out_of_bounds_index_on_the_cpu_fails_only_that_job(settings: Settings, db: Database) -> None:
    bad = queue.enqueue_job(db, SMALL.model_copy(update={"seed": 21}), max_attempts=3)
    good = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = make_worker(with_fault(settings, kind="out_of_bounds_index", seed=21), db)
    assert worker.run() == 0
    failed = get_job(db, bad.id)
    assert failed.status is JobStatus.failed and "out of bounds" in (failed.error or ""), failed.error
    assert get_job(db, good.id).status is JobStatus.succeeded
    assert worker.trainer.starts == 1, "on the CPU the process stays usable"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cpu", "cpu"), ("auto", "cuda" if torch.cuda.is_available() else "cpu")],
)
def test_resolve_device(name: str, expected: str) -> None:
    assert resolve_device(name).type == expected


@pytest.mark.parametrize("name", ["tpu", "cuda:99", "banana"])
def test_resolve_device_refuses_what_is_not_there(name: str) -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device(name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_job_runs_on_the_gpu(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = Worker(settings, db, torch.device("cuda"), burst=True)
    worker.run_once()
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.succeeded, stored.error
    assert stored.device is not None and stored.device.startswith("cuda")
    assert stored.provenance is not None and stored.provenance["cuda_graphs"] is True
    worker.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_device_side_assert_fails_that_job_and_a_new_trainer_runs_the_next(settings: Settings, db: Database) -> None:
    bad = queue.enqueue_job(db, SMALL.model_copy(update={"seed": 21}), max_attempts=3)
    good = queue.enqueue_job(db, SMALL, max_attempts=3)
    worker = Worker(with_fault(settings, kind="out_of_bounds_index", seed=21), db, torch.device("cuda"), burst=True)
    assert worker.run() == 0
    failed = get_job(db, bad.id)
    # The poisoned CUDA context is the trainer's: that job fails, the worker lives and starts a new trainer.
    assert failed.status is JobStatus.failed and failed.attempt == 1, failed.error
    assert "CUDA" in (failed.error or "") or "device-side assert" in (failed.error or ""), failed.error
    assert get_job(db, good.id).status is JobStatus.succeeded
    assert worker.trainer.starts == 2


def test_a_pool_runs_jobs_concurrently_in_one_trainer_process(settings: Settings, db: Database) -> None:
    ids = [queue.enqueue_job(db, LONG.model_copy(update={"epochs": 3}), max_attempts=3).id for _ in range(2)]
    pool = WorkerPool(settings, db, torch.device("cpu"), concurrency=2, burst=True)
    seen_running: set[int] = set()

    def watch() -> None:
        while any(get_job(db, job_id).status is not JobStatus.succeeded for job_id in ids):
            seen_running.add(sum(get_job(db, job_id).status is JobStatus.running for job_id in ids))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert pool.run() == 0
    watcher.join(timeout=30)
    assert [get_job(db, job_id).status for job_id in ids] == [JobStatus.succeeded] * 2
    assert 2 in seen_running, "the two jobs never ran at the same time"
    assert len({w.worker_id for w in pool.workers}) == 2
    assert all(w.trainer is pool.trainer for w in pool.workers) and pool.trainer.starts == 1


# The example: the shortest job there is, cancelled as soon as it shows `running`.
RACE = spec_of(hidden_layers=[], epochs=1, batch_size=60000, seed=5)


def test_a_cancel_answered_ok_always_ends_cancelled_even_as_the_job_completes(settings: Settings, db: Database) -> None:
    worker = make_worker(settings, db)
    pauses = random.Random(0)
    outcomes: Counter[tuple[bool, JobStatus]] = Counter()
    for _ in range(50):
        job = queue.enqueue_job(db, RACE, max_attempts=1)
        thread = run_in_thread(worker)
        wait_until(lambda job_id=job.id: get_job(db, job_id).status is not JobStatus.queued)  # type: ignore[misc]
        # Land the cancel anywhere from the claim to the end of the run, the end of it included.
        time.sleep(pauses.uniform(0.0, 0.15))
        try:
            queue.request_cancel(db, job.id)
            accepted = True
        except queue.JobNotCancellable:
            accepted = False
        thread.join(timeout=30)
        assert not thread.is_alive()
        stored = get_job(db, job.id)
        outcomes[(accepted, stored.status)] += 1
        if accepted:
            assert stored.status is JobStatus.cancelled and stored.model_id is None, stored.status
            with db.read() as session:
                assert session.scalar(select(func.count()).where(Model.job_id == job.id)) == 0
        else:
            assert stored.status is JobStatus.succeeded and stored.model_id is not None, stored.status
    worker.close()
    succeeded = outcomes[(False, JobStatus.succeeded)]
    assert outcomes[(True, JobStatus.cancelled)] + succeeded == 50, outcomes
    assert outcomes[(True, JobStatus.cancelled)] >= 5, f"too few cancels landed while the job ran: {outcomes}"
    # Only the registered models' checkpoints are there: a run cancelled as it ended published nothing.
    assert len(list(settings.checkpoint_dir.glob("*.safetensors"))) == succeeded
